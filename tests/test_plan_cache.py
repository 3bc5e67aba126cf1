"""The strategy's bucket plans: LRU within a byte budget, freed (windows included) when
evicted, when their variables are gone, and at close(); never while their arrays are used."""

import gc

import numpy as np
import pytest

import distopt
from distopt.comm import LocalCommunicator
from distopt.distribute import MPIStrategy, Strategy

NUM, SIZE = 40, 100_000  # 16 MB of float32 variables; each None pattern's plan ~8 MB
BUDGET = 24 << 20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _windows(strategy) -> int:
    return len(getattr(strategy._reducer, "_shared", {}))


def _model(strategy, num=NUM, size=SIZE):
    with strategy.scope():
        variables = [distopt.Variable(np.zeros(size, np.float32)) for _ in range(num)]
        opt = distopt.optimizers.SGD(learning_rate=1.0)
    return variables, opt


@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "mpi"])
def test_a_none_pattern_per_step_keeps_plans_windows_and_rss_bounded(comm_world, shared_memory):
    rank, size = comm_world.Get_rank(), comm_world.Get_size()
    strategy = MPIStrategy(shared_memory=shared_memory)
    strategy._plan_cache.budget_bytes = BUDGET
    variables, opt = _model(strategy)
    rng = np.random.default_rng(7)  # the same pattern on every rank
    expected = np.zeros(NUM, np.float32)
    total = np.float32(size * (size + 1) // 2)
    grads = [np.full(SIZE, rank + 1, np.float32) for _ in variables]
    rss = []
    for step in range(40):
        mask = rng.random(NUM) < 0.5
        mask[step % NUM] = True
        pairs = [(g if m else None, v) for m, g, v in zip(mask, grads, variables)]
        strategy.run(lambda p=pairs: opt.apply_gradients(p))
        expected[mask] -= total
        cache = strategy._plan_cache
        assert cache.nbytes <= BUDGET and len(cache) <= BUDGET // (SIZE * 4 * 10)
        if shared_memory and size > 1:  # evicted plans' windows are gone
            assert _windows(strategy) == len(cache)
        if step in (4, 39):
            rss.append(_rss_bytes())
    # Unbounded, 35 more plans of ~8 MB (plus windows) would stay mapped.
    assert rss[1] - rss[0] < 64 << 20, [r >> 20 for r in rss]
    for v, want in zip(variables, expected):
        np.testing.assert_array_equal(v.numpy(), np.full(SIZE, want))
    strategy.close()
    assert len(strategy._plan_cache) == 0 and strategy._safety._gradient_signatures == {}


@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "mpi"])
def test_plans_of_variables_that_are_gone_are_freed(comm_world, shared_memory):
    size = comm_world.Get_size()
    strategy = MPIStrategy(shared_memory=shared_memory)
    for _ in range(6):  # a model re-created on one strategy
        variables, opt = _model(strategy, num=3, size=1000)
        grads = [np.ones(1000, np.float32)] * 3
        strategy.run(lambda o=opt, g=grads, vs=variables: o.apply_gradients(zip(g, vs)))
        # The previous model's plan goes once Python has collected its variables (the
        # strategy held them strongly until this new list came).
        assert len(strategy._plan_cache) <= 2
        if shared_memory and size > 1:
            assert _windows(strategy) == len(strategy._plan_cache)
        np.testing.assert_array_equal(variables[0].numpy(), np.full(1000, -size, np.float32))
        del variables, opt, grads
        gc.collect()
    strategy.close()


@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_gradient_buffers_in_use_keep_their_plan(comm_world):
    rank, size = comm_world.Get_rank(), comm_world.Get_size()
    strategy = MPIStrategy()
    strategy._plan_cache.budget_bytes = 1  # every other plan is evicted at once
    variables, opt = _model(strategy, num=4, size=2000)
    buffers = strategy.gradient_buffers(variables)
    plan = strategy._cached_plan(variables)
    for k in range(3):  # other lists come and go
        pairs = [
            (np.ones(2000, np.float32) if i == k else None, v) for i, v in enumerate(variables)
        ]
        strategy.run(lambda p=pairs: opt.apply_gradients(p))
    assert strategy._cached_plan(variables) is plan
    for b in buffers:
        b[...] = rank + 1
    strategy.run(lambda bs=buffers: opt.apply_gradients(zip(bs, variables)))
    total = size * (size + 1) // 2
    np.testing.assert_array_equal(variables[3].numpy(), np.full(2000, -total, np.float32))
    strategy.close()


def test_least_recently_used_plan_goes_first():
    strategy = Strategy(LocalCommunicator())
    with strategy.scope():
        a, b, c = ([distopt.Variable(np.zeros(1000, np.float32))] for _ in range(3))
    strategy._plan_cache.budget_bytes = 2 * 4000  # two plans
    for var_list in (a, b, a, c):
        strategy._reduce_gradients([np.ones(1000, np.float32)], var_list)
    assert strategy._cached_plan(a) is not None and strategy._cached_plan(c) is not None
    assert strategy._cached_plan(b) is None
    assert strategy._plan_cache.nbytes == 8000 and len(strategy._plan_cache) == 2


def test_a_list_whose_ids_were_reused_is_not_a_hit():
    strategy = Strategy(LocalCommunicator())
    first = [distopt.Variable(np.zeros(3, np.float32))]
    plan = strategy._plan_for(first)
    ids = [id(v) for v in first]
    del first
    gc.collect()
    again = [distopt.Variable(np.zeros(3, np.float32)) for _ in range(50)]
    reused = [v for v in again if id(v) == ids[0]]
    if reused:
        assert strategy._cached_plan(reused) is None
    assert strategy._plan_for(again[:1]) is not plan
