"""The shared-memory gradient path (MPI-3 windows, node leaders across nodes)."""

import numpy as np
import pytest

import distopt
from distopt.collectives import _reducers
from distopt.collectives._shm import SharedMemoryReducer
from distopt.distribute import MPIStrategy, ReduceOp

SHAPES = [(3, 5), (7,), (2, 2, 2), (1000,), (1,)]
DTYPES = ["float32", "float64", "float32", "float32", "float64"]


def _rank_data(rank, seed=0):
    rng = np.random.default_rng(seed + rank)
    return [rng.standard_normal(s).astype(d) for s, d in zip(SHAPES, DTYPES)]


def _reduce(reducer, rank, mean=False, seed=0):
    plan = reducer.make_plan(SHAPES, DTYPES, bucket_bytes=4096)
    for view, value in zip(plan.views, _rank_data(rank, seed)):
        view[...] = value
    return [r.copy() for r in reducer.allreduce(plan, mean)]


def _communicator():
    from distopt.comm import MPICommunicator

    return MPICommunicator()


@pytest.mark.mpi
@pytest.mark.parametrize("ranks_per_node", [None, 1, 2])
def test_sum_is_exact_and_identical_on_every_rank(comm_world, ranks_per_node):
    size, rank = comm_world.Get_size(), comm_world.Get_rank()
    comm = _communicator()
    reducer = _reducers.make_reducer(comm, shared_memory=True, _ranks_per_node=ranks_per_node)
    if size > 1 and (ranks_per_node or 2) > 1:
        assert isinstance(reducer, SharedMemoryReducer)
    # Integers in floats: every summation order gives the exact same answer.
    plan = reducer.make_plan(SHAPES, DTYPES, bucket_bytes=4096)
    for k, view in enumerate(plan.views):
        view[...] = np.arange(view.size).reshape(view.shape) * (rank + 1) + k
    got = reducer.allreduce(plan, mean=False)
    total = size * (size + 1) // 2
    for k, (g, view) in enumerate(zip(got, plan.views)):
        want = np.arange(view.size).reshape(view.shape) * total + k * size
        np.testing.assert_array_equal(g, want.astype(view.dtype))
        assert g.dtype == view.dtype
    everyone = comm.allgather_bytes(b"".join(g.tobytes() for g in got))
    assert len(set(everyone)) == 1
    reducer.close()


@pytest.mark.mpi
@pytest.mark.parametrize("in_place_bytes", [0, 1 << 40])
@pytest.mark.parametrize("ranks_per_node", [None, 2])
def test_same_bits_run_after_run_and_mean(comm_world, ranks_per_node, in_place_bytes, monkeypatch):
    from distopt.collectives import _shm

    monkeypatch.setattr(_shm, "IN_PLACE_BYTES", in_place_bytes)
    size = comm_world.Get_size()
    comm = _communicator()
    reducer = _reducers.make_reducer(comm, shared_memory=True, _ranks_per_node=ranks_per_node)
    first = _reduce(reducer, comm.rank, seed=1)
    second = _reduce(reducer, comm.rank, seed=1)
    for a, b in zip(first, second):
        assert a.tobytes() == b.tobytes()
    mean = _reduce(reducer, comm.rank, mean=True, seed=1)
    for s, m in zip(first, mean):
        np.testing.assert_array_equal(m, np.divide(s, size).astype(s.dtype))
    # The documented order, whatever the grouping: ((x0 + x1) + x2) + ... in rank order.
    data = [_rank_data(r, 1) for r in range(size)]
    for k in range(len(SHAPES)):
        expected = data[0][k].copy()
        for r in range(1, size):
            expected = expected + data[r][k]
        assert first[k].tobytes() == expected.tobytes()
    reducer.close()


@pytest.mark.mpi
def test_gradient_buffers_live_in_the_window_and_skip_the_pack(comm_world):
    size, rank = comm_world.Get_size(), comm_world.Get_rank()
    strategy = MPIStrategy(shared_memory=True)
    with strategy.scope():
        variables = [distopt.Variable(np.zeros(s), dtype=d) for s, d in zip(SHAPES, DTYPES)]
        opt = distopt.optimizers.SGD(learning_rate=1.0)
    buffers = strategy.gradient_buffers(variables)
    plan = strategy._plan_for(variables)
    for b, v in zip(buffers, plan.views):
        assert b.shape == v.shape and np.shares_memory(b, v)
    if size > 1:
        assert isinstance(strategy._reducer, SharedMemoryReducer)
    for b in buffers:
        b[...] = rank + 1
    strategy.run(lambda: opt.apply_gradients(zip(buffers, variables)))
    total = size * (size + 1) / 2
    for v in variables:
        np.testing.assert_array_equal(v.numpy(), np.full(v.shape, -total, v.dtype))


@pytest.mark.mpi
@pytest.mark.parametrize("op", [ReduceOp.SUM, ReduceOp.MEAN])
def test_shared_memory_and_mpi_paths_agree(comm_world, op):
    rank = comm_world.Get_rank()
    results = []
    for shared in (True, False):
        distopt.utils.clear_session()
        strategy = MPIStrategy(shared_memory=shared, gradient_reduce_op=op)
        with strategy.scope():
            variables = [distopt.Variable(np.ones(s), dtype=d) for s, d in zip(SHAPES, DTYPES)]
            opt = distopt.optimizers.Adam(learning_rate=0.1)
        for step in range(3):
            grads = [np.full(v.shape, (rank + 1) * (step + 1), v.dtype) for v in variables]
            strategy.run(lambda g=grads, o=opt, vs=variables: o.apply_gradients(zip(g, vs)))
        results.append([v.numpy() for v in variables])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_bad_shared_memory_argument_is_rejected():
    with pytest.raises(ValueError, match="`shared_memory` must be True, False or 'auto'"):
        MPIStrategy(shared_memory="yes")


def test_shared_memory_needs_mpi():
    from distopt.comm import LocalCommunicator

    with pytest.raises(ValueError, match="needs an MPI communicator"):
        _reducers.make_reducer(LocalCommunicator(), shared_memory=True)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("in_place_bytes", [0, 1 << 40])
def test_result_is_not_overwritten_while_a_slow_rank_still_reads_it(
    comm_world, monkeypatch, in_place_bytes
):
    """In place, local rank 0's segment holds the sum: its next gradients wait for every
    reader. Small plans sum into a separate result (same bits, no wait needed)."""
    import time

    from distopt.collectives import _shm

    monkeypatch.setattr(_shm, "IN_PLACE_BYTES", in_place_bytes)
    size, rank = comm_world.Get_size(), comm_world.Get_rank()
    strategy = MPIStrategy(shared_memory=True)
    with strategy.scope():
        v = distopt.Variable(np.zeros(4096))
        opt = distopt.optimizers.SGD(learning_rate=1.0)
    if rank != 0:
        original = opt._update_all

        def slow(*args):
            time.sleep(0.05)  # rank 0 races ahead to its next gradients meanwhile
            return original(*args)

        opt._update_all = slow
    (buf,) = strategy.gradient_buffers([v])
    expected = np.zeros(4096, np.float32)
    for step in range(4):
        buf[...] = (rank + 1) * (step + 1)
        strategy.run(lambda: opt.apply_gradients([(buf, v)]))
        expected -= np.float32(size * (size + 1) / 2 * (step + 1))
    np.testing.assert_array_equal(v.numpy(), expected)
