"""What Keras 3.15's optimizer test files import, answered by distopt and numpy, so those files
run here with their imports changed and their test bodies as Keras wrote them.

`backend.Variable` is `distopt.Variable`; `ops` builds numpy arrays with Keras's default
dtypes (float32, int32); `testing.TestCase` has Keras's assertion helpers. Keras models,
layers and callbacks have no distopt counterpart: touching them skips the test, saying so.
"""

from __future__ import annotations

import json
import tempfile
import types
import unittest

import numpy as np
import pytest

import distopt
import distopt.optimizers

# Keras's test classes are absl's parameterized tests; absl comes with the `keras` extra.
parameterized = pytest.importorskip("absl.testing.parameterized")

NEEDS_MODELS = "needs Keras models/layers (fit/compile), which distopt does not provide"


def _floatx_array(x, dtype=None):
    arr = np.asarray(x.value if isinstance(x, distopt.Variable) else x)
    if dtype is not None:
        return arr.astype(dtype)
    if arr.dtype == np.float64 and not isinstance(x, np.ndarray):
        return arr.astype(np.float32)  # Keras: Python floats become floatx
    if arr.dtype == np.int64 and not isinstance(x, np.ndarray):
        return arr.astype(np.int32)
    return arr


def _full(shape, fill_value, dtype=None):
    return np.full(shape, fill_value, dtype=dtype or "float32")


backend = types.SimpleNamespace(
    Variable=distopt.Variable,
    floatx=lambda: "float32",
    backend=lambda: "numpy",
    convert_to_numpy=lambda x: np.array(_floatx_array(x)),
    convert_to_tensor=_floatx_array,
    standardize_dtype=lambda d: np.dtype(d).name,
    numpy=types.SimpleNamespace(
        zeros=lambda shape, dtype=None: np.zeros(shape, dtype or "float32")
    ),
)

ops = types.SimpleNamespace(
    array=_floatx_array,
    convert_to_tensor=_floatx_array,
    convert_to_numpy=lambda x: np.array(_floatx_array(x)),
    ones=lambda shape, dtype=None: np.ones(shape, dtype=dtype or "float32"),
    zeros=lambda shape, dtype=None: np.zeros(shape, dtype=dtype or "float32"),
    full=_full,
    arange=lambda *args, dtype=None: np.arange(*args, dtype=dtype or "float32"),
    cast=lambda x, dtype: np.asarray(x).astype(dtype),
    sqrt=np.sqrt,
    sum=np.sum,
    square=np.square,
    multiply=np.multiply,
    add=np.add,
    subtract=np.subtract,
    divide=np.divide,
    isnan=np.isnan,
    all=np.all,
)

optimizers = distopt.optimizers


class _NeedsModels:
    """Keras's layers, models and callbacks: using one skips the test with the reason."""

    def __getattr__(self, name):
        if name.startswith(("_", "pytest")):  # pytest inspecting module attributes
            raise AttributeError(name)
        pytest.skip(NEEDS_MODELS)

    def __call__(self, *args, **kwargs):
        pytest.skip(NEEDS_MODELS)


class _NonNeg:
    """Keras's `constraints.NonNeg`: zeroes the negative weights."""

    def __call__(self, w):
        w = np.asarray(w)
        return w * (w >= 0.0).astype(w.dtype)


constraints = types.SimpleNamespace(NonNeg=_NonNeg)
layers = models = callbacks = _NeedsModels()
Sequential = Dense = Embedding = Input = _NeedsModels()


def _json(config):
    return json.dumps(config, sort_keys=True, default=lambda o: repr(o))


class TestCase(parameterized.TestCase, unittest.TestCase):
    """Keras's `testing.TestCase` helpers used by its optimizer tests."""

    def get_temp_dir(self):
        path = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(path, ignore_errors=True))
        return path

    def convert_to_numpy(self, x):
        return np.asarray(x.value if isinstance(x, distopt.Variable) else x)

    def assertAllClose(self, actual, desired, atol=1e-6, rtol=1e-6, tpu_atol=None,
                       tpu_rtol=None, msg=None):  # fmt: skip
        np.testing.assert_allclose(
            self.convert_to_numpy(actual), self.convert_to_numpy(desired), atol=atol,
            rtol=rtol, err_msg=msg or "",
        )  # fmt: skip

    def assertNotAllClose(self, x1, x2, atol=1e-6, rtol=1e-6, msg=None):
        try:
            self.assertAllClose(x1, x2, atol=atol, rtol=rtol)
        except AssertionError:
            return
        self.fail(msg or f"The two values are close at all elements:\n{x1}\n{x2}")

    def assertAlmostEqual(self, actual, desired, decimal=3, msg=None, **kwargs):
        if kwargs:  # unittest's `places` / `delta`
            return super().assertAlmostEqual(actual, desired, msg=msg, **kwargs)
        np.testing.assert_almost_equal(
            self.convert_to_numpy(actual), self.convert_to_numpy(desired), decimal=decimal,
            err_msg=msg or "",
        )  # fmt: skip

    def assertLen(self, container, expected_len, msg=None):
        self.assertEqual(len(container), expected_len, msg)

    def run_class_serialization_test(self, instance, custom_objects=None):
        """Keras's: `get_config` -> `from_config` -> same config and the same attributes,
        then the same through the package's `serialize` / `deserialize`."""
        cls = type(instance)
        config = instance.get_config()
        revived = cls.from_config(config)
        self.assertEqual(_json(config), _json(revived.get_config()))
        self.assertEqual(set(dir(instance)), set(dir(revived)))
        if isinstance(instance, distopt.optimizers.schedules.LearningRateSchedule):
            module = distopt.optimizers.schedules
        else:
            module = distopt.optimizers
        serialized = json.loads(json.dumps(module.serialize(instance)))
        revived = module.deserialize(serialized, custom_objects=custom_objects)
        self.assertEqual(_json(config), _json(revived.get_config()))
        self.assertEqual(set(dir(instance)), set(dir(revived)))
        return revived
