"""distopt.keras in one process: validation, config, data sharding, warmup (real Keras)."""

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
pytest.importorskip("keras")
if os.environ["KERAS_BACKEND"] not in ("jax", "torch", "tensorflow"):
    pytest.skip(
        "distopt.keras runs on the jax, torch and tensorflow backends", allow_module_level=True
    )
pytest.importorskip(os.environ["KERAS_BACKEND"])

import keras  # noqa: E402

import distopt  # noqa: E402
import distopt.keras as dk  # noqa: E402
from distopt.distribute import MPIStrategy, ReduceOp  # noqa: E402


def test_import_distopt_does_not_import_keras():
    code = "import sys, distopt, distopt.distribute; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_public_names_resolve():
    for name in dk.__all__:
        assert getattr(dk, name) is not None, name


@pytest.mark.parametrize(
    "bad, error, text",
    [
        (distopt.optimizers.Adam(), TypeError, "distopt.optimizers work on distopt.Variable"),
        (3, TypeError, "Received: optimizer=3"),
        ("no_such_optimizer", ValueError, "Received: optimizer='no_such_optimizer'"),
    ],
)
def test_bad_optimizer_argument(bad, error, text):
    with pytest.raises(error, match=text):
        dk.DistributedOptimizer(bad)


def test_wrapping_twice_and_base_arguments_are_rejected():
    with pytest.raises(ValueError, match="already a DistributedOptimizer"):
        dk.DistributedOptimizer(dk.DistributedOptimizer("sgd"))
    with pytest.raises(ValueError, match="set `clipnorm` on the wrapped optimizer"):
        dk.DistributedOptimizer("adam", clipnorm=1.0)


def test_summing_strategy_is_rejected():
    strategy = MPIStrategy(gradient_reduce_op=ReduceOp.SUM)
    try:
        with pytest.raises(ValueError, match="gradient_reduce_op=ReduceOp.MEAN"):
            dk.DistributedOptimizer("adam", strategy=strategy)
    finally:
        strategy.close()


def test_name_and_config_round_trip():
    opt = dk.DistributedOptimizer("adam")
    assert isinstance(opt.inner_optimizer, keras.optimizers.Adam)
    inner = keras.optimizers.SGD(learning_rate=0.3, momentum=0.5)
    opt = dk.DistributedOptimizer(inner, name="dist")
    blob = keras.saving.serialize_keras_object(opt)
    back = keras.saving.deserialize_keras_object(blob)
    assert type(back) is dk.DistributedOptimizer and back.name == "dist"
    assert back.inner_optimizer.get_config() == inner.get_config()
    assert float(back.learning_rate) == pytest.approx(0.3)


def _variables():
    return [keras.Variable(np.arange(6.0).reshape(2, 3), name="w"), keras.Variable([1.0, -1.0])]


def _values(variables):
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]


def test_one_process_step_equals_the_inner_optimizers():
    grads = [np.full((2, 3), 0.5, "float32"), np.array([1.0, 2.0], "float32")]
    plain, wrapped = _variables(), _variables()
    keras.optimizers.Adam(0.1).apply(grads, plain)
    opt = dk.DistributedOptimizer(keras.optimizers.Adam(0.1))
    opt.build(wrapped)
    paths = [v.path for v in opt.variables]
    it = opt.apply_gradients(zip(grads, wrapped))
    assert [v.path for v in opt.variables] == paths  # a step adds no tracked variable
    for a, b in zip(_values(plain), _values(wrapped)):
        np.testing.assert_array_equal(a, b)
    assert int(keras.ops.convert_to_numpy(it)) == 1


def test_bad_gradients_change_nothing():
    variables = _variables()
    opt = dk.DistributedOptimizer(keras.optimizers.Adam(0.1))
    opt.build(variables)
    before, state = _values(variables), _values(opt.variables)
    with pytest.raises(ValueError, match="Received 1 gradients for 2 variables"):
        opt.apply([np.ones((2, 3), "float32")], variables)
    with pytest.raises(ValueError, match="Received 1 gradients for 2 variables"):
        opt.apply([np.ones((2, 3), "float32")])
    for a, b in zip(before + state, _values(variables) + _values(opt.variables)):
        np.testing.assert_array_equal(a, b)


def test_unsupported_gradient_dtype_is_named():
    v = keras.Variable(np.ones(3), dtype="float32", name="w")
    opt = dk.DistributedOptimizer(keras.optimizers.SGD(0.1))
    opt.build([v])
    with pytest.raises(TypeError, match="gradient of `0:.*w` has dtype int32"):
        opt.apply([keras.ops.convert_to_tensor(np.ones(3, "int32"))], [v])
    np.testing.assert_array_equal(_values([v])[0], np.ones(3))


def test_stateless_apply_needs_build():
    opt = dk.DistributedOptimizer("sgd")
    with pytest.raises(ValueError, match="must be built"):
        opt.stateless_apply([], [], [])


def test_shard_arrays_interleaves_global_batches():
    x = np.arange(29)
    with pytest.warns(UserWarning, match="the last 1 rows are dropped"):
        shards = [dk.shard_arrays(x, batch_size=4, rank=r, size=2) for r in range(2)]
    # Global batches of 8: rank 0 takes rows 0-3, 16-19 and 24-25; rank 1 takes 4-7, ...
    np.testing.assert_array_equal(shards[0], [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25])
    np.testing.assert_array_equal(shards[1], [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 26, 27])
    a, b = dk.shard_arrays(x, x * 2, batch_size=3, rank=1, size=3)
    np.testing.assert_array_equal(b, a * 2)


@pytest.mark.parametrize(
    "args, kwargs, error, text",
    [
        ((np.ones(4),), {"batch_size": 0}, ValueError, "Received: batch_size=0"),
        ((np.ones(4), np.ones(5)), {"batch_size": 1}, ValueError, r"lengths \[4, 5\]"),
        ((np.ones(4),), {"batch_size": 1, "rank": 2, "size": 2}, ValueError, r"\[0, 2\)"),
        ((), {"batch_size": 1}, TypeError, "at least one array"),
    ],
)
def test_shard_arrays_errors(args, kwargs, error, text):
    with pytest.raises(error, match=text):
        dk.shard_arrays(*args, **kwargs)


def test_sharded_py_dataset_takes_every_nth_batch():
    batches = [(np.full((2, 1), i), np.full((2,), i)) for i in range(7)]
    with pytest.warns(UserWarning, match="the last 1 are dropped"):
        shard = dk.ShardedPyDataset(batches, rank=1, size=3)
    assert len(shard) == 2
    assert [int(shard[i][1][0]) for i in range(2)] == [1, 4]
    with pytest.raises(IndexError):
        shard[2]
    with pytest.raises(TypeError, match="sequence of batches"):
        dk.ShardedPyDataset(iter(batches), rank=0, size=1)


def test_warmup_schedule_ramps_then_follows():
    schedule = dk.WarmupSchedule(0.4, warmup_steps=4, initial_learning_rate=0.1)
    values = [float(schedule(step)) for step in (0, 2, 4, 10)]
    np.testing.assert_allclose(values, [0.1, 0.25, 0.4, 0.4], rtol=1e-6)
    back = dk.WarmupSchedule.from_config(schedule.get_config())
    assert float(back(2)) == pytest.approx(0.25)
    decay = keras.optimizers.schedules.ExponentialDecay(0.4, decay_steps=10, decay_rate=0.5)
    nested = dk.WarmupSchedule(decay, warmup_steps=2, initial_learning_rate=0.0)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(nested))
    assert float(again(10)) == pytest.approx(0.2)
    assert float(dk.WarmupSchedule(0.4, warmup_steps=4)(0)) == pytest.approx(0.4 / dk.size())
    with pytest.raises(ValueError, match="Received: warmup_steps=0"):
        dk.WarmupSchedule(0.1, warmup_steps=0)
    with pytest.raises(TypeError, match="Received: learning_rate='x'"):
        dk.WarmupSchedule("x", warmup_steps=2)
