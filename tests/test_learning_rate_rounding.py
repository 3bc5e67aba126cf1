"""Where a hyperparameter meets the learning rate, distopt rounds as Keras: Keras's learning
rate is a float32 variable (or a schedule's float32 value), and Muon forms
`learning_rate * adam_lr_ratio` in that dtype before casting to the variable's dtype."""

import numpy as np
import pytest

import distopt
from distopt.optimizers import Muon, schedules


def _muon_step(learning_rate):
    optimizer = Muon(
        learning_rate=learning_rate, adam_lr_ratio=0.3, weight_decay=0.0, adam_weight_decay=0.0
    )
    w = distopt.Variable(np.ones(3), dtype="float64")
    optimizer.apply_gradients([(np.full(3, 0.5), w)])
    return w.value[0]


def _adam_first_step(lr):
    # One Adam step from m = v = 0 on a gradient of 0.5, in float64.
    alpha = lr * np.sqrt(1 - 0.999) / (1 - 0.9)
    m, v = 0.5 * (1 - 0.9), 0.25 * (1 - 0.999)
    return 1.0 - m * alpha / (np.sqrt(v) + 1e-7)


def test_muon_adamw_path_rounds_the_scaled_rate_in_float32():
    # Keras 3.15.1 gives 0.9970000189474691 (the product rounded to float32 first).
    assert _muon_step(0.01) == 0.9970000189474691
    assert _muon_step(0.01) == _adam_first_step(float(np.float32(0.01) * np.float32(0.3)))


def test_float32_schedule_rounds_the_same_way():
    schedule = schedules.ExponentialDecay(0.01, 100, 1.0)
    assert _muon_step(schedule) == 0.9970000189474691


def test_float64_schedule_keeps_float64():
    schedule = schedules.ExponentialDecay(np.float64(0.01), 100, 1.0)
    assert _muon_step(schedule) == _adam_first_step(0.01 * 0.3)


def test_callable_returning_a_python_float_uses_python_maths():
    assert _muon_step(lambda: 0.01) == _adam_first_step(0.01 * 0.3)


@pytest.mark.parametrize(
    "learning_rate, expected",
    [
        (distopt.Variable(0.01), np.float32(np.float32(0.01) * np.float32(0.3))),
        (np.float32(0.01), np.float32(np.float32(0.01) * np.float32(0.3))),
        (0.01, 0.01 * 0.3),
    ],
)
def test_update_step_called_directly(learning_rate, expected):
    optimizer = Muon(adam_lr_ratio=0.3, weight_decay=0.0, adam_weight_decay=0.0)
    w = distopt.Variable(np.ones(3), dtype="float64")
    optimizer.build([w])
    optimizer.update_step(np.full(3, 0.5), w, learning_rate)
    assert w.value[0] == _adam_first_step(float(expected))
