"""The process's data-parallel strategy for Keras, and gradient all-reduce per backend.

Keras computes every loss as a mean over the local batch, so the ranks' gradients are
averaged (`ReduceOp.MEAN`): N ranks on equal local batches of b examples then take exactly
the step one process takes on the global batch of N*b.
"""

from __future__ import annotations

import threading

import numpy as np

from distopt.distribute import MPIStrategy, ReduceOp

_LOCK = threading.Lock()
_STRATEGY: list = []
SUPPORTED_BACKENDS = ("torch", "jax", "tensorflow")
_DTYPES = ("float16", "float32", "float64")


def get_strategy() -> MPIStrategy:
    """The `MPIStrategy(gradient_reduce_op=ReduceOp.MEAN)` distopt.keras uses by default.

    Created on first use over `MPI.COMM_WORLD`, then shared by every `DistributedOptimizer`
    and callback of the process. Collective the first time: call on all ranks.
    """
    with _LOCK:
        if not _STRATEGY:
            _STRATEGY.append(MPIStrategy(gradient_reduce_op=ReduceOp.MEAN))
        return _STRATEGY[0]


def rank() -> int:
    """This process's rank (0 in a single process). Collective the first time (see
    `get_strategy`)."""
    return get_strategy().communicator.rank


def size() -> int:
    """The number of ranks. Collective the first time (see `get_strategy`)."""
    return get_strategy().num_replicas_in_sync


def check_strategy(strategy) -> MPIStrategy:
    """`strategy`, or the default one; a strategy that sums gradients is rejected."""
    if strategy is None:
        return get_strategy()
    if not isinstance(strategy, MPIStrategy):
        raise TypeError(
            "Argument `strategy` must be a `distopt.distribute.MPIStrategy` or None. "
            f"Received: strategy={strategy!r}"
        )
    if strategy.gradient_reduce_op is not ReduceOp.MEAN:
        raise ValueError(
            "Keras averages each loss over the local batch, so the ranks' gradients must be "
            "averaged too: pass `MPIStrategy(gradient_reduce_op=ReduceOp.MEAN)` (or no "
            f"strategy). Received a strategy with gradient_reduce_op={strategy.gradient_reduce_op}."
        )
    return strategy


class _Slot:
    """What the strategy's bucket plan and guard read of a variable: path, shape, dtype."""

    # weakly referenced: the strategy's plan cache frees a plan once its variables are gone
    __slots__ = ("path", "shape", "dtype", "__weakref__")

    def __init__(self, path: str, shape: tuple, dtype):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)


class GradientAggregator:
    """MEAN-all-reduces lists of numpy gradients through a strategy's buckets and guard."""

    def __init__(self, strategy: MPIStrategy):
        self.strategy = strategy
        self._slots: dict[tuple, tuple] = {}
        self.torch_reducer = None  # made by the torch backend's path on its first step

    def slots(self, names, arrays) -> tuple:
        key = tuple((n, a.shape, a.dtype.str) for n, a in zip(names, arrays))
        held = self._slots.get(key)
        if held is None:
            self.check_dtypes(names, [a.dtype for a in arrays])
            if len(self._slots) >= 16:
                self._slots.clear()
            held = self._slots[key] = tuple(_Slot(n, s, d) for n, s, d in key)
        return held

    @staticmethod
    def check_dtypes(names, dtypes) -> None:
        """Raises TypeError naming the first gradient whose dtype cannot be all-reduced."""
        for name, dtype in zip(names, dtypes):
            if np.dtype(dtype).name not in _DTYPES:
                raise TypeError(
                    f"DistributedOptimizer all-reduces {', '.join(_DTYPES)} gradients. "
                    f"The gradient of `{name}` has dtype {np.dtype(dtype).name}: use a float32 "
                    "(or mixed_float16) dtype policy for trainable variables."
                )

    def reduce(self, names, arrays):
        """Views of the averaged gradients, valid until `release()`.

        Collective: call on all ranks, in the same order, with the same names, shapes, dtypes.
        """
        return self.strategy._reduce_gradients(arrays, self.slots(names, arrays))

    def release(self) -> None:
        """The views `reduce` returned are consumed. Collective: call on all ranks."""
        self.strategy._release_gradients()

    def reduce_copies(self, names, arrays) -> list[np.ndarray]:
        """`reduce`, returning fresh arrays (for jax, which keeps what a callback returns).

        Collective: call on all ranks, in the same order.
        """
        try:
            return [np.array(v) for v in self.reduce(names, arrays)]
        finally:
            self.release()
