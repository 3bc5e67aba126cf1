"""The cross-rank guard: ranks agree on what a collective is about to reduce, or all raise.

Before every collective a strategy runs, each rank contributes a 62-bit digest of the
collective's signature (operation, options, and the names, shapes and dtypes of its tensors,
in order) and its collective sequence number to one 4-element int64 MIN all-reduce. Equal
everywhere: go on (the steady-state cost is that one small all-reduce). Different anywhere:
every rank learns it from the same result, the full signatures are all-gathered, and every
rank raises the same `CollectiveMismatchError` before any payload is exchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import numpy as np

from distopt.collectives import _wait
from distopt.collectives._deadline import _op_name

_MAX_LINES = 12
_CONFIG = "optimizer hyperparameters"
_NOUNS = {"gradient aggregation": "gradient", "variable broadcast": "variable"}


class CollectiveMismatchError(ValueError):
    """Ranks disagree about a collective (which one, or its tensors' names, shapes, dtypes).

    Raised on every rank at once, before any data is exchanged, so no rank hangs and no
    rank reduces mismatched buffers.
    """


class Signature:
    """What one collective exchanges: operation code, options, (name, shape, dtype) items."""

    __slots__ = ("op", "detail", "items", "digest")

    def __init__(self, op: int, detail: str, items: Sequence[tuple[str, tuple, str]]):
        self.op = op
        self.detail = detail
        self.items = tuple((str(n), tuple(int(d) for d in s), str(t)) for n, s, t in items)
        raw = repr((op, detail, self.items)).encode()
        self.digest = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") >> 2

    @classmethod
    def of(cls, op: int, detail: str, names: Sequence[str], arrays: Sequence) -> Signature:
        return cls(
            op, detail, [(n, a.shape, np.dtype(a.dtype).name) for n, a in zip(names, arrays)]
        )


def check(communicator, signature: Signature, seq: int, step: int) -> None:
    """Raises `CollectiveMismatchError` on every rank unless all ranks passed equal signatures.

    Collective: call on all ranks, in the same order.
    """
    header = np.array([signature.digest, -signature.digest, seq, -seq], dtype=np.int64)
    _wait.allreduce(communicator, header, "min")  # where ranks wait for a late one: no spinning
    if header[0] == -header[1] and header[2] == -header[3]:
        return
    mine = {"op": signature.op, "detail": signature.detail, "seq": seq, "step": step,
            "items": [[n, list(s), t] for n, s, t in signature.items]}  # fmt: skip
    everyone = [json.loads(b) for b in communicator.allgather_bytes(json.dumps(mine).encode())]
    raise CollectiveMismatchError(explain(everyone))


def _ranks(ranks: Sequence[int]) -> str:
    ranks = sorted(ranks)
    return f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))


def _grouped(values: dict[int, str]) -> str:
    """`{rank: text}` as 'ranks 0, 2: a; rank 1: b' (groups in order of their first rank)."""
    groups: dict[str, list[int]] = {}
    for rank in sorted(values):
        groups.setdefault(values[rank], []).append(rank)
    return "; ".join(f"{_ranks(rs)}: {text}" for text, rs in groups.items())


def _item_text(shape, dtype) -> str:
    return f"{tuple(shape)} {dtype}"


def _item_differences(everyone: list[dict], noun: str) -> list[str]:
    lines = []
    items = {r: e["items"] for r, e in enumerate(everyone)}
    if len({len(v) for v in items.values()}) > 1:
        lines.append(f"number of {noun}s: " + _grouped({r: str(len(v)) for r, v in items.items()}))
    names: list[str] = []
    for v in items.values():
        names += [n for n, _, _ in v if n not in names]
    for name in names:
        where = {r: next(((s, t) for n, s, t in v if n == name), None) for r, v in items.items()}
        absent = [r for r, x in where.items() if x is None]
        present = {r: x for r, x in where.items() if x is not None}
        if absent:
            hint = " (a None gradient there, or not passed)" if noun == "gradient" else ""
            lines.append(
                f"`{name}`: missing on {_ranks(absent)}{hint}; present on "
                + _grouped({r: _item_text(*x) for r, x in present.items()})
            )
        if len({str(s) for s, _ in present.values()}) > 1:
            lines.append(
                f"`{name}` shape: " + _grouped({r: str(tuple(s)) for r, (s, _) in present.items()})
            )
        if len({t for _, t in present.values()}) > 1:
            lines.append(f"`{name}` dtype: " + _grouped({r: t for r, (_, t) in present.items()}))
    if not lines and len({json.dumps(v) for v in items.values()}) > 1:
        lines.append(
            "order: "
            + _grouped({r: "[" + ", ".join(n for n, _, _ in v) + "]" for r, v in items.items()})
        )
    return lines


def _detail_differences(everyone: list[dict]) -> list[str]:
    """Per key when every rank's options are a JSON object (e.g. an optimizer's config),
    else one line of each rank's options."""
    try:
        details = {r: json.loads(e["detail"]) for r, e in enumerate(everyone)}
    except ValueError:
        details = {}
    if not details or not all(isinstance(d, dict) for d in details.values()):
        return ["options: " + _grouped({r: e["detail"] for r, e in enumerate(everyone)})]
    keys: list[str] = []
    for d in details.values():
        keys += [k for k in d if k not in keys]
    lines = []
    for key in keys:
        values = {r: json.dumps(d[key]) if key in d else "not set" for r, d in details.items()}
        if len(set(values.values())) > 1:
            lines.append(f"`{key}`: " + _grouped(values))
    return lines


def explain(everyone: list[dict]) -> str:
    """The error text for gathered signatures `everyone[rank]`."""
    ops = {r: _op_name(e["op"]) for r, e in enumerate(everyone)}
    first = everyone[0]
    lines = []
    if len(set(ops.values())) > 1:
        lines.append(
            "different collectives: "
            + _grouped({r: f"`{ops[r]}` at step {e['step']} with {len(e['items'])} "
                        f"{_NOUNS.get(ops[r], 'value')}(s)" for r, e in enumerate(everyone)})
        )  # fmt: skip
    elif len({e["detail"] for e in everyone}) > 1:
        lines += _detail_differences(everyone)
    else:
        lines += _item_differences(everyone, _NOUNS.get(ops[0], "value"))
    if not lines and len({e["seq"] for e in everyone}) > 1:
        done = {r: str(e["seq"] - 1) for r, e in enumerate(everyone)}
        lines.append("collectives run so far: " + _grouped(done))
    if len(lines) > _MAX_LINES:
        lines = lines[:_MAX_LINES] + [f"... and {len(lines) - _MAX_LINES} more differences"]
    what = f"`{ops[0]}`" if len(set(ops.values())) == 1 else "the next collective"
    rule = (
        "Every rank must run the same collectives in the same order, with the same "
        "variables (names, shapes, dtypes, order) and the same pattern of None gradients."
    )
    if set(ops.values()) == {_CONFIG}:
        rule = "Create each optimizer with the same arguments on every rank."
    return (
        f"Ranks disagree about {what} (collective #{first['seq']}, step {first['step']}); "
        "nothing was exchanged:\n" + "\n".join(f"  - {line}" for line in lines) + "\n" + rule
    )
