"""Python overhead of one `apply_gradients` with 200 tiny variables (target: <= 300 us).

    python benchmarks/overhead.py                 # one process, default strategy
    mpiexec -n 2 python benchmarks/overhead.py    # inside MPIStrategy.run, 2 ranks

With 200 variables of 10 float32 each the arithmetic is negligible: the time is the Python
work per step (validation, aggregation bookkeeping, the update dispatch).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import Table, emit, median_ms, use_clock, world

NUM_VARIABLES, SIZE = 200, 10


def _one(name, strategy, comm, repeats, in_buffers):
    import distopt

    distopt.utils.clear_session()
    scope = strategy.scope() if strategy is not None else _nothing()
    with scope:
        variables = [distopt.Variable(np.zeros(SIZE)) for _ in range(NUM_VARIABLES)]
        if name == "loss scale + adam":
            opt = distopt.optimizers.LossScaleOptimizer(distopt.optimizers.Adam())
        else:
            opt = distopt.optimizers.get(name)
    if in_buffers and strategy is not None:
        grads = strategy.gradient_buffers(variables)
        for g in grads:
            g[...] = 1e-3
    else:
        grads = [np.full(SIZE, 1e-3, np.float32) for _ in variables]

    def step():
        opt.apply_gradients(zip(grads, variables))

    run = (lambda: strategy.run(step)) if strategy is not None else step
    return median_ms(run, repeats, warmup=5, comm=comm) * 1e3


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = parser.parse_args()
    use_clock(args.clock)
    comm, rank, size = world()
    from distopt.optimizers import _engine

    strategy = None
    if comm is not None:
        from distopt.distribute import MPIStrategy

        strategy = MPIStrategy()
    where = f"MPIStrategy, {size} ranks" if strategy else "default strategy, one process"
    table = Table(f"`apply_gradients`, {NUM_VARIABLES} variables x {SIZE} float32, {where}, "
                  f"engine {_engine.engine()}, {args.clock} clock", "target 300 us")  # fmt: skip
    for name in ("sgd", "adam", "rmsprop", "lion", "loss scale + adam"):
        us = _one(name, strategy, comm, args.repeats, False)
        table.add(f"{name}: microseconds per step", us, 300.0, "gradients as separate arrays")
        if strategy is not None:
            us = _one(name, strategy, comm, args.repeats, True)
            table.add(f"{name}: microseconds per step", us, 300.0, "gradients in gradient_buffers")

    # What this machine does to 200 us of pure Python work plus one barrier, in the same job:
    # on a shared, oversubscribed machine the difference is CPU time lost to other processes.
    def calibration():
        t = time.perf_counter()
        while time.perf_counter() - t < 200e-6:
            pass
        if comm is not None:
            comm.Barrier()

    us = median_ms(calibration, args.repeats, comm=comm) * 1e3
    what = "200 us busy loop" + (" + one barrier" if comm is not None else "")
    table.add(f"calibration: {what}", us, 300.0, "no distopt: the machine's own cost")
    if rank == 0:
        emit([table], "Python overhead per step (medians; 'median ms' column is microseconds)")


if __name__ == "__main__":
    main()
