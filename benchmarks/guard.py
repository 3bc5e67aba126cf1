"""Steady-state cost of the cross-rank guard and the deadline bookkeeping.

    mpiexec -n 2 python benchmarks/guard.py

Measured in one job: the guard's check alone (one 4-element int64 MIN all-reduce), a raw
`Allreduce` of the same 4 int64 for reference, the monitor's enter/leave pair, and a whole
`apply_gradients` (SGD, 200 variables of 10 float32, and ResNet-50's 161 gradients) with the
guard on and with its check replaced by a no-op, in alternating rounds.
"""

from __future__ import annotations

import time

import numpy as np
from _common import median_ms, resnet50_sizes, world


def _apply_step(strategy, sizes):
    import distopt

    with strategy.scope():
        variables = [distopt.Variable(np.zeros(n, np.float32)) for n in sizes]
        opt = distopt.optimizers.SGD(learning_rate=1e-3)
    grads = strategy.gradient_buffers(variables)
    for g in grads:
        g[...] = 1e-3
    return lambda: strategy.run(lambda: opt.apply_gradients(zip(grads, variables)))


def main():
    comm, rank, size = world()
    if comm is None or size < 2:
        raise SystemExit("run under mpiexec with at least 2 ranks")
    from mpi4py import MPI

    from distopt.collectives import _guard
    from distopt.distribute import MPIStrategy

    strategy = MPIStrategy()
    safety = strategy._safety
    sig = _guard.Signature(1, "", [(f"v{i}", (10,), "float32") for i in range(200)])
    raw = np.zeros(4, np.int64)
    inner = strategy.communicator.mpi_comm
    rows = {
        "raw Allreduce of 4 int64": lambda: inner.Allreduce(MPI.IN_PLACE, raw, op=MPI.MIN),
        "guard check": lambda: _guard.check(strategy.communicator, sig, 1, 1),
    }
    monitor = safety.monitor
    t = time.perf_counter()
    for _ in range(100000):
        monitor.enter(1)
        monitor.leave()
    enter_leave_us = (time.perf_counter() - t) / 100000 * 1e6
    results = {name: median_ms(fn, 2000, warmup=50, comm=comm) * 1e3 for name, fn in rows.items()}

    real_check = _guard.check
    steps = {"200 x 10 float32": [10] * 200, "ResNet-50 (161 tensors)": resnet50_sizes()}
    apply_rows = []
    for label, sizes in steps.items():
        step = _apply_step(strategy, sizes)
        on, off = [], []
        for _ in range(5):  # alternate, so machine noise hits both alike
            _guard.check = real_check
            on.append(median_ms(step, 40, warmup=3, comm=comm))
            _guard.check = lambda *a: None
            off.append(median_ms(step, 40, warmup=3, comm=comm))
        _guard.check = real_check
        apply_rows.append((label, float(np.median(on)), float(np.median(off))))

    if rank == 0:
        print(f"## Guard and deadline overhead, {size} ranks (medians, slowest rank)\n")
        print("| work | time |\n|---|---|")
        for name, us in results.items():
            print(f"| {name} | {us:.1f} us |")
        print(f"| monitor enter + leave (no communication) | {enter_leave_us:.2f} us |")
        print("\n| apply_gradients, SGD | guard on | guard off | overhead |\n|---|---|---|---|")
        for label, on, off in apply_rows:
            cells = [f"{on * 1e3:.0f} us", f"{off * 1e3:.0f} us", f"{(on - off) * 1e3:+.0f} us"]
            print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
