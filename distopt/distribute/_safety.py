"""What a strategy runs around each collective: the cross-rank guard and the deadline.

`begin(op, signature)` marks the collective started for the watchdog, then checks the
signature with the guard (one small all-reduce; skipped on one rank); `end()` marks it done.
Callers bracket the payload with `begin` ... `try: ... finally: end()`.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np

from distopt.collectives import _guard
from distopt.collectives._deadline import _WATCHDOG, OPERATIONS, Monitor, resolve_timeout
from distopt.collectives._guard import Signature

GRADIENTS = OPERATIONS.index("gradient aggregation")
REDUCE = OPERATIONS.index("reduce")
ALL_REDUCE = OPERATIONS.index("all_reduce")
BROADCAST = OPERATIONS.index("broadcast")
VARIABLE_BROADCAST = OPERATIONS.index("variable broadcast")
DATASET = OPERATIONS.index("dataset step agreement")
BUFFERS = OPERATIONS.index("gradient buffers")
PARAMETER_ALLGATHER = OPERATIONS.index("parameter all-gather")
CREATION = OPERATIONS.index("MPIStrategy creation")
CLOSE = OPERATIONS.index("strategy close")
CONFIG = OPERATIONS.index("optimizer hyperparameters")
CHECKPOINT = OPERATIONS.index("checkpoint")
_MAX_CACHED = 64
_AGGREGATED = "skip_gradients_aggregation=False"
_SKIPPED = "skip_gradients_aggregation=True"


def _flat_config(config: dict, prefix: str = "") -> dict:
    """`config` as one level of dotted keys, without the `name` keys (names are numbered per
    process, so they may differ between ranks without changing any update)."""
    out = {}
    for key, value in config.items():
        if key == "name":
            continue
        if isinstance(value, dict):
            out.update(_flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    # A callable learning rate, a custom object: its kind is compared, not its address.
    kind = value if isinstance(value, type) else type(value)
    qualname = getattr(value, "__qualname__", kind.__qualname__)
    return f"<{getattr(value, '__module__', kind.__module__)}.{qualname}>"


class CollectiveSafety:
    """The guard and deadline of one strategy's communicator."""

    def __init__(self, communicator, collective_timeout=None):
        self.timeout = resolve_timeout(collective_timeout)
        self.communicator = communicator
        self.active = communicator.size > 1
        self.monitor = Monitor(communicator, self.timeout)
        self._gradient_signatures: dict[int, tuple[object, Signature]] = {}
        self.closed: str | None = None  # after `close()`: why every collective now raises

    @property
    def step(self) -> int:
        """Gradient aggregations started so far (the training step the messages name)."""
        return self.monitor.step

    def begin(self, op: int, signature: Signature | None = None) -> None:
        """Starts a collective: deadline bookkeeping, then the guard (raises on mismatch).

        Collective: call on all ranks, in the same order.
        """
        if self.closed is not None:
            self.check_open(op)
        monitor = self.monitor
        if op == GRADIENTS:
            monitor.step += 1
        monitor.enter(op)
        if not self.active or signature is None:
            return
        try:
            _guard.check(self.communicator, signature, monitor.seq, monitor.step)
        except BaseException:
            monitor.leave()
            if op == GRADIENTS:
                monitor.step -= 1
            raise

    def check_open(self, op: int) -> None:
        """Raises RuntimeError once the strategy is closed."""
        if self.closed is not None:
            raise RuntimeError(f"Cannot run `{OPERATIONS[op]}`: {self.closed}")

    def end(self) -> None:
        self.monitor.leave()

    @contextlib.contextmanager
    def creating(self, signature: Signature):
        """Brackets the collectives that create the strategy (deadline, and the guard on its
        options, as collective #0). Collective: call on all ranks, in the same order."""
        monitor = self.monitor
        monitor.enter_creation()
        try:
            if self.active:
                _guard.check(self.communicator, signature, 0, 0)
            yield
        finally:
            monitor.leave()

    def close(self, reason: str) -> None:
        """Every later collective raises RuntimeError(`reason`); the watchdog stops asking peers."""
        self.closed = reason
        _WATCHDOG.discard(self.monitor)

    def gradient_signature(self, plan, variables, op: int = GRADIENTS) -> Signature | None:
        """The signature of aggregating `variables`; cached on their plan (None: no plan yet)."""
        if not self.active:
            return None
        if plan is not None:
            cached = self._gradient_signatures.get(id(plan))
            if cached is not None and cached[0] is plan:
                return cached[1]
        detail = _AGGREGATED if op == GRADIENTS else ""
        sig = Signature(op, detail, [(v.path, v.shape, v.dtype.name) for v in variables])
        if plan is not None:
            self.remember(plan, sig)
        return sig

    def skip_aggregation(self, variables) -> None:
        """Takes the place of a gradient aggregation that this rank skips: raises
        `CollectiveMismatchError` on every rank unless every rank skips it too.

        Collective: call on all ranks, in the same order.
        """
        items = [(v.path, v.shape, v.dtype.name) for v in variables] if self.active else ()
        self.begin(GRADIENTS, Signature(GRADIENTS, _SKIPPED, items) if self.active else None)
        self.end()

    def agree_on_config(self, config: dict) -> None:
        """Raises `CollectiveMismatchError` on every rank, naming each differing key with its
        value per rank, unless every rank passes an equal `config` (`name` keys aside). Not
        numbered among the collectives: it belongs to building an optimizer.

        Collective: call on all ranks, in the same order.
        """
        self.check_open(CONFIG)
        if not self.active:
            return
        detail = json.dumps(_flat_config(config), sort_keys=True, default=_jsonable)
        monitor = self.monitor
        monitor.enter_unnumbered(CONFIG)
        try:
            signature = Signature(CONFIG, detail, ())
            _guard.check(self.communicator, signature, monitor.seq, monitor.step)
        finally:
            monitor.leave()

    def remember(self, plan, signature: Signature | None) -> None:
        if signature is None:
            return
        if len(self._gradient_signatures) >= _MAX_CACHED:
            self._gradient_signatures.clear()
        self._gradient_signatures[id(plan)] = (plan, signature)

    def forget(self, plans=None) -> None:
        """Drops the cached signatures of `plans` (default: all), so the plans can go."""
        if plans is None:
            self._gradient_signatures.clear()
        for plan in plans or ():
            self._gradient_signatures.pop(id(plan), None)

    def watched(self, op: int, fn):
        """`fn` bracketed for the deadline only (for collectives that follow a guarded one)."""

        def call(*args, **kwargs):
            self.begin(op)
            try:
                return fn(*args, **kwargs)
            finally:
                self.end()

        return call
