"""`distopt.Variable`'s operators: Keras's semantics, numpy results, the variable unchanged."""

import json

import numpy as np
import pytest
from _keras_subprocess import requires_keras, run_keras

import distopt
from distopt.optimizers import SGD


def test_iterations_compare_by_value():
    optimizer = SGD(learning_rate=0.1)
    w = distopt.Variable([1.0, 2.0])
    assert optimizer.iterations == 0
    optimizer.apply_gradients([(np.ones(2, np.float32), w)])
    assert optimizer.iterations == 1 and optimizer.iterations != 0
    assert optimizer.iterations + 1 == 2 and int(optimizer.iterations) == 1
    if optimizer.iterations >= 1:
        lr = float(optimizer.learning_rate)
    assert lr == np.float32(0.1)


# (expression, expected value, expected dtype), as Keras 3.15's numpy backend computes them.
CASES = [
    ("v * 0.5", 1.5, "float32"),
    ("0.5 * v", 1.5, "float32"),
    ("v + 1", 4.0, "float32"),
    ("1 - v", -2.0, "float32"),
    ("v - v * 0.1", np.float32(3) - np.float32(3) * np.float32(0.1), "float32"),
    ("v / 2", 1.5, "float32"),
    ("6 / v", 2.0, "float32"),
    ("v // 2", 1.0, "float32"),
    ("7 % v", 1.0, "float32"),
    ("v ** 2", 9.0, "float32"),
    ("2 ** v", 8.0, "float32"),
    ("v + np.float64(1)", 4.0, "float32"),  # np.float64 is a Python float: weak
    ("v + [1.0]", [4.0], "float32"),
    ("v + np.ones(2, np.float16)", [4.0, 4.0], "float32"),
    ("i + 0.5", 2.5, "float32"),
    ("i / 2", 1.0, "float32"),
    ("i // 2", 1, "int32"),
    ("i % 3", 2, "int32"),
    ("i ** 2", 4, "int32"),
    ("2 ** i", 4, "int32"),
    ("i + [1]", [3], "int32"),
    ("i + np.ones(2, np.float16)", [3.0, 3.0], "float16"),
    ("b + 1", 2, "int32"),
    ("b * 2.5", 2.5, "float32"),
    ("b + True", True, "bool"),
    ("v == 3", True, "bool"),
    ("v != 3", False, "bool"),
    ("v < 4", True, "bool"),
    ("v <= 2", False, "bool"),
    ("v > 2.5", True, "bool"),
    ("v >= 3", True, "bool"),
    ("i == 2", True, "bool"),
    ("v & 1", True, "bool"),
    ("0 | v", True, "bool"),
    ("v ^ 1", False, "bool"),
    ("-v", -3.0, "float32"),
    ("+v", 3.0, "float32"),
    ("abs(-v)", 3.0, "float32"),
    ("round(v)", 3.0, "float32"),
    ("-i", -2, "int32"),
    ("m @ np.ones(2, np.float32)", [3.0, 7.0], "float32"),
    ("np.ones(2, np.float32) @ m", [4.0, 6.0], "float32"),
    ("m[1]", [3.0, 4.0], "float32"),
    ("m > 2", [[False, False], [True, True]], "bool"),
]

SETUP = """
v = Variable(3.0)
i = Variable(2, dtype="int32")
b = Variable(True, dtype="bool")
m = Variable([[1.0, 2.0], [3.0, 4.0]])
"""


def _namespace():
    ns = {"np": np, "Variable": distopt.Variable}
    exec(SETUP, ns)
    return ns


@pytest.mark.parametrize("expression, value, dtype", CASES, ids=[c[0] for c in CASES])
def test_operator(expression, value, dtype):
    ns = _namespace()
    before = {k: ns[k].numpy() for k in "vibm"}
    result = eval(expression, ns)
    assert isinstance(result, (np.ndarray, np.generic)), type(result)
    assert np.asarray(result).dtype == np.dtype(dtype)
    np.testing.assert_array_equal(result, np.asarray(value, dtype=dtype))
    for k in "vibm":  # an operator never changes the variable
        np.testing.assert_array_equal(ns[k].value, before[k])


def test_float64_is_kept():
    w = distopt.Variable([0.1], dtype="float64")
    assert (w * 0.3).dtype == np.float64 and (w * 0.3)[0] == 0.1 * 0.3
    assert (w + np.ones(1, np.float32)).dtype == np.float64
    assert (distopt.Variable(1, dtype="int32") + np.ones(1)).dtype == np.float64


def test_results_are_copies():
    m = distopt.Variable([1.0, 2.0])
    for result in (+m, m[:], m * 1):
        result[...] = 0
    np.testing.assert_array_equal(m.value, [1.0, 2.0])


def test_python_scalar_conversions():
    assert int(distopt.Variable(2.7)) == 2 and float(distopt.Variable(2.5)) == 2.5
    m = distopt.Variable([1.0, 2.0])
    for convert in (int, float):
        with pytest.raises(TypeError, match=r"Only scalar arrays .* Got: shape=\(2,\)"):
            convert(m)
    with pytest.raises(TypeError, match=r"cannot be used as a boolean.*variable == 0"):
        bool(distopt.Variable(1.0))
    with pytest.raises(TypeError, match="cannot be used as a boolean"):
        if distopt.Variable(0.0):
            pass


def test_non_numeric_operands():
    v = distopt.Variable(1.0)
    with pytest.raises(TypeError, match="unsupported operand"):
        v + "a"
    with pytest.raises(TypeError, match="unsupported operand"):
        None * v
    assert (v == "a") is False and (v != None) is True  # noqa: E711
    np.testing.assert_array_equal(v.value, 1.0)


def test_variables_stay_hashable_by_identity():
    a, b = distopt.Variable(1.0), distopt.Variable(1.0)
    assert len({a, b}) == 2 and {a: 1}[a] == 1


def test_untracking_the_learning_rate_keeps_other_variables():
    optimizer = SGD(learning_rate=0.1)
    optimizer.learning_rate = lambda: 0.05
    assert [v.name for v in optimizer.variables] == ["iteration"]


KERAS_SCRIPT = """
import json, numpy as np, keras
Variable = keras.Variable
{setup}
out = []
for expression in {expressions!r}:
    r = np.asarray(eval(expression))
    out.append([r.tolist(), str(r.dtype)])
print(json.dumps(out))
"""


@requires_keras
def test_same_as_real_keras():
    expressions = [c[0] for c in CASES]
    script = KERAS_SCRIPT.format(setup=SETUP, expressions=expressions)
    expected = run_keras(script, backend="numpy")
    ns = _namespace()
    for expression, (value, dtype) in zip(expressions, expected):
        result = np.asarray(eval(expression, ns))
        assert str(result.dtype) == dtype, (expression, result.dtype, dtype)
        assert json.dumps(result.tolist()) == json.dumps(value), (expression, result, value)
