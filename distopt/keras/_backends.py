"""Moving gradients between a Keras backend's tensors and distopt's numpy buckets."""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from distopt.keras._runtime import SUPPORTED_BACKENDS


def check_backend() -> str:
    name = keras.backend.backend()
    if name not in SUPPORTED_BACKENDS:
        raise NotImplementedError(
            "distopt.keras runs on the 'torch', 'jax' and 'tensorflow' Keras backends; the "
            f"current backend is {name!r}. Set the environment variable KERAS_BACKEND=jax (or "
            "torch, or tensorflow) before importing keras."
        )
    return name


def check_step() -> None:
    """Raises, before anything changes, when the step is being compiled in a way the
    host-side all-reduce cannot join (XLA under tensorflow)."""
    if keras.backend.backend() == "tensorflow":
        from distopt.keras import _tensorflow

        _tensorflow.check_not_xla()


def eager_scope():
    """Where `build` runs: eagerly, even while `tf.function` traces the first step (its
    broadcast reads and assigns variable values)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.init_scope()
    return contextlib.nullcontext()


def allreduce(aggregator, names, grads):
    """Averaged `grads` (tensors of the current backend) and a function to call once the
    caller is done with them. Collective: call on all ranks, in the same order."""
    backend = keras.backend.backend()
    if backend == "torch":
        return _torch_allreduce(aggregator, names, grads)
    if backend == "tensorflow":
        from distopt.keras import _tensorflow

        return _tensorflow.allreduce(aggregator, names, grads), _nothing
    return _jax_allreduce(aggregator, names, grads), _nothing


def _nothing() -> None:
    return None


def _torch_allreduce(aggregator, names, grads):
    import torch

    if torch.compiler.is_compiling():
        raise RuntimeError(
            "DistributedOptimizer cannot run inside a torch.compile'd train step: its "
            "all-reduce runs on numpy buffers in MPI. Compile the model with "
            "`jit_compile=False` (the torch backend's default)."
        )
    if aggregator.torch_reducer is None:
        from distopt.keras._torch_path import TorchReducer

        aggregator.torch_reducer = TorchReducer(aggregator)
    return aggregator.torch_reducer.reduce(names, grads)


def _jax_allreduce(aggregator, names, grads):
    import jax
    import jax.numpy as jnp
    from jax.experimental import io_callback

    if not any(isinstance(g, jax.core.Tracer) for g in grads):
        arrays = [np.asarray(g) for g in grads]
        return [jnp.asarray(a) for a in aggregator.reduce_copies(names, arrays)]

    def host(*arrays):
        return aggregator.reduce_copies(names, [np.asarray(a) for a in arrays])

    shapes = [jax.ShapeDtypeStruct(g.shape, g.dtype) for g in grads]
    # ordered: one all-reduce per step, in program order on every rank.
    return list(io_callback(host, shapes, *grads, ordered=True))
