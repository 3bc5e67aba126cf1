"""Which part of each optimizer variable this rank holds, so a checkpoint stores whole values.

Without ZeRO-1 every rank holds every optimizer variable whole (`Whole`). Under element
sharding a kernel slot holds only this rank's contiguous part of its variable's flattened
elements (`Elements`). Under per-tensor sharding a rank holds the state of the tensors it
owns whole and an empty placeholder for the others (`Whole` with `placeholder_ok`): the
checkpoint takes each value from a rank that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Whole:
    """The variable is held whole on a rank (replicated, or on its owner under per-tensor
    ZeRO-1, where `placeholder_ok` says an empty value stands for another rank's tensor)."""

    placeholder_ok: bool = False


@dataclass(frozen=True)
class Elements:
    """Elements [start, stop) of the flattened variable of shape `shape` (element ZeRO-1)."""

    shape: tuple
    start: int
    stop: int


def _optimizers(optimizer) -> list:
    """`optimizer` and the optimizers it wraps (LossScaleOptimizer's inner one), outermost
    first."""
    chain = [optimizer]
    while hasattr(chain[-1], "inner_optimizer"):
        chain.append(chain[-1].inner_optimizer)
    return chain


def placements(optimizer) -> list:
    """For each of `optimizer.variables`, in order: a `Whole` or `Elements` placement."""
    found: dict[int, object] = {}
    for opt in _optimizers(optimizer):
        layout = getattr(opt, "_layout", None)
        if layout is None or layout.sharding is None:
            continue
        if layout.owned is not None:
            for v in opt._variables:
                found[id(v)] = Whole(placeholder_ok=True)
            continue
        for name in opt._kernel_slots:
            for var, slot in zip(opt._trainable_variables, opt._slots.get(name, ())):
                if slot is None or var.dtype not in layout.shards:
                    continue
                i = layout.index[id(var)]
                off, (lo, hi) = layout.offsets[i], layout.shards[var.dtype]
                start = min(max(off, lo) - off, var.size)
                stop = max(start, min(off + var.size, hi) - off)
                found[id(slot)] = Elements(tuple(var.shape), start, stop)
    return [found.get(id(v), Whole()) for v in optimizer.variables]
