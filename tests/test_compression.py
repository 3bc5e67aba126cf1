"""bf16 / fp16 compression of gradient buckets on the MPI wire."""

import numpy as np
import pytest

import distopt
from distopt.collectives._compress import Compression, _from_bf16, _to_bf16
from distopt.distribute import MPIStrategy


def test_bf16_rounds_to_nearest_even_and_keeps_specials():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf, -np.inf, 0.0, 3e38], np.float32)
    back = _from_bf16(_to_bf16(x))
    # 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even mantissa (1.0) wins; 1 + 3*2^-8 -> up.
    np.testing.assert_array_equal(back[:4], np.array([1.0, 1.0, 1.015625, -2.5], np.float32))
    assert back[4] == np.inf and back[5] == -np.inf and back[6] == 0
    assert np.isnan(_from_bf16(_to_bf16(np.array([np.nan], np.float32))))[0]
    rng = np.random.default_rng(0)
    y = rng.standard_normal(10_000).astype(np.float32)
    np.testing.assert_allclose(_from_bf16(_to_bf16(y)), y, rtol=2**-8)


def test_unknown_compression_is_rejected():
    with pytest.raises(ValueError, match="`compression` must be None, 'bf16' or 'fp16'"):
        Compression("int8")
    with pytest.raises(ValueError, match="`compression` must be None, 'bf16' or 'fp16'"):
        MPIStrategy(compression="int8")


@pytest.mark.mpi
@pytest.mark.parametrize("name,rtol", [("bf16", 2**-7), ("fp16", 2**-9)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_compressed_sum_is_close_identical_on_all_ranks_and_repeatable(
    comm_world, name, rtol, dtype
):
    from distopt.comm import MPICommunicator

    comm = MPICommunicator()
    size = comm.size
    rng = np.random.default_rng(comm.rank)
    x = (rng.random(50_000) + 0.5).astype(dtype)  # positive: no cancellation
    exact = np.zeros_like(x, dtype=np.float64)
    for r in range(size):
        exact += (np.random.default_rng(r).random(50_000) + 0.5).astype(dtype)
    results = []
    for _ in range(2):
        buf = x.copy()
        Compression(name).allreduce(comm, buf, piece_bytes=16_384)
        results.append(buf)
    assert results[0].tobytes() == results[1].tobytes()
    assert results[0].dtype == np.dtype(dtype)
    np.testing.assert_allclose(results[0], exact, rtol=rtol * max(2, size))
    assert len(set(comm.allgather_bytes(results[0].tobytes()))) == 1


@pytest.mark.mpi
def test_training_with_compression_keeps_ranks_identical(comm_world):
    rank = comm_world.Get_rank()
    strategy = MPIStrategy(compression="bf16", shared_memory=False)
    with strategy.scope():
        v = distopt.Variable(np.ones(1000))
        opt = distopt.optimizers.SGD(learning_rate=0.5)
    for _ in range(3):
        g = np.full(1000, 0.25 * (rank + 1), np.float32)
        strategy.run(lambda g=g: opt.apply_gradients([(g, v)]))
    total = 0.25 * comm_world.Get_size() * (comm_world.Get_size() + 1) / 2
    np.testing.assert_allclose(v.numpy(), 1 - 3 * 0.5 * total, rtol=1e-2)
    blobs = comm_world.allgather(v.numpy().tobytes())
    assert len(set(blobs)) == 1
