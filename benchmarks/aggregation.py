"""Gradient aggregation: distopt's reducers against baselines measured in the same MPI job.

    mpiexec -n 2 python benchmarks/aggregation.py [--repeats 15] [--no-torch]

Prints medians (slowest rank per repeat) for 64/256 MB float32 buffers and for ResNet-50's
161 gradient tensors (25.6M params, 102 MB): the memory floor (`a += b`, all ranks at once),
raw single-buffer `Allreduce`, per-tensor `Allreduce`, naive fusion, distopt's sliced and
shared-memory paths, and torch.distributed gloo when torch is installed. The rows of a table
are timed in turn within each repeat, so they share the host's quiet and noisy stretches.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import (
    Table,
    emit,
    have_torch,
    init_gloo,
    interleaved_ms,
    median_ms,
    resnet50_sizes,
    world,
)

F4 = np.dtype("float32")


def _fill(arrays, rank):
    for a in arrays:
        a[...] = 1e-3 * (rank + 1)


def buffers(comm, dcomm, rank, size, mb: int, repeats: int) -> Table:
    from mpi4py import MPI

    from distopt.collectives import _reducers
    from distopt.collectives._reduce import allreduce_flat

    n = (mb << 20) // F4.itemsize
    a, b = np.ones(n, F4), np.full(n, 1e-9, F4)
    buf = np.full(n, 1e-3, F4)
    shm = _reducers.make_reducer(dcomm, shared_memory=True)
    plan = shm.make_plan([(n,)], [F4], bucket_bytes=n * 4)
    _fill(plan.views, rank)
    t = interleaved_ms(
        {
            "floor": lambda: np.add(a, b, out=a),
            "raw": lambda: comm.Allreduce(MPI.IN_PLACE, buf),
            "sliced": lambda: allreduce_flat(dcomm, buf, "sum"),
            "shm": lambda: shm.allreduce(plan, False),
        },
        repeats,
        comm=comm,
    )
    shm.close()
    floor, raw = t["floor"], t["raw"]
    table = Table(f"{mb} MB float32 buffer, {size} ranks", "memory floor")
    table.add("memory floor: `a += b`, every rank at once", floor, floor)
    table.add("raw `Allreduce`, one buffer", raw, floor)
    sliced = t["sliced"]
    table.add("distopt sliced `Allreduce` (2 MB pieces)", sliced, floor, f"{raw / sliced:.1f}x raw")
    shm_ms = t["shm"]
    table.add(
        "distopt shared memory, gradients in the window", shm_ms, floor, f"{raw / shm_ms:.1f}x raw"
    )
    return table


def resnet(comm, dcomm, rank, size, repeats: int, torch_too: bool) -> Table:
    from mpi4py import MPI

    from distopt.collectives import _reducers
    from distopt.collectives._compress import Compression

    sizes = resnet50_sizes()
    shapes = [(s,) for s in sizes]
    grads = [np.empty(s, F4) for s in sizes]
    _fill(grads, rank)

    def per_tensor():
        for g in grads:
            comm.Allreduce(MPI.IN_PLACE, g)

    def naive():
        flat = np.concatenate(grads)
        comm.Allreduce(MPI.IN_PLACE, flat)
        for g, piece in zip(grads, np.split(flat, np.cumsum(sizes)[:-1])):
            g[...] = piece

    rows = {
        "per-tensor `Allreduce` (no fusion)": per_tensor,
        "naive fusion: pack, one `Allreduce`, unpack": naive,
    }
    reducers = []
    for label, shared in (("sliced", False), ("shared memory", True)):
        reducer = _reducers.make_reducer(dcomm, shared_memory=shared)
        plan = reducer.make_plan(shapes, [F4] * len(sizes), 25 << 20)
        _fill(plan.views, rank)
        reducers.append(reducer)
        rows[f"distopt {label}, gradients already in the buckets"] = lambda r=reducer, p=plan: (
            r.allreduce(p, False)
        )

        def packed(r=reducer, p=plan):
            p.pack(grads)
            r.allreduce(p, False)

        rows[f"distopt {label}, packed from separate arrays"] = packed
    for name in ("bf16", "fp16"):
        reducer = _reducers.make_reducer(dcomm, shared_memory=False, compression=Compression(name))
        plan = reducer.make_plan(shapes, [F4] * len(sizes), 25 << 20)
        _fill(plan.views, rank)
        reducers.append(reducer)
        # MEAN keeps the values in fp16's range however often the buffer is reduced again.
        rows[f"distopt sliced, {name} on the wire (MEAN), grads in the buckets"] = (
            lambda r=reducer, p=plan: r.allreduce(p, True)
        )
    gloo_per_tensor = None
    if torch_too:
        fused, gloo_per_tensor = gloo(comm, rank, size, sizes)
        rows["torch gloo, one fused tensor"] = fused
    times = interleaved_ms(rows, repeats, comm=comm)
    if gloo_per_tensor is not None:
        # 10-30x slower than the rest: timed on its own, with fewer repeats.
        times["torch gloo, per tensor"] = median_ms(
            gloo_per_tensor, max(3, repeats // 3), 1, comm=comm
        )
        _close_gloo()
    for reducer in reducers:
        reducer.close()
    table = Table(
        f"ResNet-50 gradients (161 tensors, {sum(sizes) / 1e6:.1f}M params), {size} ranks",
        "per-tensor Allreduce",
    )
    base = times["per-tensor `Allreduce` (no fusion)"]
    for name, ms in times.items():
        table.add(name, ms, base)
    return table


def gloo(comm, rank, size, sizes):
    """torch.distributed gloo over loopback TCP: (fused, per-tensor) all-reduce callables."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    init_gloo(comm, rank, size)
    tensors = [torch.full((s,), 1e-3) for s in sizes]
    flat = torch.full((sum(sizes),), 1e-3)

    def per_tensor():
        for t in tensors:
            dist.all_reduce(t)

    return (lambda: dist.all_reduce(flat)), per_tensor


def _close_gloo():
    import torch.distributed as dist

    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sizes-mb", default="64,256")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    comm, rank, size = world()
    if comm is None or size < 2:
        raise SystemExit(
            "run under MPI with >= 2 ranks: mpiexec -n 2 python benchmarks/aggregation.py"
        )
    from distopt.comm import MPICommunicator

    dcomm = MPICommunicator(comm)
    tables = [
        buffers(comm, dcomm, rank, size, int(mb), args.repeats) for mb in args.sizes_mb.split(",")
    ]
    tables.append(resnet(comm, dcomm, rank, size, args.repeats, have_torch() and not args.no_torch))
    if rank == 0:
        emit(tables, f"Aggregation, {size} ranks (medians; slowest rank per repeat)")


if __name__ == "__main__":
    main()
