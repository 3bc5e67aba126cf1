"""Timing and table helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # this checkout's distopt, whatever else is installed

RESNET50 = ROOT / "tests" / "data" / "resnet50_grad_sizes.json"


def resnet50_sizes(total: int | None = None) -> list[int]:
    """The 161 ResNet-50 gradient sizes, optionally scaled to about `total` elements."""
    sizes = json.loads(RESNET50.read_text())["sizes"]
    if total is None:
        return sizes
    scale = total / sum(sizes)
    return [max(1, round(s * scale)) for s in sizes]


def world():
    """(comm, rank, size), or (None, 0, 1) when mpi4py is not wanted (a plain `python` run)."""
    if "OMPI_COMM_WORLD_SIZE" in os.environ or "PMI_SIZE" in os.environ or "PMI_RANK" in os.environ:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        return comm, comm.Get_rank(), comm.Get_size()
    return None, 0, 1


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = {"now": time.perf_counter}


def use_clock(name: str) -> None:
    """ "wall" (default) or "cpu" (this process's CPU time: steadier on a shared machine, but
    blind to time spent waiting, so only for single-process work)."""
    _clock["now"] = CLOCKS[name]


def median_ms(fn, repeats: int, warmup: int = 2, comm=None) -> float:
    """Median time of `fn()` in ms. Under MPI every repeat starts after a barrier and
    counts the slowest rank (a collective is as slow as its last rank)."""
    return interleaved_ms({"fn": fn}, repeats, warmup, comm)["fn"]


def interleaved_ms(fns: dict, repeats: int, warmup: int = 2, comm=None) -> dict[str, float]:
    """Median ms of each `fns[name]()`, all timed within every repeat, in an order that rotates
    from repeat to repeat. A shared machine drifts between quiet and noisy stretches; measured
    in turn, every row sees the same stretches, so their ratios do not depend on which row ran
    while the host was busy. Under MPI each call is timed as in `median_ms`."""
    now = _clock["now"]
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            if comm is not None:
                comm.Barrier()
            t = now()
            fns[name]()
            dt = now() - t
            if comm is not None:
                dt = comm.allreduce(dt, op=_max())
            times[name].append(dt)
    return {name: float(np.median(ts)) * 1e3 for name, ts in times.items()}


def _max():
    from mpi4py import MPI

    return MPI.MAX


class Table:
    """Rows of (name, ms, ratio-to-a-baseline, note), printed as a markdown table."""

    def __init__(self, title: str, baseline_label: str):
        self.title, self.baseline_label, self.rows = title, baseline_label, []

    def add(self, name: str, ms: float, baseline_ms: float | None = None, note: str = "") -> None:
        self.rows.append((name, ms, None if baseline_ms is None else ms / baseline_ms, note))

    def render(self) -> str:
        out = [f"\n### {self.title}\n", f"| work | median ms | / {self.baseline_label} | note |",
               "|---|---:|---:|---|"]  # fmt: skip
        for name, ms, ratio, note in self.rows:
            r = "" if ratio is None else f"{ratio:.2f}x"
            out.append(f"| {name} | {ms:.2f} | {r} | {note} |")
        return "\n".join(out)


def emit(tables: list[Table], header: str) -> None:
    print(f"## {header}")
    for t in tables:
        print(t.render())
    sys.stdout.flush()


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def init_gloo(comm, rank: int, size: int) -> None:
    """torch.distributed's gloo process group over loopback TCP, on a port rank 0 picks
    (collective: call on all ranks)."""
    import socket

    import torch.distributed as dist

    port = None
    if rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = comm.bcast(port, root=0)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size
    )


def chunked_adam_step(w, g, m, v, chunk: int = 1 << 18):
    """The numpy baseline: Adam in place over flat float32 arrays, in cache-sized chunks.

    Returns a zero-argument step function; `g` is read at each call (refill it in place).
    """
    f4 = np.float32
    t = np.empty(chunk, f4)
    b1, b2, omb1, omb2, alpha, eps = f4(0.9), f4(0.999), f4(0.1), f4(0.001), f4(1e-3), f4(1e-7)

    def step():
        for lo in range(0, w.size, chunk):
            hi = lo + chunk
            ws, gs, ms, vs = w[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
            ts = t[: ws.size]
            ms *= b1
            np.multiply(gs, omb1, out=ts)
            ms += ts
            vs *= b2
            np.multiply(gs, gs, out=ts)
            ts *= omb2
            vs += ts
            np.sqrt(vs, out=ts)
            ts += eps
            np.divide(ms, ts, out=ts)
            ts *= alpha
            ws -= ts

    return step
