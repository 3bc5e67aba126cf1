"""`ReplicaContext`: what code running inside `strategy.run` sees."""

from __future__ import annotations

from distopt.distribute import _context
from distopt.distribute._reduce_op import ReduceOp


class ReplicaContext:
    """The context of one replica (one rank) of a strategy, as `tf.distribute.ReplicaContext`."""

    def __init__(self, strategy, replica_id_in_sync_group: int):
        self._strategy = strategy
        self._replica_id = int(replica_id_in_sync_group)

    @property
    def strategy(self):
        return self._strategy

    @property
    def replica_id_in_sync_group(self) -> int:
        return self._replica_id

    @property
    def num_replicas_in_sync(self) -> int:
        return self._strategy.num_replicas_in_sync

    def all_reduce(self, reduce_op, value):
        """Reduces `value` (an array, number, or nested list/tuple/dict of them) across replicas.

        Returns the same structure with reduced numpy arrays. Collective: call on all ranks,
        in the same order, with the same structure, shapes and dtypes.
        """
        op = ReduceOp.from_any(reduce_op)
        self._require_current("all_reduce")
        return self._strategy._all_reduce_structure(op, value)

    def merge_call(self, merge_fn, args=(), kwargs=None):
        """Runs `merge_fn(strategy, *args, **kwargs)` in the cross-replica context."""
        if not callable(merge_fn):
            raise TypeError(f"Argument `merge_fn` must be callable. Received: {merge_fn!r}")
        self._require_current("merge_call")
        with _context._entered(self._strategy, None):
            return merge_fn(self._strategy, *args, **(kwargs or {}))

    def _require_current(self, what: str) -> None:
        current = _context.get_replica_context()
        if current is self or (
            current is not None
            and current.strategy is self._strategy
            and current.replica_id_in_sync_group == self._replica_id
        ):
            return
        where = "a cross-replica context" if current is None else repr(current)
        raise RuntimeError(
            f"`ReplicaContext.{what}` must be called in its own replica context (inside "
            f"`strategy.run` of {self._strategy!r}), but it was called in {where}."
        )

    def __repr__(self) -> str:
        return (
            f"ReplicaContext(replica_id_in_sync_group={self._replica_id}, "
            f"num_replicas_in_sync={self.num_replicas_in_sync})"
        )
