"""LossScaleOptimizer's gradient checks: finiteness (on every rank alike), and unscaling a
whole list in one pass."""

from __future__ import annotations

import operator

import numpy as np

from distopt.collectives._bucket import BucketPlan
from distopt.distribute import ReduceOp
from distopt.optimizers import _arena

_CONCAT_ELEMENTS = 1 << 16  # below this, one check of the concatenation beats one per tensor
_size = operator.attrgetter("size")
# `g / scale` (a float32 scale) keeps these dtypes, so one division of the concatenation
# rounds each element exactly as the division of its own tensor does.
_EXACT = {np.dtype(np.float32), np.dtype(np.float64)}


def all_finite(grads) -> bool:
    """Whether every gradient that is not None is finite."""
    present = [g for g in grads if g is not None]
    if not present:
        return True
    if sum(map(_size, present)) <= _CONCAT_ELEMENTS:  # widening casts keep (non-)finiteness
        return bool(np.isfinite(np.concatenate(present, axis=None)).all())
    return all(np.isfinite(g).all() for g in present)


def reduce_and_check(strategy, grads, variables):
    """Aggregates as the inner optimizer would (overwrite variables by MAX) and decides
    finiteness on the result: (grads, finite), identical on every rank.

    Collective: call on all ranks, in the same order.
    """
    out = list(grads)
    pairs = [(k, g, v) for k, (g, v) in enumerate(zip(grads, variables)) if g is not None]
    normal = [(k, g, v) for k, g, v in pairs if not v.overwrite_with_gradient]
    overwrite = [(k, np.asarray(g, v.dtype)) for k, g, v in pairs if v.overwrite_with_gradient]
    if normal:
        reduced = strategy._reduce_gradients([g for _, g, _ in normal], [v for *_, v in normal])
        for (k, _, _), g in zip(normal, reduced):
            out[k] = g
    finite = all_finite(out[k] for k, _, _ in normal)
    if overwrite:
        # MPI's MAX need not propagate NaN: reduce this rank's verdict alongside.
        local = [g for _, g in overwrite]
        flag = np.array([0.0 if all_finite(local) else 1.0])
        *reduced, flag = strategy._reduce_leaves(ReduceOp.MAX, [*local, flag])
        for (k, _), g in zip(overwrite, reduced):
            out[k] = g
        finite = finite and flag[0] == 0.0
    return out, finite


def finite_on_every_rank(strategy, grads) -> bool:
    """Collective: call on all ranks, in the same order."""
    flag = np.array([0.0 if all_finite(grads) else 1.0])
    return float(strategy._reduce_leaves(ReduceOp.MAX, [flag])[0][0]) == 0.0


class Unscaler:
    """Unscales the gradients of one variable list (float32/float64 only) in one pass.

    One flat buffer per dtype receives `g / scale` for all its gradients; the result is a
    list of views of the buffers shaped like the variables, the same view objects at every
    step, so the inner optimizer's `flat_span` finds them back to back at once and its
    kernel reads the buffer directly. The views are overwritten by the next call.
    """

    def __init__(self, facts):
        self.facts = facts  # the list's `_validation.ListFacts`
        dtypes = facts.dtypes
        # The gradient buckets' layout: per-dtype flat buffers, tensors in list order.
        plan = BucketPlan(facts.shapes, dtypes)
        self.views: list = plan.views
        positions: dict[np.dtype, list[int]] = {}
        for k, dt in enumerate(plan.dtypes):
            positions.setdefault(dt, []).append(k)
        self.groups = [  # (positions, or None for the whole list; buffer)
            (None if len(ks) == len(dtypes) else ks, plan.buffers[dt])
            for dt, ks in positions.items()
        ]

    @staticmethod
    def fits(dtypes) -> bool:
        """Whether gradients of `dtypes` unscale here with the bits of per-tensor division."""
        return set(dtypes) <= _EXACT

    def __call__(self, grads, scale) -> list | None:
        """`[g / scale for g in grads]` as views of the buffers, or None (and nothing
        divided) when a gradient is not finite. `grads` have the variables' dtypes."""
        sources = []
        for ks, buffer in self.groups:
            part = grads if ks is None else [grads[k] for k in ks]
            span = _arena.flat_span(part)
            if span is None:
                span = np.concatenate(part, axis=None, out=buffer)
            if not np.isfinite(span).all():
                return None
            sources.append((span, buffer))
        for span, buffer in sources:
            np.divide(span, scale, out=buffer)
        return self.views
