"""The plain-MPI SUM: pairwise exchange, summed in rank order, the same bits as shared memory."""

import numpy as np
import pytest

from distopt.collectives import _reducers, allreduce_flat
from distopt.comm import MPICommunicator


def _rank_order_sum(comm, a: np.ndarray) -> np.ndarray:
    """((x0 + x1) + x2) + ..., from every rank's `a` gathered as bytes."""
    parts = [np.frombuffer(b, a.dtype).reshape(a.shape) for b in comm.allgather_bytes(a.tobytes())]
    total = parts[0].copy()
    for p in parts[1:]:
        total = total + p
    return total


def _random(rank, n, dtype, seed=0):
    rng = np.random.default_rng(seed + 7919 * rank)
    if np.dtype(dtype).kind == "c":
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, 1000, n).astype(dtype)
    return (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "complex64", "int64"])
@pytest.mark.parametrize("n", [1, 5, 17, 1000, 70_001])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("piece_bytes", [256, 4096, 2 << 20])
def test_sum_adds_in_rank_order_whatever_the_pieces(comm_world, dtype, n, offset, piece_bytes):
    comm = MPICommunicator()
    mine = _random(comm.rank, n, dtype)
    # `offset` makes the buffer start off a cache line; what lies around it stays untouched.
    raw = np.full(n + 3, 99, dtype)
    buf = raw[offset : offset + n]
    buf[...] = mine
    allreduce_flat(comm, buf, "sum", piece_bytes)
    assert buf.tobytes() == _rank_order_sum(comm, mine).tobytes()
    untouched = np.concatenate([raw[:offset], raw[offset + n :]])
    np.testing.assert_array_equal(untouched, np.full(untouched.size, 99, dtype))
    comm.close()


@pytest.mark.mpi
def test_other_ops_still_reduce_through_mpi(comm_world):
    comm = MPICommunicator()
    rank, size = comm.rank, comm.size
    a = np.arange(10, dtype=np.float64) + rank
    allreduce_flat(comm, a, "max", 16)
    np.testing.assert_array_equal(a, np.arange(10) + size - 1)
    b = np.arange(10, dtype=np.int32) - rank
    allreduce_flat(comm, b, "min")
    np.testing.assert_array_equal(b, np.arange(10) - (size - 1))
    comm.close()


@pytest.mark.mpi
@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_plain_and_shared_memory_paths_give_the_same_bits(comm_world, dtype, mean):
    comm = MPICommunicator()
    shapes = [(3, 5), (70_001,), (1,), (2, 9)]
    data = [
        _random(comm.rank, int(np.prod(s)), dtype, seed=k).reshape(s) for k, s in enumerate(shapes)
    ]
    results = []
    for shared in (False, True):
        reducer = _reducers.make_reducer(comm, shared_memory=shared, piece_bytes=8192)
        plan = reducer.make_plan(shapes, [dtype] * len(shapes), bucket_bytes=4096)
        results.append([r.tobytes() for r in reducer.allreduce(plan, mean, data)])
        reducer.release()
        reducer.close()
    assert results[0] == results[1]
    want = [_rank_order_sum(comm, d) for d in data]
    if mean:
        want = [w / np.asarray(comm.size, w.dtype) for w in want]
    assert results[0] == [w.astype(dtype).tobytes() for w in want]
    comm.close()
