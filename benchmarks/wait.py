"""Waiting for a slow rank: MPICH's busy polling against the back-off wait of `_wait.py`.

    mpiexec -n 2 python benchmarks/wait.py [--steps 30] [--rounds 5]

Rank 1 sleeps `delay` ms before each step (a slow data loader or a slower node); the others
wait for it in the guard's check. Each step is a real `apply_gradients` (SGD, ResNet-50's 161
gradient shapes scaled to 1M float32). For each delay, the busy and back-off waits run in
turn, `rounds` times; per wait the medians over rounds of, on the waiting ranks: wall ms per
step, and CPU ms per step (`time.process_time`, every thread of the process). The latency cost
of the back-off is its wall time minus busy polling's, in ms per step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import resnet50_sizes, world

DELAYS_MS = (0.0, 2.0, 20.0, 100.0)


def _step(strategy, delay, slow):
    import distopt

    with strategy.scope():
        variables = [distopt.Variable(np.zeros(n, np.float32)) for n in resnet50_sizes(1_000_000)]
        opt = distopt.optimizers.SGD(learning_rate=1e-3)
    grads = [np.zeros(v.shape, np.float32) for v in variables]

    def step():
        if slow:
            time.sleep(delay / 1000)
        strategy.run(lambda: opt.apply_gradients(zip(grads, variables)))

    return step


def _time(comm, step, steps):
    comm.Barrier()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - wall) * 1e3 / steps, (time.process_time() - cpu) * 1e3 / steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    comm, rank, size = world()
    if comm is None or size < 2:
        raise SystemExit("run under mpiexec with at least 2 ranks")
    from distopt.collectives import _wait
    from distopt.distribute import MPIStrategy

    strategy = MPIStrategy()
    if rank == 0:
        print(f"{size} ranks; rank 1 sleeps `delay` ms per step; waiting ranks' medians over "
              f"{args.rounds} rounds of {args.steps} steps")  # fmt: skip
        print(f"{'delay ms':>8} {'wait':>8} {'wall ms/step':>13} {'cpu ms/step':>12} "
              f"{'cpu/wall':>9} {'latency cost ms':>16}")  # fmt: skip
    for delay in DELAYS_MS:
        step = _step(strategy, delay, slow=rank == 1)
        step()
        results = {"busy": [], "back-off": []}
        for r in range(args.rounds):
            order = ["busy", "back-off"] if r % 2 == 0 else ["back-off", "busy"]
            for name in order:
                _wait.ENABLED = name == "back-off"
                results[name].append(_time(comm, step, args.steps))
        _wait.ENABLED = True
        # The waiting ranks' figures (all but rank 1), gathered on rank 0.
        mine = {k: np.median(np.array(v), axis=0) for k, v in results.items()}
        everyone = comm.gather(mine if rank != 1 else None, root=0)
        if rank == 0:
            waiting = [m for m in everyone if m is not None]
            table = {k: np.median([m[k] for m in waiting], axis=0) for k in results}
            busy_wall = table["busy"][0]
            for name, (wall, cpu) in table.items():
                cost = "" if name == "busy" else f"{wall - busy_wall:+.2f}"
                print(f"{delay:8.1f} {name:>8} {wall:13.2f} {cpu:12.2f} {cpu / wall:9.2f} "
                      f"{cost:>16}")  # fmt: skip
    strategy.close()


if __name__ == "__main__":
    main()
