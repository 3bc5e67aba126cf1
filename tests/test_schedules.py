"""Learning-rate schedules: validation texts, dtypes, serialization, and use by optimizers.
(Keras's values at many steps are golden cases in test_goldens.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

import distopt
from distopt import optimizers
from distopt.optimizers import schedules

EVERY = [
    schedules.ExponentialDecay(0.1, 10, 0.5, staircase=True, name="e"),
    schedules.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1], name="p"),
    schedules.PolynomialDecay(0.1, 20, 0.01, power=2.0, cycle=True, name="poly"),
    schedules.InverseTimeDecay(0.1, 10, 0.5, name="i"),
    schedules.CosineDecay(0.01, 20, alpha=0.1, warmup_target=0.1, warmup_steps=10, name="c"),
    schedules.CosineDecayRestarts(0.1, 10, t_mul=1.5, m_mul=0.5, alpha=0.1, name="r"),
]


@pytest.mark.parametrize("schedule", EVERY, ids=lambda s: type(s).__name__)
def test_float_learning_rate_computes_in_float32_and_round_trips(schedule):
    for step in (0, 7, np.int32(13), 100):
        assert np.asarray(schedule(step)).dtype == np.float32
    config = schedule.get_config()
    again = schedules.deserialize(schedules.serialize(schedule))
    assert type(again) is type(schedule) and again.get_config() == config
    assert [float(again(s)) for s in range(40)] == [float(schedule(s)) for s in range(40)]


def test_serialize_format_matches_keras():
    schedule = schedules.ExponentialDecay(0.1, 100000, 0.96, staircase=True)
    assert schedules.serialize(schedule) == {
        "module": "distopt.optimizers.schedules",
        "class_name": "ExponentialDecay",
        "config": {
            "initial_learning_rate": 0.1,
            "decay_steps": 100000,
            "decay_rate": 0.96,
            "staircase": True,
            "name": "ExponentialDecay",
        },  # fmt: skip
        "registered_name": None,
    }


def test_numpy_float64_initial_learning_rate_computes_in_float64():
    schedule = schedules.CosineDecayRestarts(np.float64(1.0), 1000)
    value = schedule(250)
    assert np.asarray(value).dtype == np.float64
    assert value == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), rel=1e-15)


@pytest.mark.parametrize(
    ("make", "text"),
    [
        (lambda: schedules.ExponentialDecay(0.1, 0, 0.5),
         "Argument `decay_steps` must be > 0. Received: decay_steps=0"),
        (lambda: schedules.PolynomialDecay(0.1, -3),
         "Argument `decay_steps` must be > 0. Received: decay_steps=-3"),
        (lambda: schedules.InverseTimeDecay(0.1, 0, 0.5),
         "Argument `decay_steps` must be > 0. Received: decay_steps=0"),
        (lambda: schedules.CosineDecay(0.1, 0),
         "Argument `decay_steps` must be > 0. Received: decay_steps=0"),
        (lambda: schedules.CosineDecayRestarts(0.1, 0),
         "Argument `first_decay_steps` must be > 0. Received: first_decay_steps=0"),
        (lambda: schedules.PiecewiseConstantDecay([1, 2], [0.1, 0.2]),
         "The length of boundaries should be 1 less than the length of values. Received: "
         "boundaries=[1, 2] of length 2, and values=[0.1, 0.2] of length 2."),
        (lambda: schedules.ExponentialDecay("0.1", 10, 0.5),
         "Argument `initial_learning_rate` must be a number. "
         "Received: initial_learning_rate='0.1'"),
        (lambda: schedules.CosineDecay(0.1, 10, warmup_steps=-1),
         "Argument `warmup_steps` must be >= 0. Received: warmup_steps=-1"),
        (lambda: schedules.CosineDecayRestarts(0.1, 10, t_mul=0.0),
         "Argument `t_mul` must be > 0. Received: t_mul=0.0"),
    ],
)  # fmt: skip
def test_bad_arguments(make, text):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == text


def test_non_scalar_step_is_rejected():
    with pytest.raises(ValueError, match=r"takes a scalar step .* Received: step=\[1, 2\]"):
        schedules.ExponentialDecay(0.1, 10, 0.5)([1, 2])


def test_base_class_and_unknown_names():
    class Half(schedules.LearningRateSchedule):
        pass

    with pytest.raises(NotImplementedError, match="'Half' must override `__call__"):
        Half()(0)
    with pytest.raises(NotImplementedError, match="'Half' must override `get_config"):
        Half().get_config()
    with pytest.raises(ValueError, match="Could not interpret learning rate schedule"):
        schedules.deserialize({"class_name": "Nope", "config": {}})
    with pytest.raises(ValueError, match="takes a dict with 'class_name'"):
        schedules.deserialize("ExponentialDecay")
    with pytest.raises(TypeError, match="takes a LearningRateSchedule"):
        schedules.serialize(0.1)


class Inverse(schedules.LearningRateSchedule):
    def __init__(self, scale):
        self.scale = scale

    def __call__(self, step):
        return self.scale / (np.asarray(step, np.float32) + 1)

    def get_config(self):
        return {"scale": self.scale}


def test_optimizer_config_embeds_the_schedule_and_custom_objects_resolve():
    opt = optimizers.SGD(learning_rate=Inverse(0.5))
    config = opt.get_config()
    assert config["learning_rate"]["class_name"] == "Inverse"
    again = optimizers.SGD.from_config(config, custom_objects={"Inverse": Inverse})
    assert isinstance(again._learning_rate, Inverse) and again._learning_rate.scale == 0.5
    with pytest.raises(ValueError, match="Could not interpret"):
        optimizers.SGD.from_config(config)


def test_optimizer_reads_the_schedule_at_the_raw_call_counter():
    # Under accumulation the schedule sees every call (Keras's behaviour), not real updates.
    schedule = schedules.PiecewiseConstantDecay([0, 1, 2], [1.0, 0.5, 0.25, 0.125])
    var = distopt.Variable([0.0])
    opt = optimizers.SGD(learning_rate=schedule, gradient_accumulation_steps=2)
    assert len(opt.variables) == 1  # no learning-rate variable
    for _ in range(4):
        opt.apply_gradients([(np.ones(1), var)])
    # Updates on calls 2 and 4 use schedule(1) = 0.5 and schedule(3) = 0.125.
    np.testing.assert_allclose(var.value, [-0.625])
    with pytest.raises(TypeError, match="not settable"):
        opt.learning_rate = 0.1
    np.testing.assert_allclose(var.value, [-0.625])
    assert opt.learning_rate == np.float32(0.125)
