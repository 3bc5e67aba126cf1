"""bf16 / fp16 compression of gradient buckets on the MPI wire."""

import importlib.util

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


needs_numba = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba is not installed"
)


def _patterns():
    """Every 97th float32 bit pattern, plus every low-14-bit pattern (where rounding decides)
    under each sign and exponent."""
    rng = np.random.default_rng(0)
    stride = np.arange(0, 2**32, 97, dtype=np.uint64).astype(np.uint32)
    high = np.arange(512, dtype=np.uint32)[:, None] << np.uint32(23)
    middle = rng.integers(0, 2**9, (512, 1), dtype=np.uint32) << np.uint32(14)
    low = np.arange(2**14, dtype=np.uint32)[None, :]
    return np.concatenate([stride, (high | middle | low).ravel()]).view(np.float32)


@needs_numba
def test_compiled_conversions_give_numpys_bits():
    from distopt.collectives import _half_numba as H

    x = _patterns()
    out = np.empty(x.size, np.uint16)
    with np.errstate(all="ignore"):
        H.narrow_bf16(x, np.float32(1), out)
        assert np.array_equal(out, _to_bf16(x))
        H.narrow_fp16(x, np.float32(1), out)
        _same_or_both_nan(out.view(np.float16), x.astype(np.float16))
        for scale in (np.float32(2), np.float32(3)):
            H.narrow_fp16(x, scale, out)
            _same_or_both_nan(out.view(np.float16), (x / scale).astype(np.float16))
        every = np.arange(2**16, dtype=np.uint16)
        back = np.empty(every.size, np.float32)
        H.widen_bf16(every, np.float32(1), back)
        assert np.array_equal(back.view(np.uint32), _from_bf16(every).view(np.uint32))
        H.widen_fp16(every, np.float32(1), back)
        _same_or_both_nan(back, every.view(np.float16).astype(np.float32))
        H.widen_fp16(every, np.float32(3), back)
        _same_or_both_nan(back, every.view(np.float16).astype(np.float32) * np.float32(3))


@needs_numba
def test_compiled_16_bit_sums_give_numpys_bits():
    from distopt.collectives import _half_numba as H

    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**16, 4_000_000, dtype=np.uint16)
    b = rng.integers(0, 2**16, a.size, dtype=np.uint16)
    with np.errstate(all="ignore"):
        got = b.copy()
        H.sum_bf16(a, got)
        assert np.array_equal(got, _to_bf16(_from_bf16(a) + _from_bf16(b)))
        got = b.copy()
        H.sum_fp16(a, got)
        expected = a.view(np.float16) + b.view(np.float16)
    _same_or_both_nan(got.view(np.float16), expected)


def _same_or_both_nan(got, expected):
    # NaN payloads are the hardware's (which NaN of NaN + NaN survives; signalling NaNs come
    # back quiet): compare NaN-ness there and bits everywhere else.
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    assert got.dtype == expected.dtype
    assert np.array_equal(got[~nan].tobytes(), expected[~nan].tobytes())


@pytest.mark.mpi
@needs_numba
@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_compiled_and_numpy_compression_give_the_same_sum(comm_world, name, monkeypatch):
    from distopt.collectives import _compress
    from distopt.comm import MPICommunicator

    comm = MPICommunicator()
    x = np.random.default_rng(comm.rank).standard_normal(70_000).astype(np.float32)
    results = []
    for engine in ("auto", "numpy"):
        monkeypatch.setenv("DISTOPT_ENGINE", engine)
        monkeypatch.setattr(_compress, "_state", {})
        buf = x.copy()
        Compression(name).allreduce(comm, buf, piece_bytes=16_384)
        results.append(buf.tobytes())
        assert (_compress._compiled() is None) == (engine == "numpy")
    assert results[0] == results[1]
