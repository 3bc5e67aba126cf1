"""The gradient all-reduce on the TensorFlow backend, inside `fit`'s `tf.function`.

The all-reduce is a stateful `tf.numpy_function`: TensorFlow runs it when the step runs,
not when it is traced, and a `tf.function` orders stateful ops as the program wrote them,
so every rank all-reduces once per step, in the same order, between the gradients it
consumes and the update that consumes its result. XLA cannot compile a call into Python.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

XLA_ERROR = (
    "DistributedOptimizer cannot run inside an XLA-compiled TensorFlow step: its all-reduce "
    "calls MPI from Python (tf.numpy_function), which XLA cannot compile. Compile the model "
    "with `jit_compile=False` (the TensorFlow backend's default on CPU), or drop "
    "`jit_compile=True` from the `tf.function` around your training step."
)


def check_not_xla() -> None:
    """Raises RuntimeError if the graph being traced is compiled by XLA (`jit_compile=True`)."""
    if tf.executing_eagerly():
        return
    if control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()):
        raise RuntimeError(XLA_ERROR)


def allreduce(aggregator, names, grads) -> list:
    """Averaged `grads` (tensors or `tf.IndexedSlices`), as dense tensors of their shapes.

    Dtypes and XLA are checked here, when the step is traced, so that a mistake raises a
    Python error before any rank enters the collective. Collective: call on all ranks, in
    the same order.
    """
    check_not_xla()
    # Sparse gradients (embeddings) are averaged dense, as Horovod's sparse_as_dense.
    dense = [tf.convert_to_tensor(g) for g in grads]
    aggregator.check_dtypes(names, [np.dtype(g.dtype.as_numpy_dtype) for g in dense])

    def host(*arrays):
        return aggregator.reduce_copies(names, [np.asarray(a) for a in arrays])

    out = tf.numpy_function(
        host, dense, Tout=[g.dtype for g in dense], stateful=True, name="distopt_allreduce"
    )
    for reduced, g in zip(out, dense):
        reduced.set_shape(g.shape)
    return list(out)
