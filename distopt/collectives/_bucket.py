"""A fixed, deterministic layout of many tensors in per-dtype flat buffers."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

DEFAULT_BUCKET_BYTES = 25 << 20
_SELF_CHECK_BYTES = 1 << 16


def dtype_totals(shapes, dtypes) -> dict[np.dtype, int]:
    """Elements per dtype, dtypes in order of first appearance (a plan's buffer sizes)."""
    totals: dict[np.dtype, int] = {}
    for shape, dt in zip(shapes, dtypes):
        dt = np.dtype(dt)
        totals[dt] = totals.get(dt, 0) + int(np.prod(shape, dtype=np.int64))
    return totals


def _data_pointer(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class BucketPlan:
    """Places tensors of the given shapes and dtypes in one flat buffer per dtype.

    Dtypes are laid out in order of first appearance, tensors in the given order inside their
    dtype, so every rank that lists the same tensors gets the same layout. Each dtype buffer is
    cut into buckets of about `bucket_bytes` (tensor boundaries respected) for reduction.
    `views[i]` is tensor i's writable, shaped view into its buffer.
    """

    def __init__(
        self,
        shapes: Sequence[tuple[int, ...]],
        dtypes: Sequence[np.dtype],
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        buffers: dict | None = None,
    ):
        """`buffers` (dtype -> 1-D array of the dtype's total size) places the plan in memory
        allocated elsewhere, e.g. an MPI shared-memory window; by default it is zeroed numpy."""
        if len(shapes) != len(dtypes):
            raise ValueError(f"{len(shapes)} shapes but {len(dtypes)} dtypes were given")
        if bucket_bytes <= 0:
            raise ValueError(f"Argument `bucket_bytes` must be > 0. Received: {bucket_bytes}")
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.dtypes = [np.dtype(d) for d in dtypes]
        self.bucket_bytes = int(bucket_bytes)
        sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        totals: dict[np.dtype, int] = {}
        self.offsets: list[int] = []
        for size, dt in zip(sizes, self.dtypes):
            self.offsets.append(totals.get(dt, 0))
            totals[dt] = totals.get(dt, 0) + size
        if buffers is None:
            buffers = {dt: np.zeros(n, dtype=dt) for dt, n in totals.items()}
        self.buffers: dict[np.dtype, np.ndarray] = {dt: buffers[dt] for dt in totals}
        for dt, n in totals.items():
            if buffers[dt].shape != (n,) or buffers[dt].dtype != dt:
                raise ValueError(f"buffer for {dt} must be 1-D {dt} of size {n}")
        self.views: list[np.ndarray] = [
            self.buffers[dt][off : off + size].reshape(shape)
            for off, size, dt, shape in zip(self.offsets, sizes, self.dtypes, self.shapes)
        ]
        self.sizes = sizes
        self.buckets: list[tuple[np.dtype, int, int]] = self._cut_buckets()
        # Small tensors are packed with one `np.concatenate(out=)` per dtype: it assigns the
        # arrays in order exactly as one `copyto` each would, without a Python call per
        # tensor. Only when the dtypes come in runs (then dtype order is tensor order).
        self._concat_groups = None
        runs = [dt for i, dt in enumerate(self.dtypes) if i == 0 or dt != self.dtypes[i - 1]]
        small = all(n * d.itemsize < _SELF_CHECK_BYTES for n, d in zip(sizes, self.dtypes))
        if small and len(runs) == len(totals):
            bounds = np.cumsum([0] + [self.dtypes.count(dt) for dt in totals]).tolist()
            self._concat_groups = [
                (self.buffers[dt], None if len(totals) == 1 else slice(lo, hi))
                for dt, lo, hi in zip(totals, bounds, bounds[1:])
            ]

    def _cut_buckets(self) -> list[tuple[np.dtype, int, int]]:
        buckets = []
        for dt, buf in self.buffers.items():
            limit = max(1, self.bucket_bytes // dt.itemsize)
            start = stop = 0
            for off, size, vdt in zip(self.offsets, self.sizes, self.dtypes):
                if vdt != dt:
                    continue
                if stop > start and stop - start + size > limit:
                    buckets.append((dt, start, stop))
                    start = stop
                stop = off + size
            if stop > start or buf.size == 0:
                buckets.append((dt, start, stop))
        return buckets

    def matches(self, shapes, dtypes) -> bool:
        return [tuple(s) for s in shapes] == self.shapes and [np.dtype(d) for d in dtypes] == (
            self.dtypes
        )

    def is_view(self, i: int, array: np.ndarray) -> bool:
        """True when `array` is tensor i's own view (a gradient computed in place)."""
        return self.is_view_of(self.views[i], array)

    def pack(self, arrays: Sequence[np.ndarray]) -> None:
        """Copies each array (of its view's shape) into its view, skipping those that already
        are the view."""
        same = len(arrays) == len(self.views)
        if same and all(map(operator.is_, arrays, self.views)):
            return  # every gradient was computed in place
        if same and self._concat_groups is not None:
            for buf, members in self._concat_groups:
                group = arrays if members is None else arrays[members]
                np.concatenate(group, axis=None, out=buf, casting="same_kind")
            return
        for v, a in zip(self.views, arrays):
            # The zero-copy case passes the views themselves; a small copy is cheaper than
            # proving that another array object shares the view's memory.
            if a is v or (a.nbytes >= _SELF_CHECK_BYTES and self.is_view_of(v, a)):
                continue
            np.copyto(v, a, casting="same_kind")

    @staticmethod
    def is_view_of(v: np.ndarray, array) -> bool:
        return (
            isinstance(array, np.ndarray)
            and array.dtype == v.dtype
            and array.shape == v.shape
            and (v.size == 0 or _data_pointer(array) == _data_pointer(v))
            and array.flags.c_contiguous
        )
