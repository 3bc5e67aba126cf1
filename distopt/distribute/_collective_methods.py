"""The collectives of `Strategy` besides gradient aggregation: reduce, all_reduce, broadcast.

Each one is bracketed by the strategy's guard and deadline (`_safety`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distopt._variable import Variable
from distopt.collectives import BucketPlan, allreduce_plan
from distopt.collectives._guard import Signature
from distopt.distribute import _structure
from distopt.distribute._reduce_op import ReduceOp
from distopt.distribute._safety import ALL_REDUCE, BROADCAST, REDUCE

_OP_NAMES = {ReduceOp.SUM: "sum", ReduceOp.MEAN: "sum", ReduceOp.MIN: "min", ReduceOp.MAX: "max"}


class CollectiveMethods:
    """`broadcast`, `reduce` and the replica context's `all_reduce`, for `Strategy`."""

    def _broadcast_arrays(self, arrays, root: int, op: int, names) -> None:
        safety = self._safety
        sig = Signature.of(op, f"root={root}", names, arrays) if safety.active else None
        safety.begin(op, sig)
        try:
            for a in arrays:
                self._communicator.bcast(a, root)
        finally:
            safety.end()

    def broadcast(self, value, root: int = 0):
        """Returns root's `value` on every rank.

        `value` is an array, number, Variable, or nested list/tuple/dict of them, with the
        same structure, shapes and dtypes on every rank. Variables are overwritten in place
        and returned; other leaves come back as new numpy arrays.
        Collective: call on all ranks, in the same order.
        """
        self._check_not_mixing("broadcast()")
        size = self._communicator.size
        if (
            isinstance(root, bool)
            or not isinstance(root, (int, np.integer))
            or not (0 <= root < size)
        ):
            raise ValueError(f"Argument `root` must be a rank in [0, {size}). Received: {root!r}")
        paths = _structure.flatten_with_paths(value)
        arrays = [
            leaf.value if isinstance(leaf, Variable) else _numeric_copy(leaf, "broadcast")
            for _, leaf in paths
        ]
        self._broadcast_arrays(arrays, int(root), BROADCAST, [p for p, _ in paths])
        return _structure.pack_as(
            value,
            [leaf if isinstance(leaf, Variable) else a for (_, leaf), a in zip(paths, arrays)],
        )

    # -- reductions -------------------------------------------------------------------------
    def _reduce_leaves(
        self, op: ReduceOp, leaves: Sequence[np.ndarray], what: int = REDUCE, names=None
    ) -> list[np.ndarray]:
        arrays = [np.asarray(x, order="C") for x in leaves]
        if not arrays:
            return []
        names = names or [f"value[{i}]" for i in range(len(arrays))]
        safety = self._safety
        safety.begin(what, Signature.of(what, op.name, names, arrays) if safety.active else None)
        try:
            wire = [_to_wire(a, op) for a in arrays]
            plan = BucketPlan([a.shape for a in wire], [a.dtype for a in wire], self._bucket_bytes)
            plan.pack(wire)
            allreduce_plan(self._communicator, plan, _OP_NAMES[op])
        finally:
            safety.end()
        out = [v.astype(bool) if a.dtype == bool and op in (ReduceOp.MIN, ReduceOp.MAX)
               else v.copy() for a, v in zip(arrays, plan.views)]  # fmt: skip
        if op is ReduceOp.MEAN:
            out = [np.divide(v, self.num_replicas_in_sync) for v in out]
        return out

    def _all_reduce_structure(self, op: ReduceOp, value):
        paths = _structure.flatten_with_paths(value)
        for path, leaf in paths:
            if not isinstance(leaf, (np.ndarray, np.generic, int, float, bool, Variable)):
                raise TypeError(
                    "all_reduce takes arrays, numbers or nested lists/tuples/dicts of them. "
                    f"Received a leaf of type {type(leaf).__name__} at {path}: {leaf!r}"
                )
        arrays = [np.asarray(leaf) for _, leaf in paths]
        out = self._reduce_leaves(op, arrays, ALL_REDUCE, [p for p, _ in paths])
        return _structure.pack_as(value, out)

    def reduce(self, reduce_op, value, axis=None):
        """Reduces this rank's `value` across replicas (and along `axis` first, if given).

        With `axis`, MEAN is the mean over every replica's elements along that axis (a global
        batch mean, right even when replicas hold different batch sizes). Call it outside
        `run` (tf.distribute's rule). Collective: call on all ranks, in the same order.
        """
        op = ReduceOp.from_any(reduce_op)
        self._require_cross_replica("reduce()")
        arr = np.asarray(value.value if isinstance(value, Variable) else value)
        if axis is None:
            return self._reduce_leaves(op, [arr], names=["value"])[0]
        if not isinstance(axis, (int, np.integer)) or not -arr.ndim <= axis < arr.ndim:
            raise ValueError(
                f"Argument `axis` must be an axis of `value`, whose shape is {arr.shape}. "
                f"Received: axis={axis!r}"
            )
        if op is ReduceOp.MEAN:
            total, count = self._reduce_leaves(
                ReduceOp.SUM,
                [np.sum(arr, axis=axis), np.asarray(arr.shape[axis], dtype=np.int64)],
                names=[f"sum(value, axis={axis})", "count"],
            )
            return total / count
        local = {ReduceOp.SUM: np.sum, ReduceOp.MIN: np.min, ReduceOp.MAX: np.max}[op]
        return self._reduce_leaves(op, [local(arr, axis=axis)], names=[f"value along {axis}"])[0]


def _numeric_copy(leaf, what: str) -> np.ndarray:
    arr = np.array(leaf, copy=True, order="C")
    if arr.dtype.kind not in "biufc":
        raise TypeError(
            f"`{what}` takes numeric arrays, numbers, Variables or nested lists/tuples/dicts of "
            f"them. Received a leaf of dtype {arr.dtype}: {leaf!r}"
        )
    return arr


def _to_wire(a: np.ndarray, op: ReduceOp) -> np.ndarray:
    """The array MPI reduces: bools as counts (SUM, MEAN) or as 0/1 (MIN, MAX)."""
    if a.dtype.kind not in "biufc":
        raise TypeError(f"Cannot reduce values of dtype {a.dtype}: expected a numeric dtype.")
    if a.dtype == bool:
        return a.astype(np.int64 if op in (ReduceOp.SUM, ReduceOp.MEAN) else np.uint8)
    if a.dtype.kind == "c" and op in (ReduceOp.MIN, ReduceOp.MAX):
        raise TypeError(f"ReduceOp.{op.name} is not defined for complex values ({a.dtype}).")
    return a
