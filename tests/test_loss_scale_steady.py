"""LossScaleOptimizer's steady path (float32/float64 gradients unscaled in one pass per
dtype): the bits of dividing each gradient by the scale, the same skips, and nothing
changed by a skipped or raising call."""

from __future__ import annotations

import numpy as np
import pytest

import distopt
from distopt.optimizers import Adam, LossScaleOptimizer

SHAPES = [(3, 4), (), (5,), (0,), (2, 1, 3), (7,)]


def _variables(dtypes):
    rng = np.random.default_rng(1)
    return [
        distopt.Variable(rng.standard_normal(s), dtype=d, name=f"v{k}")
        for k, (s, d) in enumerate(zip(SHAPES, dtypes))
    ]


# Powers of ten the gradients span: down to subnormal, up to where Adam's g * g stays finite.
EXPONENTS = {"float16": (-8, 2), "float32": (-44, 16), "float64": (-320, 150)}


def _grads(step, dtypes, layout):
    """Gradients spanning many binades (and subnormal results after unscaling), as separate
    arrays or as back-to-back views of one buffer per dtype."""
    rng = np.random.default_rng(100 + step)
    grads = [
        np.asarray(rng.standard_normal(s) * 10.0 ** rng.integers(*EXPONENTS[d], s), d)
        for s, d in zip(SHAPES, dtypes)
    ]
    if layout == "one buffer" and len(set(dtypes)) == 1:
        flat = np.concatenate(grads, axis=None)
        views, offset = [], 0
        for g in grads:
            views.append(flat[offset : offset + g.size].reshape(g.shape))
            offset += g.size
        grads = views
    return grads


DTYPES = {
    "float32": ["float32"] * 6,
    "float64": ["float64"] * 6,
    "mixed": ["float32", "float64", "float32", "float64", "float64", "float32"],
    "float16": ["float16"] * 6,  # not one pass: `g / scale` is float32, then cast
}


def _state(variables, opt):
    return [v.numpy() for v in variables] + [v.numpy() for v in opt.variables]


@pytest.mark.parametrize("layout", ["separate", "one buffer"])
@pytest.mark.parametrize("kind", sorted(DTYPES))
def test_one_pass_unscaling_gives_the_bits_of_per_tensor_division(kind, layout):
    dtypes = DTYPES[kind]
    variables, ref_vars = _variables(dtypes), _variables(dtypes)
    opt = LossScaleOptimizer(Adam(0.01), initial_scale=3.0, dynamic_growth_steps=2)
    ref = Adam(0.01)
    for step in range(7):
        grads = _grads(step, dtypes, layout)
        copies = [g.copy() for g in grads]
        scale = opt.dynamic_scale.value.copy() if opt.built else np.float32(3.0)
        opt.apply_gradients(zip(grads, variables))
        ref.apply_gradients(zip([g / scale for g in grads], ref_vars))
        for g, c in zip(grads, copies):
            np.testing.assert_array_equal(g, c)  # the caller's gradients are never written
    for a, b in zip(_state(variables, opt.inner_optimizer), _state(ref_vars, ref), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))
    assert float(opt.dynamic_scale.value) == 3.0 * 2**3  # doubled every two finite steps
    one_pass = [u for u in opt._unscalers.values() if u is not None]
    assert len(one_pass) == (0 if kind == "float16" else 1)


@pytest.mark.parametrize("kind", ["float32", "mixed"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_step_on_the_steady_path_changes_only_the_scale(kind, bad):
    dtypes = DTYPES[kind]
    variables = _variables(dtypes)
    opt = LossScaleOptimizer(Adam(0.01), initial_scale=8.0)
    for step in range(3):
        opt.apply_gradients(zip(_grads(step, dtypes, "separate"), variables))
    before = _state(variables, opt)
    grads = _grads(3, dtypes, "separate")
    grads[5][-1] = bad
    opt.apply_gradients(zip(grads, variables))
    after = _state(variables, opt)
    scale, counter = opt.dynamic_scale, opt.step_counter
    for var, a, b in zip(variables + opt.variables, after, before, strict=True):
        if var is scale:
            assert float(a) == float(b) / 2
        elif var is counter:
            assert int(a) == 0 and int(b) == 3
        else:
            np.testing.assert_array_equal(a, b)
    assert int(opt.iterations.value) == 3


def test_a_strategy_mismatch_on_the_steady_path_raises_and_changes_nothing():
    from mpi4py import MPI

    dtypes = DTYPES["float32"]
    variables = _variables(dtypes)
    opt = LossScaleOptimizer(Adam(0.01))
    for step in range(3):
        opt.apply_gradients(zip(_grads(step, dtypes, "separate"), variables))
    before = _state(variables, opt)
    variables[2]._strategy = distopt.distribute.MPIStrategy(comm=MPI.COMM_SELF)
    with pytest.raises(ValueError, match=r"Variable `v2` was created under the scope of "):
        opt.apply_gradients(zip(_grads(3, dtypes, "separate"), variables))
    for a, b in zip(_state(variables, opt), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_steady_steps_under_a_one_rank_strategy_match_the_default_strategy():
    from mpi4py import MPI

    dtypes = DTYPES["mixed"]
    strategy = distopt.distribute.MPIStrategy(comm=MPI.COMM_SELF)
    with strategy.scope():
        variables = _variables(dtypes)
        opt = LossScaleOptimizer(Adam(0.01), initial_scale=5.0)
    ref_vars = _variables(dtypes)
    ref = LossScaleOptimizer(Adam(0.01), initial_scale=5.0)
    for step in range(4):
        grads = _grads(step, dtypes, "separate")
        strategy.run(opt.apply_gradients, args=(list(zip(grads, variables)),))
        ref.apply_gradients(zip(grads, ref_vars))
    for a, b in zip(_state(variables, opt), _state(ref_vars, ref), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("kind", ["float32", "mixed"])
def test_steady_steps_at_n_ranks_unscale_the_sum_with_the_bits_of_per_tensor_division(
    comm_world, kind
):
    from distopt.distribute import MPIStrategy

    dtypes = DTYPES[kind]
    rank, size = comm_world.Get_rank(), comm_world.Get_size()
    strategy = MPIStrategy()
    with strategy.scope():
        variables = _variables(dtypes)
        opt = LossScaleOptimizer(Adam(0.01), initial_scale=3.0, dynamic_growth_steps=2)
    ref_vars, ref = _variables(dtypes), Adam(0.01)

    def rank_grads(step, r):  # small integers: the sum over ranks is exact in any order
        rng = np.random.default_rng(1000 * step + r)
        return [np.asarray(rng.integers(-50, 50, s), d) for s, d in zip(SHAPES, dtypes)]

    for step in range(5):
        scale = opt.dynamic_scale.value.copy() if opt.built else np.float32(3.0)
        grads = rank_grads(step, rank)
        strategy.run(opt.apply_gradients, args=(list(zip(grads, variables)),))
        summed = [sum(parts) for parts in zip(*(rank_grads(step, r) for r in range(size)))]
        ref.apply_gradients(zip([g / scale for g in summed], ref_vars))
    assert any(u is not None for u in opt._unscalers.values())
    mine = [a.tobytes() for a in _state(variables, opt.inner_optimizer)]
    assert mine == [a.tobytes() for a in _state(ref_vars, ref)]
    assert comm_world.allgather(mine) == [mine] * size
