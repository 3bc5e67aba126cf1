"""The elementwise update engines.

An elementwise optimizer writes its maths once, as a kernel: a function of (w, g, *slots,
*coefficients) that returns (new_w, *new_slots) using only arithmetic, numpy ufuncs and
`np.where`. Two engines run it over whole flat arenas (`_arena.py`) and give the same bits:

- "numba": the kernel compiled for scalars inside one single-pass loop (used when numba
  imports, `pip install distopt[fast]`, for kernels made only of IEEE-exact operations:
  arithmetic, sqrt, min/max, comparisons; a kernel using e.g. `np.power` stays on numpy,
  whose SIMD power rounds differently from the C library's);
- "numpy": the kernel traced once into allocation-free `out=` ufunc calls over cache-sized
  chunks.

Coefficients must be numpy scalars already cast to the arrays' dtype, so float32 maths stays
float32 in both engines. `DISTOPT_ENGINE=numpy|numba|auto` (default auto) picks the engine.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from distopt.optimizers import _kernel_trace
from distopt.optimizers._kernel_numpy import Program
from distopt.optimizers._kernel_trace import KernelError

# Measured on a 2 MB-L2 / 32 MB-L3 machine: chunks of ~256K float32 elements (6 MB of arrays and
# scratch for Adam) balance per-call overhead against cache reuse; see benchmarks/update.py.
CHUNK_BYTES = 6 << 20
ENGINES = ("numba", "numpy")
_lock = threading.Lock()
_programs: dict[tuple, Program] = {}
_loops: dict[tuple, object] = {}
_state: dict[str, str | None] = {"engine": None}


# -- engine choice ------------------------------------------------------------------------------
def _numba_imports() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve(name: str) -> str:
    if name not in ("auto", *ENGINES):
        raise ValueError(
            f"The update engine must be one of {('auto', *ENGINES)} (env DISTOPT_ENGINE). "
            f"Received: {name!r}"
        )
    if name == "numpy":
        return name
    if _numba_imports():
        return "numba"
    if name == "numba":
        raise ValueError(
            "The numba engine was requested but numba does not import: "
            "`pip install distopt[fast]`, or use DISTOPT_ENGINE=numpy."
        )
    return "numpy"


def engine() -> str:
    """The engine elementwise kernels run on now: "numba" or "numpy"."""
    current = _state["engine"]
    if current is None:
        current = _state["engine"] = _resolve(os.environ.get("DISTOPT_ENGINE", "auto").lower())
    return current


@contextlib.contextmanager
def use_engine(name: str):
    """Runs kernels on engine `name` inside the block (process-wide; for tests and benchmarks)."""
    previous = engine()
    _state["engine"] = _resolve(name)
    try:
        yield
    finally:
        _state["engine"] = previous


def _key(kernel, slots, coefficients, w) -> tuple:
    for c in coefficients:
        if not isinstance(c, np.generic):
            raise KernelError(
                f"Kernel `{kernel.__name__}` got coefficient {c!r} of type {type(c).__name__}: "
                f"coefficients must be numpy scalars cast to the arrays' dtype ({w.dtype})."
            )
    return (kernel, len(slots), w.dtype, tuple(c.dtype for c in coefficients))


def _program(key) -> Program:
    program = _programs.get(key)
    if program is None:
        kernel, num_slots, dtype, coefficient_dtypes = key
        tape = _kernel_trace.trace(kernel, num_slots, dtype, coefficient_dtypes)
        with _lock:
            program = _programs.setdefault(key, Program(tape))
    return program


def _loop(key):
    """The compiled loop for `key`, or None when numba cannot compile this kernel."""
    loop = _loops.get(key, False)
    if loop is False and not _program(key).tape.exact:
        loop = _loops[key] = None  # e.g. np.power: numpy's SIMD and libm round differently
    if loop is False and key[2] == np.float16:
        loop = _loops[key] = None  # numba has no float16 arithmetic: numpy is the engine
    if loop is False:
        try:
            from distopt.optimizers._kernel_numba import Loop

            kernel, num_slots, _, coefficient_dtypes = key
            loop = Loop(kernel, num_slots, len(coefficient_dtypes))
        except Exception as e:  # noqa: BLE001 - any numba failure falls back to numpy
            warnings.warn(
                f"numba could not compile kernel `{key[0].__name__}` ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); using the numpy engine for it.",
                stacklevel=4,
            )
            loop = None
        with _lock:
            _loops[key] = loop
    return loop


def engine_for(kernel, num_slots: int, dtype, coefficient_dtypes) -> str:
    """The engine `run_kernel` uses for this kernel and these dtypes now."""
    key = (kernel, num_slots, np.dtype(dtype), tuple(np.dtype(d) for d in coefficient_dtypes))
    return "numba" if engine() == "numba" and _loop(key) is not None else "numpy"


def run_kernel(
    kernel: Callable,
    w: np.ndarray,
    g: np.ndarray,
    slots: Sequence[np.ndarray],
    coefficients: Sequence,
    chunk: int | None = None,
) -> None:
    """Applies `kernel` over 1-D arrays of one dtype, writing w and slots back in place."""
    if w.size == 0:
        return
    key = _key(kernel, slots, coefficients, w)
    if engine() == "numba":
        loop = _loop(key)
        if loop is not None:
            try:
                loop(w, g, slots, coefficients)
            except Exception as e:  # noqa: BLE001 - e.g. a typing error at first call
                _loops[key] = None
                warnings.warn(
                    f"numba failed on kernel `{kernel.__name__}` ({type(e).__name__}); using "
                    "the numpy engine for it.",
                    stacklevel=2,
                )
            else:
                return
    program = _program(key)
    if chunk is None:
        chunk = max(1024, CHUNK_BYTES // program.bytes_per_element)
    program(w, g, slots, coefficients, chunk)


def _decay_kernel(w, g, weight_decay, learning_rate):
    # The base's per-variable `w -= w * wd * lr`, with the same operations in the same order.
    return (w - w * weight_decay * learning_rate,)


_decayed: dict = {}


def with_decay(kernel: Callable) -> Callable:
    """`kernel` preceded by the base's weight decay (`w - w * weight_decay * learning_rate`),
    so both run in one pass over the arenas; it takes (weight_decay, learning_rate) after the
    kernel's own coefficients.

    The decayed `w` feeds the kernel with the same operations in the same order as a separate
    decay pass, so the bits are the same (tests/test_engines.py).
    """
    composed = _decayed.get(kernel)
    if composed is None:
        # Generated rather than a closure over *args: numba compiles it like any kernel.
        names = [f"a{k}" for k in range(len(inspect.signature(kernel).parameters))]
        args = ", ".join(names)
        source = (
            f"def {kernel.__name__}_with_decay({args}, weight_decay, learning_rate):\n"
            f"    a0 = a0 - a0 * weight_decay * learning_rate\n"
            f"    return kernel({args})\n"
        )
        namespace = {"kernel": kernel}
        exec(compile(source, f"<distopt {kernel.__name__} with decay>", "exec"), namespace)  # noqa: S102
        composed = namespace[f"{kernel.__name__}_with_decay"]
        with _lock:
            composed = _decayed.setdefault(kernel, composed)
    return composed
