"""A strategy's bucket plans, one per variable list: least recently used first out, bounded
in bytes, and freed (with their shared-memory windows) once their variables are gone.

Plans are only freed while a new plan is made, which every rank does at the same collective
point; with shared-memory plans the ranks first agree (one small all-reduce) on which
plans' variables are gone, since garbage collection differs between ranks. A plan whose
arrays `gradient_buffers` handed out is kept as long as its variables live.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

import numpy as np

PLAN_CACHE_BYTES = 256 << 20  # per rank; the newest plan is kept whatever its size
MAX_PLANS = 32
_RECENT = 8  # lists matched by identity first; they hold their variables (strongly)


class _Entry:
    __slots__ = ("plan", "refs", "ids", "nbytes", "pinned")

    def __init__(self, plan, variables, nbytes):
        self.plan = plan
        self.refs = [weakref.ref(v) for v in variables]
        self.ids = tuple(map(id, variables))
        self.nbytes = nbytes
        self.pinned = False

    def alive(self, variables=None) -> bool:
        if variables is None:
            return all(r() is not None for r in self.refs)
        return len(variables) == len(self.refs) and all(
            r() is v for r, v in zip(self.refs, variables)
        )


class PlanCache:
    """Plans by variable list: found by the variables' ids, checked against weak references.

    Entries are numbered in creation order, the same on every rank (plans are made
    collectively), so the ranks' caches correspond entry by entry."""

    def __init__(self, budget_bytes: int = PLAN_CACHE_BYTES, max_plans: int = MAX_PLANS):
        self.budget_bytes = budget_bytes
        self.max_plans = max_plans
        self.nbytes = 0
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # least recently used first
        self._by_ids: dict[tuple, int] = {}
        self._recent: dict[tuple, tuple] = {}  # variables -> (number, plan)
        self._serial = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def plans(self) -> list:
        return [e.plan for e in self._entries.values()]

    def lookup(self, variables):
        """The cached plan for `variables` (which becomes the most recent), or None."""
        held = tuple(variables)
        hit = self._recent.get(held)
        if hit is not None:
            try:
                self._entries.move_to_end(hit[0])
            except KeyError:  # freed by another thread meanwhile
                return None
            return hit[1]
        with self._lock:
            number = self._by_ids.get(tuple(map(id, held)))
            entry = self._entries.get(number)
            if entry is None or not entry.alive(held):
                return None  # ids reused by other variables are not a hit
            self._entries.move_to_end(number)
        self._remember(held, number, entry.plan)
        return entry.plan

    def _remember(self, held: tuple, number: int, plan) -> None:
        if len(self._recent) >= _RECENT:
            self._recent.clear()
        self._recent[held] = (number, plan)

    def make_room(self, new_bytes: int, reducer, agree) -> list:
        """Frees the plans whose variables are gone, then the least recently used ones
        until `new_bytes` more fit the budget; returns the plans freed.

        `agree(flags)` (an int64 array) returns its element-wise minimum over the ranks that
        share the plans' windows. Collective when `agree` communicates: call on all ranks.
        """
        self._recent.clear()  # drops the only strong references some lists still have
        with self._lock:
            numbers = list(self._entries)
            entries = [self._entries[n] for n in numbers]
        if not entries:
            return []
        dead = agree(np.array([int(not e.alive()) for e in entries], np.int64))
        total, count, chosen = self.nbytes, len(entries), []
        for i, e in enumerate(entries):  # oldest first
            full = total + new_bytes > self.budget_bytes or count + 1 > self.max_plans
            if dead[i] or (full and not e.pinned):
                chosen.append(i)
                total, count = total - e.nbytes, count - 1
        freed = []
        for i in chosen:
            with self._lock:
                entry = self._entries.pop(numbers[i])
                if self._by_ids.get(entry.ids) == numbers[i]:
                    del self._by_ids[entry.ids]
            self.nbytes -= entry.nbytes
            reducer.free_plan(entry.plan)
            freed.append(entry.plan)
        return freed

    def add(self, variables, plan, nbytes: int) -> None:
        held = tuple(variables)
        with self._lock:
            number = self._serial = self._serial + 1
            self._entries[number] = _Entry(plan, held, nbytes)
            self._by_ids[tuple(map(id, held))] = number
            self.nbytes += nbytes
        self._remember(held, number, plan)

    def pin(self, variables) -> None:
        """Keeps the plan of `variables` (cached) as long as they live."""
        number = self._by_ids.get(tuple(map(id, variables)))
        if number in self._entries:
            self._entries[number].pinned = True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_ids.clear()
        self._recent.clear()
        self.nbytes = 0
