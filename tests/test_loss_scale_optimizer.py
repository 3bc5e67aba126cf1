"""LossScaleOptimizer: dynamic scaling, skipping, Keras's errors and config, goldens, and the
same skip decision on every rank."""

from __future__ import annotations

import numpy as np
import pytest
from _goldens import CASES, array

import distopt
from distopt import optimizers
from distopt.optimizers import SGD, Adam, LossScaleOptimizer


def _lso_from_kwargs(kwargs):
    kwargs = dict(kwargs)
    inner = optimizers.deserialize(kwargs.pop("inner_optimizer"))
    return LossScaleOptimizer(inner, **kwargs)


def _state(opt, variables):
    return [v.numpy() for v in opt.variables + list(variables)]


def _assert_state(opt, variables, before):
    for v, b in zip(opt.variables + list(variables), before, strict=True):
        np.testing.assert_array_equal(v.value, b)


# -- goldens --------------------------------------------------------------------------------------
def _cases():
    return [c for c in CASES if c["id"].startswith("loss_scale_optimizer.")]


@pytest.mark.parametrize(
    "case", [c for c in _cases() if c["kind"] == "scenario"], ids=lambda c: c["id"]
)
def test_golden_scenario(case):
    variables = {
        k: distopt.Variable(
            np.asarray(s["init"], np.float32),
            overwrite_with_gradient=s.get("overwrite_with_gradient", False),
        )
        for k, s in case["variables"].items()
    }
    opts = {k: _lso_from_kwargs(s["kwargs"]) for k, s in case["optimizers"].items()}
    grads = {k: array(g) for k, g in case["grads"].items()}
    steps = (
        [{"op": "start", "optimizer": next(iter(opts))}]
        if len(case["expected"]) > len(case["script"])
        else []
    )
    for action, expected in zip(steps + case["script"], case["expected"], strict=True):
        opt = opts[action["optimizer"]]
        if action["op"] == "build":
            opt.build([variables[v] for v in action["vars"]])
        elif action["op"] == "apply":
            gs = [grads[g] for g in action["grads"]]
            vs = [variables[v] for v in action["vars"]] if "vars" in action else None
            opt.apply(gs, vs)
        tol = expected.get("tol", {})
        rtol, atol = tol.get("rtol", case["rtol"]), tol.get("atol", case["atol"])
        for name, value in expected.get("vars", {}).items():
            np.testing.assert_allclose(variables[name].value, value, rtol=rtol, atol=atol)
        if "iterations" in expected:
            assert int(np.asarray(opt.iterations.value)) == expected["iterations"]
        if "scale_loss" in expected:
            out = opt.scale_loss(expected["scale_loss"]["input"])
            np.testing.assert_allclose(out, expected["scale_loss"]["output"], rtol=rtol, atol=atol)


def test_golden_serialization():
    (case,) = [c for c in _cases() if c["kind"] == "config"]
    opt = _lso_from_kwargs(case["kwargs"])
    config = opt.get_config()
    assert len(config) == case["expected"]["config_len"]
    for key, value in case["expected"]["config_subset"].items():
        assert config[key] == value
    assert set(case["expected"]["config_has_keys"]) <= set(config)
    again = LossScaleOptimizer.from_config(config)
    assert again.get_config() == config
    assert type(again.inner_optimizer) is SGD


# -- behaviour ------------------------------------------------------------------------------------
def test_variables_order_and_counters():
    v = distopt.Variable([1.0, 2.0])
    opt = LossScaleOptimizer(Adam(name="inner"), initial_scale=8.0, dynamic_growth_steps=3)
    returned = opt.apply_gradients([(np.array([8.0, 8.0]), v)])
    assert [x.path for x in opt.variables] == [
        "loss_scale_optimizer/iteration",
        "loss_scale_optimizer/learning_rate",
        "loss_scale_optimizer/step_counter",
        "loss_scale_optimizer/dynamic_scale",
        "inner/iteration",
        "inner/learning_rate",
        # Keras builds the inner optimizer inside the outer one's name scope too.
        "loss_scale_optimizer/inner/variable_momentum",
        "loss_scale_optimizer/inner/variable_velocity",
    ]
    assert returned is opt._iterations and int(returned.value) == 0  # never incremented
    assert int(opt.iterations.value) == 1 and opt.iterations is opt.inner_optimizer.iterations
    assert opt.step_counter.dtype == np.int32 and opt.dynamic_scale.dtype == np.float32


def test_skips_non_finite_steps_and_grows_after_finite_ones():
    v = distopt.Variable([1.0, 2.0], dtype="float64")
    opt = LossScaleOptimizer(SGD(learning_rate=1.0), initial_scale=4.0, dynamic_growth_steps=2)
    history = []
    for g in ([4.0, 8.0], [np.nan, 1.0], [4.0, -np.inf], [2.0, 2.0], [2.0, 2.0], [8.0, 8.0]):
        opt.apply_gradients([(np.array(g), v)])
        history.append(
            (v.numpy().tolist(), float(opt.dynamic_scale.value), int(opt.step_counter.value))
        )
    assert history == [
        ([0.0, 0.0], 4.0, 1),  # 4 / 4
        ([0.0, 0.0], 2.0, 0),  # skipped, halved
        ([0.0, 0.0], 1.0, 0),
        ([-2.0, -2.0], 1.0, 1),
        ([-4.0, -4.0], 2.0, 0),  # second finite step in a row: doubled
        ([-8.0, -8.0], 2.0, 1),  # unscaled by the new scale
    ]
    assert int(opt.iterations.value) == 4


def test_scale_loss_and_learning_rate_are_the_inner_ones():
    opt = LossScaleOptimizer(SGD(learning_rate=0.5, loss_scale_factor=3.0), initial_scale=16.0)
    assert opt.inner_optimizer.loss_scale_factor is None
    assert opt.scale_loss(2.0) == 32.0
    opt.learning_rate = 0.25
    assert float(opt.inner_optimizer.learning_rate.value) == 0.25
    assert opt.learning_rate is opt.inner_optimizer.learning_rate


def test_save_and_load_cover_the_inner_state():
    rng = np.random.default_rng(0)
    make = lambda: LossScaleOptimizer(Adam(learning_rate=0.1), initial_scale=2.0)  # noqa: E731
    v, w = (
        distopt.Variable(np.ones(3), dtype="float64"),
        distopt.Variable(np.ones(3), dtype="float64"),
    )
    opt, other = make(), make()
    grads = [rng.standard_normal(3) for _ in range(6)]
    grads[1][0] = np.inf
    for g in grads[:3]:
        opt.apply_gradients([(g, v)])
    store = {}
    opt.save_own_variables(store)
    assert len(store) == len(opt.variables) == 8
    w.assign(v.value)
    other.build([w])
    other.load_own_variables(store)
    for g in grads[3:]:
        opt.apply_gradients([(g, v)])
        other.apply_gradients([(g, w)])
    np.testing.assert_array_equal(v.value, w.value)
    for a, b in zip(opt.variables, other.variables, strict=True):
        np.testing.assert_array_equal(a.value, b.value)


def test_overwrite_variables_are_not_unscaled_and_none_gradients_are_dropped():
    kernel = distopt.Variable([1.0, 1.0])
    amax = distopt.Variable([0.0], overwrite_with_gradient=True)
    unused = distopt.Variable([5.0])
    opt = LossScaleOptimizer(SGD(learning_rate=1.0), initial_scale=2.0)
    with pytest.warns(UserWarning, match="Gradients do not exist for variables"):
        opt.apply_gradients(
            [(np.array([2.0, 4.0]), kernel), (np.array([3.0]), amax), (None, unused)]
        )
    np.testing.assert_array_equal(kernel.value, [0.0, -1.0])
    np.testing.assert_array_equal(amax.value, [3.0])
    np.testing.assert_array_equal(unused.value, [5.0])


def test_stateless_apply_skips_or_updates_without_touching_state():
    v = distopt.Variable([1.0, 2.0], dtype="float64")
    opt = LossScaleOptimizer(SGD(learning_rate=0.5), initial_scale=4.0)
    opt.build([v])
    before = _state(opt, [v])
    values = [x.numpy() for x in opt.variables]
    new_vars, new_opt = opt.stateless_apply(values, [np.array([4.0, 8.0])], [v.numpy()])
    np.testing.assert_allclose(new_vars[0], [0.5, 1.0], rtol=1e-12)
    assert float(new_opt[3]) == 4.0 and int(new_opt[2]) == 1 and int(new_opt[4]) == 1
    new_vars, new_opt = opt.stateless_apply(values, [np.array([np.inf, 8.0])], [v.numpy()])
    np.testing.assert_array_equal(new_vars[0], [1.0, 2.0])
    assert float(new_opt[3]) == 2.0 and int(new_opt[2]) == 0 and int(new_opt[4]) == 0
    _assert_state(opt, [v], before)


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, text",
    [
        (
            {"dynamic": False},
            "LossScaleOptimizer no longer supports `dynamic=False`. Instead, "
            "simply set `loss_scale_factor` directly on the `inner_optimizer`.",
        ),
        (
            {"clipnorm": 1.0},
            "LossScaleOptimizer does not support `clipnorm`. Instead, set "
            "`clipnorm` on the `inner_optimizer`.",
        ),
        (
            {"use_ema": True},
            "LossScaleOptimizer does not support `use_ema`. Instead, set "
            "`use_ema` on the `inner_optimizer`.",
        ),
        ({"foo": 1, "bar": 2}, "LossScaleOptimizer does not support arguments: `foo`, `bar`."),
        ({"initial_scale": 0.0}, "Argument `initial_scale` must be a finite number > 0."),
        ({"dynamic_growth_steps": 0}, "Argument `dynamic_growth_steps` must be an integer >= 1."),
    ],
)
def test_constructor_errors(kwargs, text):
    with pytest.raises(ValueError) as e:
        LossScaleOptimizer(SGD(), **kwargs)
    assert text in str(e.value)
    assert LossScaleOptimizer(SGD()).name == "loss_scale_optimizer"  # no name was consumed


def test_base_keys_at_their_defaults_are_accepted():
    opt = LossScaleOptimizer(SGD(), clipnorm=None, use_ema=False, ema_momentum=0.99, dynamic=True)
    assert len(opt.get_config()) == 4


def test_inner_optimizer_must_be_an_optimizer():
    with pytest.raises(TypeError, match="Argument `inner_optimizer` must be a distopt optimizer"):
        LossScaleOptimizer("sgd")


def test_a_raising_call_changes_nothing():
    v, w = distopt.Variable([1.0, 2.0]), distopt.Variable([3.0])
    opt = LossScaleOptimizer(Adam(), initial_scale=4.0)
    opt.apply_gradients([(np.ones(2), v), (np.ones(1), w)])
    before = _state(opt, [v, w])
    with pytest.raises(ValueError, match="has shape"):
        opt.apply_gradients([(np.full(2, np.inf), v), (np.ones(2), w)])
    with pytest.raises(ValueError, match="No gradients provided for any variable."):
        opt.apply_gradients([(None, v)])
    with pytest.raises(ValueError, match="Unknown variable"):
        opt.apply_gradients([(np.ones(1), distopt.Variable([0.0]))])
    _assert_state(opt, [v, w], before)


# -- data parallel --------------------------------------------------------------------------------
def _strategy_and_state(accumulation):
    from distopt.distribute import MPIStrategy

    strategy = MPIStrategy()
    with strategy.scope():
        v = distopt.Variable([1.0, 2.0, 3.0], dtype="float64")
        inner = SGD(learning_rate=0.5, gradient_accumulation_steps=accumulation)
        opt = LossScaleOptimizer(inner, initial_scale=4.0, dynamic_growth_steps=2)
    return strategy, v, opt


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("accumulation", [None, 2])
def test_every_rank_skips_when_one_rank_is_not_finite(comm_world, accumulation):
    rank, size = comm_world.Get_rank(), comm_world.Get_size()
    strategy, v, opt = _strategy_and_state(accumulation)
    calls = 4 if accumulation else 2
    for call in range(calls):
        g = np.full(3, 4.0 * (rank + 1))
        if call == 1 and rank == size - 1:
            g[1] = np.inf  # only the last rank sees the overflow
        strategy.run(opt.apply_gradients, args=([(g, v)],))
    states = comm_world.allgather(
        (
            v.numpy(),
            float(opt.dynamic_scale.value),
            int(opt.step_counter.value),
            int(opt.inner_optimizer._iterations.value),
        )
    )
    for got in states:  # identical bits and counters everywhere
        np.testing.assert_array_equal(got[0], states[0][0])
        assert got[1:] == states[0][1:]
    total = 4.0 * size * (size + 1) / 2  # the summed gradient
    if accumulation:
        # Call 0 accumulates g/4, call 1 is skipped (scale 4 -> 2), call 2 updates with the
        # mean (g/2 + g/4) / 2 summed over ranks, call 3 accumulates and doubles the scale.
        expected = (np.array([1.0, 2.0, 3.0]) - 0.5 * 3 * total / 8, 4.0, 0, 3)
    else:
        # Call 0 updates with total/4; call 1 is skipped and halves the scale.
        expected = (np.array([1.0, 2.0, 3.0]) - 0.5 * total / 4, 2.0, 0, 1)
    np.testing.assert_allclose(states[0][0], expected[0], rtol=1e-12)
    assert states[0][1:] == expected[1:]


@pytest.mark.mpi(min_size=2)
def test_overwrite_gradients_are_max_reduced_and_their_nan_skips_everywhere(comm_world):
    from distopt.distribute import MPIStrategy

    rank, size = comm_world.Get_rank(), comm_world.Get_size()
    strategy = MPIStrategy()
    with strategy.scope():
        kernel = distopt.Variable([0.0, 0.0], dtype="float64")
        amax = distopt.Variable([0.0], dtype="float64", overwrite_with_gradient=True)
        opt = LossScaleOptimizer(SGD(learning_rate=1.0), initial_scale=2.0)
    pairs = [(np.array([2.0, 2.0 * rank]), kernel), (np.array([float(rank)]), amax)]
    strategy.run(opt.apply_gradients, args=(pairs,))
    np.testing.assert_array_equal(amax.value, [size - 1.0])  # MAX over ranks, not unscaled
    np.testing.assert_allclose(kernel.value, [-size, -size * (size - 1) / 2.0], rtol=1e-12)
    nan_on_rank_0 = np.array([np.nan if rank == 0 else 7.0])
    strategy.run(opt.apply_gradients, args=([(np.ones(2), kernel), (nan_on_rank_0, amax)],))
    states = comm_world.allgather((kernel.numpy(), amax.numpy(), float(opt.dynamic_scale.value)))
    for k, a, scale in states:
        np.testing.assert_allclose(k, [-size, -size * (size - 1) / 2.0], rtol=1e-12)
        np.testing.assert_array_equal(a, [size - 1.0])
        assert scale == 1.0


@pytest.mark.parametrize("n", [3, 1 << 17])  # one check of the concatenation / one per tensor
@pytest.mark.parametrize("bad", [None, np.inf, -np.inf, np.nan])
def test_finiteness_over_mixed_dtypes_sizes_and_none(n, bad):
    from distopt.optimizers._unscaling import all_finite

    grads = [
        np.ones(n, np.float32),
        None,
        np.arange(5, dtype=np.int64) * (1 << 60),  # huge but finite integers
        np.full((2, 2), 60000, np.float16),
        np.ones(n),
    ]
    if bad is not None:
        grads[3][1, 1] = bad  # a float16 inf/nan survives the widening concatenation
    assert all_finite(iter(grads)) is (bad is None)
    grads[3][1, 1] = 1
    grads[-1][-1] = np.nan if bad is not None else 0.0
    assert all_finite(grads) is (bad is None)
    assert all_finite([None]) is True
