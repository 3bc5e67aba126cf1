"""Mirrored state: variables and optimizers created under a scope are bound to its strategy."""

import numpy as np
import pytest

import distopt
from distopt.comm import LocalCommunicator
from distopt.distribute import MPIStrategy, Strategy


def state(opt, variables):
    return [v.numpy() for v in variables] + [v.numpy() for v in opt.variables]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture
def bound():
    strategy = Strategy(LocalCommunicator())
    with strategy.scope():
        v = distopt.Variable([1.0, 2.0], name="w")
        opt = distopt.optimizers.SGD(learning_rate=0.5, momentum=0.9)
    strategy.run(lambda: opt.apply_gradients([(np.ones(2), v)]))
    return strategy, v, opt


def test_variables_and_optimizers_are_bound(bound):
    strategy, v, opt = bound
    assert v._strategy is strategy and opt._strategy is strategy
    assert distopt.Variable(1.0)._strategy is None


def test_variable_created_in_run_is_bound():
    strategy = Strategy(LocalCommunicator())
    v = strategy.run(lambda: distopt.Variable(1.0))
    assert v._strategy is strategy


@pytest.mark.parametrize("where", ["no strategy", "other strategy", "other scope+run"])
def test_update_under_wrong_strategy_raises_and_changes_nothing(bound, where):
    strategy, v, opt = bound
    other = Strategy(LocalCommunicator())
    before = state(opt, [v])

    def step():
        opt.apply_gradients([(np.ones(2), v)])

    with pytest.raises(ValueError) as info:
        if where == "no strategy":
            step()
        elif where == "other strategy":
            other.run(step)
        else:
            with other.scope():
                other.run(step)
    text = str(info.value)
    assert f"Optimizer `{opt.name}` was created under the scope of {strategy!r}" in text
    assert ("under no strategy" in text) == (where == "no strategy")
    assert "strategy.run" in text
    assert_same(state(opt, [v]), before)


def test_unbound_optimizer_with_bound_variable_raises(bound):
    strategy, v, _ = bound
    opt = distopt.optimizers.SGD(learning_rate=0.5)
    before = v.numpy()
    with pytest.raises(ValueError, match="Variable `w` was created under the scope of"):
        opt.apply_gradients([(np.ones(2), v)])
    np.testing.assert_array_equal(v.numpy(), before)
    assert int(opt.iterations.value) == 0 and not opt.built


def test_skip_aggregation_still_requires_the_strategy(bound):
    _, v, opt = bound
    with pytest.raises(ValueError, match="was created under the scope of"):
        opt.apply_gradients([(np.ones(2), v)], skip_gradients_aggregation=True)


@pytest.mark.mpi
def test_mpi_wrong_strategy_raises_on_every_rank(comm_world):
    strategy = MPIStrategy()
    other = MPIStrategy()
    with strategy.scope():
        v = distopt.Variable(np.full(3, float(comm_world.rank)), name="w")
        opt = distopt.optimizers.SGD(learning_rate=1.0)
    np.testing.assert_array_equal(v.numpy(), np.zeros(3))  # rank 0's initial value
    strategy.run(lambda: opt.apply_gradients([(np.ones(3), v)]))
    np.testing.assert_array_equal(v.numpy(), np.full(3, -float(comm_world.size)))
    before = state(opt, [v])
    for runner in (lambda f: f(), other.run):
        with pytest.raises(ValueError, match="was created under the scope of"):
            runner(lambda: opt.apply_gradients([(np.ones(3), v)]))
    assert_same(state(opt, [v]), before)
    # Every rank raised, none is left in a collective: the strategy still works.
    strategy.run(lambda: opt.apply_gradients([(np.ones(3), v)]))
    np.testing.assert_array_equal(v.numpy(), np.full(3, -2.0 * comm_world.size))
