"""Issue 2's end-to-end guarantees, under a real mpiexec at every world size."""

import sys
from pathlib import Path

import numpy as np
import pytest

import distopt
from distopt.distribute import MPIStrategy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
import mlp_classification as example  # noqa: E402

pytestmark = pytest.mark.mpi


def _rank_grad(rank):
    return np.array([rank + 1, 10 * (rank + 1)], dtype=np.float64)


def test_sgd_sums_gradients_across_ranks(comm_world):
    strategy = MPIStrategy()
    with strategy.scope():
        v = distopt.Variable([0.0, 0.0], dtype="float64")
        opt = distopt.optimizers.SGD(learning_rate=1.0)
    it = strategy.run(lambda: opt.apply_gradients([(_rank_grad(comm_world.rank), v)]))
    n = comm_world.size
    expected = -sum(_rank_grad(r) for r in range(n))  # 2 ranks: [-3, -30]
    np.testing.assert_array_equal(v.numpy(), expected)
    assert int(it.value) == 1 and it is opt.iterations
    assert comm_world.allgather(v.numpy().tobytes()) == [v.numpy().tobytes()] * n


@pytest.mark.parametrize(
    "kwargs", [{"skip_gradients_aggregation": True}, {"experimental_aggregate_gradients": False}]
)
def test_skip_aggregation_keeps_local_gradient(comm_world, kwargs):
    strategy = MPIStrategy()
    with strategy.scope():
        v = distopt.Variable([0.0, 0.0], dtype="float64")
        opt = distopt.optimizers.SGD(learning_rate=1.0)
    strategy.run(lambda: opt.apply_gradients([(_rank_grad(comm_world.rank), v)], **kwargs))
    np.testing.assert_array_equal(v.numpy(), -_rank_grad(comm_world.rank))


def test_cross_replica_context_raises_on_every_rank(comm_world):
    strategy = MPIStrategy()
    with strategy.scope():
        v = distopt.Variable([1.0, 2.0], dtype="float64")
        opt = distopt.optimizers.Adam()
        with pytest.raises(RuntimeError, match=r"cannot be called in cross-replica context"):
            opt.apply_gradients([(np.ones(2), v)])
        with pytest.raises(RuntimeError, match=r"Use `Strategy.run` to enter replica context"):
            opt.apply_gradients([(np.ones(2), v)], skip_gradients_aggregation=True)
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
    assert not opt.built and int(opt.iterations.value) == 0
    # Every rank raised and none is stuck in a collective: the next collective completes.
    assert comm_world.allreduce(1) == comm_world.size


def test_scope_variables_start_from_rank_zero(comm_world):
    strategy = MPIStrategy()
    with strategy.scope():
        v = distopt.Variable(np.full(3, float(comm_world.rank)), dtype="float64")
    np.testing.assert_array_equal(v.numpy(), np.zeros(3))


def test_gradient_buffers_are_reduced_in_place(comm_world):
    strategy = MPIStrategy()
    with strategy.scope():
        a = distopt.Variable(np.zeros((2, 3)), dtype="float64")
        b = distopt.Variable(np.zeros(4), dtype="float32")
        opt = distopt.optimizers.SGD(learning_rate=1.0)
    ga, gb = strategy.gradient_buffers([a, b])
    ga[...] = comm_world.rank + 1
    gb[...] = 2 * (comm_world.rank + 1)
    strategy.run(lambda: opt.apply_gradients(zip([ga, gb], [a, b])))
    total = comm_world.size * (comm_world.size + 1) / 2
    np.testing.assert_array_equal(a.numpy(), -np.full((2, 3), total))
    np.testing.assert_array_equal(b.numpy(), -np.full(4, 2 * total, dtype=np.float32))


def test_example_n_ranks_equals_one_process(comm_world):
    """Training on 1/N of each batch per rank equals one process on the whole batch."""
    from mpi4py import MPI

    weights_n, losses_n = example.train(MPIStrategy(), epochs=3, log=None)
    weights_1, losses_1 = example.train(MPIStrategy(comm=MPI.COMM_SELF), epochs=3, log=None)
    for wn, w1 in zip(weights_n, weights_1):
        np.testing.assert_allclose(wn.numpy(), w1.numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(losses_n, losses_1, rtol=1e-12)
    digests = comm_world.allgather(example.weights_digest(weights_n))
    assert digests == [digests[0]] * comm_world.size
    assert example.accuracy(weights_n) > 0.9
