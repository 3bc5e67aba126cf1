"""Averaging torch gradients through distopt's buckets without Python work per tensor.

The first step of a gradient list goes the general way (numpy views of the tensors, the
aggregator's dtype checks, the plan made collectively under the guard). Later steps of the
same list copy every tensor into the plan's input buffers with one `torch._foreach_copy_`
and hand the aggregator those buffers themselves, so the plan's pack is skipped; the
averaged result comes back as torch views of the plan's result buffers, made once.
"""

from __future__ import annotations

import operator

import torch


class _Fast:
    """One gradient list's cached torch views of its plan's input and result buffers."""

    __slots__ = ("names", "meta", "slots", "plan", "inputs", "results", "torch_results")

    def __init__(self, names, meta, slots, plan, results):
        self.names, self.meta, self.slots, self.plan = names, meta, slots, plan
        self.inputs = [torch.from_numpy(v) for v in plan.views]
        self.results = list(results)
        self.torch_results = [torch.from_numpy(v) for v in self.results]


_META = operator.attrgetter("shape", "dtype", "device")


def _meta(grads) -> list:
    # Checked every step: `copy_` would broadcast a gradient of another shape and cast
    # one of another dtype silently.
    return list(map(_META, grads))


class TorchReducer:
    """MEAN-all-reduces lists of CPU torch gradients through a `GradientAggregator`."""

    def __init__(self, aggregator):
        self.aggregator = aggregator
        self._fast: dict[int, _Fast] = {}

    def reduce(self, names, grads):
        """Averaged `grads` (torch views of the buckets, or copies on the gradients' device
        when they are not on the CPU) and the function that releases them.

        Collective: call on all ranks, in the same order, with the same names and shapes.
        """
        agg = self.aggregator
        fast = self._fast.get(id(names))
        if fast is not None and fast.names is names:
            reduced = self._reduce_fast(fast, grads)
            if reduced is not None:
                return reduced, agg.release
        if not all(g.device.type == "cpu" for g in grads):
            arrays = [g.detach().cpu().numpy() for g in grads]
            views = agg.reduce(names, arrays)
            return [torch.from_numpy(v).to(g.device) for v, g in zip(views, grads)], agg.release
        arrays = [g.detach().numpy() for g in grads]
        views = agg.reduce(names, arrays)
        slots = agg.slots(names, arrays)
        plan = agg.strategy._cached_plan(slots)
        if plan is None:
            return [torch.from_numpy(v) for v in views], agg.release
        if len(self._fast) >= 16:
            self._fast.clear()
        fast = _Fast(names, _meta(grads), slots, plan, views)
        self._fast[id(names)] = fast
        return fast.torch_results, agg.release

    def _reduce_fast(self, fast: _Fast, grads):
        """The averaged gradients, or None when the general path must run (other shapes,
        dtypes or devices; a plan no longer cached; a previous result not yet released)."""
        strategy = self.aggregator.strategy
        if _meta(grads) != fast.meta or strategy._cached_plan(fast.slots) is not fast.plan:
            return None
        if getattr(strategy._reducer, "_outstanding", False):
            return None  # its release is a barrier: it runs under the guard, in the reduction
        with torch.no_grad():
            torch._foreach_copy_(fast.inputs, grads)
        # The plan's own buffers: the reduction skips packing them.
        views = strategy._reduce_gradients(fast.plan.views, fast.slots)
        if len(views) == len(fast.results) and all(map(operator.is_, views, fast.results)):
            return fast.torch_results
        return [torch.from_numpy(v) for v in views]
