"""Distributed datasets: each rank a disjoint share, every rank the same number of steps.

Tail rule: `experimental_distribute_dataset` splits each global batch of B examples into
equal shares of B // N consecutive examples (rank r takes [r*k, (r+1)*k)); the last B % N
examples of a batch are dropped, and a batch with B < N is skipped by every rank. Iteration
ends on every rank as soon as one rank's dataset ends, so no rank waits for a step the
others never run. Before each step the ranks agree (one small all-reduce) on whether there
is a next batch and, for a shared dataset, on its global batch size.
"""

from __future__ import annotations

import warnings

import numpy as np

from distopt.collectives._guard import CollectiveMismatchError, Signature
from distopt.distribute import _structure
from distopt.distribute._safety import DATASET


class InputContext:
    """What `distribute_datasets_from_function` passes to `dataset_fn` (tf.distribute's)."""

    def __init__(self, num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=1):
        self._num_input_pipelines = int(num_input_pipelines)
        self._input_pipeline_id = int(input_pipeline_id)
        self._num_replicas_in_sync = int(num_replicas_in_sync)

    @property
    def num_input_pipelines(self) -> int:
        return self._num_input_pipelines

    @property
    def input_pipeline_id(self) -> int:
        return self._input_pipeline_id

    @property
    def num_replicas_in_sync(self) -> int:
        return self._num_replicas_in_sync

    def get_per_replica_batch_size(self, global_batch_size: int) -> int:
        """`global_batch_size // num_replicas_in_sync`; ValueError if it does not divide."""
        if global_batch_size % self._num_replicas_in_sync != 0:
            raise ValueError(
                f"The `global_batch_size` {global_batch_size!r} is not divisible by "
                f"`num_replicas_in_sync` {self._num_replicas_in_sync!r}"
            )
        return global_batch_size // self._num_replicas_in_sync

    def __repr__(self) -> str:
        return (
            f"InputContext(num_input_pipelines={self._num_input_pipelines}, input_pipeline_id="
            f"{self._input_pipeline_id}, num_replicas_in_sync={self._num_replicas_in_sync})"
        )


def _batch_size(batch) -> int:
    sizes = set()
    for path, leaf in _structure.flatten_with_paths(batch, "batch"):
        shape = np.shape(leaf)
        if not shape:
            raise ValueError(
                "Dataset elements must be batches: arrays (or nested tuples/lists/dicts of "
                f"arrays) with a leading batch dimension. {path} has shape {shape}."
            )
        sizes.add(shape[0])
    if len(sizes) != 1:
        raise ValueError(
            f"Every array of a batch must have the same leading (batch) size. Received sizes "
            f"{sorted(sizes)}."
        )
    return sizes.pop()


class _Iterator:
    """Yields this rank's batches; ends on every rank when any rank's data ends."""

    def __init__(self, strategy, iterator, split: bool):
        self._strategy = strategy
        self._it = iterator
        self._split = split
        self._done = False
        self._steps = 0

    def __iter__(self):
        return self

    def _agree(self, has: int, size: int) -> tuple[int, int, int]:
        """(min has, min size, max size) over ranks.

        Collective: call on all ranks, in the same order.
        """
        safety = self._strategy._safety
        safety.check_open(DATASET)
        if not safety.active:
            return has, size, size
        detail = "shared dataset" if self._split else "per-rank datasets"
        safety.begin(DATASET, Signature(DATASET, detail, ()))
        try:
            buf = np.array([has, -has, size, -size], dtype=np.int64)
            self._strategy.communicator.allreduce(buf, "min")
            if self._split and buf[0] and buf[2] != -buf[3]:
                sizes = self._strategy.communicator.allgather_bytes(str(size).encode())
                raise CollectiveMismatchError(
                    "experimental_distribute_dataset: the global batch sizes of step "
                    f"{self._steps + 1} differ across ranks ("
                    + ", ".join(f"rank {r}: {s.decode()}" for r, s in enumerate(sizes))
                    + "). Every rank must iterate the same dataset (same data, order and "
                    "shuffle seed); use distribute_datasets_from_function for per-rank data."
                )
        finally:
            safety.end()
        return int(buf[0]), int(buf[2]), int(-buf[3])

    def __next__(self):
        n = self._strategy.num_replicas_in_sync
        while not self._done:
            try:
                batch = next(self._it)
                has, size = 1, _batch_size(batch)
            except StopIteration:
                batch, has, size = None, 0, 0
            everyone_has, _, _ = self._agree(has, size)
            if not everyone_has:
                self._done = True
                if has:
                    warnings.warn(
                        f"Another rank's dataset ended after {self._steps} steps; this rank "
                        "stops too and drops its remaining batches, so that every rank runs "
                        "the same number of steps.",
                        stacklevel=2,
                    )
                break
            if not self._split:
                self._steps += 1
                return batch
            share = size // n
            if size % n:
                warnings.warn(
                    f"A global batch of {size} examples does not divide among {n} replicas: "
                    f"each takes {share} and the last {size % n} are dropped (the tail rule). "
                    f"Use a global batch size divisible by {n} to use every example.",
                    stacklevel=2,
                )
            if share == 0:
                continue
            lo = self._strategy.communicator.rank * share
            leaves = [np.asarray(x)[lo : lo + share] for x in _structure.flatten(batch)]
            self._steps += 1
            return _structure.pack_as(batch, leaves)
        raise StopIteration


class DistributedDataset:
    """A dataset of global batches, sharded across replicas (see the module's tail rule)."""

    def __init__(self, strategy, dataset, split: bool):
        self._strategy = strategy
        self._dataset = dataset
        self._split = split

    def __iter__(self):
        return _Iterator(self._strategy, iter(self._dataset), self._split)

    def __repr__(self) -> str:
        kind = "global batches" if self._split else "per-replica batches"
        return f"<DistributedDataset of {kind} over {self._strategy!r}>"


class DatasetMethods:
    """The dataset half of `Strategy`."""

    def experimental_distribute_dataset(self, dataset, options=None) -> DistributedDataset:
        """Shards an iterable of global batches: each rank gets its equal share of each.

        Every rank iterates the same `dataset` (same data, order and seed). A batch is an
        array or a nested tuple/list/dict of arrays with a common leading batch size. Each
        global batch of B examples gives every rank B // N consecutive examples; the B % N
        extra examples are dropped, and a batch smaller than N is skipped by every rank.
        Iterating runs one small all-reduce per step. Collective: call on all ranks, in the
        same order (iterate on every rank).
        """
        self._check_not_mixing("experimental_distribute_dataset()")
        if not hasattr(dataset, "__iter__"):
            raise TypeError(
                "Argument `dataset` must be an iterable of batches (a list, a generator, or an "
                f"object with `__iter__`). Received: {dataset!r}"
            )
        return DistributedDataset(self, dataset, split=True)

    def distribute_datasets_from_function(self, dataset_fn, options=None) -> DistributedDataset:
        """Calls `dataset_fn(InputContext)` on every rank for its own iterable of batches.

        The function shards the data itself (`input_context.input_pipeline_id` is the rank,
        `num_input_pipelines` the world size) and yields per-replica batches. Iteration stops
        on every rank when the first rank's dataset ends (the others' extra batches are
        dropped). Iterating runs one small all-reduce per step. Collective: call on all ranks,
        in the same order (iterate on every rank).
        """
        self._check_not_mixing("distribute_datasets_from_function()")
        if not callable(dataset_fn):
            raise TypeError(f"Argument `dataset_fn` must be callable. Received: {dataset_fn!r}")
        n, rank = self.num_replicas_in_sync, self.communicator.rank
        dataset = dataset_fn(InputContext(n, rank, n))
        if not hasattr(dataset, "__iter__"):
            raise TypeError(
                "`dataset_fn` must return an iterable of per-replica batches. "
                f"Received: {dataset!r}"
            )
        return DistributedDataset(self, dataset, split=False)
