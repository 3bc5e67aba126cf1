"""The checkpoint's exchanges between ranks, under the strategy's deadline and guard."""

from __future__ import annotations

import json

from distopt._variable import Variable
from distopt.checkpoint._errors import CheckpointError
from distopt.collectives._guard import Signature
from distopt.distribute._safety import CHECKPOINT


class Collectives:
    """The strategy's communicator, each exchange under its deadline; the first one also
    compares a signature, so ranks calling different checkpoint operations fail clearly."""

    def __init__(self, optimizer, detail: str, variables):
        strategy = getattr(optimizer, "_strategy", None)
        if strategy is None:
            from distopt.distribute import get_strategy

            strategy = get_strategy()
        self.comm = strategy.communicator
        self.rank, self.size = self.comm.rank, self.comm.size
        self.safety = getattr(strategy, "_safety", None)
        items = [(v.path, v.shape, v.dtype.name) for v in variables]
        self.signature = Signature(CHECKPOINT, detail, items)

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        if self.safety is None:
            return self.comm.allgather_bytes(data)
        signature, self.signature = self.signature, None
        self.safety.begin(CHECKPOINT, signature)
        try:
            return self.comm.allgather_bytes(data)
        finally:
            self.safety.end()


def agree(comm, error: str | None, payload=None) -> list:
    """Every rank's payload; CheckpointError on every rank if any rank had an error.

    Collective: call on all ranks, in the same order.
    """
    blobs = comm.allgather_bytes(json.dumps({"error": error, "payload": payload}).encode())
    replies = [json.loads(b) for b in blobs]
    errors = [(r, x["error"]) for r, x in enumerate(replies) if x["error"]]
    if errors:
        if len(errors) == 1 or len({e for _, e in errors}) == 1:
            ranks = ", ".join(str(r) for r, _ in errors)
            raise CheckpointError(errors[0][1] + (f" (on rank {ranks})" if comm.size > 1 else ""))
        raise CheckpointError("; ".join(f"rank {r}: {e}" for r, e in errors))
    return [x["payload"] for x in replies]


def check_variables(variables) -> list:
    if isinstance(variables, Variable):
        variables = [variables]
    try:
        variables = list(variables)
    except TypeError as e:
        raise TypeError(
            f"Argument `variables` must be a list of distopt.Variable. Received: {variables!r}"
        ) from e
    bad = [type(v).__name__ for v in variables if not isinstance(v, Variable)]
    if bad:
        raise TypeError(
            f"Argument `variables` must be a list of distopt.Variable. Received items of type "
            f"{sorted(set(bad))}."
        )
    return variables
