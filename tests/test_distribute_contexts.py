"""Replica / cross-replica contexts: the tf.distribute table of cases (docs/semantics.md)."""

import threading

import numpy as np
import pytest

import distopt
from distopt.comm import LocalCommunicator
from distopt.distribute import (
    MPIStrategy,
    ReplicaContext,
    Strategy,
    get_replica_context,
    get_strategy,
    has_strategy,
    in_cross_replica_context,
)


def snapshot():
    ctx = get_replica_context()
    return (
        get_strategy(),
        has_strategy(),
        None
        if ctx is None
        else (ctx.strategy, ctx.replica_id_in_sync_group, ctx.num_replicas_in_sync),
        in_cross_replica_context(),
    )


@pytest.fixture
def strategy():
    return Strategy(LocalCommunicator())


@pytest.fixture
def other():
    return Strategy(LocalCommunicator())


def test_default_context():
    default = get_strategy()
    assert default._is_default and default.num_replicas_in_sync == 1
    assert snapshot() == (default, False, (default, 0, 1), False)
    assert isinstance(get_replica_context(), ReplicaContext)


def test_table_of_cases(strategy):
    default = get_strategy()
    rows = {}
    with strategy.scope():
        rows["scope"] = snapshot()
        with strategy.scope():
            rows["scope in scope"] = snapshot()
        rows["run in scope"] = strategy.run(snapshot)
        rows["merge_call in run"] = strategy.run(
            lambda: get_replica_context().merge_call(lambda s: snapshot())
        )
    rows["run"] = strategy.run(snapshot)
    rows["default.run"] = default.run(snapshot)
    with default.scope():
        rows["default.scope"] = snapshot()
    rows["after"] = snapshot()
    replica = (strategy, 0, 1)
    assert rows == {
        "scope": (strategy, True, None, True),
        "scope in scope": (strategy, True, None, True),
        "run in scope": (strategy, True, replica, False),
        "merge_call in run": (strategy, True, None, True),
        "run": (strategy, True, replica, False),
        "default.run": (default, False, (default, 0, 1), False),
        "default.scope": (default, False, (default, 0, 1), False),
        "after": (default, False, (default, 0, 1), False),
    }


def test_merge_call_passes_strategy_and_arguments(strategy):
    got = strategy.run(
        lambda: get_replica_context().merge_call(
            lambda s, a, b=0: (s, a, b), args=(1,), kwargs={"b": 2}
        )
    )
    assert got == (strategy, 1, 2)


def test_run_passes_args_and_kwargs(strategy):
    assert strategy.run(lambda a, b=0: a + b, args=(1,), kwargs={"b": 2}) == 3
    assert strategy.run(lambda a: a, args=[5]) == 5


def test_exception_restores_the_context(strategy):
    before = snapshot()
    with pytest.raises(KeyError):
        with strategy.scope():
            strategy.run(lambda: (_ for _ in ()).throw(KeyError("x")))
    assert snapshot() == before
    with pytest.raises(ZeroDivisionError):
        strategy.run(lambda: get_replica_context().merge_call(lambda s: 1 / 0))
    assert snapshot() == before


def test_contexts_are_thread_local(strategy):
    seen = {}

    def worker():
        seen["thread"] = snapshot()

    with strategy.scope():
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        seen["main"] = snapshot()
    default = get_strategy()
    assert seen["thread"] == (default, False, (default, 0, 1), False)
    assert seen["main"] == (strategy, True, None, True)


def test_threads_keep_separate_stacks(strategy, other):
    barrier = threading.Barrier(2)
    seen = {}

    def worker(s, key):
        with s.scope():
            barrier.wait()
            seen[key] = s.run(snapshot)
            barrier.wait()

    threads = [
        threading.Thread(target=worker, args=(s, k)) for s, k in ((strategy, "a"), (other, "b"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["a"][0] is strategy and seen["b"][0] is other


MIXING = "Mixing different distopt.distribute.Strategy objects"
CROSS = "requires the cross-replica context"


@pytest.mark.parametrize(
    "enter, call, message",
    [
        ("scope", lambda s, o: o.scope().__enter__(), MIXING),
        ("scope", lambda s, o: o.run(lambda: None), MIXING),
        ("scope", lambda s, o: o.reduce("SUM", 1.0), MIXING),
        ("scope", lambda s, o: o.broadcast(1.0), MIXING),
        ("scope", lambda s, o: o.experimental_distribute_dataset([]), MIXING),
        ("scope", lambda s, o: _default_scope(), "Must not nest"),
        ("run", lambda s, o: s.scope().__enter__(), CROSS),
        ("run", lambda s, o: s.run(lambda: None), CROSS),
        ("run", lambda s, o: s.reduce("SUM", 1.0), CROSS),
        ("run", lambda s, o: o.run(lambda: None), MIXING),
        ("run", lambda s, o: _default_scope(), "Must not nest"),
    ],
)
def test_nesting_errors(strategy, other, enter, call, message):
    def attempt():
        before = snapshot()
        with pytest.raises(RuntimeError, match=message) as info:
            call(strategy, other)
        assert snapshot() == before
        return str(info.value)

    if enter == "scope":
        with strategy.scope():
            text = attempt()
    else:
        text = strategy.run(attempt)
    assert repr(strategy) in text or "default" in text
    assert snapshot()[0]._is_default


def _default_scope():
    from distopt.distribute._strategy import _default_strategy

    with _default_strategy().scope():
        pass


def test_replica_context_methods_outside_their_context(strategy):
    ctx = strategy.run(get_replica_context)
    with pytest.raises(RuntimeError, match="must be called in its own replica context"):
        ctx.merge_call(lambda s: None)
    with pytest.raises(RuntimeError, match="cross-replica context"):
        with strategy.scope():
            ctx.all_reduce("SUM", 1.0)
    with pytest.raises(TypeError, match="`merge_fn` must be callable"):
        strategy.run(lambda: get_replica_context().merge_call(3))


@pytest.mark.parametrize(
    "fn, args, kwargs, message",
    [
        (3, (), None, "Argument `fn` must be callable. Received: fn=3"),
        (len, 5, None, "Argument `args` must be a tuple or list. Received: args=5"),
        (len, (), [1], r"Argument `kwargs` must be a dict. Received: kwargs=\[1\]"),
    ],
)
def test_run_bad_arguments(strategy, fn, args, kwargs, message):
    before = snapshot()
    with pytest.raises(TypeError, match=message):
        strategy.run(fn, args, kwargs)
    assert snapshot() == before


def test_apply_gradients_in_cross_replica_context_raises(strategy):
    with strategy.scope():
        v = distopt.Variable([1.0, 2.0])
        opt = distopt.optimizers.SGD(learning_rate=0.1)
        with pytest.raises(RuntimeError) as info:
            opt.apply_gradients([(np.ones(2), v)])
    assert str(info.value) == (
        "`apply_gradients()` cannot be called in cross-replica context. Use `Strategy.run` to "
        "enter replica context. For more information, please see the docstring of "
        "`distopt.distribute.get_replica_context`."
    )
    np.testing.assert_array_equal(v.numpy(), [1.0, 2.0])
    assert int(opt.iterations.value) == 0


def test_experimental_local_results(strategy):
    assert strategy.experimental_local_results(3) == (3,)


@pytest.mark.mpi
def test_mpi_replica_context_ids(comm_world):
    strategy = MPIStrategy()
    ctx = strategy.run(get_replica_context)
    assert ctx.replica_id_in_sync_group == comm_world.rank
    assert ctx.num_replicas_in_sync == comm_world.size == strategy.num_replicas_in_sync
    assert strategy.run(lambda: get_replica_context().all_reduce("SUM", 1)) == comm_world.size
    with strategy.scope():
        assert get_replica_context() is None and in_cross_replica_context()
        assert get_strategy() is strategy and has_strategy()
    total = strategy.run(
        lambda: get_replica_context().merge_call(lambda s, x: s.reduce("SUM", x), args=(2.0,))
    )
    assert total == 2.0 * comm_world.size
