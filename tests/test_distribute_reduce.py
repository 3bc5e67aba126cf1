"""ReduceOp SUM / MEAN / MIN / MAX, broadcast, gradient_reduce_op and compute_average_loss."""

import numpy as np
import pytest

import distopt
from distopt.comm import LocalCommunicator
from distopt.distribute import MPIStrategy, ReduceOp, Strategy, get_replica_context
from distopt.losses import compute_average_loss


@pytest.fixture
def mpi(comm_world):
    return MPIStrategy(), comm_world.rank, comm_world.size


def per_rank(rank, dtype):
    return (np.arange(6).reshape(2, 3) * (rank + 1) - rank).astype(dtype)


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "int32", "int64"])
@pytest.mark.parametrize("op", ["SUM", "MEAN", "MIN", "MAX"])
def test_reduce_ops(mpi, dtype, op):
    strategy, rank, size = mpi
    stack = np.stack([per_rank(r, dtype) for r in range(size)])
    expected = {"SUM": stack.sum(0), "MEAN": stack.sum(0) / size, "MIN": stack.min(0),
                "MAX": stack.max(0)}[op]  # fmt: skip
    got = strategy.reduce(op, per_rank(rank, dtype))
    np.testing.assert_allclose(got, expected, rtol=1e-3 if dtype == "float16" else 0)
    if op != "MEAN":
        assert got.dtype == np.dtype(dtype)
    got_ctx = strategy.run(
        lambda: get_replica_context().all_reduce(ReduceOp[op], per_rank(rank, dtype))
    )
    np.testing.assert_array_equal(got_ctx, got)


@pytest.mark.mpi
def test_all_reduce_nested_structures(mpi):
    strategy, rank, size = mpi
    value = {"b": [np.float32(rank), (np.full(2, rank, np.int64), 1.5)], "a": True}
    got = strategy.run(lambda: get_replica_context().all_reduce("SUM", value))
    assert set(got) == {"a", "b"} and isinstance(got["b"], list) and isinstance(got["b"][1], tuple)
    total = size * (size - 1) / 2
    assert got["a"] == size and got["b"][0] == total and got["b"][0].dtype == np.float32
    np.testing.assert_array_equal(got["b"][1][0], [total, total])
    assert got["b"][1][1] == 1.5 * size
    flags = strategy.run(
        lambda: get_replica_context().all_reduce("MIN", {"ok": np.bool_(rank == 0)})
    )
    assert flags["ok"].dtype == bool and bool(flags["ok"]) == (size == 1)


@pytest.mark.mpi
@pytest.mark.parametrize("op", ["SUM", "MEAN", "MIN", "MAX"])
def test_reduce_along_axis_with_uneven_batches(mpi, op):
    strategy, rank, size = mpi
    local = np.arange(rank + 1, dtype=np.float64) + 10 * rank  # rank r holds r + 1 examples
    everything = np.concatenate([np.arange(r + 1) + 10.0 * r for r in range(size)])
    expected = {"SUM": everything.sum(), "MEAN": everything.mean(), "MIN": everything.min(),
                "MAX": everything.max()}[op]  # fmt: skip
    assert strategy.reduce(op, local, axis=0) == pytest.approx(expected, rel=1e-15)


@pytest.mark.mpi
def test_broadcast(mpi):
    strategy, rank, size = mpi
    root = size - 1
    v = distopt.Variable(np.full(3, float(rank)))
    out = strategy.broadcast({"v": v, "x": [np.arange(4) * rank, 7 * rank]}, root=root)
    assert out["v"] is v
    np.testing.assert_array_equal(v.numpy(), np.full(3, float(root)))
    np.testing.assert_array_equal(out["x"][0], np.arange(4) * root)
    assert int(out["x"][1]) == 7 * root
    np.testing.assert_array_equal(strategy.broadcast(np.arange(3) + rank), np.arange(3))


def test_broadcast_bad_root_changes_nothing():
    strategy = Strategy(LocalCommunicator())
    v = distopt.Variable([1.0])
    for root in (1, -1, True, 0.0):
        with pytest.raises(ValueError, match=r"Argument `root` must be a rank in \[0, 1\)"):
            strategy.broadcast(v, root=root)
    with pytest.raises(TypeError, match="`broadcast` takes numeric arrays"):
        strategy.broadcast(["a"])
    np.testing.assert_array_equal(v.numpy(), [1.0])


def test_reduce_bad_arguments():
    strategy = Strategy(LocalCommunicator())
    with pytest.raises(ValueError, match="Argument `op` must be a `distopt.distribute.ReduceOp`"):
        strategy.reduce("PROD", 1.0)
    with pytest.raises(
        ValueError, match=r"`axis` must be an axis of `value`, whose shape is \(3,\)"
    ):
        strategy.reduce("SUM", np.ones(3), axis=1)
    with pytest.raises(TypeError, match="ReduceOp.MAX is not defined for complex"):
        strategy.reduce("MAX", np.ones(2, np.complex64))
    with pytest.raises(TypeError, match="all_reduce takes arrays, numbers"):
        strategy.run(lambda: get_replica_context().all_reduce("SUM", {"a": "text"}))


@pytest.mark.mpi
@pytest.mark.parametrize("op, factor", [(ReduceOp.SUM, 1.0), (ReduceOp.MEAN, None), ("mean", None)])
def test_gradient_reduce_op(comm_world, op, factor):
    size = comm_world.size
    strategy = MPIStrategy(gradient_reduce_op=op)
    assert strategy.gradient_reduce_op is ReduceOp.from_any(op)
    with strategy.scope():
        v = distopt.Variable(np.zeros(2), dtype="float64")
        opt = distopt.optimizers.SGD(learning_rate=1.0)
    r = comm_world.rank
    strategy.run(lambda: opt.apply_gradients([(np.array([r + 1.0, 10.0 * (r + 1)]), v)]))
    total = np.array([1.0, 10.0]) * size * (size + 1) / 2
    expected = -total if factor else -total / size
    np.testing.assert_allclose(v.numpy(), expected, rtol=1e-15)


def test_gradient_reduce_op_rejects_min():
    with pytest.raises(ValueError, match=r"`gradient_reduce_op` must be ReduceOp.SUM .* Received"):
        Strategy(LocalCommunicator(), gradient_reduce_op=ReduceOp.MIN)


def test_compute_average_loss_single_process():
    loss = np.array([1.0, 2.0, 3.0, 6.0], dtype=np.float32)
    out = compute_average_loss(loss)
    assert out == np.float32(3.0) and out.dtype == np.float32
    assert compute_average_loss(loss, global_batch_size=8) == np.float32(1.5)
    assert compute_average_loss(loss, 8, sample_weight=[1, 0, 0, 0]) == np.float32(0.125)
    assert compute_average_loss(np.array([1, 2]), 4).dtype == np.float64
    assert compute_average_loss(np.zeros(0), 4) == 0.0


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((np.float32(1.0),), {}, ValueError, "Expected an array with at least rank 1"),
        ((["a"],), {}, TypeError, "must be a numeric array"),
        ((np.ones(2), 0), {}, ValueError, "`global_batch_size` must be a positive int or None"),
        ((np.ones(2), 2.0), {}, ValueError, "Received: global_batch_size=2.0"),
        ((np.ones(2), True), {}, ValueError, "Received: global_batch_size=True"),
        ((np.ones(2), 4), {"sample_weight": np.ones(3)}, ValueError, "does not broadcast"),
    ],
)
def test_compute_average_loss_errors(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        compute_average_loss(*args, **kwargs)


def test_compute_average_loss_in_cross_replica_context():
    strategy = Strategy(LocalCommunicator())
    with strategy.scope():
        with pytest.raises(RuntimeError, match="in cross replica context"):
            compute_average_loss(np.ones(3))
        assert compute_average_loss(np.ones(3), 6) == 0.5


@pytest.mark.mpi
def test_compute_average_loss_gives_the_global_mean_gradient(mpi):
    """Least squares on a global batch: N ranks each with a shard equal one process on all."""
    strategy, rank, size = mpi
    rng = np.random.default_rng(0)
    per_replica = 3
    x = rng.normal(size=(per_replica * size, 4))
    y = rng.normal(size=per_replica * size)
    w0 = rng.normal(size=4)

    def grad(xb, yb, w):
        # compute_average_loss is linear: the gradient of the averaged loss is the averaged
        # per-example gradient, component by component.
        per_example = 2 * xb * (xb @ w - yb)[:, None]
        return np.array([compute_average_loss(per_example[:, j]) for j in range(4)])

    with strategy.scope():
        w = distopt.Variable(w0, dtype="float64")
        opt = distopt.optimizers.SGD(learning_rate=0.5)  # exact in float32, as Keras stores it
    shard = slice(rank * per_replica, (rank + 1) * per_replica)
    strategy.run(lambda: opt.apply_gradients([(grad(x[shard], y[shard], w.numpy()), w)]))
    reference = w0 - 0.5 * 2 * x.T @ (x @ w0 - y) / len(y)
    np.testing.assert_allclose(w.numpy(), reference, rtol=1e-12)
    loss = strategy.run(lambda: compute_average_loss((x[shard] @ w0 - y[shard]) ** 2))
    assert strategy.reduce("SUM", loss) == pytest.approx(np.mean((x @ w0 - y) ** 2), rel=1e-12)


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("op", ["MIN", "MAX"])
def test_nan_on_one_rank_reaches_every_rank(mpi, comm_world, dtype, op):
    """MPI's MIN/MAX compare with `<`: a NaN on one rank used to reach only some ranks."""
    strategy, rank, size = mpi
    for holder in range(size):
        x = np.ones(5, dtype)
        x[1:3] = [-2.0, 3.0]
        if rank == holder:
            x[0] = x[4] = np.nan
        got = strategy.reduce(op, x)
        got_ctx = strategy.run(lambda x=x: get_replica_context().all_reduce(ReduceOp[op], x))
        for result in (got, got_ctx):
            assert np.isnan(result[[0, 4]]).all(), (holder, result)
            assert result[1] == -2.0 if op == "MIN" else result[2] == 3.0
            assert len(set(comm_world.allgather(result.tobytes()))) == 1


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_overwrite_with_gradient_variables_stay_equal_with_a_nan_gradient(mpi, comm_world):
    strategy, rank, size = mpi
    with strategy.scope():
        v = distopt.Variable(np.zeros(3), overwrite_with_gradient=True)
        w = distopt.Variable(np.zeros(3))
        opt = distopt.optimizers.SGD(learning_rate=0.1)
    grad = np.full(3, float(rank))
    if rank == size - 1:
        grad[0] = np.nan
    strategy.run(lambda: opt.apply_gradients([(grad, v), (np.ones(3), w)]))
    assert np.isnan(v.numpy()[0])
    np.testing.assert_array_equal(v.numpy()[1:], [size - 1.0] * 2)
    assert len(set(comm_world.allgather(v.numpy().tobytes()))) == 1
