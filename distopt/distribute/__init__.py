"""Strategies and contexts with tf.distribute's semantics, over MPI."""

from distopt.collectives._guard import CollectiveMismatchError
from distopt.distribute import _abort
from distopt.distribute._context import (
    get_replica_context,
    get_strategy,
    has_strategy,
    in_cross_replica_context,
)
from distopt.distribute._datasets import DistributedDataset, InputContext
from distopt.distribute._mpi_strategy import MPIStrategy
from distopt.distribute._reduce_op import ReduceOp
from distopt.distribute._replica_context import ReplicaContext
from distopt.distribute._strategy import Strategy

_abort.install_for_launcher()  # abort-on-exception and exit notices from `import distopt` on

__all__ = [
    "CollectiveMismatchError",
    "DistributedDataset",
    "InputContext",
    "MPIStrategy",
    "ReduceOp",
    "ReplicaContext",
    "Strategy",
    "get_replica_context",
    "get_strategy",
    "has_strategy",
    "in_cross_replica_context",
]
