"""N ranks each feeding its share of a batch == one process fed the summed gradient.

For every optimizer of the registry and every base option: every rank ends with bit-identical
variables and optimizer variables (compared through an allgather of their bytes), equal in
float64 (rtol 1e-12) to one process fed the sum of the ranks' gradients. Gradient accumulation
also shows it all-reduces only on update steps: N-1 fewer gradient all-reduces per N calls.

Run under mpiexec at 1-4 ranks by tests/run_all.py; every rank runs the same collectives in the
same order (a failing check raises on every rank alike, since the compared data are gathered).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from _contract_helpers import bad_calls
from _optimizer_registry import BASE_OPTIONS, params

from distopt import Variable
from distopt.distribute import MPIStrategy

pytestmark = pytest.mark.mpi

CALLS = 9  # a multiple of the accumulation steps (3), so accumulators end reset
OPTIONS = [*BASE_OPTIONS, "constraint", "overwrite"]


class CountingStrategy(MPIStrategy):
    """MPIStrategy that counts the gradient all-reduces the optimizer asks for."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gradient_reductions = 0
        self.reduced_elements = 0
        self.other_reductions = 0

    def _reduce_gradients(self, grads, variables, scatter=None):
        self.gradient_reductions += 1
        self.reduced_elements += sum(int(np.size(g)) for g in grads)
        return super()._reduce_gradients(grads, variables, scatter)

    def _reduce_leaves(self, op, leaves):
        self.other_reductions += 1
        return super()._reduce_leaves(op, leaves)


@pytest.fixture(scope="module")
def strategy():
    return CountingStrategy()


@pytest.fixture(scope="module")
def sharded_strategy():
    return CountingStrategy(shard_optimizer_state=True)


class Regression:
    """Least squares on a global batch of 24 rows: loss = 1/(2*24) sum ||x W + b - y||^2.

    Rank r of n owns rows [r*24/n, (r+1)*24/n); its gradient is scaled by the global batch, so
    the ranks' gradients sum to the full-batch gradient.
    """

    rows = 24

    def __init__(self, seed=1):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(self.rows, 4))
        self.y = self.x @ rng.normal(size=(4, 3)) + rng.normal(size=(3,))
        self.kernel0 = rng.uniform(-1, 1, size=(4, 3))
        self.bias0 = rng.uniform(-1, 1, size=(3,))

    def variables(self, dtype="float64", constraint=None):
        return [
            Variable(self.kernel0, name="kernel", dtype=dtype, constraint=constraint),
            Variable(self.bias0, name="bias", dtype=dtype, constraint=constraint),
        ]

    def shard_grads(self, variables, rank, size, scale):
        lo, hi = rank * self.rows // size, (rank + 1) * self.rows // size
        kernel, bias = (v.value.astype("float64") for v in variables[:2])
        residual = self.x[lo:hi] @ kernel + bias - self.y[lo:hi]
        grads = [self.x[lo:hi].T @ residual / self.rows, residual.sum(axis=0) / self.rows]
        return [(scale * g).astype(v.dtype) for g, v in zip(grads, variables)]

    def summed_grads(self, variables, size, scale):
        shards = [self.shard_grads(variables, r, size, scale) for r in range(size)]
        return [sum(gs[1:], gs[0].copy()) for gs in zip(*shards)]


def _overwrite_grad(call, rank):
    return np.array([call + rank, 3.0 - rank, (call * rank) % 5], dtype="float64")


def _clip(w):
    return np.clip(w, -0.4, 0.4)


def _loss_scale(opt) -> float:
    return float(np.asarray(opt.scale_loss(1.0)))


def _setup(entry, option, dtype, strategy=None):
    problem = Regression()
    options = dict(BASE_OPTIONS.get(option, {}))
    constraint = _clip if option == "constraint" else None

    def create():
        variables = problem.variables(dtype, constraint)
        if option == "overwrite":
            variables.append(
                Variable(np.zeros(3), name="amax", dtype=dtype, overwrite_with_gradient=True)
            )
        return variables, entry.make(**options)

    if strategy is None:
        return problem, *create()
    with strategy.scope():
        return problem, *create()


def run_distributed(entry, option, strategy, dtype="float64", bad_call=None):
    """Trains on this rank's shard under `strategy`; returns (variables, optimizer)."""
    problem, variables, opt = _setup(entry, option, dtype, strategy)
    rank, size = strategy.communicator.rank, strategy.communicator.size
    for call in range(CALLS):
        grads = problem.shard_grads(variables, rank, size, _loss_scale(opt))
        if option == "overwrite":
            grads.append(_overwrite_grad(call, rank).astype(dtype))
        if call == bad_call and rank == size - 1:
            grads[0] = grads[0].copy()
            grads[0].flat[0] = np.inf
        strategy.run(opt.apply_gradients, args=(list(zip(grads, variables)),))
    return variables, opt


def run_single(entry, option, size, dtype="float64", bad_call=None):
    """One process, fed the sum of the `size` ranks' gradients (MAX for overwrite variables)."""
    problem, variables, opt = _setup(entry, option, dtype)
    for call in range(CALLS):
        grads = problem.summed_grads(variables, size, _loss_scale(opt))
        if option == "overwrite":
            grads.append(np.max([_overwrite_grad(call, r) for r in range(size)], axis=0))
        if call == bad_call:
            grads[0].flat[0] = np.inf
        opt.apply_gradients(zip(grads, variables))
    return variables, opt


def state(variables, opt) -> list[tuple[str, np.ndarray]]:
    """(name, value) of every model and optimizer variable; optimizer variables by the last
    part of their path (optimizer names and scopes differ between twins), automatically
    named ones (Nadam's u_product) by position."""
    out = [(f"model:{v.name}", v.numpy()) for v in variables]
    for i, v in enumerate(opt.variables):
        tail = v.path.rsplit("/", 1)[-1]
        name = f"opt[{i}]" if re.fullmatch(r"variable(_\d+)?", tail) else f"opt[{i}]:{tail}"
        out.append((name, np.asarray(v.value).copy()))
    return out


def assert_identical_on_every_rank(strategy, items):
    comm = strategy.communicator
    mine = b"".join(a.dtype.str.encode() + a.tobytes() for _, a in items)
    gathered = comm.allgather_bytes(mine)
    differ = [r for r, data in enumerate(gathered) if data != gathered[0]]
    if differ:
        # Name the first differing variable (every rank has the same gathered data).
        per_rank = comm.allgather_bytes(b"|".join(a.tobytes() for _, a in items))
        names = [name for name, _ in items]
        first = [
            names[i]
            for i, (x, y) in enumerate(
                zip(per_rank[0].split(b"|"), per_rank[differ[0]].split(b"|"))
            )
            if x != y
        ]
        raise AssertionError(f"ranks {differ} differ from rank 0 in {first or names}")


def assert_equal_to_single(items, ref_items):
    assert [n for n, _ in items] == [n for n, _ in ref_items]
    for (name, a), (_, b) in zip(items, ref_items):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=name)
        else:
            assert np.array_equal(a, b), name


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("entry", params())
def test_ranks_equal_single_process(entry, option, strategy):
    size = strategy.num_replicas_in_sync
    before = strategy.gradient_reductions
    variables, opt = run_distributed(entry, option, strategy)
    reductions = strategy.gradient_reductions - before
    items = state(variables, opt)
    assert_identical_on_every_rank(strategy, items)
    ref_variables, ref = run_single(entry, option, size)
    assert_equal_to_single(items, state(ref_variables, ref))
    accumulates = "gradient_accumulation_steps" in BASE_OPTIONS.get(option, {})
    updates = CALLS // 3 if accumulates else CALLS
    if size > 1:
        assert reductions == updates, f"{reductions} gradient all-reduces for {updates} updates"


PER_TENSOR = {"Adafactor", "Lamb", "Muon"}  # whole-tensor maths: ZeRO-1 refuses them
# The options whose code paths touch the sharded arenas (the others act before the update).
SHARDED_OPTIONS = ["plain", "global_clipnorm", "weight_decay", "ema", "accumulation", "overwrite"]


@pytest.mark.parametrize("option", SHARDED_OPTIONS)
@pytest.mark.parametrize("entry", params())
def test_sharded_state_ranks_equal_single_process(entry, option, sharded_strategy):
    """ZeRO-1 (`shard_optimizer_state=True`) gives the same variables as one process."""
    size = sharded_strategy.num_replicas_in_sync
    try:
        variables, opt = run_distributed(entry, option, sharded_strategy)
    except ValueError as e:
        if "shards the state of elementwise optimizers" not in str(e):
            raise
        assert entry.class_name in PER_TENSOR, f"{entry.class_name} refused sharding: {e}"
        return
    ref_variables, ref = run_single(entry, option, size)
    items, ref_items = state(variables, opt), state(ref_variables, ref)
    assert_identical_on_every_rank(sharded_strategy, items[: len(variables)])
    # Slots of the sharded kernel hold this rank's part; every other variable is whole.
    whole = [(a, b) for a, b in zip(items, ref_items) if a[1].shape == b[1].shape]
    assert len(whole) >= len(variables) + 1
    assert_equal_to_single([a for a, _ in whole], [b for _, b in whole])


@pytest.mark.parametrize("entry", params())
def test_float32_ranks_bit_identical(entry, strategy):
    variables, opt = run_distributed(entry, "plain", strategy, dtype="float32")
    assert all(v.dtype == np.float32 for v in variables)
    assert_identical_on_every_rank(strategy, state(variables, opt))


@pytest.mark.parametrize("entry", params())
def test_accumulation_all_reduces_only_on_update_steps(entry, strategy):
    """Same result with N-1 fewer gradient all-reduces per N calls (and N times fewer bytes)."""
    size = strategy.num_replicas_in_sync
    counts = {}
    for option in ("plain", "accumulation"):
        start = (strategy.gradient_reductions, strategy.reduced_elements)
        variables, opt = run_distributed(entry, option, strategy)
        counts[option] = (
            strategy.gradient_reductions - start[0],
            strategy.reduced_elements - start[1],
        )
        assert_identical_on_every_rank(strategy, state(variables, opt))
    if size == 1:
        pytest.skip("one rank: nothing is all-reduced")
    (plain, plain_elems), (accum, accum_elems) = counts["plain"], counts["accumulation"]
    assert plain == CALLS and accum == CALLS // 3
    assert plain - accum == (3 - 1) * (CALLS // 3)
    assert accum_elems * 3 == plain_elems


@pytest.mark.parametrize("entry", params(lambda e: e.class_name == "LossScaleOptimizer"))
def test_non_finite_gradient_on_one_rank_skips_step_on_every_rank(entry, strategy):
    size = strategy.num_replicas_in_sync
    variables, opt = run_distributed(entry, "plain", strategy, bad_call=2)
    items = state(variables, opt)
    assert_identical_on_every_rank(strategy, items)
    ref_variables, ref = run_single(entry, "plain", size, bad_call=2)
    assert_equal_to_single(items, state(ref_variables, ref))
    assert int(np.asarray(opt.iterations)) == CALLS - 1


@pytest.mark.parametrize("entry", params())
def test_calls_raising_on_every_rank_change_nothing_and_keep_ranks_in_step(entry, strategy):
    """Bad input raises on every rank before any collective: state and lockstep survive."""
    size = strategy.num_replicas_in_sync
    problem, variables, opt = _setup(entry, "plain", "float64", strategy)
    rank = strategy.communicator.rank
    for _stage in range(2):  # once on the unbuilt optimizer, once mid-training
        grads = problem.shard_grads(variables, rank, size, _loss_scale(opt))
        before = state(variables, opt)
        for kind, call, exc, regex, *needs_built in bad_calls(opt, variables, grads, strategy):
            if needs_built and not opt.built:
                continue
            with pytest.raises(exc, match=regex):
                call()
            after = state(variables, opt)
            assert len(after) == len(before), kind
            for (name, a), (_, b) in zip(before, after):
                assert a.tobytes() == b.tobytes(), f"{kind} changed {name}"
        for _ in range(3):
            grads = problem.shard_grads(variables, rank, size, _loss_scale(opt))
            strategy.run(opt.apply_gradients, args=(list(zip(grads, variables)),))
    items = state(variables, opt)
    assert_identical_on_every_rank(strategy, items)
    _, ref_vars, ref = _setup(entry, "plain", "float64")
    for _ in range(6):
        grads = problem.summed_grads(ref_vars, size, _loss_scale(ref))
        ref.apply_gradients(zip(grads, ref_vars))
    assert_equal_to_single(items, state(ref_vars, ref))
