"""Data-parallel training of Keras 3 models (torch, jax or tensorflow backend) over MPI.

`DistributedOptimizer(keras_optimizer)` averages the gradients across ranks before the
wrapped optimizer's update; the callbacks broadcast rank 0's state and average metrics;
`shard_arrays` / `ShardedPyDataset` give each rank its share of the data. Importing this
package imports keras; `import distopt` never does.
"""

from distopt.keras._callbacks import (
    BroadcastGlobalVariablesCallback,
    MetricAverageCallback,
    check_steps_agree,
)
from distopt.keras._data import ShardedPyDataset, shard_arrays
from distopt.keras._optimizer import DistributedOptimizer, broadcast_variables
from distopt.keras._runtime import get_strategy, rank, size
from distopt.keras._schedules import WarmupSchedule

__all__ = [
    "BroadcastGlobalVariablesCallback",
    "DistributedOptimizer",
    "MetricAverageCallback",
    "ShardedPyDataset",
    "WarmupSchedule",
    "broadcast_variables",
    "check_steps_agree",
    "get_strategy",
    "rank",
    "shard_arrays",
    "size",
]
