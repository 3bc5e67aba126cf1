"""What the Adam-family optimizers share: the `beta_1`/`beta_2`/`epsilon` checks and the
bias corrections, computed in the variable's dtype as Keras does."""

from __future__ import annotations

import numpy as np

from distopt.optimizers._hyperparameters import check_float


def check_moment_arguments(beta_1, beta_2, epsilon, prefix: str = "") -> None:
    """`beta_1`, `beta_2` in [0, 1] and `epsilon` >= 0 (Muon names its betas `adam_beta_*`)."""
    check_float(f"{prefix}beta_1", beta_1, 0, 1)
    check_float(f"{prefix}beta_2", beta_2, 0, 1)
    check_float("epsilon", epsilon, 0)


def bias_correction(beta, step, c):
    """`1 - beta^step`, in the dtype whose scalar type is `c` (`step` is already a `c`)."""
    return c(1) - np.power(c(beta), step)


def adam_coefficients(lr, beta_1, beta_2, epsilon, step, c):
    """The Adam kernel's coefficients for update number `step` (a `c`):
    `(lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), 1 - beta_1, 1 - beta_2, epsilon)`."""
    alpha = c(lr) * np.sqrt(bias_correction(beta_2, step, c)) / bias_correction(beta_1, step, c)
    return alpha, c(1 - beta_1), c(1 - beta_2), c(epsilon)
