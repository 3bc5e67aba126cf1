"""Last words before an abort: stderr text that survives pytest's output capture.

pytest keeps a test's output in a temporary file (`--capture=fd`, its default) or in memory
(`--capture=sys`) and shows it only once the test ends; MPI_Abort ends the process first,
so a message written to `sys.stderr` just before it would be lost with everything captured.
"""

from __future__ import annotations

import gc
import os
import sys


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _pytest_saved_stderr() -> list[int]:
    """The copies of the real fd 2 that pytest's active fd captures hold (none without pytest)."""
    capture = sys.modules.get("_pytest.capture")
    kind = getattr(capture, "FDCapture", None)
    if kind is None:
        return []
    return [
        obj.targetfd_save
        for obj in gc.get_objects()
        if isinstance(obj, kind)
        and getattr(obj, "targetfd", None) == 2
        and getattr(obj, "_state", None) in ("started", "suspended")
        and isinstance(getattr(obj, "targetfd_save", None), int)
    ]


def write_uncaptured(text: str) -> None:
    """Writes `text` to `sys.stderr` and, once each, to the real stderr behind any capture
    (pytest's saved fd 2, `sys.__stderr__`), flushed: call it right before aborting."""
    written = set()
    streams = [sys.stderr] if sys.__stderr__ is sys.stderr else [sys.stderr, sys.__stderr__]
    for stream in streams:
        if stream is None:
            continue
        fd = _fileno(stream)
        target = _identity(fd) if fd is not None else None
        if target is not None and target in written:
            continue
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            continue
        if target is not None:
            written.add(target)
    data = text.encode("utf-8", "replace")
    for fd in _pytest_saved_stderr():
        target = _identity(fd)
        if target is None or target in written:
            continue
        try:
            os.write(fd, data)
        except OSError:
            continue
        written.add(target)
