import numpy as np
import pytest

import distopt


def test_defaults_follow_keras():
    v = distopt.Variable([1, 2, 3])
    assert v.dtype == np.float32 and v.shape == (3,) and v.trainable
    assert v.name == "variable" and v.path == "variable"
    assert distopt.Variable(0.5).shape == ()
    assert distopt.Variable([1.0]).name == "variable_2"  # Variable(0.5) took variable_1
    assert distopt.Variable([1.0], dtype="float64", name="k").dtype == np.float64


def test_value_is_live_numpy_is_a_copy():
    v = distopt.Variable(np.zeros(3), dtype="float64")
    live, copy = v.value, v.numpy()
    v.assign([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(live, [1, 2, 3])
    np.testing.assert_array_equal(copy, [0, 0, 0])
    v.assign_add(np.ones(3))
    v.assign_sub(np.full(3, 0.5))
    np.testing.assert_array_equal(np.asarray(v), [1.5, 2.5, 3.5])


def test_assign_casts_to_the_variable_dtype():
    v = distopt.Variable([0.0, 0.0])
    v.assign(np.array([0.1, 0.2], dtype=np.float64))
    assert v.value.dtype == np.float32
    np.testing.assert_array_equal(v.value, np.array([0.1, 0.2], dtype=np.float32))


@pytest.mark.parametrize(
    "value, error, message",
    [
        (np.ones(4), ValueError, r"shape \(4,\) to variable `w` of shape \(3,\)"),
        ("abc", TypeError, r"dtype <U3"),
    ],
)
def test_bad_assign_is_an_error_and_changes_nothing(value, error, message):
    v = distopt.Variable([1.0, 2.0, 3.0], name="w")
    with pytest.raises(error, match=message):
        v.assign(value)
    np.testing.assert_array_equal(v.value, [1, 2, 3])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"initial_value": "abc"}, TypeError, r"initial_value` must be array-like"),
        ({"initial_value": 1.0, "name": "a/b"}, ValueError, r"without '/'"),
        ({"initial_value": 1.0, "dtype": "complex64"}, ValueError, r"float, int or bool"),
        ({"initial_value": 1.0, "constraint": 3}, ValueError, r"`constraint` must be callable"),
    ],
)
def test_constructor_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        distopt.Variable(**kwargs)


def test_callable_initial_value_and_constraint():
    v = distopt.Variable(lambda: np.arange(3.0), constraint=lambda x: np.maximum(x, 1.0))
    np.testing.assert_array_equal(v.value, [0, 1, 2])
    assert callable(v.constraint)
