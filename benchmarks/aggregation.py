"""Gradient aggregation: distopt's reducers against baselines measured in the same MPI job.

    mpiexec -n 2 python benchmarks/aggregation.py [--repeats 15] [--no-torch]

Prints medians (slowest rank per repeat) for 64/256 MB float32 buffers and for ResNet-50's
161 gradient tensors (25.6M params, 102 MB): the memory floor (`a += b`, all ranks at once),
raw single-buffer `Allreduce`, per-tensor `Allreduce`, naive fusion, distopt's sliced and
shared-memory paths, and torch.distributed gloo when torch is installed.
"""

from __future__ import annotations

import argparse
import socket

import numpy as np
from _common import Table, emit, have_torch, median_ms, resnet50_sizes, world

F4 = np.dtype("float32")


def _fill(arrays, rank):
    for a in arrays:
        a[...] = 1e-3 * (rank + 1)


def _floor(n, repeats, comm):
    a, b = np.ones(n, F4), np.full(n, 1e-9, F4)
    return median_ms(lambda: np.add(a, b, out=a), repeats, comm=comm)


def _mpi_paths(dcomm, n, repeats, comm):
    from mpi4py import MPI

    from distopt.collectives._reduce import allreduce_flat

    buf = np.full(n, 1e-3, F4)
    raw = median_ms(lambda: comm.Allreduce(MPI.IN_PLACE, buf), repeats, comm=comm)
    sliced = median_ms(lambda: allreduce_flat(dcomm, buf, "sum"), repeats, comm=comm)
    return raw, sliced


def buffers(comm, dcomm, rank, size, mb: int, repeats: int) -> Table:
    from distopt.collectives import _reducers

    n = (mb << 20) // F4.itemsize
    table = Table(f"{mb} MB float32 buffer, {size} ranks", "memory floor")
    floor = _floor(n, repeats, comm)
    table.add("memory floor: `a += b`, every rank at once", floor, floor)
    raw, sliced = _mpi_paths(dcomm, n, repeats, comm)
    table.add("raw `Allreduce`, one buffer", raw, floor)
    table.add("distopt sliced `Allreduce` (2 MB pieces)", sliced, floor, f"{raw / sliced:.1f}x raw")
    shm = _reducers.make_reducer(dcomm, shared_memory=True)
    plan = shm.make_plan([(n,)], [F4], bucket_bytes=n * 4)
    _fill(plan.views, rank)
    t = median_ms(lambda: shm.allreduce(plan, False), repeats, comm=comm)
    table.add("distopt shared memory, gradients in the window", t, floor, f"{raw / t:.1f}x raw")
    shm.close()
    return table


def resnet(comm, dcomm, rank, size, repeats: int, torch_too: bool) -> Table:
    from mpi4py import MPI

    from distopt.collectives import _reducers

    sizes = resnet50_sizes()
    shapes = [(s,) for s in sizes]
    grads = [np.empty(s, F4) for s in sizes]
    _fill(grads, rank)
    table = Table(
        f"ResNet-50 gradients (161 tensors, {sum(sizes) / 1e6:.1f}M params), {size} ranks",
        "per-tensor Allreduce",
    )

    def per_tensor():
        for g in grads:
            comm.Allreduce(MPI.IN_PLACE, g)

    base = median_ms(per_tensor, repeats, comm=comm)
    table.add("per-tensor `Allreduce` (no fusion)", base, base)

    def naive():
        flat = np.concatenate(grads)
        comm.Allreduce(MPI.IN_PLACE, flat)
        for g, piece in zip(grads, np.split(flat, np.cumsum(sizes)[:-1])):
            g[...] = piece

    table.add(
        "naive fusion: pack, one `Allreduce`, unpack", median_ms(naive, repeats, comm=comm), base
    )
    for label, shared in (("sliced", False), ("shared memory", True)):
        reducer = _reducers.make_reducer(dcomm, shared_memory=shared)
        plan = reducer.make_plan(shapes, [F4] * len(sizes), 25 << 20)
        _fill(plan.views, rank)
        t = median_ms(lambda r=reducer, p=plan: r.allreduce(p, False), repeats, comm=comm)
        table.add(f"distopt {label}, gradients already in the buckets", t, base)

        def packed(r=reducer, p=plan):
            p.pack(grads)
            r.allreduce(p, False)

        table.add(
            f"distopt {label}, packed from separate arrays",
            median_ms(packed, repeats, comm=comm),
            base,
        )
        reducer.close()
    from distopt.collectives._compress import Compression

    for name in ("bf16", "fp16"):
        reducer = _reducers.make_reducer(dcomm, shared_memory=False, compression=Compression(name))
        plan = reducer.make_plan(shapes, [F4] * len(sizes), 25 << 20)
        _fill(plan.views, rank)
        # MEAN keeps the values in fp16's range however often the buffer is reduced again.
        t = median_ms(lambda r=reducer, p=plan: r.allreduce(p, True), repeats, comm=comm)
        table.add(f"distopt sliced, {name} on the wire (MEAN), grads in the buckets", t, base)
    if torch_too:
        for name, t in gloo(comm, rank, size, sizes, max(3, repeats // 3)):
            table.add(name, t, base)
    return table


def gloo(comm, rank, size, sizes, repeats):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    port = None
    if rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = comm.bcast(port, root=0)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size
    )
    tensors = [torch.full((s,), 1e-3) for s in sizes]
    flat = torch.full((sum(sizes),), 1e-3)

    def per_tensor():
        for t in tensors:
            dist.all_reduce(t)

    out = [
        (
            "torch gloo, one fused tensor",
            median_ms(lambda: dist.all_reduce(flat), repeats, comm=comm),
        )
    ]
    out.append(("torch gloo, per tensor", median_ms(per_tensor, repeats, 1, comm=comm)))
    dist.destroy_process_group()
    return out


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
