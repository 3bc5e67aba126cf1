"""The contract every optimizer keeps, run over the registry in tests/_optimizer_registry.py.

Converges on a quadratic, keeps dtype, builds slots once, config round trip, save/load and
set_weights mid-training continue bit-identically, stateless_apply equals apply, every base
option means what Keras says on every optimizer, and a call that raises (each kind of bad
input) leaves every variable and every optimizer variable bit-identical.
"""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
from _contract_helpers import (
    BAD_KINDS,
    Quadratic,
    assert_same_state,
    bad_calls,
    loss_scale,
    snapshot,
    step,
    twin,
)
from _optimizer_registry import AUTO_NAMES, BASE_OPTIONS, NOT_BY_STRING, classes, params

import distopt
from distopt import Variable
from distopt.optimizers import deserialize, get, serialize
from distopt.utils import clear_session

ENTRIES = params()
NOT_WRAPPERS = params(lambda e: not e.wrapper)


# -- converges, keeps dtype, builds once ------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_converges_on_quadratic(entry, dtype):
    problem, opt, variables = twin(entry, {}, dtype)
    initial = problem.loss(variables)
    for _ in range(entry.steps):
        step(opt, problem, variables)
    final = problem.loss(variables)
    assert math.isfinite(final)
    assert final <= entry.ratio * initial, (
        f"{entry.id}: loss {initial:.4g} -> {final:.4g} after {entry.steps} steps "
        f"(needs <= {entry.ratio:g}x)"
    )


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_keeps_dtype(entry, dtype):
    problem, opt, variables = twin(entry, {}, dtype)
    for _ in range(5):
        step(opt, problem, variables)
    for v in variables:
        assert v.dtype == np.dtype(dtype) and v.value.dtype == np.dtype(dtype)
        assert np.all(np.isfinite(v.value)), f"{v.path} went non-finite in {dtype}"
        slots = [s for s in opt.variables if s.path.startswith(f"{opt.name}/{v.path}_")]
        for s in slots:
            assert s.dtype == v.dtype, f"slot {s.path} is {s.dtype}, variable is {v.dtype}"
    assert opt.variables[0].path.endswith("/iteration")
    assert opt.variables[0].dtype == np.int32


@pytest.mark.parametrize("entry", ENTRIES)
def test_float64_gradient_into_float32_variable_is_cast(entry):
    problem, opt, variables = twin(entry, {}, "float32")
    _, ref, ref_vars = twin(entry, {}, "float32")
    for _ in range(4):
        step(opt, problem, variables, dtype="float64")
        grads64 = problem.grads(ref_vars, loss_scale(ref), dtype="float64")
        ref.apply_gradients(zip([g.astype("float32") for g in grads64], ref_vars))
    assert all(v.dtype == np.float32 for v in variables)
    assert_same_state(snapshot(opt, variables), snapshot(ref, ref_vars))


@pytest.mark.parametrize("option", ["plain", "ema", "accumulation"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_builds_slots_once(entry, option):
    problem, opt, variables = twin(entry, BASE_OPTIONS[option])
    before = len(opt.variables)
    opt.build(variables)
    assert opt.built
    built = opt.variables
    assert len(built) >= before
    opt.build(variables)
    assert [id(v) for v in opt.variables] == [id(v) for v in built]
    for _ in range(4):
        step(opt, problem, variables)
    assert [id(v) for v in opt.variables] == [id(v) for v in built], "variables were re-created"


@pytest.mark.parametrize("entry", ENTRIES)
def test_multiple_dtypes_in_one_optimizer(entry):
    problem = Quadratic()
    opt = entry.make()
    variables = [
        Variable(problem.w0["kernel"], name="kernel", dtype="float32"),
        Variable(problem.w0["bias"], name="bias", dtype="float64"),
    ]
    initial = problem.loss(variables)
    for _ in range(20):
        step(opt, problem, variables)
    assert [v.dtype for v in variables] == [np.float32, np.float64]
    assert problem.loss(variables) < initial


# -- configuration, names, identifiers --------------------------------------------------------
@pytest.mark.parametrize("option", sorted(BASE_OPTIONS))
@pytest.mark.parametrize("entry", ENTRIES)
def test_config_round_trip(entry, option):
    problem, opt, variables = twin(entry, BASE_OPTIONS[option])
    config = opt.get_config()
    json.dumps(config)  # a config is plain data
    clone = type(opt).from_config(config)
    assert type(clone) is type(opt)
    assert clone.get_config() == config
    again = deserialize(json.loads(json.dumps(serialize(opt))))
    assert again.get_config() == config
    clone_vars = problem.variables()
    for _ in range(5):
        step(opt, problem, variables)
        step(clone, problem, clone_vars)
    assert_same_state(snapshot(opt, variables), snapshot(clone, clone_vars))


@pytest.mark.parametrize("class_name", classes())
def test_automatic_names(class_name):
    from _optimizer_registry import entries

    entry = next(e for e in entries() if e.class_name == class_name)
    expected = AUTO_NAMES.get(class_name)
    first, second = entry.make(), entry.make()
    if expected is not None:
        assert (first.name, second.name) == (expected, f"{expected}_1")
    assert entry.make(name="mine").name == "mine"
    clear_session()
    assert entry.make().name == first.name
    assert first.variables[0].path == f"{first.name}/iteration"


@pytest.mark.parametrize("class_name", classes())
def test_get_by_string_in_any_case(class_name):
    if class_name in NOT_BY_STRING:
        pytest.skip(f"{class_name} needs an inner optimizer (not usable by string, as Keras)")
    cls = getattr(distopt.optimizers, class_name)
    for identifier in (class_name.lower(), class_name.upper(), class_name):
        opt = get(identifier)
        assert type(opt) is cls


# -- validation -------------------------------------------------------------------------------
_BASE_PARAMS = set(inspect.signature(distopt.optimizers.Optimizer.__init__).parameters)

BAD_BASE_OPTIONS = [
    ({"clipnorm": -1.0}, "clipnorm"),
    ({"clipnorm": "1"}, "clipnorm"),
    ({"clipvalue": float("nan")}, "clipvalue"),
    ({"global_clipnorm": float("inf")}, "global_clipnorm"),
    ({"clipnorm": 1.0, "clipvalue": 1.0}, "Only one of `clipnorm`, `clipvalue` and"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, "Only one of `clipnorm`, `clipvalue` and"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"weight_decay": "0.1"}, "weight_decay"),
    ({"loss_scale_factor": 0.0}, "loss_scale_factor"),
    ({"gradient_accumulation_steps": 1}, "must be an integer >= 2"),
    ({"gradient_accumulation_steps": 2.5}, "must be an integer >= 2"),
    ({"use_ema": "yes"}, "use_ema"),
    ({"use_ema": True, "ema_momentum": 1.5}, r"`ema_momentum` must be in the range \[0, 1\]"),
    ({"use_ema": True, "ema_overwrite_frequency": 0.5}, "`ema_overwrite_frequency` must be an"),
    ({"foo": 1}, r"Argument\(s\) not recognized: \{'foo': 1\}"),
]


@pytest.mark.parametrize("bad,message", BAD_BASE_OPTIONS, ids=lambda x: str(x)[:40])
@pytest.mark.parametrize("entry", ENTRIES)
def test_rejects_bad_base_options(entry, bad, message):
    with pytest.raises(ValueError, match=message) as info:
        entry.make(**bad)
    if "Only one" not in message and "not recognized" not in message:
        assert "Received" in str(info.value)


@pytest.mark.parametrize("entry", NOT_WRAPPERS)
def test_rejects_bad_learning_rate(entry):
    with pytest.raises(ValueError, match="Argument `learning_rate` should be float"):
        entry.make(learning_rate=1)
    with pytest.raises(ValueError, match="learning_rate"):
        entry.make(learning_rate=float("nan"))


def _own_hyperparameters(cls):
    """(name, default) of the constructor parameters a class adds to the base ones."""
    out = []
    for p in inspect.signature(cls.__init__).parameters.values():
        variadic = p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        if variadic or p.name in _BASE_PARAMS or p.name in ("self", "learning_rate"):
            continue
        out.append((p.name, p.default))
    return out


@pytest.mark.parametrize("class_name", classes())
def test_validates_every_hyperparameter(class_name):
    """Each numeric hyperparameter rejects a string and NaN with an error naming it."""
    from _optimizer_registry import entries

    entry = next(e for e in entries() if e.class_name == class_name)

    def make(**kwargs):
        if entry.wrapper:  # the wrapper's own hyperparameters, around a default inner one
            return entry.cls(getattr(distopt.optimizers, entry.kwargs["inner"])(), **kwargs)
        return entry.make(**kwargs)

    numeric = [
        name
        for name, default in _own_hyperparameters(entry.cls)
        if isinstance(default, (int, float)) and not isinstance(default, bool)
    ]
    accepted = []
    for name in numeric:
        for bad in ("0.5", float("nan")):
            try:
                make(**{name: bad})
            except (ValueError, TypeError) as e:
                assert f"`{name}`" in str(e), f"{name}={bad!r}: the message does not name it: {e}"
            else:
                accepted.append(f"{name}={bad!r}")
    assert not accepted, f"{class_name} accepted {', '.join(accepted)}"


def test_forgot_to_call_super_init():
    for cls in (getattr(distopt.optimizers, n.values[0]) for n in classes() if not n.marks):

        class Forgetful(cls):
            def __init__(self):
                self.momentum_bad = 1

        with pytest.raises(RuntimeError, match="you forgot to call `super\\(\\).__init__\\(\\)`"):
            Forgetful()


# -- state: save/load, set_weights, stateless_apply -------------------------------------------
@pytest.mark.parametrize("option", ["plain", "ema", "accumulation", "weight_decay", "clipnorm"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_save_load_mid_training_continues_bit_identically(entry, option):
    options = BASE_OPTIONS[option]
    problem, opt, variables = twin(entry, options)
    for _ in range(4):  # under accumulation (N=3) this stops mid-cycle
        step(opt, problem, variables)
    store = {}
    opt.save_own_variables(store)
    assert list(store) == [str(i) for i in range(len(opt.variables))]
    for i, v in enumerate(opt.variables):
        assert np.array_equal(store[str(i)], v.value)
        assert store[str(i)] is not v.value
    fresh = entry.make(**options)
    fresh_vars = [Variable(v.numpy(), name=v.name, dtype=v.dtype) for v in variables]
    fresh.build(fresh_vars)
    fresh.load_own_variables(store)
    assert_same_state(snapshot(opt, variables), snapshot(fresh, fresh_vars))
    for _ in range(5):
        step(opt, problem, variables)
        step(fresh, problem, fresh_vars)
    assert_same_state(snapshot(opt, variables), snapshot(fresh, fresh_vars))


@pytest.mark.parametrize("entry", ENTRIES)
def test_load_into_unbuilt_optimizer_warns_and_skips(entry):
    problem, opt, variables = twin(entry, {})
    step(opt, problem, variables)
    store = {}
    opt.save_own_variables(store)
    fresh = entry.make()
    before = [v.numpy() for v in fresh.variables]
    if len(store) == len(before):
        pytest.skip("no slots: the unbuilt optimizer has as many variables as the saved one")
    with pytest.warns(UserWarning, match=f"Skipping variable loading for optimizer '{fresh.name}'"):
        fresh.load_own_variables(store)
    assert [v.numpy().tobytes() for v in fresh.variables] == [b.tobytes() for b in before]


@pytest.mark.parametrize("entry", ENTRIES)
def test_set_weights_mid_training_continues_bit_identically(entry):
    problem, opt, variables = twin(entry, BASE_OPTIONS["ema"])
    for _ in range(3):
        step(opt, problem, variables)
    fresh = entry.make(**BASE_OPTIONS["ema"])
    with pytest.raises(ValueError, match="on an optimizer that has not yet been built"):
        fresh.set_weights([v.numpy() for v in opt.variables])
    fresh_vars = [Variable(v.numpy(), name=v.name, dtype=v.dtype) for v in variables]
    fresh.build(fresh_vars)
    fresh.set_weights([v.numpy() for v in opt.variables])
    for _ in range(4):
        step(opt, problem, variables)
        step(fresh, problem, fresh_vars)
    assert_same_state(snapshot(opt, variables), snapshot(fresh, fresh_vars))


@pytest.mark.parametrize("option", ["plain", "accumulation", "ema"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_stateless_apply_equals_apply_and_changes_nothing(entry, option):
    problem, opt, variables = twin(entry, BASE_OPTIONS[option])
    _, pure, pure_vars = twin(entry, BASE_OPTIONS[option])
    with pytest.raises(ValueError, match="must be built"):
        pure.stateless_apply([], [], [])
    pure.build(pure_vars)
    frozen = snapshot(pure, pure_vars)
    opt_values = [v.numpy() for v in pure.variables]
    model_values = [v.numpy() for v in pure_vars]
    for _ in range(4):
        grads = problem.grads(variables, loss_scale(opt))
        opt.apply(grads, variables)
        model_values, opt_values = pure.stateless_apply(opt_values, grads, model_values)
        assert snapshot(pure, pure_vars) == frozen, "stateless_apply changed the optimizer"
    for v, value in zip(variables, model_values):
        assert np.array_equal(v.value, value)
    for v, value in zip(opt.variables, opt_values):
        assert np.array_equal(np.asarray(v.value), value), v.path


@pytest.mark.parametrize("entry", ENTRIES)
def test_apply_with_no_gradients_does_nothing(entry):
    problem, opt, variables = twin(entry, {})
    step(opt, problem, variables)
    before = snapshot(opt, variables)
    assert opt.apply([]) is None
    assert opt.apply([], variables) is None
    assert_same_state(before, snapshot(opt, variables))


# -- base options mean the same thing on every optimizer --------------------------------------
def _clip_by_norm(g, c):
    norm = np.sqrt(np.sum(g * g))
    return g * c / np.maximum(norm, c) if norm > 0 else g


def _clip_global(grads, c):
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads))
    return [g * (c * min(1 / norm, 1 / c)) for g in grads]


TRANSFORMS = {
    "clipnorm": lambda gs: [_clip_by_norm(g, 0.3) for g in gs],
    "clipvalue": lambda gs: [np.clip(g, -0.05, 0.05) for g in gs],
    "global_clipnorm": lambda gs: _clip_global(gs, 0.3),
}


@pytest.mark.parametrize("option", sorted(TRANSFORMS) + ["loss_scale_factor", "accumulation"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_gradient_option_equals_transformed_gradient(entry, option):
    """opt(option) fed g equals opt() fed the gradient Keras says the option produces."""
    problem, opt, variables = twin(entry, BASE_OPTIONS[option])
    _, ref, ref_vars = twin(entry, {})
    pending = []
    for call in range(6):
        step(opt, problem, variables)
        grads = problem.grads(ref_vars)
        if option == "accumulation":
            pending.append(grads)
            if call % 3 != 2:
                continue
            first, second, last = pending
            grads = [(c + (a + b)) / 3 for a, b, c in zip(first, second, last)]
            pending = []
        elif option != "loss_scale_factor":
            grads = TRANSFORMS[option](grads)
        scale = loss_scale(ref)  # a LossScaleOptimizer's inner clips the unscaled gradient
        ref.apply_gradients(zip([g * scale for g in grads], ref_vars))
    for v, r in zip(variables, ref_vars):
        np.testing.assert_allclose(v.value, r.value, rtol=1e-12, atol=0, err_msg=v.path)


def _no_decay_options(cls):
    return {n: 0.0 for n in inspect.signature(cls.__init__).parameters if "weight_decay" in n}


@pytest.mark.parametrize("entry", params(lambda e: e.class_name != "Muon"))
def test_weight_decay_is_decoupled_and_applied_first(entry):
    """w <- w - w*wd*lr before each update step (Keras decoupled decay, every optimizer)."""
    lr = entry.lr
    problem, opt, variables = twin(entry, {"weight_decay": 0.1})
    base = entry.cls if not entry.wrapper else getattr(distopt.optimizers, entry.kwargs["inner"])
    _, ref, ref_vars = twin(entry, _no_decay_options(base))
    opt.build(variables)  # ScheduleFreeAdamW copies the variables at build: before any decay
    ref.build(ref_vars)
    for _ in range(5):
        step(opt, problem, variables)
        grads = problem.grads(ref_vars, loss_scale(ref))
        for v in ref_vars:
            v.assign(v.value - v.value * 0.1 * np.float64(np.float32(lr)))
        ref.apply_gradients(zip(grads, ref_vars))
    for v, r in zip(variables, ref_vars):
        np.testing.assert_allclose(v.value, r.value, rtol=1e-12, atol=1e-15, err_msg=v.path)


@pytest.mark.parametrize("entry", ENTRIES)
def test_excluded_variables_are_not_decayed(entry):
    problem, opt, variables = twin(entry, {"weight_decay": 0.1})
    base = entry.cls if not entry.wrapper else getattr(distopt.optimizers, entry.kwargs["inner"])
    _, ref, ref_vars = twin(entry, _no_decay_options(base))
    inner = opt if not entry.wrapper else opt.inner_optimizer
    with pytest.raises(TypeError, match="var_names"):
        inner.exclude_from_weight_decay(var_names=[3])
    inner.exclude_from_weight_decay(var_list=[variables[1]], var_names=["ker"])
    for _ in range(4):
        step(opt, problem, variables)
        step(ref, problem, ref_vars)
    assert_same_state(
        {k: v for k, v in snapshot(opt, variables).items() if k.startswith("model")},
        {k: v for k, v in snapshot(ref, ref_vars).items() if k.startswith("model")},
    )


@pytest.mark.parametrize("entry", ENTRIES)
def test_ema_averages_and_overwrites(entry):
    problem, opt, variables = twin(entry, BASE_OPTIONS["ema"])
    _, ref, ref_vars = twin(entry, {})
    averages = [np.zeros_like(v.value) for v in ref_vars]
    for i in range(7):
        step(opt, problem, variables)
        step(ref, problem, ref_vars)
        m = 0.0 if i == 0 else 0.9
        for a, v in zip(averages, ref_vars):
            a[...] = m * a + (1 - m) * v.value
        if (i + 1) % 3 == 0:
            for a, v in zip(averages, ref_vars):
                v.assign(a)
    for v, r in zip(variables, ref_vars):
        np.testing.assert_allclose(v.value, r.value, rtol=1e-12, atol=0, err_msg=v.path)
    opt.finalize_variable_values(variables)
    for v, a in zip(variables, averages):
        np.testing.assert_allclose(v.value, a, rtol=1e-12, atol=0, err_msg=v.path)
    with pytest.raises(ValueError, match=r"The length of model variables \(1\) to override"):
        opt.finalize_variable_values(variables[:1])


@pytest.mark.parametrize("entry", ENTRIES)
def test_constraint_applied_after_each_update(entry):
    problem = Quadratic()
    opt, ref = entry.make(), entry.make()

    def clip(w):
        return np.clip(w, -0.3, 0.3)

    variables = problem.variables(constraint=clip)
    ref_vars = problem.variables()
    for _ in range(4):
        step(opt, problem, variables)
        step(ref, problem, ref_vars)
        for v in ref_vars:
            v.assign(clip(v.value))
        assert all(np.all(np.abs(v.value) <= 0.3) for v in variables)
    assert_same_state(snapshot(opt, variables), snapshot(ref, ref_vars))


@pytest.mark.parametrize("option", ["plain", "accumulation"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_overwrite_with_gradient_variable_takes_its_gradient(entry, option):
    problem, opt, variables = twin(entry, BASE_OPTIONS[option])
    scale = Variable(np.zeros(3), name="amax", dtype="float64", overwrite_with_gradient=True)
    history, expected = [], np.zeros(3)
    for call in range(6):
        g = np.array([call, 5 - call, (call * 7) % 4], dtype="float64")
        history.append(g)
        grads = problem.grads(variables, loss_scale(opt))
        opt.apply_gradients(zip([*grads, g], [*variables, scale]))
        if option == "plain":
            expected = g
        elif call % 3 == 2:
            expected = np.max(history[-3:], axis=0)
        assert np.array_equal(scale.value, expected), (call, scale.value, expected)
    assert int(np.asarray(opt.iterations)) == (6 if option == "plain" else 2)


# -- a call that raises changes nothing -------------------------------------------------------
@pytest.mark.parametrize("when", ["unbuilt", "mid_training"])
@pytest.mark.parametrize("option", ["plain", "accumulation", "ema"])
@pytest.mark.parametrize("entry", ENTRIES)
def test_raising_call_changes_nothing(entry, option, when):
    problem, opt, variables = twin(entry, BASE_OPTIONS[option])
    _, ref, ref_vars = twin(entry, BASE_OPTIONS[option])
    if when == "mid_training":
        for _ in range(4):
            step(opt, problem, variables)
            step(ref, problem, ref_vars)
    grads = problem.grads(variables, loss_scale(opt))
    seen = []
    for kind, call, exc, regex, *needs_built in bad_calls(opt, variables, grads):
        if needs_built and not opt.built:
            continue
        before = snapshot(opt, variables)
        built = opt.built
        with pytest.raises(exc, match=regex):
            call()
        assert opt.built == built, f"{kind}: the raising call built the optimizer"
        assert_same_state(before, snapshot(opt, variables))
        seen.append(kind)
    expected = BAD_KINDS if when == "mid_training" else {k for k in BAD_KINDS if k in seen}
    assert set(seen) == expected and len(seen) >= 11
    for _ in range(4):  # no hidden state changed either: the twin stays in lockstep
        step(opt, problem, variables)
        step(ref, problem, ref_vars)
    assert_same_state(snapshot(opt, variables), snapshot(ref, ref_vars))
