"""The compiled engine: a kernel run as one single-pass numba loop over the arenas.

The kernel itself is compiled for scalars and inlined into a generated loop, so the maths is
still written once. `error_model='numpy'` lets division vectorise (the default Python error
model checks every divisor); fastmath stays off, so no operation is reordered or contracted
into an FMA and the results are bit-identical to the numpy engine.
"""

from __future__ import annotations

import types

import numba
import numpy as np

_OPTIONS = {"error_model": "numpy", "fastmath": False, "nogil": True}


@numba.njit(inline="always", **_OPTIONS)
def _clip(x, lo, hi):
    # numpy's clip ufunc on scalars: NaN in, NaN out; max with `lo` first, then min with `hi`.
    if np.isnan(x):
        return x
    t = x if x > lo else lo
    if np.isnan(t):
        return t
    return t if t < hi else hi


def _numpy_for_scalars() -> types.ModuleType:
    """`numpy` as kernels see it in numba: the same ufuncs, plus a scalar `np.clip`."""
    module = types.ModuleType("numpy")
    module.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    module.clip = _clip
    return module


def _for_scalars(kernel):
    """`kernel` seeing the scalar numpy, with the plain functions it calls (e.g. the kernel a
    `with_decay` kernel wraps) compiled the same way, so they inline into the loop."""
    names = kernel.__code__.co_names
    scope = dict(kernel.__globals__)
    for name in names:
        value = scope.get(name)
        if value is np:
            scope[name] = _NUMPY
        elif isinstance(value, types.FunctionType):
            scope[name] = numba.njit(inline="always", **_OPTIONS)(_for_scalars(value))
    return types.FunctionType(kernel.__code__, scope, kernel.__name__, kernel.__defaults__)


class Loop:
    """`loop(w, g, *slots, *coefficients)`: the kernel over every element, in place."""

    def __init__(self, kernel, num_slots: int, num_coefficients: int):
        scalar = numba.njit(inline="always", **_OPTIONS)(_for_scalars(kernel))
        slots = [f"s{k}" for k in range(num_slots)]
        coefficients = [f"c{k}" for k in range(num_coefficients)]
        params = ", ".join(["w", "g", *slots, *coefficients])
        call = ", ".join(["w[i]", "g[i]", *[f"{s}[i]" for s in slots], *coefficients])
        lines = [
            f"def loop({params}):",
            "    for i in range(w.shape[0]):",
            f"        r = kernel({call})",
            "        w[i] = r[0]",
        ] + [f"        {s}[i] = r[{k + 1}]" for k, s in enumerate(slots)]
        namespace = {"kernel": scalar}
        source = "\n".join(lines) + "\n"
        exec(compile(source, f"<distopt loop {kernel.__name__}>", "exec"), namespace)  # noqa: S102
        self.source = source
        self._loop = numba.njit(**_OPTIONS)(namespace["loop"])

    def __call__(self, w, g, slots, coefficients) -> None:
        self._loop(w, g, *slots, *coefficients)


_NUMPY = _numpy_for_scalars()
