"""distopt.keras on the torch backend: aggregation, update and wrapper costs, as ratios.

    mpiexec -n 2 python benchmarks/keras_fit.py [--repeats 15] [--params 4000000]

Tables (medians; under MPI each repeat counts the slowest rank; rows of a table timed in
turn so they share the host's quiet and noisy stretches):
1. averaging one step's gradients of a Keras MLP: DistributedOptimizer's path (torch
   tensors -> distopt buckets -> torch views) against distopt's raw aggregation of the same
   numpy arrays, and against torch.distributed gloo over DDP's 25 MB buckets;
2. Keras's Adam update against distopt's Adam engine on 10M float32 parameters (one rank);
3. DistributedOptimizer(Adam) against plain Adam on 200 small variables: the wrapper's
   overhead per step in microseconds;
4. the share of a `fit`-style step (forward, backward, update) spent averaging gradients.
"""

from __future__ import annotations

import argparse
import os

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402
from _common import Table, emit, interleaved_ms, world  # noqa: E402

DDP_BUCKET_BYTES = 25 << 20


def mlp(params: int):
    import keras

    width = int((params / 3) ** 0.5)
    model = keras.Sequential(
        [keras.Input((width,))] + [keras.layers.Dense(width) for _ in range(3)]
    )
    return model, width


def torch_grads(model, width, batch=32):
    import torch

    model.zero_grad()
    x = torch.randn(batch, width)
    model(x).square().mean().backward()
    return [v.value.grad for v in model.trainable_weights]


def aggregation(comm, rank, size, params: int, repeats: int, gloo: bool) -> Table:
    import torch

    from distopt.keras import _backends, _runtime

    model, width = mlp(params)
    grads = torch_grads(model, width)
    names = [f"{i}:{v.path}" for i, v in enumerate(model.trainable_weights)]
    agg = _runtime.GradientAggregator(_runtime.get_strategy())
    arrays = [g.numpy() for g in grads]

    def wrapper():
        _, release = _backends.allreduce(agg, names, grads)
        release()

    def raw():
        agg.reduce(names, arrays)
        agg.release()

    rows = {"DistributedOptimizer path (torch tensors)": wrapper, "distopt raw (numpy)": raw}
    if gloo:
        rows["torch gloo, DDP's 25 MB buckets"] = _gloo_buckets(comm, rank, size, grads)
    t = interleaved_ms(rows, repeats, comm=comm)
    n = sum(g.numel() for g in grads)
    table = Table(f"Averaging one step's gradients ({n / 1e6:.1f}M float32, {len(grads)} "
                  f"tensors, {size} ranks)", "distopt raw")  # fmt: skip
    for name, ms in t.items():
        table.add(name, ms, t["distopt raw (numpy)"])
    if gloo:
        import torch.distributed as dist

        dist.destroy_process_group()
    del torch
    return table


def _gloo_buckets(comm, rank, size, grads):
    import socket

    import torch
    import torch.distributed as dist

    port = None
    if rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = comm.bcast(port, root=0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=size)  # fmt: skip
    total = sum(g.numel() for g in grads)
    per = DDP_BUCKET_BYTES // 4
    buckets = [torch.zeros(min(per, total - lo)) for lo in range(0, total, per)]

    def step():
        # DDP: copy the gradients into flat buckets, all-reduce each, divide, copy back.
        flat = torch.cat([g.reshape(-1) for g in grads])
        lo = 0
        for b in buckets:
            b.copy_(flat[lo : lo + b.numel()])
            dist.all_reduce(b)
            b.div_(size)
            lo += b.numel()

    return step


def update(repeats: int) -> Table:
    import keras
    import torch

    import distopt

    n = 10_000_000
    kv = keras.Variable(np.zeros(n, "float32"))
    kopt = keras.optimizers.Adam(1e-3)
    kopt.build([kv])
    kg = torch.full((n,), 1e-3)
    dv = distopt.Variable(np.zeros(n, "float32"))
    dopt = distopt.optimizers.Adam(1e-3)
    dg = np.full(n, 1e-3, "float32")
    t = interleaved_ms({"keras Adam (torch)": lambda: kopt.apply([kg], [kv]),
                        "distopt Adam engine": lambda: dopt.apply_gradients([(dg, dv)])},
                       repeats)  # fmt: skip
    table = Table("Adam update, 10M float32 parameters, one rank", "distopt engine")
    for name, ms in t.items():
        table.add(name, ms, t["distopt Adam engine"])
    return table


def overhead(comm, repeats: int) -> Table:
    import keras
    import torch

    from distopt.keras import DistributedOptimizer

    def variables():
        # Named: Keras's automatic names count variables, and only rank 0 made table 2's.
        return [keras.Variable(np.zeros(100, "float32"), name=f"v{i}") for i in range(200)]

    plain_vars, wrapped_vars = variables(), variables()
    grads = [torch.full((100,), 1e-3) for _ in range(200)]
    plain = keras.optimizers.Adam(1e-3)
    wrapped = DistributedOptimizer(keras.optimizers.Adam(1e-3))
    plain.build(plain_vars)
    wrapped.build(wrapped_vars)
    t = interleaved_ms({"Adam": lambda: plain.apply(grads, plain_vars),
                        "DistributedOptimizer(Adam)": lambda: wrapped.apply(grads, wrapped_vars)},
                       repeats, comm=comm)  # fmt: skip
    table = Table("200 variables of 100 floats: wrapper overhead", "Adam")
    for name, ms in t.items():
        table.add(name, ms, t["Adam"])
    table.add("overhead per step (us)", (t["DistributedOptimizer(Adam)"] - t["Adam"]) * 1e3, None,
              "in microseconds, not ms")  # fmt: skip
    return table


def share_of_step(comm, params: int, repeats: int) -> Table:
    import keras

    from distopt.keras import DistributedOptimizer

    model, width = mlp(params)
    opt = DistributedOptimizer(keras.optimizers.Adam(1e-3))
    opt.build(model.trainable_weights)
    plain = keras.optimizers.Adam(1e-3)
    plain.build(model.trainable_weights)

    def step(optimizer):
        grads = torch_grads(model, width)
        optimizer.apply(grads, model.trainable_weights)

    t = interleaved_ms({"step, DistributedOptimizer": lambda: step(opt),
                        "step, local Adam (no averaging)": lambda: step(plain)},
                       repeats, comm=comm)  # fmt: skip
    table = Table("A training step (forward, backward, update), batch 32", "local step")
    for name, ms in t.items():
        table.add(name, ms, t["step, local Adam (no averaging)"])
    return table


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--params", type=int, default=4_000_000)
    parser.add_argument("--no-torch-gloo", action="store_true")
    args = parser.parse_args()
    comm, rank, size = world()
    import torch

    torch.set_num_threads(1)
    tables = [aggregation(comm, rank, size, args.params, args.repeats,
                          gloo=size > 1 and not args.no_torch_gloo)]  # fmt: skip
    if rank == 0:
        tables.append(update(max(3, args.repeats // 2)))
    if comm is not None:
        comm.Barrier()
    tables.append(overhead(comm, args.repeats * 4))
    tables.append(share_of_step(comm, args.params, args.repeats))
    if rank == 0:
        emit(tables, f"distopt.keras benchmarks ({size} ranks, torch backend)")


if __name__ == "__main__":
    main()
