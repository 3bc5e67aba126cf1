"""Textbook float64 implementations of the per-tensor optimizers, written from the papers and
the Keras specification (tests/../shared/reference/keras_optimizer_spec.md §3.8-3.14), to check
distopt against. They keep their own state in plain dicts and share nothing with distopt.
"""

from __future__ import annotations

import numpy as np


def rms(x):
    return np.sqrt(np.mean(np.square(x)))


def decay(w, weight_decay, lr):
    return w if weight_decay is None else w - w * weight_decay * lr


def adam_moments(w, grads, beta_1, beta_2):
    """Yields `(t, m, v)`: Adam's first and second moments after gradient `t` (from 1)."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        yield t, m, v


def adafactor(
    w,
    grads,
    lr=0.001,
    beta_2_decay=-0.8,
    epsilon_1=1e-30,
    epsilon_2=1e-3,
    clip_threshold=1.0,
    weight_decay=None,
):
    """Shazeer & Stern (2018), Algorithm 4 with Keras's relative step and clipping."""
    w = np.array(w, dtype=np.float64)
    factored = w.ndim >= 2
    row = np.zeros(w.shape[:-1]) if factored else None
    col = np.zeros(w.shape[:-2] + w.shape[-1:]) if factored else None
    second = np.zeros(w.shape)
    for t, g in enumerate(grads, start=1):
        w = decay(w, weight_decay, lr)
        step_size = min(lr, 1 / np.sqrt(t)) * max(epsilon_2, rms(w))
        beta_2 = 1 - t**beta_2_decay
        sq = np.square(g) + epsilon_1
        if factored:
            row = beta_2 * row + (1 - beta_2) * sq.mean(axis=-1)
            col = beta_2 * col + (1 - beta_2) * sq.mean(axis=-2)
            normalised_row = row / row.mean(axis=-1, keepdims=True)
            second = np.einsum("...i,...j->...ij", normalised_row, col)
        else:
            second = beta_2 * second + (1 - beta_2) * sq
        update = g / np.sqrt(second)
        update = update / max(1.0, rms(update) / clip_threshold)
        w = w - step_size * update
    return w


def lamb(w, grads, lr=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None):
    """You et al. (2019), LAMB without the paper's weight-decay term (Keras decays apart)."""
    w = np.array(w, dtype=np.float64)
    for t, m, v in adam_moments(w, grads, beta_1, beta_2):
        w = decay(w, weight_decay, lr)
        r = (m / (1 - beta_1**t)) / (np.sqrt(v / (1 - beta_2**t)) + epsilon)
        w_norm, r_norm = np.linalg.norm(w), np.linalg.norm(r)
        trust = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
        w = w - lr * trust * r
    return w


def newton_schulz(x, steps, a=3.4445, b=-4.7750, c=2.0315):
    """Quintic Newton-Schulz orthogonalisation (Jordan et al., Muon)."""
    x = np.array(x, dtype=np.float64)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def adam(w, grads, lr, beta_1, beta_2, epsilon, weight_decay=None, lr_ratio=1.0):
    """Kingma & Ba (2015), the efficient form of section 2 ("epsilon hat")."""
    w = np.array(w, dtype=np.float64)
    for t, m, v in adam_moments(w, grads, beta_1, beta_2):
        w = decay(w, weight_decay, lr)
        step_size = lr * lr_ratio * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        w = w - step_size * m / (np.sqrt(v) + epsilon)
    return w


def muon_matrix(
    w, grads, lr=0.001, momentum=0.95, nesterov=True, ns_steps=5, rms_rate=0.2, weight_decay=0.004
):
    """Muon on one 2-D matrix, with Moonlight's RMS matching (Liu et al., 2025)."""
    w = np.array(w, dtype=np.float64)
    buf = np.zeros_like(w)
    for g in grads:
        w = decay(w, weight_decay, lr)
        buf = momentum * buf + g
        direction = g + momentum * buf if nesterov else buf
        update = lr * newton_schulz(direction, ns_steps)
        if rms_rate is not None:
            update = update * np.sqrt(max(w.shape)) * rms_rate
        w = w - update
    return w


def schedule_free_adamw(
    w, grads, lr=0.0025, beta_1=0.9, beta_2=0.999, epsilon=1e-8, warmup_steps=0
):
    """Defazio et al. (2024), Schedule-Free AdamW with x kept explicitly (no weight decay)."""
    y = np.array(w, dtype=np.float64)
    z = y.copy()
    x = y.copy()
    v = np.zeros_like(y)
    for t, g in enumerate(grads, start=1):
        step_lr = lr * min(t / warmup_steps, 1.0) if warmup_steps > 0 else lr
        v = beta_2 * v + (1 - beta_2) * g * g
        z = z - step_lr * g / (np.sqrt(v / (1 - beta_2**t)) + epsilon)
        x = (1 - 1 / t) * x + (1 / t) * z
        y = (1 - beta_1) * z + beta_1 * x
    return y
