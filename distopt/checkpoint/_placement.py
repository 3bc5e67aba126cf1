"""Which part of each optimizer variable this rank holds, so a checkpoint stores whole values.

Without ZeRO-1 every rank holds every optimizer variable whole (`Whole`). Under element
sharding a kernel slot holds only this rank's contiguous part of its variable's flattened
elements (`Elements`). Under per-tensor sharding a rank holds the state of the tensors it
owns whole and an empty placeholder for the others (`Whole` with `placeholder_ok`): the
checkpoint takes each value from a rank that holds it. Gradient accumulators differ per
rank (each sums its own gradients until the N-th call reduces them): each rank's is saved
(`PerRank`), and restored to its rank at the same world size or combined onto rank 0 at
another (their sum, or their max for `overwrite_with_gradient` variables), which is what the
next reduction sees either way.
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


@dataclass(frozen=True)
class PerRank:
    """Each rank holds its own value; `combine` ("sum" or "max") merges them."""

    combine: str


def _optimizers(optimizer) -> list:
    """`optimizer` and the optimizers it wraps (LossScaleOptimizer's inner one), outermost
    first."""
    chain = [optimizer]
    while hasattr(chain[-1], "inner_optimizer"):
        chain.append(chain[-1].inner_optimizer)
    return chain


def placements(optimizer) -> list:
    """For each of `optimizer.variables`, in order: a `Whole`, `Elements` or `PerRank`
    placement."""
    found: dict[int, object] = {}
    for opt in _optimizers(optimizer):
        if opt.gradient_accumulation_steps and opt.built:
            for var, acc in zip(opt._trainable_variables, opt._accumulated_gradients):
                found[id(acc)] = PerRank("max" if var.overwrite_with_gradient else "sum")
        layout = getattr(opt, "_layout", None)
        if layout is None or layout.sharding is None:
            continue
        if layout.owned is not None:
            for v in opt._variables:
                found.setdefault(id(v), Whole(placeholder_ok=True))
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
