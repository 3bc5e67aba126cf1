"""Start-up deadline: every rank reports to `distoptrun` when its process starts; a job whose
ranks have not all reported within the deadline is ended, naming the hosts that did not start.

Without it a host whose ssh hangs, or whose MPI proxy cannot connect back, leaves the started
ranks waiting in `MPI_Init` until a scheduler's walltime. The report is one line over TCP,
`token rank hostname`, sent by the rank runner before the program starts.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time

ENV = "DISTOPT_START_REPORT"
TIMEOUT_ENV = "DISTOPT_START_TIMEOUT"
DEFAULT_TIMEOUT = 120.0
EXIT_NOT_STARTED = 88  # distinct from GNU timeout's 124 and distopt's 86 / 87


class StartupWatch:
    """Listens for the ranks' start reports. `address` is where ranks on other hosts reach
    this one (the launching host's name, or the chosen interface's address)."""

    def __init__(self, np_: int, timeout: float, address: str, expected: list[str] | None):
        self.np, self.timeout, self.expected = np_, timeout, expected
        self.token = secrets.token_hex(8)
        self.started: dict[int, str] = {}
        self._lock = threading.Lock()
        self._all = threading.Event()
        self._server = socket.create_server(("", 0), backlog=max(64, np_))
        self._server.settimeout(0.5)
        self.address = f"{address}:{self._server.getsockname()[1]}:{self.token}"
        self._closed = False
        self._deadline = time.monotonic() + timeout
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed and not self._all.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    line = conn.recv(512).decode(errors="replace").split()
                except OSError:
                    continue
            if len(line) == 3 and line[0] == self.token and line[1].isdigit():
                with self._lock:
                    self.started[int(line[1])] = line[2]
                    if len(self.started) >= self.np:
                        self._all.set()

    def missing_message(self) -> str:
        with self._lock:
            missing = [r for r in range(self.np) if r not in self.started]
            reported = sorted(set(self.started.values()))
        ranks = ", ".join(map(str, missing))
        text = f"{len(missing)} of {self.np} ranks did not start within {self.timeout:g} s"
        if self.expected:
            hosts: dict[str, list[int]] = {}
            for r in missing:
                hosts.setdefault(self.expected[r], []).append(r)
            names = "; ".join(f"{h} (ranks {', '.join(map(str, rs))})" for h, rs in hosts.items())
            text += f": host(s) that did not start: {names}"
        else:
            text += f" (ranks {ranks})"
        text += f". Ranks started on: {', '.join(reported) or 'no host'}."
        return (
            f"distoptrun: {text} Check that each host is up and reachable over ssh from here "
            "without a password (and back, for MPI's own connections), that distopt is installed "
            "at the same path on every host, or raise --start-timeout. Ending the job."
        )

    def overdue(self) -> bool:
        """True once the deadline has passed with some rank not yet reported."""
        return not self._all.is_set() and time.monotonic() > self._deadline

    def close(self) -> None:
        self._closed = True
        self._server.close()


def report() -> None:
    """Called by each rank's runner: tells `distoptrun` this rank started (best effort)."""
    target = os.environ.get(ENV)
    rank = next((os.environ[v] for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
                 if v in os.environ), None)  # fmt: skip
    if not target or rank is None:
        return
    host, port, token = target.rsplit(":", 2)
    message = f"{token} {rank} {socket.gethostname()}\n".encode()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=5) as conn:
                conn.sendall(message)
            return
        except OSError:
            time.sleep(0.5)
