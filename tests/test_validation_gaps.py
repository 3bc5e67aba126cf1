"""Bad arguments, stores, variables and environment variables: each raises a TypeError or
ValueError naming the argument, the value received and what is expected, and changes nothing."""

from __future__ import annotations

import inspect
import json
import math
import re
import time

import numpy as np
import pytest

import distopt
from distopt import Variable
from distopt.collectives import _deadline, _reducers, _timeline
from distopt.optimizers import (
    SGD,
    Adafactor,
    Adagrad,
    Adam,
    AdamW,
    Ftrl,
    LossScaleOptimizer,
    Muon,
    RMSprop,
    ScheduleFreeAdamW,
    deserialize,
    schedules,
)

BIG = 10**400  # an int no float can hold


def _state(opt, variables):
    return [v.numpy() for v in variables], [(v.path, v.numpy()) for v in opt.variables]


def _assert_same(before, after):
    (w0, s0), (w1, s1) = before, after
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1, strict=True))
    assert [p for p, _ in s0] == [p for p, _ in s1]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(s0, s1, strict=True))


# -- constructor arguments --------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, text",
    [
        (lambda: Adam(beta_1=BIG), "Argument `beta_1` must be a finite float"),
        (lambda: Adam(epsilon=BIG), "Argument `epsilon` must be a finite float"),
        (lambda: Adam(clipnorm=BIG), "Argument `clipnorm` must be a finite float"),
        (lambda: SGD(momentum=BIG), "`momentum` must be a float between [0, 1]. Received: moment"),
        (lambda: Adam(amsgrad="abc"), "Argument `amsgrad` must be a bool (True or False). Recei"),
        (lambda: AdamW(amsgrad=1), "Argument `amsgrad` must be a bool"),
        (lambda: SGD(nesterov=[0.1]), "Argument `nesterov` must be a bool (True or False). Rece"),
        (lambda: RMSprop(centered="no"), "Argument `centered` must be a bool"),
        (lambda: Adafactor(relative_step=None), "Argument `relative_step` must be a bool"),
        (lambda: Muon(nesterov="yes"), "Argument `nesterov` must be a bool"),
        (lambda: Muon(exclude_embeddings=0), "Argument `exclude_embeddings` must be a bool"),
        # Values whose update can only be NaN (Keras's docs ask for these bounds too).
        (lambda: Adagrad(initial_accumulator_value=-1.0), "`initial_accumulator_value` must be"),
        (lambda: Ftrl(learning_rate=0.0), "Argument `learning_rate` of Ftrl must not be 0"),
        (lambda: ScheduleFreeAdamW(beta_1=0.0), "Argument `beta_1` must be a float in (0, 1]"),
    ],
)
def test_constructor_rejects(make, text):
    with pytest.raises(ValueError, match=re.escape(text)) as info:
        make()
    assert "Received:" in str(info.value)
    assert len(str(info.value)) < 400  # a huge int is shortened, not printed whole


def test_values_keras_allows_still_work():
    w = Variable(np.array([0.5, -0.5]))
    for opt in (Adagrad(initial_accumulator_value=0.0), Ftrl(learning_rate=0.1),
                ScheduleFreeAdamW(beta_1=1.0), Adam(amsgrad=np.bool_(True))):  # fmt: skip
        opt.apply_gradients([(np.array([1.0, -1.0]), w)])
        assert np.all(np.isfinite(w.numpy())), type(opt).__name__


@pytest.mark.parametrize(
    "make, text",
    [
        (lambda: schedules.ExponentialDecay(BIG, 10, 0.9), "`initial_learning_rate` must be"),
        (lambda: schedules.ExponentialDecay(0.1, BIG, 0.9), "`decay_steps` must be a finite"),
        (lambda: schedules.ExponentialDecay(math.nan, 10, 0.9), "`initial_learning_rate` must "),
        (lambda: schedules.ExponentialDecay(0.1, 10, math.inf), "`decay_rate` must be a finite"),
        (lambda: schedules.ExponentialDecay(0.1, 10, -0.5), "`decay_rate` must be >= 0"),
        (lambda: schedules.InverseTimeDecay(0.1, 10, -1.0), "`decay_rate` must be >= 0"),
        (lambda: schedules.ExponentialDecay(0.1, 10, 0.5, staircase="x"), "`staircase` must be"),
        (lambda: schedules.PolynomialDecay(0.1, 10, math.nan), "`end_learning_rate` must be"),
        (lambda: schedules.PolynomialDecay(0.1, 10, cycle=[1]), "`cycle` must be a bool"),
        (lambda: schedules.PiecewiseConstantDecay([10, 5], [1.0, 0.5, 0.1]), "must be sorted"),
        (lambda: schedules.PiecewiseConstantDecay([5], [1.0, math.nan]), "`values[1]` must be"),
        (lambda: schedules.CosineDecay(0.1, 10, alpha=math.inf), "`alpha` must be a finite"),
        (lambda: schedules.CosineDecay(0.1, 10, warmup_target=math.nan), "`warmup_target` must"),
        (lambda: schedules.CosineDecayRestarts(0.1, 10, m_mul=math.nan), "`m_mul` must be"),
    ],
)
def test_schedule_rejects(make, text):
    with pytest.raises(ValueError, match=re.escape(text)) as info:
        make()
    assert "Received:" in str(info.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e39, BIG, "0.1", True, [0.1]])
def test_learning_rate_setter_rejects(value):
    w = Variable(np.ones(3))
    opt = Adam(learning_rate=0.01)
    opt.apply_gradients([(np.ones(3), w)])
    before = _state(opt, [w])
    with pytest.raises(ValueError, match=r"Argument `learning_rate` must be a finite float"):
        opt.learning_rate = value
    _assert_same(before, _state(opt, [w]))
    opt.learning_rate = np.float64(0.5)  # a valid value still goes in
    assert float(opt.learning_rate.numpy()) == 0.5


def test_loss_scale_from_config_without_inner():
    with pytest.raises(ValueError, match=r"must hold `inner_optimizer`.*Received keys: \[\]"):
        LossScaleOptimizer.from_config({})
    config = LossScaleOptimizer(SGD()).get_config()
    assert isinstance(LossScaleOptimizer.from_config(config).inner_optimizer, SGD)


def test_deep_configs_raise_value_error():
    deep = {"class_name": "SGD", "config": {}}
    for _ in range(3000):
        deep = {"class_name": "LossScaleOptimizer", "config": {"inner_optimizer": deep}}
    with pytest.raises(ValueError, match=r"Argument `config` nests more than 50 levels"):
        deserialize(deep)
    lr = 0.1
    for _ in range(3000):
        lr = {"class_name": "ExponentialDecay", "config": {"initial_learning_rate": lr,
              "decay_steps": 1, "decay_rate": 0.9}}  # fmt: skip
    with pytest.raises(ValueError, match=r"nests more than 50 levels") as info:
        SGD.from_config({"learning_rate": lr})
    assert len(str(info.value)) < 600
    with pytest.raises(ValueError, match=r"nests more than 50 levels"):
        schedules.deserialize(lr)
    # Real nesting (a wrapper around an optimizer with a schedule) still round-trips.
    opt = LossScaleOptimizer(SGD(schedules.ExponentialDecay(0.1, 10, 0.9)))
    assert isinstance(deserialize(distopt.optimizers.serialize(opt)), LossScaleOptimizer)


# -- optimizer state and variables ------------------------------------------------------------
def _trained():
    variables = [Variable(np.linspace(-1, 1, 6).reshape(2, 3)), Variable(np.ones(2))]
    opt = Adam(learning_rate=0.01)
    for _ in range(2):
        opt.apply_gradients([(np.full(v.shape, 0.1), v) for v in variables])
    store: dict = {}
    opt.save_own_variables(store)
    return opt, variables, store


@pytest.mark.parametrize(
    "key, value, text",
    [
        ("5", np.array(["a", "b"]), "must be given a numeric array. Received dtype <U1"),
        ("5", object(), "must be given a numeric array"),
        ("0", np.array(np.nan), "holds int32 values: it must be given whole numbers"),
        ("0", np.array(2.5), "holds int32 values"),
        ("0", np.int64(2**40), "holds int32 values"),
        ("5", np.ones(4), "not compatible with provided weight shape (4,)"),
    ],
)
def test_load_own_variables_checks_the_whole_store_first(key, value, text):
    opt, variables, store = _trained()
    before = _state(opt, variables)
    bad = dict(store, **{key: value})
    with pytest.raises(ValueError, match=re.escape(text)):
        opt.load_own_variables(bad)
    _assert_same(before, _state(opt, variables))
    assert int(opt.iterations.numpy()) == 2


def test_load_own_variables_names_missing_keys():
    opt, variables, store = _trained()
    before = _state(opt, variables)
    bad = dict(store)
    bad["x"] = bad.pop("3")
    with pytest.raises(ValueError, match=r"the store has no key\(s\) \['3'\]"):
        opt.load_own_variables(bad)
    _assert_same(before, _state(opt, variables))
    store["0"] = np.float64(7.0)  # a whole float is a valid count
    opt.load_own_variables(store)
    assert int(opt.iterations.numpy()) == 7


@pytest.mark.parametrize("dtype", ["int32", "bool"])
@pytest.mark.parametrize("make", [SGD, Adam, Adafactor])
def test_non_float_variable_raises_before_anything_changes(make, dtype):
    w = Variable(np.ones(3))
    k = Variable(np.ones(3, dtype=dtype), dtype=dtype)
    opt = make(learning_rate=0.1)
    for pairs in ([(np.ones(3), w), (np.ones(3), k)], [(np.ones(3), k)]):
        with pytest.raises(ValueError, match=f"Variable `{k.path}` has dtype {dtype}, but"):
            opt.apply_gradients(pairs)
        assert np.array_equal(w.numpy(), np.ones(3)) and np.array_equal(k.numpy(), np.ones(3))
        assert not opt.built and int(opt.iterations.numpy()) == 0
        assert [v.path for v in opt.variables] == [
            f"{opt.name}/iteration",
            f"{opt.name}/learning_rate",
        ]
    with pytest.raises(ValueError, match="floating-point variables only"):
        opt.build([w, k])
    assert not opt.built
    opt.apply_gradients([(np.ones(3), w)])  # the float variable alone is fine
    assert int(opt.iterations.numpy()) == 1


# -- environment variables and the deadline ---------------------------------------------------
ENV_VALUES = [("1", True), (" yes ", True), ("OFF", False), ("0", False), ("", "auto"),
              ("auto", "auto")]  # fmt: skip


@pytest.mark.parametrize("raw, expected", ENV_VALUES)
def test_shared_memory_env_values(monkeypatch, raw, expected):
    monkeypatch.setenv(_reducers.SHARED_MEMORY_ENV, raw)
    assert _reducers.resolve_shared_memory("auto") == expected
    assert _reducers.resolve_shared_memory(False) is False  # an explicit argument wins


@pytest.mark.parametrize("raw", ["maybe", "2", "y e s"])
def test_shared_memory_env_rejects(monkeypatch, raw):
    from distopt.distribute import MPIStrategy

    monkeypatch.setenv(_reducers.SHARED_MEMORY_ENV, raw)
    text = f"DISTOPT_SHARED_MEMORY must be 1 (true, yes, on), 0 (false, no, off) or auto. " \
           f"Received: DISTOPT_SHARED_MEMORY={raw!r}"  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(text)):
        MPIStrategy()


@pytest.fixture
def fresh_timeline(monkeypatch):
    """The timeline as if the process had just started, restored afterwards."""
    saved = list(_timeline._active)
    _timeline._active.clear()
    yield lambda path: monkeypatch.setenv(_timeline.TIMELINE_ENV, str(path))
    _timeline._active[:] = saved


def test_timeline_refuses_to_overwrite_a_file(tmp_path, fresh_timeline):
    precious = tmp_path / "results.json"
    precious.write_text('{"accuracy": 0.93}')
    fresh_timeline(precious)
    w = Variable(np.ones(3))
    opt = SGD(0.1)
    with pytest.raises(ValueError, match=r"names an existing file that is not a distopt timeli"):
        opt.apply_gradients([(np.ones(3), w)])
    assert not opt.built and np.array_equal(w.numpy(), np.ones(3))
    assert precious.read_text() == '{"accuracy": 0.93}'
    _timeline._active.clear()
    trace = tmp_path / "trace.json"  # an earlier job's trace is replaced, as before
    trace.write_text(json.dumps({"traceEvents": [], "otherData": {"job": "old"}}))
    fresh_timeline(trace)
    opt.apply_gradients([(np.ones(3), w)])
    _timeline.flush()
    assert json.loads(trace.read_text())["otherData"]["job"] != "old"


def test_timeline_unwritable_path_fails_at_first_use(tmp_path, fresh_timeline):
    fresh_timeline(tmp_path / "no" / "such" / "folder" / "trace.json")
    with pytest.raises(ValueError, match=r"DISTOPT_TIMELINE=.*does not exist or is not writable"):
        _timeline.set_step(0)
    fresh_timeline(tmp_path)  # a folder, not a file
    with pytest.raises(ValueError, match=r"is a folder or a read-only file"):
        _timeline.set_step(0)


@pytest.mark.parametrize("value", [1e-9, 0.05])
def test_deadline_below_the_watchdog_resolution(monkeypatch, value):
    monkeypatch.delenv(_deadline.TIMEOUT_ENV, raising=False)
    text = f"must be a number of seconds >= 0.1 (math.inf disables the deadline); set it with " \
           f"MPIStrategy(collective_timeout=...) or DISTOPT_COLLECTIVE_TIMEOUT. " \
           f"Received: collective_timeout={value!r}"  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(text)):
        _deadline.resolve_timeout(value)
    monkeypatch.setenv(_deadline.TIMEOUT_ENV, str(value))
    with pytest.raises(
        ValueError, match=re.escape(f"Received: DISTOPT_COLLECTIVE_TIMEOUT='{value}")
    ):
        _deadline.resolve_timeout(None)
    assert _deadline.resolve_timeout(0.1) == 0.1


def test_deadline_message_when_every_rank_arrived():
    from distopt.distribute import MPIStrategy

    strategy = MPIStrategy(collective_timeout=5)
    try:
        monitor = strategy._safety.monitor
        cur = (3, _deadline.OPERATIONS.index("gradient aggregation"), 2, time.monotonic())
        text = _deadline.deadline_message(monitor, cur, {})
    finally:
        strategy.close()
    assert "did not arrive:\n    none: every rank reached this collective" in text
    assert "the deadline (5 s) is shorter than the collective takes: raise it." in text


# -- every numeric argument, swept ------------------------------------------------------------
_CLASSES = [SGD, Adam, AdamW, RMSprop, Adagrad, Ftrl, Adafactor, Muon, ScheduleFreeAdamW,
            distopt.optimizers.Adadelta, distopt.optimizers.Adamax, distopt.optimizers.Nadam,
            distopt.optimizers.Lion, distopt.optimizers.Lamb]  # fmt: skip
_BASE_NUMBERS = ["learning_rate", "weight_decay", "clipnorm", "clipvalue", "global_clipnorm",
                 "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor",
                 "gradient_accumulation_steps"]  # fmt: skip
# Integers that may be huge without harm (a frequency or a count that is never reached, or
# a loop count): only NaN is wrong for them.
_HUGE_OK = {"ema_overwrite_frequency", "ns_steps", "dynamic_growth_steps"}


def _numeric_arguments() -> list:
    out = []
    for cls in _CLASSES:
        own = [
            p.name
            for p in inspect.signature(cls.__init__).parameters.values()
            if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)
        ]
        out += [(cls, arg) for arg in dict.fromkeys(own + _BASE_NUMBERS)]
    out += [(LossScaleOptimizer, "initial_scale"), (LossScaleOptimizer, "dynamic_growth_steps")]
    return [
        pytest.param(cls, arg, bad, id=f"{cls.__name__}-{arg}-{label}")
        for cls, arg in out
        for label, bad in (("nan", math.nan), ("huge", BIG), ("-huge", -BIG))
        if label == "nan" or arg not in _HUGE_OK
    ]


@pytest.mark.parametrize("cls, arg, bad", _numeric_arguments())
def test_every_numeric_argument_rejects_nan_and_huge(cls, arg, bad):
    kwargs = {arg: bad, **({"use_ema": True} if arg.startswith("ema_") else {})}
    make = (lambda **k: cls(SGD(), **k)) if cls is LossScaleOptimizer else cls
    with pytest.raises(ValueError, match=f"`{arg}`") as info:
        make(**kwargs)
    assert len(str(info.value)) < 400
