"""The two update engines (numba single pass, numpy chunked `out=`) give the same bits."""

import importlib.util
import subprocess
import sys
import warnings

import numpy as np
import pytest

import distopt
from distopt.optimizers import _arena, _engine
from distopt.optimizers._kernel_trace import KernelError
from distopt.optimizers._registry import _BUILTINS
from distopt.optimizers.adam import _adam_kernel, _amsgrad_kernel

HAS_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")

# Options that switch an optimizer to another kernel; each class also runs with defaults.
VARIANTS = {
    "sgd": [{"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}],
    "adam": [{"amsgrad": True}],
    "adamw": [{"amsgrad": True}],
    "rmsprop": [{"centered": True}, {"momentum": 0.9}, {"centered": True, "momentum": 0.5}],
    "ftrl": [
        {"l1_regularization_strength": 0.01, "l2_regularization_strength": 0.02},
        {"l2_shrinkage_regularization_strength": 0.03, "beta": 0.5},
        {"learning_rate_power": -0.3, "l1_regularization_strength": 0.01},
        {"learning_rate_power": 0.0, "l2_shrinkage_regularization_strength": 0.03},
    ],
}


def _elementwise_cases():
    cases = []
    for key, cls in sorted(_BUILTINS.items()):
        for options in [{}, *VARIANTS.get(key, [])]:
            try:
                if cls(learning_rate=0.01, **options)._kernel is None:
                    continue
            except TypeError:
                continue
            label = key + "".join(f"-{k}={v}" for k, v in options.items())
            cases.append(pytest.param(cls, options, id=label))
    return cases


ELEMENTWISE = _elementwise_cases()
SHAPES = [(37, 29), (5,), (2, 3, 4), (1500,)]


def _run(cls, options, dtype, engine, steps=3):
    distopt.utils.clear_session()
    rng = np.random.default_rng(7)
    variables = [distopt.Variable(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    opt = cls(learning_rate=0.01, **options)
    with _engine.use_engine(engine):
        for _ in range(steps):
            grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
            opt.apply_gradients(zip(grads, variables))
    return [v.numpy() for v in variables] + [v.numpy() for v in opt.variables]


def test_every_elementwise_optimizer_is_covered():
    names = {p.values[0].__name__ for p in ELEMENTWISE}
    assert {"SGD", "Adam"} <= names


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls,options", ELEMENTWISE)
def test_numba_and_numpy_engines_give_the_same_bits(cls, options, dtype, monkeypatch):
    monkeypatch.setattr(_engine, "CHUNK_BYTES", 4096)  # many chunks, and a ragged last one
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numba fallback to numpy would compare numpy to itself
        a = _run(cls, options, dtype, "numpy")
        b = _run(cls, options, dtype, "numba")
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@needs_numba
def test_exact_kernels_compile_and_inexact_ones_stay_on_numpy():
    f4 = np.dtype("float32")
    with _engine.use_engine("numba"):
        assert _engine.engine_for(_adam_kernel, 2, f4, [f4] * 4) == "numba"
        assert _engine.engine_for(_where_kernel, 0, f4, [f4] * 2) == "numba"
        assert _engine.engine_for(_power_kernel, 0, f4, [f4]) == "numpy"
    with _engine.use_engine("numpy"):
        assert _engine.engine_for(_adam_kernel, 2, f4, [f4] * 4) == "numpy"


def _power_kernel(w, g, p):
    return (w - np.power(g, p),)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel,num_slots", [(_adam_kernel, 2), (_amsgrad_kernel, 3)])
def test_numpy_engine_equals_the_kernel_on_whole_arrays(kernel, num_slots, dtype):
    c = np.dtype(dtype).type
    rng = np.random.default_rng(3)
    n = 10_007
    arrays = [rng.standard_normal(n).astype(dtype) for _ in range(2 + num_slots)]
    for s in arrays[2:]:
        np.abs(s, out=s)
    coeffs = (c(0.003), c(0.1), c(0.001), c(1e-7))
    expected = kernel(*arrays, *coeffs)
    w, g, *slots = [a.copy() for a in arrays]
    with _engine.use_engine("numpy"):
        _engine.run_kernel(kernel, w, g, slots, coeffs, chunk=1000)
    for got, want in zip([w, *slots], expected):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.dtype(dtype)


def _literal_kernel(w, g, lr):
    return (w - g * lr * 2,)


def _promoting_kernel(w, g, lr):
    return (w - g * np.float64(2.0) * lr,)


def _branching_kernel(w, g, lr):
    return (w - g * lr if g > lr else w,)


def _where_kernel(w, g, lr, cap):
    return (w - np.where(g > cap, cap, g) * lr,)


@pytest.mark.parametrize("kernel,text", [
    (_literal_kernel, "pass every constant as a coefficient"),
    (_promoting_kernel, "turns float32 into float64"),
    (_branching_kernel, "cannot branch on values"),
])  # fmt: skip
def test_kernels_that_would_differ_between_engines_are_rejected(kernel, text):
    w = np.ones(4, np.float32)
    before = w.copy()
    with pytest.raises(KernelError, match=text), _engine.use_engine("numpy"):
        _engine.run_kernel(kernel, w, w.copy(), [], (np.float32(0.1),))
    np.testing.assert_array_equal(w, before)


def test_python_number_coefficients_are_rejected():
    w = np.ones(4, np.float32)
    with pytest.raises(KernelError, match="coefficients must be numpy scalars"):
        _engine.run_kernel(_literal_kernel, w, w.copy(), [], (0.1,))
    np.testing.assert_array_equal(w, np.ones(4, np.float32))


@pytest.mark.parametrize("engine", ["numpy", pytest.param("numba", marks=needs_numba)])
def test_where_kernel(engine):
    w = np.zeros(6, np.float32)
    g = np.arange(6, dtype=np.float32)
    with _engine.use_engine(engine):
        _engine.run_kernel(_where_kernel, w, g, [], (np.float32(1.0), np.float32(2.5)))
    np.testing.assert_array_equal(w, -np.minimum(g, 2.5))


def test_unknown_engine_is_rejected_and_nothing_changes():
    before = _engine.engine()
    with pytest.raises(ValueError, match="must be one of"), _engine.use_engine("fortran"):
        pass
    assert _engine.engine() == before


def test_numba_requested_but_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)
    with pytest.raises(ValueError, match="numba does not import"), _engine.use_engine("numba"):
        pass


def test_works_without_numba():
    """With numba unimportable, `auto` picks numpy and Adam still steps."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np, distopt\n"
        "from distopt.optimizers import _engine\n"
        "v = distopt.Variable(np.ones(3)); opt = distopt.optimizers.Adam(0.1)\n"
        "opt.apply_gradients([(np.ones(3, np.float32), v)])\n"
        "print(_engine.engine(), *[round(float(x), 4) for x in v.numpy()])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={"PATH": "", "DISTOPT_ENGINE": "auto", "PYTHONPATH": str(_root())},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy", "0.9", "0.9", "0.9"]


def _root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("engine", ["numpy", pytest.param("numba", marks=needs_numba)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weight_decay_over_arenas_equals_the_per_variable_formula(engine, dtype):
    distopt.utils.clear_session()
    rng = np.random.default_rng(5)
    variables = [distopt.Variable(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
    expected = []
    for v in variables:
        w = v.numpy()
        w -= w * np.asarray(0.004, dtype=dtype) * np.asarray(0.01, dtype=dtype)
        expected.append(w)
    opt = distopt.optimizers.SGD(learning_rate=0.01)
    opt.build(variables)
    with _engine.use_engine(engine):
        left = _arena.decay_in_arenas(opt._layout, variables, 0.004, 0.01)
    assert left == []
    for v, w in zip(variables, expected):
        assert v.numpy().tobytes() == w.tobytes()
    # A variable left out of the decay keeps its whole dtype group on the per-variable path.
    assert _arena.decay_in_arenas(opt._layout, variables[1:], 0.004, 0.01) == variables[1:]


def test_ftrl_powers_minus_half_and_zero_compile_others_stay_on_numpy():
    from distopt.optimizers import Ftrl

    f4 = np.dtype("float32")
    with _engine.use_engine("numba"):
        for power, expected in [(-0.5, "numba"), (-0.3, "numpy"), (0.0, "numba"), (-1.0, "numpy")]:
            opt = Ftrl(0.1, learning_rate_power=power)
            coefficients = opt._coefficients(0.1, f4)
            used = _engine.engine_for(opt._kernel, 2, f4, [c.dtype for c in coefficients])
            assert used == expected, (power, used)


@pytest.mark.parametrize("engine", ["numpy", pytest.param("numba", marks=needs_numba)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls,options", ELEMENTWISE)
def test_weight_decay_fused_into_the_kernel_gives_the_separate_pass_bits(
    cls, options, dtype, engine, monkeypatch
):
    options = {**options, "weight_decay": 0.03}
    fused = _run(cls, options, dtype, engine)
    distopt.utils.clear_session()
    probe = cls(learning_rate=0.01, **options)
    probe.build([distopt.Variable(np.zeros(s), dtype=dtype) for s in SHAPES])
    assert probe._decay_in_kernel(probe._trainable_variables) == {np.dtype(dtype)}
    monkeypatch.setattr(type(probe), "_decay_in_kernel", lambda self, variables: frozenset())
    separate = _run(cls, options, dtype, engine)
    assert [a.tobytes() for a in fused] == [b.tobytes() for b in separate]


@needs_numba
def test_kernels_with_decay_compile_when_the_kernel_does():
    f4 = np.dtype("float32")
    with _engine.use_engine("numba"):
        for kernel, slots, exact in [(_adam_kernel, 2, True), (_power_kernel, 0, False)]:
            n = _engine._kernel_trace.num_coefficients(kernel, slots)
            used = _engine.engine_for(_engine.with_decay(kernel), slots, f4, [f4] * (n + 2))
            assert used == ("numba" if exact else "numpy")
    assert _engine.with_decay(_adam_kernel) is _engine.with_decay(_adam_kernel)


def test_decay_stays_a_separate_pass_when_a_variable_is_excluded():
    distopt.utils.clear_session()
    variables = [distopt.Variable(np.ones(s), name=f"v{k}") for k, s in enumerate(SHAPES)]
    opt = distopt.optimizers.AdamW(learning_rate=0.01)
    opt.build(variables)
    assert opt._decay_in_kernel(variables) == {np.dtype("float32")}
    opt.exclude_from_weight_decay(var_names=["v1"])
    assert opt._decay_in_kernel(variables) == frozenset()
    opt.apply_gradients(zip([np.ones(s, np.float32) for s in SHAPES], variables))
    # v1 kept its weight, others were decayed before the identical Adam step.
    steps = [v.numpy().reshape(-1)[0] for v in variables]
    assert steps[1] > steps[0] and steps[0] == steps[2] == steps[3]


@pytest.mark.parametrize("engine", ["numpy", pytest.param("numba", marks=needs_numba)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ftrl_power_zero_kernel_gives_the_general_kernels_bits(engine, dtype):
    from distopt.optimizers import Ftrl
    from distopt.optimizers.ftrl import _ftrl_constant_kernel, _ftrl_kernel

    results = []
    for kernel in (_ftrl_constant_kernel, _ftrl_kernel):
        distopt.utils.clear_session()
        rng = np.random.default_rng(3)
        variables = [distopt.Variable(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
        opt = Ftrl(0.1, learning_rate_power=0.0, l1_regularization_strength=0.01)
        assert opt._kernel is _ftrl_constant_kernel
        opt._kernel = kernel  # the general kernel computes n^-0.0 with np.power
        with _engine.use_engine(engine):
            for _ in range(3):
                grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
                grads[0][0, :3] = [0.0, np.inf, np.nan]
                opt.apply_gradients(zip(grads, variables))
        results.append([v.numpy().tobytes() for v in variables + opt.variables])
    assert results[0] == results[1]
