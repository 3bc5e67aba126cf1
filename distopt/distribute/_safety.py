"""What a strategy runs around each collective: the cross-rank guard and the deadline.

`begin(op, signature)` marks the collective started for the watchdog, then checks the
signature with the guard (one small all-reduce; skipped on one rank); `end()` marks it done.
Callers bracket the payload with `begin` ... `try: ... finally: end()`.
"""

from __future__ import annotations

import contextlib

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
CHECKPOINT = OPERATIONS.index("checkpoint")
_MAX_CACHED = 64


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
        sig = Signature(op, "", [(v.path, v.shape, v.dtype.name) for v in variables])
        if plan is not None:
            self.remember(plan, sig)
        return sig

    def remember(self, plan, signature: Signature | None) -> None:
        if signature is None:
            return
        if len(self._gradient_signatures) >= _MAX_CACHED:
            self._gradient_signatures.clear()
        self._gradient_signatures[id(plan)] = (plan, signature)

    def watched(self, op: int, fn):
        """`fn` bracketed for the deadline only (for collectives that follow a guarded one)."""

        def call(*args, **kwargs):
            self.begin(op)
            try:
                return fn(*args, **kwargs)
            finally:
                self.end()

        return call
