"""distopt.keras on the torch backend: aggregation, update and wrapper costs, as ratios.

    mpiexec -n 2 python benchmarks/keras_fit.py [--repeats 15] [--params 4000000]

Tables (medians; under MPI each repeat counts the slowest rank; rows of a table timed in
turn so they share the host's quiet and noisy stretches):
1. averaging one step's gradients of a Keras MLP: DistributedOptimizer's path (torch
   tensors -> distopt buckets -> torch views) against distopt's raw aggregation of the same
   numpy arrays, and against torch.distributed gloo over DDP's buckets (1 MB first, then
   25 MB, reverse parameter order, allocated once);
2. Keras's Adam update against distopt's Adam engine on 10M float32 parameters (one rank);
3. DistributedOptimizer(Adam) against plain Adam on 200 small variables: the wrapper's
   overhead per step in microseconds;
4. the share of a `fit`-style step (forward, backward, update) spent averaging gradients;
then a summary of these ratios beside their targets.
"""

from __future__ import annotations

import argparse
import os

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np  # noqa: E402
from _common import Table, emit, init_gloo, interleaved_ms, use_clock, world  # noqa: E402

DDP_BUCKET_BYTES = 25 << 20
DDP_FIRST_BUCKET_BYTES = 1 << 20  # torch.distributed._DEFAULT_FIRST_BUCKET_BYTES


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
    return table, t


def _gloo_buckets(comm, rank, size, grads):
    import torch
    import torch.distributed as dist

    init_gloo(comm, rank, size)
    # DDP's layout: parameters in reverse order (the order backward produces them), a first
    # bucket of 1 MB, then 25 MB buckets, allocated once. The averaged gradients are left in
    # the buckets, as `gradient_as_bucket_view=True` does and as distopt's path returns views.
    buckets, cap, current, nbytes = [], DDP_FIRST_BUCKET_BYTES, [], 0
    for g in reversed(grads):
        current.append(g)
        nbytes += g.numel() * g.element_size()
        if nbytes >= cap:
            buckets.append(current)
            current, nbytes, cap = [], 0, DDP_BUCKET_BYTES
    if current:
        buckets.append(current)
    flats = [torch.zeros(sum(g.numel() for g in b)) for b in buckets]
    views = []
    for b, flat in zip(buckets, flats):
        offsets = np.cumsum([0] + [g.numel() for g in b]).tolist()
        views.append([flat[lo:hi].view_as(g) for g, lo, hi in zip(b, offsets, offsets[1:])])

    def step():
        # DDP's allreduce hook per bucket: copy in, divide by the world size, all-reduce.
        for b, flat, v in zip(buckets, flats, views):
            torch._foreach_copy_(v, b)
            flat.div_(size)
            dist.all_reduce(flat)

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
    return table, t


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
    fns = {"Adam": lambda: plain.apply(grads, plain_vars),
           "DistributedOptimizer(Adam)": lambda: wrapped.apply(grads, wrapped_vars)}  # fmt: skip
    t = interleaved_ms(fns, repeats, comm=comm)
    # CPU time too: on a busy host a rank's wall time also counts the turns it waits for a
    # core, which the wall-clock difference of two rows can make or hide.
    use_clock("cpu")
    try:
        cpu = interleaved_ms(fns, repeats, comm=comm)
    finally:
        use_clock("wall")
    table = Table("200 variables of 100 floats: wrapper overhead", "Adam")
    for name, ms in t.items():
        table.add(name, ms, t["Adam"])
    for name, ms in cpu.items():
        table.add(f"{name}, CPU time", ms, cpu["Adam"])
    extra = (t["DistributedOptimizer(Adam)"] - t["Adam"]) * 1e3
    extra_cpu = (cpu["DistributedOptimizer(Adam)"] - cpu["Adam"]) * 1e3
    table.add("overhead per step (us)", extra, None, "in microseconds, not ms")
    table.add("overhead per step, CPU time (us)", extra_cpu, None, "in microseconds, not ms")
    t["overhead us"], t["overhead cpu us"] = extra, extra_cpu
    return table, t


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
    return table, t


def summary(agg: dict, upd: dict | None, over: dict, step: dict) -> str:
    """The ratios the benchmarks exist for, each beside its target."""
    rows = []
    ours = agg["DistributedOptimizer path (torch tensors)"]
    rows.append(("averaging path / distopt raw", f"{ours / agg['distopt raw (numpy)']:.2f}x",
                 "<= 1.2x", ours / agg["distopt raw (numpy)"] <= 1.2))  # fmt: skip
    gloo = agg.get("torch gloo, DDP's 25 MB buckets")
    if gloo is not None:
        rows.append(("torch gloo (DDP buckets) / averaging path", f"{gloo / ours:.2f}x", ">= 5x",
                     gloo / ours >= 5))  # fmt: skip
    if upd is not None:
        ratio = upd["keras Adam (torch)"] / upd["distopt Adam engine"]
        rows.append(("keras Adam / distopt Adam engine (10M)", f"{ratio:.2f}x", "", None))
    for label, key in (("wall", "overhead us"), ("CPU time", "overhead cpu us")):
        extra = over[key]
        rows.append((f"wrapper overhead, 200 variables, {label}", f"{extra:.0f} us", "<= 500 us",
                     extra <= 500))  # fmt: skip
    local, dist = step["step, local Adam (no averaging)"], step["step, DistributedOptimizer"]
    share = max(0.0, dist - local) / dist
    rows.append(("averaging's share of a step", f"{share:.0%}", "< 20% (else overlap)",
                 share < 0.2))  # fmt: skip
    out = ["\n### Summary\n", "| measure | value | target | met |", "|---|---:|---|---|"]
    for name, value, target, met in rows:
        verdict = "" if met is None else "yes" if met else "no"
        out.append(f"| {name} | {value} | {target} | {verdict} |")
    return "\n".join(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--params", type=int, default=4_000_000)
    parser.add_argument("--no-torch-gloo", action="store_true")
    args = parser.parse_args()
    comm, rank, size = world()
    import torch

    torch.set_num_threads(1)
    table, agg = aggregation(comm, rank, size, args.params, args.repeats,
                             gloo=size > 1 and not args.no_torch_gloo)  # fmt: skip
    tables, upd = [table], None
    if rank == 0:
        table, upd = update(max(3, args.repeats // 2))
        tables.append(table)
    if comm is not None:
        comm.Barrier()
    table, over = overhead(comm, args.repeats * 4)
    tables.append(table)
    table, step = share_of_step(comm, args.params, args.repeats)
    tables.append(table)
    if rank == 0:
        emit(tables, f"distopt.keras benchmarks ({size} ranks, torch backend)")
        print(summary(agg, upd, over, step), flush=True)


if __name__ == "__main__":
    main()
