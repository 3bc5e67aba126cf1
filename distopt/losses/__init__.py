"""Loss helpers for data-parallel training."""

from __future__ import annotations

import numpy as np

from distopt.distribute import get_strategy

__all__ = ["compute_average_loss"]


def compute_average_loss(per_example_loss, global_batch_size=None):
    """`sum(per_example_loss) / global_batch_size`, as `tf.nn.compute_average_loss`.

    With the default `global_batch_size=None` it is this replica's batch size times
    `num_replicas_in_sync`. Gradients of this loss, SUM-all-reduced, equal the gradient of the
    mean loss over the global batch.
    """
    losses = np.asarray(per_example_loss)
    if losses.dtype.kind not in "fiu":
        raise TypeError(
            "Argument `per_example_loss` must be a numeric array. "
            f"Received dtype: {losses.dtype}"
        )
    if global_batch_size is None:
        local = losses.shape[0] if losses.ndim else 1
        global_batch_size = local * get_strategy().num_replicas_in_sync
    elif isinstance(global_batch_size, bool) or not isinstance(
        global_batch_size, (int, np.integer)
    ) or global_batch_size <= 0:
        raise ValueError(
            "Argument `global_batch_size` must be a positive int or None. "
            f"Received: global_batch_size={global_batch_size!r}"
        )
    return np.sum(losses) / global_batch_size
