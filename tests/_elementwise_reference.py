"""Textbook float64 implementations of the elementwise optimizers, written from the Keras
specification (shared/reference/keras_optimizer_spec.md §3.1-3.11) in the plainest form, to
check distopt against. Each takes one variable's initial value and its gradient sequence and
returns the final value; the state lives in local variables and shares nothing with distopt.
`weight_decay` and `clipnorm` are the base class's decoupled decay and per-tensor clipping.
"""

from __future__ import annotations

import numpy as np


def _prepare(w, g, lr, weight_decay, clipnorm):
    if clipnorm:
        g = g * clipnorm / max(np.linalg.norm(g), clipnorm)
    if weight_decay is not None:
        w = w - w * weight_decay * lr
    return w, g


def sgd(w, grads, lr, momentum=0.0, nesterov=False, weight_decay=None, clipnorm=None):
    m = np.zeros_like(w)
    for g in grads:
        w, g = _prepare(w, g, lr, weight_decay, clipnorm)
        if momentum == 0:
            w = w - lr * g
            continue
        m = momentum * m - lr * g
        w = w + (momentum * m - lr * g if nesterov else m)
    return w


def adam(
    w, grads, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=None,
    clipnorm=None,
):  # fmt: skip
    m, v, v_max = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        w, g = _prepare(w, g, lr, weight_decay, clipnorm)
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        v_max = np.maximum(v_max, v)
        alpha = lr * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        w = w - alpha * m / (np.sqrt(v_max if amsgrad else v) + epsilon)
    return w


def rmsprop(
    w, grads, lr, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, weight_decay=None,
    clipnorm=None,
):  # fmt: skip
    v, mom, mean_g = np.zeros_like(w), np.zeros_like(w), np.zeros_like(w)
    for g in grads:
        w, g = _prepare(w, g, lr, weight_decay, clipnorm)
        v = rho * v + (1 - rho) * g**2
        mean_g = rho * mean_g + (1 - rho) * g
        variance = v - mean_g**2 if centered else v
        increment = lr * g / np.sqrt(variance + epsilon)
        if momentum > 0:
            mom = momentum * mom + increment
            increment = mom
        w = w - increment
    return w


def adadelta(w, grads, lr, rho=0.95, epsilon=1e-7, weight_decay=None, clipnorm=None):
    e_g, e_d = np.zeros_like(w), np.zeros_like(w)
    for g in grads:
        w, g = _prepare(w, g, lr, weight_decay, clipnorm)
        e_g = rho * e_g + (1 - rho) * g**2
        delta = -np.sqrt(e_d + epsilon) / np.sqrt(e_g + epsilon) * g
        e_d = rho * e_d + (1 - rho) * delta**2
        w = w + lr * delta
    return w


def adagrad(
    w, grads, lr, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None, clipnorm=None
):
    acc = np.full_like(w, initial_accumulator_value)
    for g in grads:
        w, g = _prepare(w, g, lr, weight_decay, clipnorm)
        acc = acc + g**2
        w = w - lr * g / np.sqrt(acc + epsilon)
    return w


def adamax(w, grads, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, clipnorm=None):
    m, u = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        w, g = _prepare(w, g, lr, weight_decay, clipnorm)
        m = beta_1 * m + (1 - beta_1) * g
        u = np.maximum(beta_2 * u, np.abs(g))
        w = w - lr / (1 - beta_1**t) * m / (u + epsilon)
    return w


def nadam(w, grads, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, clipnorm=None):
    """Dozat (2016) with Keras's momentum schedule u_t = beta_1 (1 - 0.5 * 0.96^t)."""

    def u(t):
        return beta_1 * (1 - 0.5 * 0.96**t)

    m, v, product = np.zeros_like(w), np.zeros_like(w), 1.0
    for t, g in enumerate(grads, start=1):
        w, g = _prepare(w, g, lr, weight_decay, clipnorm)
        product = product * u(t)
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        m_hat = u(t + 1) * m / (1 - product * u(t + 1)) + (1 - u(t)) * g / (1 - product)
        v_hat = v / (1 - beta_2**t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + epsilon)
    return w


def ftrl(
    w, grads, lr, learning_rate_power=-0.5, initial_accumulator_value=0.1,
    l1_regularization_strength=0.0, l2_regularization_strength=0.0,
    l2_shrinkage_regularization_strength=0.0, beta=0.0, weight_decay=None, clipnorm=None,
):  # fmt: skip
    """McMahan et al. (2013) FTRL-Proximal, with Keras's l2 = l2 + beta / (2 lr)."""
    p, l1 = learning_rate_power, l1_regularization_strength
    l2 = l2_regularization_strength + beta / (2 * lr)
    n, z = np.full_like(w, initial_accumulator_value), np.zeros_like(w)
    for g in grads:
        w, g = _prepare(w, g, lr, weight_decay, clipnorm)
        n_new = n + g**2
        sigma = (n_new ** (-p) - n ** (-p)) / lr
        z = z + g + 2 * l2_shrinkage_regularization_strength * w - sigma * w
        w = np.where(np.abs(z) <= l1, 0.0, -(z - np.sign(z) * l1) / (n_new ** (-p) / lr + 2 * l2))
        n = n_new
    return w


def lion(w, grads, lr, beta_1=0.9, beta_2=0.99, weight_decay=None, clipnorm=None):
    m = np.zeros_like(w)
    for g in grads:
        w, g = _prepare(w, g, lr, weight_decay, clipnorm)
        w = w - lr * np.sign(beta_1 * m + (1 - beta_1) * g)
        m = beta_2 * m + (1 - beta_2) * g
    return w
