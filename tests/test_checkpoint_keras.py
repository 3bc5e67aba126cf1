"""Keras 3 interop: a real Keras model's optimizer state moves to distopt and back."""

import importlib.util
import os

import numpy as np
import pytest

import distopt
from distopt.checkpoint import (
    CheckpointError,
    load_keras_optimizer_state,
    read_keras_optimizer_variables,
    save_keras_optimizer_state,
)

if "KERAS_BACKEND" not in os.environ:
    for backend in ("jax", "torch"):
        if importlib.util.find_spec(backend):
            os.environ["KERAS_BACKEND"] = backend
            break
keras = pytest.importorskip("keras")
pytest.importorskip("h5py")


def _keras_model(optimizer):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _fit(model, steps=3):
    rng = np.random.default_rng(1)
    x, y = rng.random((8 * steps, 4), np.float32), rng.random((8 * steps, 2), np.float32)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, shuffle=False)


def _grads(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


@pytest.mark.parametrize("file", ["model.weights.h5", "model.keras"])
@pytest.mark.parametrize(
    "make", [lambda k: k.Adam(0.01), lambda k: k.SGD(0.05, momentum=0.9)], ids=["adam", "sgd"]
)
def test_keras_state_continues_in_distopt(tmp_path, file, make):
    model = _keras_model(make(keras.optimizers))
    _fit(model)
    path = tmp_path / file
    model.save(path) if file.endswith(".keras") else model.save_weights(path)
    saved = read_keras_optimizer_variables(path)
    assert [a.shape for a in saved] == [tuple(v.shape) for v in model.optimizer.variables]
    weights = [distopt.Variable(v.numpy()) for v in model.trainable_variables]
    optimizer = make(distopt.optimizers)
    optimizer.build(weights)
    load_keras_optimizer_state(path, optimizer)
    for ours, theirs in zip(optimizer.variables, model.optimizer.variables):
        assert np.array_equal(ours.numpy(), keras.ops.convert_to_numpy(theirs))
    for step in range(3):  # the same gradients in both: the same weights
        grads = _grads([w.shape for w in weights], step)
        tensors = [keras.ops.convert_to_tensor(g) for g in grads]
        model.optimizer.apply_gradients(zip(tensors, model.trainable_variables))
        optimizer.apply_gradients(zip(grads, weights))
    for ours, theirs in zip(weights, model.trainable_variables):
        np.testing.assert_allclose(ours.numpy(), keras.ops.convert_to_numpy(theirs), rtol=1e-6)


@pytest.mark.parametrize("file", ["model.weights.h5", "model.keras"])
def test_distopt_state_continues_in_keras(tmp_path, file):
    model = _keras_model(keras.optimizers.Adam(0.01))
    model.optimizer.build(model.trainable_variables)
    weights = [distopt.Variable(v.numpy()) for v in model.trainable_variables]
    optimizer = distopt.optimizers.Adam(0.01)
    for step in range(4):
        optimizer.apply_gradients(zip(_grads([w.shape for w in weights], step), weights))
    model.set_weights([w.numpy() for w in weights])
    path = tmp_path / file
    model.save(path) if file.endswith(".keras") else model.save_weights(path)
    save_keras_optimizer_state(path, optimizer)
    restored = _keras_model(keras.optimizers.Adam(0.01))
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(path)
    for ours, theirs in zip(optimizer.variables, restored.optimizer.variables):
        assert np.array_equal(ours.numpy(), keras.ops.convert_to_numpy(theirs)), ours.path
    for ours, theirs in zip(weights, restored.trainable_variables):
        assert np.array_equal(ours.numpy(), keras.ops.convert_to_numpy(theirs))


def test_state_that_does_not_correspond_is_a_clear_error(tmp_path):
    model = _keras_model(keras.optimizers.Adam(0.01))
    _fit(model)
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    weights = [distopt.Variable(v.numpy()) for v in model.trainable_variables]
    sgd = distopt.optimizers.SGD(0.01, momentum=0.9)
    sgd.build(weights)
    before = [v.numpy().tobytes() for v in sgd.variables]
    with pytest.raises(CheckpointError, match="holds 10 optimizer variables, SGD 'sgd' has 6"):
        load_keras_optimizer_state(path, sgd)
    reordered = distopt.optimizers.Adam(0.01)
    reordered.build(weights[::-1])
    before += [v.numpy().tobytes() for v in reordered.variables]
    with pytest.raises(CheckpointError, match=r"Optimizer variable 2 .* has shape \(2,\)"):
        load_keras_optimizer_state(path, reordered)
    assert [v.numpy().tobytes() for v in sgd.variables + reordered.variables] == before
    with pytest.raises(CheckpointError, match="does not exist"):
        load_keras_optimizer_state(tmp_path / "missing.weights.h5", sgd)
