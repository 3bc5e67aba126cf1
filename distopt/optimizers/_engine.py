"""Flat per-dtype arenas and the elementwise update engine.

An elementwise optimizer writes its maths once, as a kernel: a function of (w, g, *slots,
*coefficients) that returns (new_w, *new_slots) using only arithmetic and numpy ufuncs, so the
same function runs on whole arrays, on cache-sized chunks, or (later) on scalars inside a
compiled loop. Coefficients arrive already cast to the arrays' dtype, so a float32 update is
computed in float32 exactly as Keras does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Chunks this size keep the kernel's temporaries in L2 cache.
CHUNK_ELEMENTS = 1 << 15


def _pointer(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def flat_span(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """A 1-D view covering `arrays` if they lie back to back in one buffer, in order; else None."""
    if not arrays:
        return None
    first = arrays[0]
    root = _root(first)
    if not root.flags.c_contiguous or root.dtype != first.dtype:
        return None
    expected = _pointer(first)
    for a in arrays:
        if (
            not isinstance(a, np.ndarray)
            or a.dtype != first.dtype
            or not a.flags.c_contiguous
            or _pointer(a) != expected
            or _root(a) is not root
        ):
            return None
        expected += a.nbytes
    start, rem = divmod(_pointer(first) - _pointer(root), first.itemsize)
    total = (expected - _pointer(first)) // first.itemsize
    if rem or start + total > root.size:
        return None
    return root.reshape(-1)[start : start + total]


def run_kernel(
    kernel: Callable,
    w: np.ndarray,
    g: np.ndarray,
    slots: Sequence[np.ndarray],
    coefficients: Sequence,
    chunk: int = CHUNK_ELEMENTS,
) -> None:
    """Applies `kernel` over 1-D arrays in chunks, writing w and slots back in place."""
    n = w.size
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        ws = w[start:stop]
        ss = [s[start:stop] for s in slots]
        out = kernel(ws, g[start:stop], *ss, *coefficients)
        ws[...] = out[0]
        for s, new in zip(ss, out[1:]):
            s[...] = new


class ArenaLayout:
    """Where each built variable lives in its dtype's flat arenas.

    Parameters are re-homed into one flat arena per dtype when every variable of that dtype
    is free to move (not already re-homed by another owner); slot arenas share the layout, so
    one pass over (params, grads, slots) updates every variable of a dtype.
    """

    def __init__(self, variables: Sequence, owner: object):
        self.variables = list(variables)
        self.index = {id(v): i for i, v in enumerate(self.variables)}
        self.offsets: list[int] = []
        self.groups: dict[np.dtype, list[int]] = {}
        totals: dict[np.dtype, int] = {}
        for i, v in enumerate(self.variables):
            self.offsets.append(totals.get(v.dtype, 0))
            totals[v.dtype] = totals.get(v.dtype, 0) + v.size
            self.groups.setdefault(v.dtype, []).append(i)
        self.totals = totals
        self.params: dict[np.dtype, np.ndarray | None] = {}
        for dt, members in self.groups.items():
            if all(self.variables[i]._arena_owner is None for i in members):
                arena = np.empty(totals[dt], dtype=dt)
                for i in members:
                    self.variables[i]._rehome(self.view(arena, i), owner)
                self.params[dt] = arena
            else:
                self.params[dt] = flat_span([self.variables[i].value for i in members])

    def view(self, arena: np.ndarray, i: int) -> np.ndarray:
        v = self.variables[i]
        off = self.offsets[i]
        return arena[off : off + v.size].reshape(v.shape)

    def new_arena(self, dtype: np.dtype, fill=0) -> np.ndarray:
        return np.full(self.totals[dtype], fill, dtype=dtype)
