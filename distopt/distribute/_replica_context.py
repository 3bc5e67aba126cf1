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
        return self._strategy._all_reduce_structure(ReduceOp.from_any(reduce_op), value)

    def merge_call(self, merge_fn, args=(), kwargs=None):
        """Runs `merge_fn(strategy, *args, **kwargs)` in the cross-replica context."""
        with _context._entered(self._strategy, None):
            return merge_fn(self._strategy, *args, **(kwargs or {}))

    def __repr__(self) -> str:
        return (
            f"ReplicaContext(replica_id_in_sync_group={self._replica_id}, "
            f"num_replicas_in_sync={self.num_replicas_in_sync})"
        )
