"""Collective deadlines: a watchdog thread aborts the job when a collective overruns.

Each strategy owns a `Monitor`; `enter(op)` / `leave()` bracket every collective it runs
(two attribute writes, no communication). One process-wide daemon thread wakes about once
a second, answers other ranks' census requests on the communicator's side channel, and when
this rank has been inside one collective longer than its timeout, asks every rank where it
is, prints which ranks did not arrive, and calls MPI_Abort. A rank that exits tells the
others on the side channel; a rank waiting in a collective that the exited rank never reached
aborts at its next tick, naming it, instead of waiting for the deadline.
"""

from __future__ import annotations

import atexit
import math
import os
import threading
import time

import numpy as np

from distopt._stderr import write_uncaptured
from distopt.collectives import _exit_drain

DEFAULT_TIMEOUT = 600.0
# The watchdog looks at most every 50 ms: a shorter deadline would abort collectives that
# every rank reached, only because they take more than no time.
MIN_TIMEOUT = 0.1
TIMEOUT_ENV = "DISTOPT_COLLECTIVE_TIMEOUT"
# Distinct from 124 (GNU `timeout`'s "I killed it") and from 128+N (killed by signal N).
DEADLINE_EXIT_CODE = 86  # a collective overran its deadline: some rank is alive but stuck
DEPARTED_EXIT_CODE = 87  # a rank exited while others waited for it in a collective
OPERATIONS = (
    "collective", "gradient aggregation", "reduce", "all_reduce", "broadcast",
    "variable broadcast", "dataset step agreement", "gradient buffers", "parameter all-gather",
    "MPIStrategy creation", "strategy close", "optimizer hyperparameters", "checkpoint",
)  # fmt: skip
_CREATION = OPERATIONS.index("MPIStrategy creation")
_STATE, _EXIT = 1, 2
_MAX_EXIT_NOTICES = 64  # beyond this, exiting ranks stay silent (N^2 messages)
# mpiexec (Hydra) exits with the abort's code when one rank aborts, but ranks aborting at the
# same moment can make it report a killed rank's 9: only the lowest of the waiting ranks
# aborts at once; the others wait this long first, in case it could not.
FOLLOWER_DELAY = 2.0


def end_job(abort, code: int, message: str, leader: bool) -> None:
    """Prints `message` past any output capture and calls `abort(code)` (see FOLLOWER_DELAY)."""
    if not leader:
        time.sleep(FOLLOWER_DELAY)
    write_uncaptured(message + "\n")
    time.sleep(0.5)  # mpiexec stops forwarding output once it handles the abort
    abort(code)


def resolve_timeout(value) -> float:
    """`value`, else `$DISTOPT_COLLECTIVE_TIMEOUT`, else 600 s; `math.inf` disables it."""
    what = f"collective_timeout={value!r}"
    if value is None:
        raw = os.environ.get(TIMEOUT_ENV, "").strip()
        if not raw:
            return DEFAULT_TIMEOUT
        what = f"{TIMEOUT_ENV}={raw!r}"
        try:
            value = float(raw)
        except ValueError:
            value = None
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    try:
        seconds = float(value) if ok else math.nan
    except OverflowError:  # an int beyond float range: no deadline, as math.inf
        seconds = math.inf
    if not seconds >= MIN_TIMEOUT:
        raise ValueError(
            f"The collective timeout must be a number of seconds >= {MIN_TIMEOUT:g} (math.inf "
            "disables the deadline); set it with MPIStrategy(collective_timeout=...) or "
            f"{TIMEOUT_ENV}. Received: {what}"
        )
    return seconds


def _is_exit(msg) -> bool:
    return msg[0] == _EXIT


def _op_name(code: int) -> str:
    return OPERATIONS[code] if 0 <= code < len(OPERATIONS) else OPERATIONS[0]


class Monitor:
    """This rank's position in the sequence of a strategy's collectives."""

    def __init__(self, communicator, timeout: float):
        self.communicator = communicator
        self.timeout = float(timeout)
        self.seq = 0  # collectives started
        self.step = 0  # gradient aggregations started (set by the strategy)
        self.current: tuple | None = None  # (seq, op, step, start) inside a collective
        self.last = (0, 0, 0, time.monotonic())  # the last one finished
        self.exited: dict[int, np.ndarray] = {}
        self.channel = communicator.side_channel() if communicator.thread_multiple else None
        self._fired = False
        if communicator.size > 1:
            _WATCHDOG.add(self)

    def enter(self, op: int) -> None:
        self.seq += 1
        self.current = (self.seq, op, self.step, time.monotonic())

    def enter_creation(self) -> None:
        """Starts the strategy's creation: collective #0, which the numbering does not count."""
        self.current = (0, _CREATION, 0, time.monotonic())

    def enter_unnumbered(self, op: int) -> None:
        """Starts a collective that the numbering does not count (part of building something)."""
        self.current = (self.seq, op, self.step, time.monotonic())

    def leave(self) -> None:
        cur = self.current
        if cur is not None:
            self.current = None
            self.last = (cur[0], cur[1], cur[2], time.monotonic())

    def state(self, kind: int = _STATE) -> np.ndarray:
        cur = self.current
        seq, op, step, since = cur if cur is not None else self.last
        age_ms = int((time.monotonic() - since) * 1000)
        return np.array([kind, seq, op, step, cur is not None, age_ms], dtype=np.int64)

    def _tick(self, now: float) -> None:
        if self.channel is not None:
            try:
                for source, msg in self.channel.poll(self.state):
                    if msg[0] == _EXIT:
                        self.exited[source] = msg
            except Exception:  # noqa: BLE001 - MPI finalized or broken: keep the deadline only
                self.channel = None
        cur = self.current
        if cur is None or self._fired:
            return
        # An exited rank's last collective is final: one it never reached cannot complete.
        gone = sorted(p for p, msg in self.exited.items() if int(msg[1]) < cur[0])
        if gone:
            self._depart(cur, gone)
        elif now - cur[3] > self.timeout:
            self._expire(cur)

    def _depart(self, cur: tuple, gone: list[int]) -> None:
        self._fired = True
        comm = self.communicator
        leader = comm.rank == min(set(range(comm.size)) - set(self.exited))
        end_job(comm.abort, DEPARTED_EXIT_CODE, departure_message(self, cur, gone), leader)

    def _expire(self, cur: tuple) -> None:
        self._fired = True
        replies, notices = {}, []
        if self.channel is not None:
            wait = min(3.0, max(0.5, self.timeout))
            replies, notices = self.channel.census(self.state, wait, skip=set(self.exited))
        for source, msg in notices:
            if msg[0] == _EXIT:
                self.exited[source] = msg
        if self.current is not cur:  # it completed while we asked around: not a stall
            self._fired = False
            return
        # Not only `sys.stderr`: under pytest's capture the abort would discard the message.
        message = deadline_message(self, cur, replies)
        leader = self.communicator.rank == min(_arrived(self, cur[0], replies))
        end_job(self.communicator.abort, DEADLINE_EXIT_CODE, message, leader)


def _where(msg) -> str:
    _, seq, op, step, _, _ = (int(x) for x in msg)
    if seq == 0 and op == _CREATION:
        return "the strategy's creation"
    if seq == 0:
        return "before its first distopt collective"
    return f"collective #{seq} (`{_op_name(op)}`, step {step})"


def _arrived(monitor: Monitor, seq: int, replies: dict) -> list[int]:
    """This rank and the peers whose reply (or exit notice) says they reached collective `seq`."""
    comm = monitor.communicator
    arrived = [comm.rank]
    for peer in range(comm.size):
        msg = replies.get(peer, monitor.exited.get(peer))
        if peer != comm.rank and msg is not None and int(msg[1]) >= seq:
            arrived.append(peer)
    return arrived


def deadline_message(monitor: Monitor, cur: tuple, replies: dict) -> str:
    """Which ranks arrived at collective `cur` and where the others are."""
    seq, op, step, _ = cur
    comm = monitor.communicator
    arrived, missing = _arrived(monitor, seq, replies), []
    for peer in range(comm.size):
        msg = replies.get(peer, monitor.exited.get(peer))
        if peer in arrived:
            continue
        if msg is None:
            missing.append(f"rank {peer}: no answer (it crashed, is exiting, or is stuck in "
                           "code that holds the Python GIL)")  # fmt: skip
        elif msg[0] == _EXIT:
            missing.append(f"rank {peer}: finished its script and exited after {_where(msg)}")
        elif msg[4]:
            missing.append(f"rank {peer}: waiting in {_where(msg)} for {msg[5] / 1000:.1f} s")
        else:
            missing.append(f"rank {peer}: running outside distopt collectives for "
                           f"{msg[5] / 1000:.1f} s, since {_where(msg)}")  # fmt: skip
    if monitor.channel is None:
        missing.append("(the other ranks could not be asked: MPI was initialised without "
                       "MPI_THREAD_MULTIPLE)")  # fmt: skip
    lines = [
        f"distopt: collective deadline exceeded on rank {comm.rank} of {comm.size}: "
        f"`{_op_name(op)}` at step {step} (collective #{seq}) did not complete within "
        f"collective_timeout={monitor.timeout:g} s.",
        f"  arrived: rank{'s' if len(arrived) > 1 else ''} "
        + ", ".join(str(r) for r in sorted(arrived)),
        "  did not arrive:",
        *(f"    {m}" for m in missing),
        *(
            ()
            if missing
            else [
                "    none: every rank reached this collective, which was still running when the "
                f"deadline passed; the deadline ({monitor.timeout:g} s) is shorter than the "
                "collective takes: raise it."
            ]
        ),
        f"Aborting the job (MPI_Abort, exit code {DEADLINE_EXIT_CODE}). Every rank must run the "
        "same collectives in the same order (a rank that skips `apply_gradients` or leaves its "
        f"loop early stalls the others). Change the deadline with "
        f"MPIStrategy(collective_timeout=...) or {TIMEOUT_ENV}.",
    ]
    return "\n".join(lines)


def departure_message(monitor: Monitor, cur: tuple, gone: list[int]) -> str:
    """Which ranks exited before reaching collective `cur`, where this rank waits for them."""
    seq, op, step, _ = cur
    comm = monitor.communicator
    many = len(gone) > 1
    return "\n".join([
        f"distopt: rank{'s' if many else ''} {', '.join(map(str, gone))} of {comm.size} "
        f"exited while rank {comm.rank} waits for {'them' if many else 'it'} in `{_op_name(op)}` "
        f"at step {step} (collective #{seq}).",
        *(f"  rank {p}: finished its script and exited after {_where(monitor.exited[p])}"
          for p in gone),
        f"Aborting the job (MPI_Abort, exit code {DEPARTED_EXIT_CODE}). Every rank must run the "
        "same collectives in the same order: end every rank's loop after the same number of "
        "steps (a rank that skips `apply_gradients` or leaves its loop early stalls the others).",
    ])  # fmt: skip


class _Watchdog:
    """The one thread that ticks every live monitor."""

    def __init__(self):
        # Strong references: a strategy dropped without `close()` keeps its communicator until
        # MPI_Finalize, and its peers may still wait in its collectives; its monitor keeps
        # answering them and sends its exit notice.
        self._monitors: set[Monitor] = set()
        self._lock = threading.Lock()
        self._ticking = threading.Lock()  # held while monitors are ticked
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, monitor: Monitor) -> None:
        with self._lock:
            self._monitors.add(monitor)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="distopt-watchdog", daemon=True
                )
                self._thread.start()
                atexit.register(self.shutdown)

    def discard(self, monitor: Monitor) -> None:
        """Stops watching `monitor`; returns once no tick is using it (before its comm is freed)."""
        with self._ticking, self._lock:
            self._monitors.discard(monitor)
            monitor.channel = None

    def _snapshot(self) -> list[Monitor]:
        with self._lock:
            return list(self._monitors)

    def _run(self) -> None:
        while True:
            monitors = self._snapshot()
            tick = min([1.0] + [max(0.05, m.timeout / 10) for m in monitors])
            if self._stop.wait(tick):
                return
            with self._ticking:
                now = time.monotonic()
                for m in monitors:
                    if m in self._monitors:
                        m._tick(now)

    def shutdown(self) -> None:
        """Stops the thread, then tells peers this rank is exiting (runs before MPI_Finalize)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        end = time.monotonic() + 1.0  # for all notices together
        notified = []
        for m in self._snapshot():
            if m.channel is not None and 1 < m.communicator.size <= _MAX_EXIT_NOTICES:
                try:
                    m.channel.notify_all(m.state(_EXIT), max(0.0, end - time.monotonic()))
                    notified.append(m)
                except Exception:  # noqa: BLE001, S110 - exiting anyway; MPI may be finalized
                    pass
        for m in notified:  # the peers' notices, so none is unreceived at MPI_Finalize
            try:
                _exit_drain.await_channel_exits(m.channel, m.state, m.exited, _is_exit)
            except Exception:  # noqa: BLE001, S110 - exiting anyway; MPI may be finalized
                pass


_WATCHDOG = _Watchdog()
