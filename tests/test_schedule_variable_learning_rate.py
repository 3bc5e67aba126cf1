"""Schedules whose `initial_learning_rate` is a Variable or a 0-d array (as Keras allows)."""

import numpy as np
import pytest
from _keras_subprocess import requires_keras, run_keras

import distopt
from distopt.optimizers import SGD, Adam, schedules

ALL = [
    lambda lr: schedules.ExponentialDecay(lr, 4, 0.5),
    lambda lr: schedules.PolynomialDecay(lr, 4),
    lambda lr: schedules.InverseTimeDecay(lr, 4, 0.5),
    lambda lr: schedules.CosineDecay(lr, 4, alpha=0.1),
    lambda lr: schedules.CosineDecay(lr, 4, warmup_target=0.1, warmup_steps=2),
    lambda lr: schedules.CosineDecayRestarts(lr, 2),
]


def test_assigning_a_schedule_of_the_lr_variable_untracks_it():
    adam = Adam(learning_rate=0.001)
    assert len(adam.variables) == 2
    adam.learning_rate = schedules.PolynomialDecay(adam.learning_rate, 4)
    assert [v.name for v in adam.variables] == ["iteration"]
    w = distopt.Variable([1.0, 2.0])
    adam.apply_gradients([(np.ones(2, np.float32), w)])
    assert adam.iterations == 1 and len(adam.variables) == 3


@pytest.mark.parametrize("make", ALL)
def test_a_variable_is_read_at_each_call(make):
    lr = distopt.Variable(0.01)
    schedule, reference = make(lr), make(np.float32(0.01))
    for step in range(7):
        value = schedule(step)
        assert value.dtype == np.float32 and value == reference(step)
    lr.assign(0.02)
    for step in range(7):
        assert schedule(step) == make(np.float32(0.02))(step)


@pytest.mark.parametrize("make", ALL)
def test_a_0d_array_computes_in_its_dtype(make):
    schedule, reference = make(np.array(0.01)), make(np.float64(0.01))
    for step in range(7):
        value = schedule(step)
        assert value.dtype == np.float64 and value == reference(step)


@pytest.mark.parametrize(
    "value, message",
    [
        (distopt.Variable([0.1, 0.2]), r"scalar Variable .* Variable of shape \(2,\)"),
        (np.array("a"), r"0-d numeric array.* dtype <U1"),
        (np.zeros((1, 1)), r"ndarray of shape \(1, 1\)"),
    ],
)
def test_bad_initial_learning_rate(value, message):
    with pytest.raises(ValueError, match=r"`initial_learning_rate` must be .*" + message):
        schedules.ExponentialDecay(value, 4, 0.5)


def test_optimizer_trains_with_a_variable_schedule():
    lr = distopt.Variable(0.5)
    optimizer = SGD(learning_rate=schedules.ExponentialDecay(lr, 1, 0.5))
    w = distopt.Variable([1.0])
    optimizer.apply_gradients([(np.ones(1, np.float32), w)])
    lr.assign(0.0)
    optimizer.apply_gradients([(np.ones(1, np.float32), w)])
    assert w.numpy()[0] == np.float32(0.5)


KERAS_SCRIPT = """
import json, numpy as np, keras
adam = keras.optimizers.Adam(learning_rate=0.001)
n = len(adam.variables)
adam.learning_rate = keras.optimizers.schedules.PolynomialDecay(adam.learning_rate, 4)
w = keras.Variable(np.array([1.0, -2.0], dtype="float32"))
values = []
for step in range(6):
    adam.apply_gradients([(np.array([0.5, 0.25], dtype="float32"), w)])
    values.append(np.asarray(w.value).tolist())
print(json.dumps([n, len(adam.variables), values]))
"""


@requires_keras
def test_same_as_real_keras():
    before, after, values = run_keras(KERAS_SCRIPT, backend="numpy")
    adam = Adam(learning_rate=0.001)
    assert len(adam.variables) == before
    adam.learning_rate = schedules.PolynomialDecay(adam.learning_rate, 4)
    w = distopt.Variable([1.0, -2.0])
    ours = []
    for _ in range(6):
        adam.apply_gradients([(np.array([0.5, 0.25], np.float32), w)])
        ours.append(w.numpy().tolist())
    assert len(adam.variables) == after
    np.testing.assert_allclose(ours, values, rtol=1e-6)
