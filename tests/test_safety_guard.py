"""The cross-rank guard: ranks that disagree about a collective all raise, none hangs.

Every test runs at 2, 3 and 4 ranks (tests/run_all.py); rank 1 is the odd one out.
After each error the same strategy must still work (the ranks stayed aligned).
"""

import numpy as np
import pytest

import distopt
from distopt.collectives._deadline import OPERATIONS
from distopt.distribute import CollectiveMismatchError, MPIStrategy, get_replica_context

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture(params=[True, False], ids=["shared-memory", "mpi"])
def world(comm_world, request):
    strategy = MPIStrategy(collective_timeout=60, shared_memory=request.param)
    return strategy, comm_world.rank, comm_world.size


def others(rank, size):
    rest = [str(r) for r in range(size) if r != 1]
    return ("rank " if len(rest) == 1 else "ranks ") + ", ".join(rest)


def check_still_works(strategy, size):
    v = distopt.Variable(np.zeros(2))
    opt = distopt.optimizers.SGD(learning_rate=1.0)
    strategy.run(lambda: opt.apply_gradients([(np.ones(2), v)]))
    np.testing.assert_array_equal(v.numpy(), -np.full(2, float(size)))


def apply(strategy, opt, pairs):
    with pytest.raises(CollectiveMismatchError) as info:
        strategy.run(lambda: opt.apply_gradients(pairs))
    return str(info.value)


def test_mismatched_shape(world):
    strategy, rank, size = world
    a = distopt.Variable(np.zeros(3), name="a")
    b = distopt.Variable(np.zeros((2, 3 + (rank == 1))), name="b")
    opt = distopt.optimizers.SGD(learning_rate=1.0)
    text = apply(strategy, opt, [(np.ones(3), a), (np.ones(b.shape), b)])
    assert "Ranks disagree about `gradient aggregation` (collective #1, step 1)" in text
    assert f"`b` shape: {others(rank, size)}: (2, 3); rank 1: (2, 4)" in text
    assert "`a`" not in text
    np.testing.assert_array_equal(a.numpy(), np.zeros(3))
    assert int(opt.iterations.value) == 0
    check_still_works(strategy, size)


def test_mismatched_dtype(world):
    strategy, rank, size = world
    a = distopt.Variable(np.zeros(3), name="a", dtype="float64" if rank == 1 else "float32")
    opt = distopt.optimizers.SGD(learning_rate=1.0)
    text = apply(strategy, opt, [(np.ones(3), a)])
    assert f"`a` dtype: {others(rank, size)}: float32; rank 1: float64" in text
    np.testing.assert_array_equal(a.numpy(), np.zeros(3))
    check_still_works(strategy, size)


def test_different_variable_count(world):
    strategy, rank, size = world
    variables = [distopt.Variable(np.zeros(2), name=f"v{i}") for i in range(3 + (rank == 1))]
    opt = distopt.optimizers.SGD(learning_rate=1.0)
    text = apply(strategy, opt, [(np.ones(2), v) for v in variables])
    assert f"number of gradients: {others(rank, size)}: 3; rank 1: 4" in text
    assert "`v3`: missing on " + others(rank, size) in text
    for v in variables:
        np.testing.assert_array_equal(v.numpy(), np.zeros(2))
    check_still_works(strategy, size)


def test_none_gradient_on_one_rank_only(world):
    strategy, rank, size = world
    a = distopt.Variable(np.zeros(3), name="a")
    b = distopt.Variable(np.zeros(2), name="b")
    opt = distopt.optimizers.SGD(learning_rate=1.0)
    strategy.run(lambda: opt.apply_gradients([(np.ones(3), a), (np.ones(2), b)]))
    with pytest.warns(UserWarning) if rank == 1 else _nothing():
        text = apply(strategy, opt, [(np.ones(3), a), (None if rank == 1 else np.ones(2), b)])
    assert "(collective #2, step 2)" in text
    assert "`b`: missing on rank 1 (a None gradient there, or not passed); present on " in text
    np.testing.assert_array_equal(b.numpy(), -np.full(2, float(size)))
    assert int(opt.iterations.value) == 1
    # A None gradient for `b` on every rank is consistent, and fine.
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        strategy.run(lambda: opt.apply_gradients([(np.ones(3), a), (None, b)]))
    np.testing.assert_array_equal(a.numpy(), -np.full(3, 2.0 * size))


def test_different_order(world):
    strategy, rank, size = world
    a = distopt.Variable(np.zeros(2), name="a")
    b = distopt.Variable(np.zeros(2), name="b")
    opt = distopt.optimizers.SGD(learning_rate=1.0)
    pairs = [(np.ones(2), a), (np.ones(2), b)]
    text = apply(strategy, opt, pairs[::-1] if rank == 1 else pairs)
    assert f"order: {others(rank, size)}: [a, b]; rank 1: [b, a]" in text


def test_variable_broadcast_under_scope(world):
    strategy, rank, size = world
    with pytest.raises(CollectiveMismatchError) as info:
        with strategy.scope():
            distopt.Variable(np.zeros(4 + (rank == 1)), name="kernel")
    text = str(info.value)
    assert "Ranks disagree about `variable broadcast`" in text
    assert f"`kernel` shape: {others(rank, size)}: (4,); rank 1: (5,)" in text
    check_still_works(strategy, size)


def test_different_variables_under_scope(world):
    strategy, rank, size = world
    with pytest.raises(CollectiveMismatchError) as info:
        with strategy.scope():
            distopt.Variable(np.zeros(4), name="bias" if rank == 1 else "kernel")
    assert "`kernel`: missing on rank 1" in str(info.value)


def test_different_collectives(world):
    strategy, rank, size = world
    a = distopt.Variable(np.zeros(3), name="a")
    opt = distopt.optimizers.SGD(learning_rate=1.0)
    strategy.run(lambda: opt.build([a]))  # on every rank: building checks the config
    with pytest.raises(CollectiveMismatchError) as info:
        if rank == 1:
            strategy.reduce("SUM", 1.0)
        else:
            strategy.run(lambda: opt.apply_gradients([(np.ones(3), a)]))
    text = str(info.value)
    assert "Ranks disagree about the next collective" in text
    assert (
        f"different collectives: {others(rank, size)}: `gradient aggregation` at step 1 with 1 "
        "gradient(s); rank 1: `reduce` at step 0 with 1 value(s)"
    ) in text
    np.testing.assert_array_equal(a.numpy(), np.zeros(3))
    check_still_works(strategy, size)


def test_reduce_op_and_structure_mismatch(world):
    strategy, rank, size = world
    with pytest.raises(CollectiveMismatchError, match="options: .*: SUM; rank 1: MAX"):
        strategy.reduce("MAX" if rank == 1 else "SUM", np.ones(2))
    value = {"x": np.ones(2), "y": 1.0} if rank == 1 else {"x": np.ones(2)}
    with pytest.raises(CollectiveMismatchError) as info:
        strategy.run(lambda: get_replica_context().all_reduce("SUM", value))
    assert "`value['y']`: missing on " + others(rank, size) in str(info.value)
    with pytest.raises(CollectiveMismatchError, match=r"`value` shape: .*: \(2,\); rank 1: \(3,\)"):
        strategy.broadcast(np.ones(3 if rank == 1 else 2))
    assert strategy.reduce("SUM", 1.0) == size


def test_gradient_buffers(world):
    strategy, rank, size = world
    variables = [distopt.Variable(np.zeros(2), name=f"v{i}") for i in range(2 + (rank == 1))]
    if getattr(strategy._reducer, "shared_memory", False):
        # Buckets in a shared window: creating them is collective, so it is guarded.
        with pytest.raises(
            CollectiveMismatchError, match="Ranks disagree about `gradient buffers`"
        ):
            strategy.gradient_buffers(variables)
    else:
        assert len(strategy.gradient_buffers(variables)) == len(variables)
    variables = variables[:2]
    buffers = strategy.gradient_buffers(variables)
    for b in buffers:
        b[...] = rank + 1
    opt = distopt.optimizers.SGD(learning_rate=1.0)
    strategy.run(lambda: opt.apply_gradients(zip(buffers, variables)))
    np.testing.assert_array_equal(variables[0].numpy(), -np.full(2, size * (size + 1) / 2))


def test_message_is_identical_on_every_rank(world, comm_world):
    strategy, rank, size = world
    with pytest.raises(CollectiveMismatchError) as info:
        strategy.reduce("SUM", np.ones(rank + 1))
    texts = comm_world.allgather(str(info.value))
    assert len(set(texts)) == 1
    for r in range(size):
        assert f"({r + 1},)" in texts[0]


@pytest.mark.parametrize("through_env", [False, True])
def test_strategy_options_disagree(comm_world, monkeypatch, through_env):
    """Ranks creating their strategies with different options all raise, before any of them
    takes a different path through the creation's collectives (which would hang)."""
    rank, size = comm_world.rank, comm_world.size
    kwargs = {"collective_timeout": 60}
    if through_env:
        monkeypatch.setenv("DISTOPT_SHARED_MEMORY", "0" if rank == 1 else "1")
    else:
        kwargs["shard_optimizer_state"] = rank == 1
    with pytest.raises(CollectiveMismatchError) as info:
        MPIStrategy(**kwargs)
    text = str(info.value)
    assert "Ranks disagree about `MPIStrategy creation` (collective #0, step 0)" in text
    if through_env:
        assert f"{others(rank, size)}: gradient_reduce_op=SUM, bucket_bytes=26214400, " \
               "shared_memory=True, " in text  # fmt: skip
        assert "rank 1: gradient_reduce_op=SUM, bucket_bytes=26214400, shared_memory=False" in text
    else:
        assert "shard_optimizer_state=False, compression=None; rank 1: " in text
    assert len(set(comm_world.allgather(text))) == 1
    monkeypatch.delenv("DISTOPT_SHARED_MEMORY", raising=False)
    check_still_works(MPIStrategy(collective_timeout=60), size)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("sharded", [False, True])
def test_every_collective_is_watched(comm_world, sharded):
    """Each collective the strategy runs passes through the deadline monitor exactly once."""
    strategy = MPIStrategy(shard_optimizer_state=sharded)
    monitor = strategy._safety.monitor
    seen = []
    enter = monitor.enter
    monitor.enter = lambda op: (seen.append(op), enter(op))[1]
    with strategy.scope():
        v = distopt.Variable(np.zeros(4), name="v")
        opt = distopt.optimizers.Adam(learning_rate=0.5)
    strategy.run(lambda: opt.apply_gradients([(np.ones(4), v)]))
    strategy.reduce("SUM", 1.0)
    strategy.broadcast(np.ones(2))
    list(strategy.experimental_distribute_dataset([np.zeros(comm_world.size)]))
    names = [OPERATIONS[op] for op in seen]
    expected = ["variable broadcast", "gradient aggregation"]
    expected += ["parameter all-gather"] if sharded else []
    expected += ["reduce", "broadcast", "dataset step agreement", "dataset step agreement"]
    assert names == expected
    assert monitor.current is None and monitor.seq == len(expected)
