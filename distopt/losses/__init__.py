"""Loss helpers for data-parallel training."""

from __future__ import annotations

import numpy as np

from distopt.distribute import _context

__all__ = ["compute_average_loss"]


def compute_average_loss(per_example_loss, global_batch_size=None, *, sample_weight=None):
    """`sum(per_example_loss * sample_weight) / global_batch_size`, as tf.nn's.

    With `global_batch_size=None` it is this replica's batch size (the leading dimension)
    times `num_replicas_in_sync`, so call it inside `strategy.run`. Gradients of this loss,
    SUM-all-reduced across replicas, equal the gradient of the mean loss over the global
    batch. Pass `global_batch_size` when replicas may hold different batch sizes. The result
    keeps a float input's dtype (integers give float64); an empty batch gives 0.
    """
    losses = np.asarray(per_example_loss)
    if losses.dtype.kind not in "fiu":
        raise TypeError(
            f"Argument `per_example_loss` must be a numeric array. Received dtype: {losses.dtype}"
        )
    if losses.ndim < 1:
        raise ValueError(
            "Invalid value passed for `per_example_loss`. Expected an array with at least rank "
            f"1 (one loss per example). Received a scalar: {per_example_loss!r}"
        )
    dtype = losses.dtype if losses.dtype.kind == "f" else np.dtype(np.float64)
    if sample_weight is not None:
        weights = np.asarray(sample_weight)
        try:
            losses = losses * np.broadcast_to(weights, losses.shape)
        except ValueError as e:
            raise ValueError(
                f"Argument `sample_weight` of shape {weights.shape} does not broadcast to "
                f"`per_example_loss` of shape {losses.shape}."
            ) from e
    if global_batch_size is None:
        strategy, replica_context = _context.current()
        if replica_context is None:
            raise RuntimeError(
                "You are calling `compute_average_loss` in cross replica context, while it was "
                "expected to be called in replica context (inside `strategy.run`). Or pass "
                "`global_batch_size`."
            )
        global_batch_size = losses.shape[0] * strategy.num_replicas_in_sync
    elif (
        isinstance(global_batch_size, bool)
        or not isinstance(global_batch_size, (int, np.integer))
        or global_batch_size <= 0
    ):
        raise ValueError(
            "Argument `global_batch_size` must be a positive int or None. "
            f"Received: global_batch_size={global_batch_size!r}"
        )
    total = np.sum(losses, dtype=dtype)
    if global_batch_size == 0:
        return dtype.type(0)
    return dtype.type(total / dtype.type(global_batch_size))
