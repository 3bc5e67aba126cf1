"""The numpy engine: a kernel's tape turned into chunked, allocation-free `out=` code.

Each ufunc of the tape writes into a preallocated chunk-sized scratch buffer, or straight
into the arena it will end in once the old value there is no longer read, so a step makes
no temporaries and touches each chunk while it is in cache. Results are bit-identical to
calling the kernel on whole arrays: the same ufuncs, on the same dtypes, in the same order.
"""

from __future__ import annotations

import threading

import numpy as np

from distopt.optimizers._kernel_trace import Tape

_scratch = threading.local()


class Program:
    """A generated `run(*arrays, *coefficients, scratch, chunk)` for one traced kernel."""

    def __init__(self, tape: Tape):
        self.tape = tape
        self.scratch_dtypes: list[np.dtype] = []
        source, namespace = _generate(tape, self.scratch_dtypes)
        exec(compile(source, f"<distopt kernel {id(tape):x}>", "exec"), namespace)  # noqa: S102
        self.source = source
        self.run_chunks = namespace["run"]
        itemsizes = sum(tape.dtypes[i].itemsize for i in range(2 + tape.num_slots))
        self.bytes_per_element = itemsizes + sum(d.itemsize for d in self.scratch_dtypes)

    def scratch(self, chunk: int) -> list[np.ndarray]:
        cache = getattr(_scratch, "buffers", None)
        if cache is None:
            cache = _scratch.buffers = {}
        key = (id(self), chunk)
        bufs = cache.get(key)
        if bufs is None:
            bufs = cache[key] = [np.empty(chunk, d) for d in self.scratch_dtypes]
        return bufs

    def __call__(self, w, g, slots, coefficients, chunk: int) -> None:
        n = w.shape[0]
        chunk = max(1, min(chunk, n))
        self.run_chunks(w, g, *slots, *coefficients, self.scratch(chunk), chunk)


def _generate(tape: Tape, scratch_dtypes: list) -> tuple[str, dict]:
    num_arrays = 2 + tape.num_slots
    num_inputs = num_arrays + tape.num_coefficients
    end = len(tape.ops)
    last_use = {}
    for k, op in enumerate(tape.ops):
        for a in op.args:
            if isinstance(a, int):
                last_use[a] = k
    targets: dict[int, list[int]] = {}
    for position, value in enumerate(tape.outputs):
        targets.setdefault(value, []).append(0 if position == 0 else position + 1)
        last_use[value] = end  # outputs stay live to the end
    namespace = {"copyto": np.copyto}
    constants: dict[int, str] = {}

    def ref(a) -> str:
        if isinstance(a, int):
            return name[a]
        key = len(constants)
        constants[key] = f"k{key}"
        namespace[f"k{key}"] = a
        return f"k{key}"

    name = {i: f"x{i}" for i in range(num_arrays)}
    name.update({i: f"v{i}" for i in range(num_arrays, num_inputs)})
    holder = {f"x{i}": i for i in range(num_arrays)}  # storage -> value it holds
    free: dict[np.dtype, list[str]] = {}
    prologue, body = [], []
    for k, op in enumerate(tape.ops):
        fname = f"f{k}"
        namespace[fname] = op.func
        r = op.result
        args = [ref(a) for a in op.args]
        if tape.kinds[r] == "scalar":
            name[r] = f"v{r}"
            prologue.append(f"v{r} = {fname}({', '.join(args)})")
            continue
        dying = [a for a in dict.fromkeys(op.args) if isinstance(a, int) and last_use[a] <= k]
        if op.func is not np.where:
            _release(dying, name, holder, free, tape)  # exact in-place overlap is safe
        dest = None
        for t in targets.get(r, ()):
            old = holder[f"x{t}"]
            if last_use.get(old, -1) <= k and not (op.func is np.where and old in op.args):
                dest = f"x{t}"
                break
        if dest is None:
            pool = free.setdefault(tape.dtypes[r], [])
            if pool:
                dest = pool.pop()
            else:
                dest = f"t{len(scratch_dtypes)}"
                scratch_dtypes.append(tape.dtypes[r])
        holder[dest] = r
        name[r] = dest
        if op.func is np.where:
            body.append(f"copyto({dest}, {args[2]})")
            body.append(f"copyto({dest}, {args[1]}, where={args[0]})")
            _release(dying, name, holder, free, tape)
        else:
            body.append(f"{fname}({', '.join(args)}, out={dest})")
        if last_use.get(r, -1) <= k:
            _release([r], name, holder, free, tape)
    # Outputs not already in place: copy those that read an arena first, then the scratch.
    copies = []
    for position, value in enumerate(tape.outputs):
        t = 0 if position == 0 else position + 1
        if name[value] != f"x{t}":
            copies.append((not name[value].startswith("x"), f"copyto(x{t}, {name[value]})"))
    body += [line for _, line in sorted(copies, key=lambda c: c[0])]
    params = [f"a{i}" for i in range(num_arrays)] + [f"v{i}" for i in range(num_arrays, num_inputs)]
    scratch_names = [f"t{j}" for j in range(len(scratch_dtypes))]
    lines = [f"def run({', '.join(params)}, scratch, chunk):"]
    lines += [f"    {s}" for s in prologue]
    lines.append("    n = a0.shape[0]")
    lines += [f"    T{j} = scratch[{j}]" for j in range(len(scratch_names))]
    lines.append("    for lo in range(0, n, chunk):")
    lines.append("        hi = lo + chunk")
    for i in range(num_arrays):
        lines.append(f"        x{i} = a{i}[lo:hi]")
    if scratch_names:
        lines.append("        if hi > n:")
        lines += [f"            {t} = T{j}[: n - lo]" for j, t in enumerate(scratch_names)]
        lines.append("        else:")
        lines += [f"            {t} = T{j}" for j, t in enumerate(scratch_names)]
    lines += [f"        {s}" for s in body] or ["        pass"]
    return "\n".join(lines) + "\n", namespace


def _release(values, name, holder, free, tape) -> None:
    for a in values:
        storage = name.get(a, "")
        if storage.startswith("t") and holder.get(storage) == a:
            free.setdefault(tape.dtypes[a], []).append(storage)
            holder[storage] = None
