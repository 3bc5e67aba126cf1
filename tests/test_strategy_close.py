"""`Strategy.close()`: frees what the strategy created; afterwards every use raises.

MPI tests run at 1-4 ranks (tests/run_all.py); the single-process tests cover the default
and a local strategy.
"""

import re

import numpy as np
import pytest

import distopt
from distopt.comm import LocalCommunicator
from distopt.distribute import CollectiveMismatchError, MPIStrategy, Strategy, get_strategy

CLOSED = "was closed: `close()` freed its communicator and shared memory. Create a new strategy"


def _trained(shared_memory, shard):
    strategy = MPIStrategy(shared_memory=shared_memory, shard_optimizer_state=shard)
    with strategy.scope():
        variables = [distopt.Variable(np.arange(6.0).reshape(2, 3), name="w"),
                     distopt.Variable(np.ones(300), name="b")]  # fmt: skip
        opt = distopt.optimizers.Adam(learning_rate=0.1)
    buffers = strategy.gradient_buffers(variables)
    for b in buffers:
        b[...] = 1.0
    strategy.run(lambda: opt.apply_gradients(zip(buffers, variables)))
    return strategy, opt, variables


def _windows(strategy):
    """Every MPI window the strategy holds (shared-memory buckets and ZeRO staging)."""
    wins = []
    for shared in getattr(strategy._reducer, "_shared", {}).values():
        wins += shared.windows
    sharding = strategy._optimizer_sharding
    if sharding is not None:
        wins += [win for win, _ in sharding._staging.values()]
    return wins


def _communicators(strategy):
    comms = [strategy.communicator.mpi_comm]
    groups = getattr(strategy._reducer, "groups", None)
    if groups is not None:
        comms += [groups.node, groups.leaders]
    return comms


@pytest.mark.mpi
@pytest.mark.parametrize("shard", [False, True], ids=["plain", "zero1"])
@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "mpi"])
def test_close_frees_communicators_and_windows(comm_world, shared_memory, shard):
    from mpi4py import MPI

    strategy, _, _ = _trained(shared_memory, shard)
    windows, comms = _windows(strategy), _communicators(strategy)
    if comm_world.size > 1 and shared_memory:
        assert windows and len(comms) == 3
    assert strategy.communicator.mpi_comm != MPI.COMM_NULL
    strategy.close()
    assert all(win == MPI.WIN_NULL for win in windows)
    assert all(comm == MPI.COMM_NULL for comm in comms)
    assert _windows(strategy) == [] and len(strategy._plan_cache) == 0
    strategy.close()  # idempotent
    assert strategy.communicator.mpi_comm == MPI.COMM_NULL


@pytest.mark.mpi
@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "mpi"])
def test_use_after_close_raises_and_changes_nothing(comm_world, shared_memory):
    strategy, opt, variables = _trained(shared_memory, False)
    strategy.close()
    before = [v.numpy() for v in variables + list(opt.variables)]
    grads = [np.ones(v.shape) for v in variables]
    calls = {
        "run()": lambda: strategy.run(lambda: opt.apply_gradients(zip(grads, variables))),
        "scope()": lambda: strategy.scope().__enter__(),
        "gradient_buffers()": lambda: strategy.gradient_buffers(variables),
        "`reduce`": lambda: strategy.reduce("SUM", 1.0),
        "`broadcast`": lambda: strategy.broadcast(np.ones(2)),
        "`dataset step agreement`": lambda: list(
            strategy.experimental_distribute_dataset([np.zeros(comm_world.size)])
        ),
    }
    for what, call in calls.items():
        with pytest.raises(RuntimeError) as info:
            call()
        text = str(info.value)
        assert text.startswith(f"Cannot call `{what}`:" if what.endswith("()") else
                               f"Cannot run {what}:"), text  # fmt: skip
        assert f"MPIStrategy(num_replicas_in_sync={comm_world.size}) {CLOSED}" in text
    after = [v.numpy() for v in variables + list(opt.variables)]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after))
    assert int(opt.iterations.value) == 1
    assert get_strategy()._is_default  # no scope was left entered


@pytest.mark.mpi
def test_close_inside_run_raises_and_frees_nothing(comm_world):
    strategy, opt, variables = _trained(False, False)
    with pytest.raises(RuntimeError, match=re.escape("`close()` requires the cross-replica")):
        strategy.run(strategy.close)
    strategy.run(lambda: opt.apply_gradients([(np.ones(v.shape), v) for v in variables]))
    assert int(opt.iterations.value) == 2
    strategy.close()


@pytest.mark.mpi(min_size=2)
def test_rank_not_closing_is_a_mismatch(comm_world):
    strategy, opt, variables = _trained(True, False)
    with pytest.raises(CollectiveMismatchError) as info:
        if comm_world.rank == 1:
            strategy.reduce("SUM", 1.0)
        else:
            strategy.close()
    assert "rank 1: `reduce` at step 1 with 1 value(s)" in str(info.value)
    assert "`strategy close` at step 1" in str(info.value)
    # Nothing was freed: the strategy still works, and closes on every rank.
    strategy.run(lambda: opt.apply_gradients([(np.ones(v.shape), v) for v in variables]))
    assert strategy.reduce("SUM", 1.0) == comm_world.size
    strategy.close()


@pytest.mark.mpi
def test_many_strategies_created_and_closed(comm_world):
    """Communicators are a finite resource (MPICH: a few thousand context ids)."""
    from mpi4py import MPI

    for _ in range(20):
        strategy = MPIStrategy(shared_memory=True)
        comm = strategy.communicator.mpi_comm
        assert strategy.reduce("SUM", 1.0) == comm_world.size
        strategy.close()
        assert comm == MPI.COMM_NULL


def test_local_strategy_close():
    strategy = Strategy(LocalCommunicator())
    v = distopt.Variable(np.zeros(2))
    opt = distopt.optimizers.SGD(learning_rate=1.0)
    strategy.run(lambda: opt.apply_gradients([(np.ones(2), v)]))
    strategy.close()
    strategy.close()
    with pytest.raises(RuntimeError, match=re.escape(f"Strategy(num_replicas_in_sync=1) {CLOSED}")):
        strategy.run(lambda: opt.apply_gradients([(np.ones(2), v)]))
    np.testing.assert_array_equal(v.numpy(), -np.ones(2))


def test_default_strategy_cannot_be_closed():
    default = get_strategy()
    with pytest.raises(RuntimeError, match="The default strategy cannot be closed"):
        default.close()
    v = distopt.Variable(np.zeros(2))
    distopt.optimizers.SGD(learning_rate=1.0).apply_gradients([(np.ones(2), v)])
    np.testing.assert_array_equal(v.numpy(), -np.ones(2))
