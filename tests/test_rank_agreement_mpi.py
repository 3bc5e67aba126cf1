"""Ranks that disagree about an optimizer's config, or about skipping aggregation, all raise
at once (not at the deadline), and nothing changes. Rank 1 is the odd one out; every test
runs at 2, 3 and 4 ranks (tests/run_all.py)."""

import time

import numpy as np
import pytest

import distopt
from distopt.distribute import CollectiveMismatchError, MPIStrategy
from distopt.optimizers import SGD, Adam, LossScaleOptimizer

pytestmark = pytest.mark.mpi(min_size=2)
QUICK = 20  # seconds: far below the strategy's 60 s deadline


@pytest.fixture
def world(comm_world):
    strategy = MPIStrategy(collective_timeout=60)
    yield strategy, comm_world.rank, comm_world.size
    strategy.close()


def others(size):
    rest = [str(r) for r in range(size) if r != 1]
    return ("rank " if len(rest) == 1 else "ranks ") + ", ".join(rest)


def raises_quickly(strategy, fn):
    start = time.monotonic()
    with pytest.raises(CollectiveMismatchError) as info:
        strategy.run(fn)
    assert time.monotonic() - start < QUICK
    return str(info.value)


def still_aligned(strategy, size):
    v = distopt.Variable(np.zeros(2))
    opt = SGD(learning_rate=1.0)
    strategy.run(lambda: opt.apply_gradients([(np.ones(2), v)]))
    np.testing.assert_array_equal(v.numpy(), -np.full(2, float(size)))


@pytest.mark.timeout(60)
def test_different_hyperparameters_raise_at_build(world):
    strategy, rank, size = world
    with strategy.scope():
        w = distopt.Variable(np.ones(3), name="w")
        opt = Adam(learning_rate=0.5 if rank == 1 else 0.25, beta_2=0.999, amsgrad=rank == 1)
    text = raises_quickly(strategy, lambda: opt.apply_gradients([(np.ones(3), w)]))
    assert "Ranks disagree about `optimizer hyperparameters`" in text
    assert f"`learning_rate`: {others(size)}: 0.25; rank 1: 0.5" in text
    assert f"`amsgrad`: {others(size)}: false; rank 1: true" in text
    assert "beta_2" not in text and "`name`" not in text
    assert text.endswith("Create each optimizer with the same arguments on every rank.")
    np.testing.assert_array_equal(w.numpy(), np.ones(3))
    assert not opt.built and int(opt.iterations.numpy()) == 0
    still_aligned(strategy, size)


@pytest.mark.timeout(60)
def test_different_optimizers_and_wrapped_configs(world):
    strategy, rank, size = world
    with strategy.scope():
        w = distopt.Variable(np.ones(3), name="w")
        inner = SGD(momentum=0.9 if rank == 1 else 0.0)
        opt = LossScaleOptimizer(inner)
    before = len(opt.variables)
    text = raises_quickly(strategy, lambda: opt.apply_gradients([(np.ones(3), w)]))
    assert f"`inner_optimizer.config.momentum`: {others(size)}: 0.0; rank 1: 0.9" in text
    assert len(opt.variables) == before and not opt.built and not inner.built
    with strategy.scope():
        odd = SGD() if rank == 1 else Adam()
    with pytest.raises(CollectiveMismatchError) as info:
        with strategy.scope():
            odd.build([w])  # an explicit build is checked too
    assert f'`class_name`: {others(size)}: "Adam"; rank 1: "SGD"' in str(info.value)
    assert f"`beta_1`: {others(size)}: 0.9; rank 1: not set" in str(info.value)
    still_aligned(strategy, size)


@pytest.mark.timeout(60)
def test_equal_configs_with_different_names_build(world):
    strategy, rank, size = world
    if rank == 1:
        SGD()  # shifts the automatic names of later optimizers on this rank only
    with strategy.scope():
        w = distopt.Variable(np.zeros(2))
        opt = SGD(learning_rate=1.0)
    strategy.run(lambda: opt.apply_gradients([(np.ones(2), w)]))
    np.testing.assert_array_equal(w.numpy(), -np.full(2, float(size)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("accumulate", [None, 2])
def test_skipping_aggregation_on_one_rank_raises_at_that_step(world, accumulate):
    strategy, rank, size = world
    with strategy.scope():
        w = distopt.Variable(np.zeros(2), name="w")
        opt = SGD(learning_rate=1.0, gradient_accumulation_steps=accumulate)

    def step(skip):
        opt.apply_gradients([(np.ones(2), w)], skip_gradients_aggregation=skip)

    for _ in range((accumulate or 1) - 1):  # accumulation steps exchange nothing
        strategy.run(step, args=(rank == 1,))
    before = w.numpy()
    text = raises_quickly(strategy, lambda: step(rank == 1))
    assert "Ranks disagree about `gradient aggregation`" in text
    assert (
        f"options: {others(size)}: skip_gradients_aggregation=False; "
        "rank 1: skip_gradients_aggregation=True"
    ) in text
    np.testing.assert_array_equal(w.numpy(), before)
    still_aligned(strategy, size)


@pytest.mark.timeout(60)
def test_skipping_on_every_rank_applies_local_gradients(world):
    strategy, rank, size = world
    with strategy.scope():
        w = distopt.Variable(np.zeros(2))
        opt = SGD(learning_rate=1.0)
    for legacy in (False, True):
        kwargs = (
            {"experimental_aggregate_gradients": False}
            if legacy
            else {"skip_gradients_aggregation": True}
        )
        g = np.full(2, float(rank + 1))
        strategy.run(lambda g=g, kwargs=kwargs: opt.apply_gradients([(g, w)], **kwargs))
    np.testing.assert_array_equal(w.numpy(), -np.full(2, 2.0 * (rank + 1)))
    still_aligned(strategy, size)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("finite", [True, False])
def test_loss_scale_optimizer_skipping_on_one_rank(world, finite):
    strategy, rank, size = world
    with strategy.scope():
        w = distopt.Variable(np.zeros(2), name="w")
        opt = LossScaleOptimizer(SGD(learning_rate=1.0))
    g = np.ones(2) if finite or rank != 1 else np.array([np.inf, 1.0])
    strategy.run(lambda: opt.apply_gradients([(np.ones(2), w)]))  # built on every rank
    before, scale = w.numpy(), float(opt.dynamic_scale.numpy())
    text = raises_quickly(
        strategy, lambda: opt.apply_gradients([(g, w)], skip_gradients_aggregation=rank == 1)
    )
    assert "rank 1: skip_gradients_aggregation=True" in text
    np.testing.assert_array_equal(w.numpy(), before)
    assert float(opt.dynamic_scale.numpy()) == scale
    still_aligned(strategy, size)
