"""The update step of every optimizer, against baselines measured in the same run.

    python benchmarks/update.py [--params 10000000] [--repeats 10] [--clock wall|cpu]

10M float32 parameters, as one flat tensor and as ResNet-50's 161 tensors scaled to 10M,
gradients in one flat buffer (as after aggregation). Baselines: the memory floor (`a += b`
on 10M, scaled per optimizer to the bytes it must move), numpy Adam written in place over
256K chunks, textbook numpy Adam, and torch.optim.Adam(fused=True) on one thread when torch
is installed. Each optimizer runs on the numba engine (when numba imports) and on numpy,
timed in turn with its floor (and Adam with its baselines) within every repeat.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import (
    Table,
    chunked_adam_step,
    emit,
    have_torch,
    interleaved_ms,
    median_ms,
    resnet50_sizes,
    use_clock,
)

F4 = np.float32
VARIANTS = {"sgd": {"momentum": 0.9}}  # plain SGD has no state; benchmark it with momentum
SKIP = {"lossscaleoptimizer"}


def _variables(layout_sizes):
    import distopt

    rng = np.random.default_rng(0)
    return [distopt.Variable(rng.standard_normal(s).astype(F4) * 0.1) for s in layout_sizes]


def _grad_views(sizes):
    flat = np.full(sum(sizes), 1e-3, F4)
    return flat, [flat[a : a + s] for a, s in zip(np.cumsum([0, *sizes[:-1]]), sizes)]


def optimizer_step(cls, options, sizes, engine):
    """(step callable, optimizer, engine it runs on): `step()` is one `apply_gradients`."""
    import distopt
    from distopt.optimizers import _engine

    distopt.utils.clear_session()
    variables = _variables(sizes)
    _, grads = _grad_views(sizes)
    opt = cls(**options)

    def step():
        with _engine.use_engine(engine):
            opt.apply_gradients(zip(grads, variables))

    step()  # builds the optimizer: its coefficients may read state made at build
    used = engine
    if opt._kernel is not None:
        slots, coefficients = len(opt._kernel_slots), opt._coefficients(1e-3, F4)
        with _engine.use_engine(engine):
            used = _engine.engine_for(opt._kernel, slots, F4, [c.dtype for c in coefficients])
    return step, opt, used


def memory_floor(n):
    a, b = np.ones(n, F4), np.full(n, 1e-9, F4)
    return lambda: np.add(a, b, out=a)


def numpy_chunked_adam(n, chunk=1 << 18):
    w, g, m, v = np.ones(n, F4), np.full(n, 1e-3, F4), np.zeros(n, F4), np.zeros(n, F4)
    return chunked_adam_step(w, g, m, v, chunk)


def numpy_textbook_adam(n):
    w, g, m, v = np.ones(n, F4), np.full(n, 1e-3, F4), np.zeros(n, F4), np.zeros(n, F4)
    b1, b2, alpha, eps = F4(0.9), F4(0.999), F4(1e-3), F4(1e-7)

    def step():
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        w[...] = w - alpha * m / (np.sqrt(v) + eps)

    return step


def torch_fused_adam(sizes):
    import torch

    torch.set_num_threads(1)
    params = [torch.nn.Parameter(torch.ones(s)) for s in sizes]
    for p in params:
        p.grad = torch.full((p.numel(),), 1e-3)
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    return opt.step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--only", default="", help="comma-separated optimizer names")
    args = parser.parse_args()
    use_clock(args.clock)
    from distopt.optimizers import _engine
    from distopt.optimizers._registry import _BUILTINS

    n, reps = args.params, args.repeats
    engines = ["numba", "numpy"] if _engine._numba_imports() else ["numpy"]
    floor_fn, chunked_fn = memory_floor(n), numpy_chunked_adam(n)
    layouts = {"flat": [n], "161 tensors": resnet50_sizes(n)}
    torch_fns = (
        {label: torch_fused_adam(sizes) for label, sizes in layouts.items()} if have_torch() else {}
    )
    baselines = {"floor": floor_fn, "chunked": chunked_fn, **torch_fns}
    t = interleaved_ms(baselines, reps)
    floor = t["floor"]
    base = Table(f"Baselines, {n / 1e6:.0f}M float32 ({args.clock} clock)", "memory floor")
    base.add("memory floor: `a += b`", floor, floor)
    base.add("Adam, numpy in place, 256K chunks", t["chunked"], floor)
    base.add("Adam, numpy textbook", median_ms(numpy_textbook_adam(n), max(3, reps // 2)), floor)
    for label in torch_fns:
        base.add(f"torch.optim.Adam(fused=True), 1 thread, {label}", t[label], floor)
    tables = [base]
    names = [k for k in sorted(_BUILTINS) if k not in SKIP]
    if args.only:
        names = [k for k in names if k in args.only.split(",")]
    for label, sizes in layouts.items():
        table = Table(f"Update step, {n / 1e6:.0f}M float32 as {label} ({args.clock} clock)",
                      "its memory floor")  # fmt: skip
        for name in names:
            for engine in engines:
                cls, options = _BUILTINS[name], VARIANTS.get(name, {})
                per_tensor = cls(**options)._kernel is None
                if per_tensor and engine != engines[0]:
                    continue
                step, opt, used = optimizer_step(cls, options, sizes, engine)
                if per_tensor:
                    table.add(
                        f"{name} (per tensor)", median_ms(step, 3), None, "no elementwise floor"
                    )
                    continue
                # Each row is timed in turn with its own baselines, so a noisy stretch of the
                # shared host falls on both sides of the ratio.
                rows = {"step": step, "floor": floor_fn}
                if name == "adam":
                    rows["chunked"] = chunked_fn
                    if label in torch_fns:
                        rows["torch"] = torch_fns[label]
                t = interleaved_ms(rows, reps)
                ms, slots = t["step"], len(opt._kernel_slots)
                own_floor = t["floor"] * (3 + 2 * slots) / 3
                note = f"{slots} slots; floor {own_floor:.1f} ms"
                if name == "adam" and used == "numpy":
                    note += f"; {ms / t['chunked']:.2f}x numpy chunked baseline"
                if "torch" in t:
                    note += f"; {ms / t['torch']:.2f}x torch fused"
                table.add(f"{name}{options or ''}, engine {used}", ms, own_floor, note)
        tables.append(table)
    emit(tables, "Update step (medians, one process)")


if __name__ == "__main__":
    main()
