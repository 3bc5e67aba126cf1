"""Each rank's share of the training data, with the same number of steps on every rank."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from distopt.keras import _runtime


def shard_arrays(*arrays, batch_size: int, rank: int | None = None, size: int | None = None):
    """This rank's rows of `arrays`, for `fit(..., batch_size=batch_size, shuffle=False)`.

    Global batch k is rows [k*G, (k+1)*G) with G = size * batch_size; rank r takes rows
    [k*G + r*batch_size, k*G + (r+1)*batch_size) of it, so each local batch is the rank's
    share of the same global batch one process would take with `batch_size=G`. A last,
    partial global batch of t rows gives every rank t // size rows and drops t % size (with
    a warning). Every rank gets the same number of rows, hence of steps: no rank waits.
    `rank`/`size` default to `distopt.keras.rank()`/`size()` (collective the first time).
    Returns one array per input (a single array if one was given).
    """
    if not arrays:
        raise TypeError("shard_arrays takes at least one array (x, and y if any).")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            f"Argument `batch_size` must be a positive int (the per-rank batch). "
            f"Received: batch_size={batch_size!r}"
        )
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(
            f"All arrays must have the same number of rows. Received lengths {sorted(lengths)}."
        )
    size = _runtime.size() if size is None else int(size)
    rank = _runtime.rank() if rank is None else int(rank)
    if not 0 <= rank < size:
        raise ValueError(f"Argument `rank` must be in [0, {size}). Received: rank={rank}")
    n = lengths.pop()
    g = size * batch_size
    full = n // g
    index = (np.arange(full)[:, None] * g + rank * batch_size + np.arange(batch_size)).ravel()
    tail = n - full * g
    share = tail // size
    if tail % size:
        warnings.warn(
            f"The last global batch of {tail} rows does not divide among {size} ranks: each "
            f"takes {share} and the last {tail % size} rows are dropped.",
            stacklevel=2,
        )
    index = np.concatenate([index, full * g + rank * share + np.arange(share)])
    out = tuple(np.asarray(a)[index] for a in arrays)
    return out[0] if len(out) == 1 else out


class ShardedPyDataset(keras.utils.PyDataset):
    """This rank's batches of a `keras.utils.PyDataset` (or any sequence of batches).

    Rank r of N takes batches r, r + N, r + 2N, ...; the last len(dataset) % N batches are
    dropped (with a warning) so that every rank runs len(dataset) // N steps. Gradients are
    averaged with equal weight per rank, exact when the batches of one step have equal sizes.
    """

    def __init__(self, dataset, rank: int | None = None, size: int | None = None, **kwargs):
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(
                "Argument `dataset` must be a keras.utils.PyDataset or a sequence of batches "
                f"(with __len__ and __getitem__). Received: {dataset!r}"
            )
        super().__init__(**kwargs)
        self.dataset = dataset
        self.size = _runtime.size() if size is None else int(size)
        self.rank = _runtime.rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.size:
            raise ValueError(f"Argument `rank` must be in [0, {self.size}). Received: {self.rank}")
        dropped = len(dataset) % self.size
        if dropped:
            warnings.warn(
                f"{len(dataset)} batches do not divide among {self.size} ranks: the last "
                f"{dropped} are dropped so that every rank runs {len(dataset) // self.size} steps.",
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self.dataset) // self.size

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"Batch index {index} out of range [0, {len(self)}).")
        return self.dataset[index * self.size + self.rank]

    def on_epoch_end(self):
        hook = getattr(self.dataset, "on_epoch_end", None)
        if hook is not None:
            hook()
