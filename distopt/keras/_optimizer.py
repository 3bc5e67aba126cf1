"""`DistributedOptimizer`: a Keras optimizer that averages gradients across MPI ranks."""

from __future__ import annotations

import keras
import numpy as np
from keras.src.utils import tracking

from distopt.keras import _backends, _runtime


@keras.saving.register_keras_serializable(package="distopt", name="DistributedOptimizer")
class DistributedOptimizer(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer: gradients are averaged across MPI ranks, then it updates.

    `optimizer` is a `keras.optimizers.Optimizer` instance or identifier ("adam", a config
    dict). Each step MEAN-all-reduces the gradients through distopt's collectives (fused
    buckets, shared memory on a node, the cross-rank guard and deadline) and hands the
    average to the inner optimizer, so every rank applies the identical update and N ranks
    on local batches of b train as one process on batches of N*b. Building it (on the first
    step, or `build(var_list)`) broadcasts the variables and the optimizer state from rank
    0; ranks whose variables differ raise `CollectiveMismatchError`.

    `strategy`: an `MPIStrategy(gradient_reduce_op=ReduceOp.MEAN)`; default the process's
    shared one (`distopt.keras.get_strategy()`). It is not part of the config.
    Collective: every step and `build` run on all ranks, in the same order.

    >>> opt = DistributedOptimizer(keras.optimizers.Adam(0.01))
    >>> model.compile(optimizer=opt, loss="categorical_crossentropy")  # doctest: +SKIP
    """

    def __init__(self, optimizer, strategy=None, name=None, **kwargs):
        _backends.check_backend()
        if kwargs:
            raise ValueError(
                "DistributedOptimizer takes no optimizer arguments of its own: set "
                f"`{'`, `'.join(kwargs)}` on the wrapped optimizer instead."
            )
        inner = _inner_optimizer(optimizer)
        if strategy is not None:
            _runtime.check_strategy(strategy)
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = inner
        self._strategy = strategy
        self._aggregator = None
        self._names = _NameCache()  # not a dict attribute: Keras would track its variables

    # -- the strategy, created on the first collective --------------------------------------
    @property
    def strategy(self):
        """The `MPIStrategy` the gradients are averaged over. Collective on first use."""
        if self._strategy is None:
            self._strategy = _runtime.get_strategy()
        return self._strategy

    @property
    def aggregator(self) -> _runtime.GradientAggregator:
        if self._aggregator is None:
            self._aggregator = _runtime.GradientAggregator(self.strategy)
        return self._aggregator

    # -- building -----------------------------------------------------------------------------
    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        """Builds the inner optimizer, then broadcasts `var_list` and its state from rank 0.

        Collective: call on all ranks, in the same order, with the same variables.
        """
        with _backends.eager_scope():
            self.inner_optimizer.build(var_list)
            super().build(var_list)
            var_list = list(var_list)
            state = self.inner_optimizer.variables
            # The optimizer's own name counts optimizers made in this process: its state is
            # compared by position, shape and dtype, the model's variables by path too.
            names = [v.path for v in var_list]
            names += [f"optimizer variable {i}" for i in range(len(state))]
            broadcast_variables(self.strategy, var_list + state, 0, names)

    # -- stepping ---------------------------------------------------------------------------
    def _reduce(self, grads, variables):
        key = tuple(map(id, variables)) + tuple(g is None for g in grads)
        cache = self._names.entries
        cached = cache.get(key)
        if cached is None:
            present = [v for g, v in zip(grads, variables) if g is not None]
            if len(cache) >= 16:
                cache.clear()
            # The variables ride along so that their ids stay theirs.
            cached = cache[key] = ([f"{i}:{v.path}" for i, v in enumerate(present)], variables)
        names = cached[0]
        if not names:
            return list(grads), _nothing
        present = [g for g in grads if g is not None]
        reduced, release = _backends.allreduce(self.aggregator, names, present)
        if len(present) == len(grads):
            return reduced, release
        it = iter(reduced)
        return [None if g is None else next(it) for g in grads], release

    def apply_gradients(self, grads_and_vars):
        """Averages the gradients across ranks, applies them; returns `iterations`.

        Collective: call on all ranks, in the same order.
        """
        grads, trainable_variables = zip(*grads_and_vars)
        self.apply(list(grads), trainable_variables)
        return self.iterations  # the inner optimizer's: this wrapper never counts steps

    def apply(self, grads, trainable_variables=None):
        grads = list(grads)
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
        _backends.check_step()
        if not self.built:
            if trainable_variables is None:
                raise ValueError(
                    "When passing `grads` without `trainable_variables`, the optimizer must "
                    "already be built: call `optimizer.build(model.trainable_variables)`."
                )
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        variables = (
            self._trainable_variables if trainable_variables is None else trainable_variables
        )
        if len(grads) != len(variables):
            raise ValueError(
                f"Received {len(grads)} gradients for {len(variables)} variables: pass one "
                "gradient (or None) per trainable variable, in the same order."
            )
        reduced, release = self._reduce(grads, variables)
        try:
            self.inner_optimizer.apply(reduced, trainable_variables)
        finally:
            release()

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        if keras.backend.backend() == "tensorflow":
            raise ValueError(
                "`stateless_apply` is not supported on the TensorFlow backend (Keras's "
                "TensorFlow optimizers lack it): call `optimizer.apply_gradients(zip(grads, "
                "model.trainable_weights))`, inside a `tf.function` for speed."
            )
        if not self.built:
            raise ValueError(
                "To call `stateless_apply`, DistributedOptimizer must be built: call "
                "`optimizer.build(model.trainable_variables)` first (on every rank)."
            )
        optimizer_variables = list(optimizer_variables)
        own = len(self._variables)
        if len(optimizer_variables) != own + len(self.inner_optimizer.variables):
            raise ValueError(
                "Argument `optimizer_variables` must hold one value per entry of "
                f"`optimizer.variables` ({own + len(self.inner_optimizer.variables)}). "
                f"Received {len(optimizer_variables)}."
            )
        reduced, release = self._reduce(list(grads), self._trainable_variables)
        try:
            new_trainable, new_inner = self.inner_optimizer.stateless_apply(
                optimizer_variables[own:], reduced, trainable_variables
            )
        finally:
            release()
        return new_trainable, optimizer_variables[:own] + list(new_inner)

    # -- delegation (as keras.optimizers.LossScaleOptimizer) -----------------------------------
    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **config)


def _nothing() -> None:
    return None


class _NameCache:
    """Gradient names per variable list (and None pattern), kept out of Keras's tracking."""

    def __init__(self):
        self.entries: dict[tuple, tuple] = {}


def _inner_optimizer(optimizer):
    if isinstance(optimizer, DistributedOptimizer):
        raise ValueError(
            "Argument `optimizer` is already a DistributedOptimizer: wrap the Keras optimizer "
            "once (its gradients would be averaged twice)."
        )
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer
    if isinstance(optimizer, (str, dict)):
        try:
            return keras.optimizers.get(optimizer)
        except ValueError as e:
            raise ValueError(
                "Argument `optimizer` must be a keras.optimizers.Optimizer or a Keras "
                f"optimizer identifier such as 'adam'. Received: optimizer={optimizer!r} ({e})"
            ) from None
    raise TypeError(
        "Argument `optimizer` must be a keras.optimizers.Optimizer instance (e.g. "
        "keras.optimizers.Adam(0.01)) or an identifier such as 'adam'. distopt.optimizers "
        "work on distopt.Variable, not on Keras models. Received: "
        f"optimizer={optimizer!r} of type {type(optimizer).__name__}"
    )


def broadcast_variables(strategy, variables, root: int = 0, names=None) -> None:
    """Assigns rank `root`'s values of Keras `variables` on every rank.

    Ranks whose lists differ (`names`, default the variables' paths; shapes; dtypes) all
    raise `CollectiveMismatchError`. Collective: call on all ranks, in the same order.
    """
    variables = list(variables)
    names = [v.path for v in variables] if names is None else list(names)
    # Keyed by position and name: the guard compares the lists entry by entry.
    values = {
        f"{i:06d} {name}": np.array(keras.ops.convert_to_numpy(v.value))
        for i, (v, name) in enumerate(zip(variables, names))
    }
    received = strategy.broadcast(values, root=root)
    if strategy.num_replicas_in_sync == 1:
        return
    for key, v in zip(sorted(values), variables):
        v.assign(received[key])
