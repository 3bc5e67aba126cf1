"""Whole `apply_gradients` (aggregate + Adam update) on ResNet-50's 161 gradient tensors.

    python benchmarks/apply.py                     # 1 rank
    mpiexec -n 2 python benchmarks/apply.py        # 2 ranks (and -n 4)

Configurations: shared memory on/off, gradients computed into `strategy.gradient_buffers`
(no pack copy) or passed as separate arrays, ZeRO-1 sharding on/off. Baseline, measured in
the same job: per-tensor `Allreduce` followed by numpy Adam in place over 256K chunks (what a
no-fusion wrapper around a hand-written numpy optimizer costs). Also prints the ZeRO-1
optimizer state per rank against the unsharded state. Each configuration is timed in turn with
the baseline within every repeat, and its ratio is to that baseline.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import Table, chunked_adam_step, emit, interleaved_ms, resnet50_sizes

F4 = np.float32
# Gradients summed in place step after step would double (or quadruple) until they overflow;
# zeros stay zeros, and none of these float operations is faster on zeros.
GRAD = 0.0


def _baseline(comm, sizes):
    """Per-tensor `Allreduce`, then numpy Adam in place: one step, as a callable."""
    from mpi4py import MPI

    grads = [np.full(s, GRAD, F4) for s in sizes]
    w, m, v = (np.ones(sum(sizes), F4), np.zeros(sum(sizes), F4), np.zeros(sum(sizes), F4))
    flat = np.empty(sum(sizes), F4)
    adam = chunked_adam_step(w, flat, m, v)

    def step():
        for g in grads:
            comm.Allreduce(MPI.IN_PLACE, g)
        np.concatenate(grads, out=flat)
        adam()

    return step


def _distopt(comm, sizes, repeats, shared_memory, in_buffers, shard, baseline):
    """(ms, baseline ms, state bytes, reducer name): the configuration's step and the
    baseline timed in turn within every repeat."""
    import distopt
    from distopt.distribute import MPIStrategy

    distopt.utils.clear_session()
    strategy = MPIStrategy(shared_memory=shared_memory, shard_optimizer_state=shard)
    with strategy.scope():
        variables = [distopt.Variable(np.ones(s)) for s in sizes]
        opt = distopt.optimizers.Adam(learning_rate=1e-3)
    if in_buffers:
        grads = strategy.gradient_buffers(variables)
        for g in grads:
            g[...] = GRAD
    else:
        grads = [np.full(s, GRAD, F4) for s in sizes]

    def step():
        strategy.run(lambda: opt.apply_gradients(zip(grads, variables)))

    t = interleaved_ms({"ours": step, "base": baseline}, repeats, comm=comm)
    state = sum(a.nbytes for arenas in opt._slot_arenas.values() for a in arenas.values())
    reducer = type(strategy._reducer).__name__
    strategy.close()
    return t["ours"], t["base"], state, reducer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    from mpi4py import MPI

    from distopt.optimizers import _engine

    comm = MPI.COMM_WORLD
    size, rank = comm.Get_size(), comm.Get_rank()
    sizes = resnet50_sizes()
    baseline = _baseline(comm, sizes)
    rows, bases, states = [], [], {}
    shm_options = [False, True] if size > 1 else [False]
    for shared in shm_options:
        for in_buffers in (True, False):
            for shard in (False, True):
                ms, base, state, reducer = _distopt(
                    comm, sizes, args.repeats, shared, in_buffers, shard, baseline
                )
                states[shard] = state
                where = "gradient_buffers" if in_buffers else "separate arrays"
                label = f"distopt, {reducer}, grads in {where}" + (", ZeRO-1" if shard else "")
                rows.append((label, ms, base))
                bases.append(base)
    table = Table(
        f"`apply_gradients`, Adam, ResNet-50 (161 tensors, 25.6M float32), {size} rank(s), "
        f"engine {_engine.engine()}",
        "per-tensor Allreduce + numpy chunked Adam",
    )
    base = float(np.median(bases))
    table.add("baseline: per-tensor `Allreduce` + numpy Adam in place", base, base,
              "median over the rows' own baselines")  # fmt: skip
    for label, ms, own_base in rows:
        table.add(label, ms, own_base, f"its baseline {own_base:.1f} ms")
    tables = [table]
    ratio = states[True] / states[False]
    memory = Table(f"Adam state per rank, {size} rank(s)", "unsharded")
    memory.add("unsharded: MB", states[False] / 2**20, states[False] / 2**20)
    memory.add("ZeRO-1: MB", states[True] / 2**20, states[False] / 2**20, f"1/N = {1 / size:.3f}")
    tables.append(memory)
    everyone = comm.gather(ratio, root=0)
    if rank == 0:
        emit(tables, f"Whole apply_gradients, {size} rank(s) (medians; slowest rank per repeat)")
        print(f"\nZeRO-1 state / unsharded per rank: {', '.join(f'{r:.4f}' for r in everyone)}")


if __name__ == "__main__":
    main()
