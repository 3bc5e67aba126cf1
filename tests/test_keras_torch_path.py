"""The torch backend's averaging path: cached bucket views after the first step, exact
means, and the general path again whenever shapes, dtypes or the plan change (real MPI at
any size; run under mpiexec for 2+ ranks)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("keras")

from distopt.distribute import CollectiveMismatchError, MPIStrategy, ReduceOp  # noqa: E402
from distopt.keras import _backends, _runtime  # noqa: E402

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]
SHAPES = [(3, 4), (5,), (2, 3, 2), (7,)]


@pytest.fixture
def aggregator():
    strategy = MPIStrategy(gradient_reduce_op=ReduceOp.MEAN)
    yield _runtime.GradientAggregator(strategy)
    strategy.close()


def _grads(rank, step, shapes=SHAPES, dtype=torch.float32):
    return [
        torch.arange(int(np.prod(s)), dtype=dtype).reshape(s) * (rank + 1) + step + i
        for i, s in enumerate(shapes)
    ]


def _expected(size, step, shapes=SHAPES, dtype="float32"):
    """The numpy path's mean of every rank's `_grads`: summed in rank order, then divided."""
    out = []
    for i, s in enumerate(shapes):
        total = np.zeros(s, dtype)
        for r in range(size):
            total += _grads(r, step, shapes, getattr(torch, dtype))[i].numpy()
        out.append(total / np.array(size, dtype) if size > 1 else total)
    return out


def _step(agg, names, grads):
    reduced, release = _backends._torch_allreduce(agg, names, grads)
    try:
        return [t.clone() for t in reduced], reduced
    finally:
        release()


def test_later_steps_reuse_bucket_views_and_stay_exact(aggregator):
    comm = aggregator.strategy.communicator
    names = [f"{i}:w{i}" for i in range(len(SHAPES))]
    seen = []
    for step in range(4):
        values, tensors = _step(aggregator, names, _grads(comm.rank, step))
        seen.append(tensors)
        for got, want in zip(values, _expected(comm.size, step)):
            assert tuple(got.shape) == want.shape and got.dtype == torch.float32
            np.testing.assert_array_equal(got.numpy(), want)
    # From the second step on, no tensor is made per gradient: the same views come back.
    for later in seen[2:]:
        assert all(a is b for a, b in zip(later, seen[1]))


def test_non_contiguous_gradients_are_copied_right(aggregator):
    comm = aggregator.strategy.communicator
    names = ["0:a", "1:b"]
    shapes = [(3, 4), (2, 6)]
    for step in range(3):
        # same shapes, column-major strides
        grads = [g.t().contiguous().t() for g in _grads(comm.rank, step, shapes)]
        assert not grads[0].is_contiguous()
        values, _ = _step(aggregator, names, grads)
        assert [tuple(v.shape) for v in values] == shapes
        for got, want in zip(values, _expected(comm.size, step, shapes)):
            np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize(
    "second",
    [
        {"shapes": [(1,), (5,), (2, 3, 2), (7,)]},  # `copy_` would broadcast (1,) into (3, 4)
        {"dtype": "float64"},  # `copy_` would round into the float32 buckets
    ],
)
def test_other_shapes_or_dtypes_take_the_general_path(aggregator, second):
    comm = aggregator.strategy.communicator
    names = [f"{i}:w{i}" for i in range(len(SHAPES))]
    for step in range(2):
        _step(aggregator, names, _grads(comm.rank, step))
    shapes, dtype = second.get("shapes", SHAPES), second.get("dtype", "float32")
    values, _ = _step(aggregator, names, _grads(comm.rank, 2, shapes, getattr(torch, dtype)))
    for got, want in zip(values, _expected(comm.size, 2, shapes, dtype)):
        assert tuple(got.shape) == want.shape and got.numpy().dtype == want.dtype
        np.testing.assert_array_equal(got.numpy(), want)
    # and back: the first list's views are found again, still exact
    values, _ = _step(aggregator, names, _grads(comm.rank, 3))
    for got, want in zip(values, _expected(comm.size, 3)):
        np.testing.assert_array_equal(got.numpy(), want)


def test_a_rank_changing_shapes_on_the_cached_path_fails_on_every_rank(aggregator):
    comm = aggregator.strategy.communicator
    if comm.size < 2:
        pytest.skip("needs 2 or more ranks")
    names = [f"{i}:w{i}" for i in range(len(SHAPES))]
    for step in range(2):
        _step(aggregator, names, _grads(comm.rank, step))
    shapes = [(12,), (5,), (2, 3, 2), (7,)] if comm.rank == 0 else SHAPES
    with pytest.raises(CollectiveMismatchError):
        _step(aggregator, names, _grads(comm.rank, 2, shapes))
