"""Flat per-dtype arenas: where each built variable's parameters and slots live.

`ArenaLayout` re-homes an optimizer's variables into one flat parameter arena per dtype and
lays its slot arenas out the same way, so one kernel pass (`_engine.run_kernel`) covers every
variable of a dtype; under ZeRO-1 it also says which part (or which tensors) this rank
updates. `flat_span` recognises lists of arrays that already lie back to back (reduced
gradient buckets, arena views), so they need no concatenation.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import numpy as np

from distopt.collectives import _timeline
from distopt.optimizers._engine import _decay_kernel, run_kernel


def _pointer(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


_spans: list[tuple] = []  # (arrays, span), most recent first; holds the arrays


def flat_span(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """A 1-D view covering `arrays` if they lie back to back in one buffer, in order; else None.

    Remembered for the last few lists of the same array objects (a strategy hands out the
    same reduced views every step), so the steady state costs one identity comparison of
    the lists, at C speed, and no pointer arithmetic.
    """
    n = len(arrays)
    for k, (held, span) in enumerate(_spans):
        if len(held) == n and all(map(operator.is_, held, arrays)):
            if k:
                _spans.insert(0, _spans.pop(k))
            return span
    span = _flat_span(arrays)
    _spans.insert(0, (tuple(arrays), span))
    del _spans[8:]
    return span


def _flat_span(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    if not arrays:
        return None
    first = arrays[0]
    if not isinstance(first, np.ndarray):
        return None
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


def decay_in_arenas(layout, variables, weight_decay, lr) -> list:
    """Applies weight decay over whole parameter arenas (this rank's part under ZeRO-1) where
    `variables` cover every variable of a dtype; returns the variables left to decay one by
    one."""
    if layout is None:
        return list(variables)
    chosen = {id(v) for v in variables}
    done: set[int] = set()
    for dt, members in layout.groups.items():
        params = layout.params[dt]
        if params is None or not all(id(layout.variables[i]) in chosen for i in members):
            continue
        w = params
        if dt in layout.shards:  # the all-gather after the update brings the other parts
            lo, hi = layout.shards[dt]
            w = params[lo:hi]
        c = np.dtype(dt).type
        run_kernel(_decay_kernel, w, w, [], (c(weight_decay), c(lr)))
        done.update(id(layout.variables[i]) for i in members)
    return [v for v in variables if id(v) not in done]


def sharding_for(optimizer):
    """The ZeRO-1 sharding of the strategy `optimizer` was created under, or None."""
    sharding = getattr(optimizer._strategy, "_optimizer_sharding", None)
    if sharding is None or hasattr(optimizer, "inner_optimizer"):
        return None  # a wrapper (LossScaleOptimizer) leaves the updates to its inner optimizer
    if optimizer._kernel is None and not optimizer._shards_whole_tensors:
        raise ValueError(
            f"`MPIStrategy(shard_optimizer_state=True)` shards the state of elementwise "
            f"optimizers (SGD, Adam, ...) by element and of Adafactor, Lamb and Muon by whole "
            f"tensor; {type(optimizer).__name__} defines neither an elementwise kernel nor "
            "`_shards_whole_tensors = True` (its `update_step` then only sees the tensors this "
            "rank owns, and it creates state only for them). Create it under an MPIStrategy "
            "with shard_optimizer_state=False."
        )
    return sharding


class ArenaLayout:
    """Where each built variable lives in its dtype's flat arenas.

    Parameters are re-homed into one flat arena per dtype when every variable of that dtype
    is free to move (not already re-homed by another owner); slot arenas share the layout, so
    one pass over (params, grads, slots) updates every variable of a dtype. With a ZeRO-1
    `sharding`, kernel slot arenas hold only this rank's part of each dtype's arena, and a
    slot variable's value is the 1-D part of its variable that falls in that range.

    With `weights` too (per-tensor ZeRO-1), each variable has an owner rank (balancing the
    weights, e.g. state sizes), each dtype's arena holds the variables by (owner, position),
    so every rank's tensors are one block (`shards`), and `owned` is the set of ids of the
    variables this rank updates (None without per-tensor sharding: all of them).
    """

    def __init__(self, variables: Sequence, owner: object, sharding=None, weights=None):
        self.variables = list(variables)
        self.index = {id(v): i for i, v in enumerate(self.variables)}
        self.groups: dict[np.dtype, list[int]] = {}
        for i, v in enumerate(self.variables):
            self.groups.setdefault(v.dtype, []).append(i)
        self.sharding = sharding
        self.owned = None
        self.blocks: dict[np.dtype, list[tuple[int, int]]] = {}
        order = self.groups
        if sharding is not None and weights is not None:
            order = self._assign_owners(sharding, weights)
        self.offsets = [0] * len(self.variables)
        totals: dict[np.dtype, int] = {}
        for dt, members in order.items():
            for i in members:
                self.offsets[i] = totals.get(dt, 0)
                totals[dt] = totals.get(dt, 0) + self.variables[i].size
        self.totals = totals
        self.shards = {}
        if self.owned is not None:
            self.shards = {dt: ranges[sharding.rank] for dt, ranges in self.blocks.items()}
        elif sharding is not None:
            self.shards = {dt: sharding.shard_range(dt, n) for dt, n in totals.items()}
        self._step_groups: dict[tuple, list] = {}
        self.params: dict[np.dtype, np.ndarray | None] = {}
        for dt, members in self.groups.items():
            if all(self.variables[i]._arena_owner is None for i in members):
                arena = np.empty(totals[dt], dtype=dt)
                for i in members:
                    self.variables[i]._rehome(self.view(arena, i), owner)
                self.params[dt] = arena
            else:
                self.params[dt] = flat_span([self.variables[i].value for i in members])

    def _assign_owners(self, sharding, weights) -> dict:
        """Owners per dtype; returns each dtype's members in arena order (by owner)."""
        taken = [v.path for v in self.variables if v._arena_owner is not None]
        if taken:
            raise ValueError(
                "Under `shard_optimizer_state=True` an optimizer that updates whole tensors "
                "lays its variables out by owner rank, so it cannot share them with another "
                f"optimizer; {taken[:3]} already live in another optimizer's arena. Build one "
                "optimizer per variable, or use shard_optimizer_state=False."
            )
        order, owned = {}, set()
        for dt, members in self.groups.items():
            owners = sharding.tensor_owners([weights[i] for i in members])
            order[dt] = [i for _, i in sorted(zip(owners, members))]
            owned.update(
                id(self.variables[i]) for i, r in zip(members, owners) if r == sharding.rank
            )
            sizes = [0] * sharding.size
            for i, r in zip(members, owners):
                sizes[r] += self.variables[i].size
            starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
            self.blocks[dt] = list(zip(starts[:-1], starts[1:]))
        self.owned = owned
        return order

    def owns(self, variable) -> bool:
        """Whether this rank updates `variable` (always, without per-tensor sharding)."""
        return self.owned is None or id(variable) in self.owned

    def step_groups(self, variables) -> list[tuple]:
        """Per dtype: (dtype, positions in `variables`, whether they are exactly that dtype's
        arena in order, so one kernel pass covers them). Cached per variable list."""
        key = tuple(variables)  # holds the variables, so their ids cannot be reused
        groups = self._step_groups.get(key)
        if groups is None:
            groups = []
            for dt, members in self.groups.items():
                in_step = [k for k, v in enumerate(variables) if v.dtype == dt]
                order = [self.index.get(id(variables[k])) for k in in_step]
                flat = self.params[dt] is not None and order == members and self.owned is None
                groups.append((dt, in_step, flat))
            if len(self._step_groups) >= 8:
                self._step_groups.clear()
            self._step_groups[key] = groups
        return groups

    def view(self, arena: np.ndarray, i: int) -> np.ndarray:
        v = self.variables[i]
        off = self.offsets[i]
        if arena.size != self.totals[v.dtype]:  # a sharded slot arena
            lo, hi = self.shards[v.dtype]
            start, stop = max(off, lo) - lo, min(off + v.size, hi) - lo
            return arena[start : max(start, stop)]
        return arena[off : off + v.size].reshape(v.shape)

    def new_arena(self, dtype: np.dtype, fill=0, sharded: bool = False) -> np.ndarray:
        n = self.totals[dtype]
        if sharded and dtype in self.shards:
            lo, hi = self.shards[dtype]
            n = hi - lo
        return np.full(n, fill, dtype=dtype)

    def run(self, kernel, dtype, g: np.ndarray, slots, coefficients) -> None:
        """The kernel over this rank's part of `dtype`'s parameters (all of them unsharded)."""
        w = self.params[dtype]
        if dtype in self.shards:
            lo, hi = self.shards[dtype]
            w, g = w[lo:hi], g[lo:hi]
        with _timeline.span("kernel"):
            run_kernel(kernel, w, g, slots, coefficients)

    def gather(self) -> None:
        """Hands every rank the parameters the others updated (ZeRO-1; else nothing).

        Collective under sharding: call on all ranks, in the same order.
        """
        if self.sharding is not None:
            blocks = [self.blocks[dt] for dt in self.params] if self.owned is not None else None
            self.sharding.allgather(list(self.params.values()), blocks)
