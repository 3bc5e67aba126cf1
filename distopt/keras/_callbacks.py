"""Callbacks for data-parallel `fit`: start from rank 0's state, show global metrics."""

from __future__ import annotations

import keras
import numpy as np

from distopt.distribute import CollectiveMismatchError, ReduceOp
from distopt.keras import _runtime
from distopt.keras._optimizer import broadcast_variables


class BroadcastGlobalVariablesCallback(keras.callbacks.Callback):
    """At the start of `fit`: every rank takes rank `root_rank`'s model weights (trainable
    and not) and optimizer state, and the ranks check that they run the same number of steps
    per epoch (else all raise `CollectiveMismatchError` naming each rank's count, instead of
    one rank waiting for a step the others never run).

    Collective: pass it to `fit` on every rank.
    """

    def __init__(self, root_rank: int = 0, strategy=None):
        super().__init__()
        self.root_rank = root_rank
        self._strategy = strategy

    def on_train_begin(self, logs=None):
        strategy = _runtime.check_strategy(self._strategy)
        check_steps_agree(strategy, (self.params or {}).get("steps"))
        variables = list(self.model.weights)
        names = [v.path for v in variables]
        optimizer = self.model.optimizer
        if optimizer is not None and optimizer.built:
            state = list(optimizer.variables)
            variables += state
            names += [f"optimizer variable {i}" for i in range(len(state))]
        broadcast_variables(strategy, variables, self.root_rank, names)


def check_steps_agree(strategy, steps) -> None:
    """Raises `CollectiveMismatchError` on every rank unless all ranks run `steps` steps.

    Collective: call on all ranks, in the same order.
    """
    n, rank = strategy.num_replicas_in_sync, strategy.communicator.rank
    mine = np.zeros(n, dtype=np.int64)
    mine[rank] = -1 if steps is None else int(steps)
    every = strategy.reduce(ReduceOp.SUM, mine)
    if len(set(every.tolist())) > 1:
        counts = ", ".join(
            f"rank {r}: {'unknown' if s < 0 else int(s)}" for r, s in enumerate(every)
        )
        raise CollectiveMismatchError(
            f"The ranks run different numbers of steps per epoch ({counts}). Give every rank "
            "an equal share of the data: distopt.keras.shard_arrays(x, y, batch_size=...) or "
            "distopt.keras.ShardedPyDataset(dataset), or pass the same `steps_per_epoch`."
        )


class MetricAverageCallback(keras.callbacks.Callback):
    """Replaces the numeric logs of each batch and epoch by their mean over the ranks, so
    rank 0's progress bar, History and checkpoints see global values. Put it before other
    callbacks that read logs. One small all-reduce per batch (`per_batch=False`: per epoch).

    Collective: pass it to `fit` on every rank.
    """

    def __init__(self, per_batch: bool = True, strategy=None):
        super().__init__()
        self.per_batch = bool(per_batch)
        self._strategy = strategy

    def _average(self, logs) -> None:
        if logs is None:
            return
        keys = sorted(k for k, v in logs.items() if isinstance(v, (int, float, np.number)))
        if not keys:
            return
        strategy = _runtime.check_strategy(self._strategy)
        values = np.array([float(logs[k]) for k in keys], dtype=np.float64)
        mean = strategy.reduce(ReduceOp.MEAN, values)
        for k, v in zip(keys, mean):
            logs[k] = float(v)

    def on_train_batch_end(self, batch, logs=None):
        if self.per_batch:
            self._average(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._average(logs)
