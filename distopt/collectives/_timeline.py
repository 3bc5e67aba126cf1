"""`DISTOPT_TIMELINE=path.json`: a Chrome-trace (Perfetto) file of each step's phases.

Spans ("pack", "reduce", "update", ...) are recorded per rank (trace `pid` = rank) with the
optimizer step in `args`. Each rank merges its events into the file under a file lock when
its buffer fills and at exit, so the file is valid JSON whenever no rank is writing; a file
left by an earlier job (another job token) is replaced, not appended to.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import threading
import time

TIMELINE_ENV = "DISTOPT_TIMELINE"
_FLUSH_EVERY = 20_000


def _check_path(path: str) -> None:
    """ValueError unless `path` can take the trace: its folder is writable and it is new,
    empty, or a trace an earlier job wrote (found now, not when the events are written at exit)."""
    where = f"{TIMELINE_ENV}={path!r}"
    folder = os.path.dirname(path)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(
            f"{where}: the folder {folder!r} does not exist or is not writable, so the trace "
            f"could not be written. Point {TIMELINE_ENV} at a file in a writable folder."
        )
    if os.path.isdir(path) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{where} is a folder or a read-only file; name a writable .json file.")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    try:
        with open(path) as f:
            old = json.load(f)
        other = old.get("otherData") if isinstance(old, dict) else None
        is_trace = isinstance(other, dict) and "job" in other
    except (OSError, ValueError):
        is_trace = False
    if not is_trace:
        raise ValueError(
            f"{where} names an existing file that is not a distopt timeline; it would be "
            f"overwritten. Move or delete it, or point {TIMELINE_ENV} at another file."
        )


class _Timeline:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        _check_path(self.path)
        self.rank = 0
        self.job = f"{os.getpid()}-{time.time_ns()}"
        self.step = 0
        self.events: list[dict] = []
        self.lock = threading.Lock()
        atexit.register(self.flush)

    @contextlib.contextmanager
    def span(self, name: str, **args):
        start = time.time_ns()
        try:
            yield
        finally:
            end = time.time_ns()
            event = {
                "name": name, "ph": "X", "ts": start / 1e3, "dur": (end - start) / 1e3,
                "pid": self.rank, "tid": threading.get_ident() % 100_000,
                "args": {"step": self.step, **args},
            }  # fmt: skip
            with self.lock:
                self.events.append(event)
                full = len(self.events) >= _FLUSH_EVERY
            if full:
                self.flush()

    def flush(self) -> None:
        with self.lock:
            events, self.events = self.events, []
        if not events:
            return
        name = {"name": f"rank {self.rank}"}
        meta = {"name": "process_name", "ph": "M", "pid": self.rank, "args": name}
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = {"traceEvents": [], "displayTimeUnit": "ms", "otherData": {"job": self.job}}
            try:
                with open(self.path) as f:
                    old = json.load(f)
                if old.get("otherData", {}).get("job") == self.job:
                    data = old
            except (OSError, ValueError):
                pass
            if meta not in data["traceEvents"]:
                data["traceEvents"].append(meta)
            data["traceEvents"].extend(events)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.path)


_NULL = contextlib.nullcontext()
_active: list[_Timeline] = []


def _timeline() -> _Timeline | None:
    if not _active:
        path = os.environ.get(TIMELINE_ENV)
        _active.append(_Timeline(path) if path else None)
    return _active[0]


def span(name: str, **args):
    """A context manager recording phase `name` (a no-op unless DISTOPT_TIMELINE is set)."""
    timeline = _active[0] if _active else _timeline()
    return _NULL if timeline is None else timeline.span(name, **args)


def set_step(step: int) -> None:
    """The optimizer step that the following spans belong to."""
    timeline = _active[0] if _active else _timeline()
    if timeline is not None:
        timeline.step = int(step)


def bind(communicator) -> None:
    """Names this process by its rank and agrees on one job token (rank 0's).

    Collective: call on all ranks, in the same order (MPIStrategy does, at creation).
    """
    timeline = _timeline()
    tokens = communicator.allgather_bytes(timeline.job.encode() if timeline else b"")
    if timeline is not None:
        timeline.rank = communicator.rank
        timeline.job = tokens[0].decode() or timeline.job


def flush() -> None:
    """Writes buffered events now (they are also written at exit)."""
    timeline = _timeline()
    if timeline is not None:
        timeline.flush()
