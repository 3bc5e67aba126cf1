"""`distoptrun --restarts N`: relaunch a failed job, as torchrun's `--max-restarts`.

The program resumes itself from its newest checkpoint (`CheckpointManager.latest_step()`);
each relaunch sees `DISTOPT_RESTART_COUNT` (0 on the first run) and is logged on stderr.
A job stopped on purpose (SIGINT, SIGTERM or SIGHUP: Ctrl-C, `kill`, a scheduler's stop) is
not relaunched.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

RESTART_COUNT = "DISTOPT_RESTART_COUNT"
# SIGINT, SIGTERM, SIGHUP: as a shell's status (128 + n) and as subprocess's (-n).
_INTERRUPTED = (130, 143, 129, -2, -15, -1)


def check_restarts(value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SystemExit(f"distoptrun: --restarts must be an integer >= 0. Received: {value!r}")
    return value


def run_with_restarts(launch: Callable[[dict], int], env: dict, restarts: int, log=None) -> int:
    """Runs `launch(env)` (one whole job; returns its exit code) until it succeeds, is
    interrupted, or has been relaunched `restarts` times; returns the last exit code."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    restarts = check_restarts(restarts)
    attempt = 0
    while True:
        env = {**env, RESTART_COUNT: str(attempt)}
        started = time.monotonic()
        code = launch(env)
        if code == 0 or code in _INTERRUPTED or attempt >= restarts:
            if code not in (0, *_INTERRUPTED) and restarts:
                log(f"distoptrun: the job failed (exit code {code}); no restarts left "
                    f"({restarts} used).")  # fmt: skip
            return code
        attempt += 1
        log(
            f"distoptrun: the job failed (exit code {code}) after "
            f"{time.monotonic() - started:.1f} s; restart {attempt} of {restarts} (the "
            "program resumes from its newest checkpoint)."
        )
