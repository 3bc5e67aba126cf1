"""The `Optimizer` base class: the Keras 3 optimizer contract over flat arenas."""

from __future__ import annotations

import operator
import warnings

import numpy as np

from distopt import _naming
from distopt._variable import Variable
from distopt.collectives import _timeline
from distopt.distribute import _context
from distopt.optimizers import _engine, _slots, _state, _transforms
from distopt.optimizers._slots import _internal_variable
from distopt.optimizers._validation import (
    check_gradients,
    list_facts,
    steady_gradients,
    unzip_pairs,
    variable_list,
)
from distopt.optimizers.schedules import LearningRateSchedule

_bound_strategy = operator.attrgetter("_strategy")
_CROSS_REPLICA_MESSAGE = (
    "`apply_gradients()` cannot be called in cross-replica context. Use `Strategy.run` to "
    "enter replica context. For more information, please see the docstring of "
    "`distopt.distribute.get_replica_context`."
)


class Optimizer(_transforms.TransformsMixin, _state.StateMixin, _slots.SlotsMixin):
    """Base class of every optimizer (Keras 3's `keras.optimizers.Optimizer`).

    Subclasses call `super().__init__(learning_rate, ...)`, create slots in `build()` with
    `add_optimizer_variables`, and either write an elementwise `_kernel` (applied over whole
    flat arenas) or override `update_step(gradient, variable, learning_rate)`.
    """

    _kernel = None  # elementwise maths: (w, g, *slots, *coefficients) -> (w, *slots)
    _kernel_slots: tuple[str, ...] = ()
    # Per-tensor maths that may run on whole tensors owned by one rank under ZeRO-1: state is
    # created only for them (`_state_from_reference`) and `update_step` sees only them.
    _shards_whole_tensors = False

    def __init__(
        self,
        learning_rate,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        object.__setattr__(self, "_base_initialized", True)
        decay = kwargs.pop("decay", None)
        if decay is not None:
            warnings.warn(
                "Argument `decay` is no longer supported and will be ignored.", stacklevel=2
            )
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}")
        self._check_base_arguments(
            weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
            ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps,
        )  # fmt: skip
        if name is not None and not isinstance(name, str):
            raise ValueError(f"Argument `name` must be a string. Received: name={name!r}")
        self.name = name or _naming.uniquify(_naming.to_snake_case(type(self).__name__))
        self.weight_decay = weight_decay
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.global_clipnorm = global_clipnorm
        self.use_ema = use_ema
        self.ema_momentum = ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.loss_scale_factor = loss_scale_factor
        gas = gradient_accumulation_steps
        self.gradient_accumulation_steps = int(gas) if gas else gas
        self.built = False
        self._variables: list[Variable] = []
        self._trainable_variables: list[Variable] = []
        self._trainable_variables_indices: dict[int, int] = {}
        self._layout: _engine.ArenaLayout | None = None
        self._slots: dict[str, list] = {}
        self._slot_arenas: dict[str, dict] = {}
        self._exclude_ids: set[int] = set()
        self._exclude_pattern = None
        self._list_facts: dict[tuple, object] = {}  # per variable list, once built
        self._strategy = None if not _context.has_strategy() else _context.get_strategy()
        self._iterations = self._track(
            _internal_variable(0, "iteration", f"{self.name}/iteration", "int32")
        )
        self._learning_rate = self._make_learning_rate(learning_rate)

    def __setattr__(self, name, value):
        # Keras's guard: state set before the base constructor would be silently lost.
        if "_base_initialized" not in self.__dict__:
            raise RuntimeError(
                f"In optimizer '{type(self).__name__}', you forgot to call `super().__init__()` "
                "as the first statement in the `__init__()` method. Go add it!"
            )
        object.__setattr__(self, name, value)

    # -- learning rate ------------------------------------------------------------------------
    def _make_learning_rate(self, learning_rate):
        if isinstance(learning_rate, LearningRateSchedule) or callable(learning_rate):
            return learning_rate
        if not isinstance(learning_rate, float):
            raise ValueError(
                "Argument `learning_rate` should be float, or an instance of "
                "LearningRateSchedule, or a callable (that takes in the current iteration value "
                "and returns the corresponding learning rate value). "
                f"Received instead: learning_rate={learning_rate}"
            )
        if not np.isfinite(learning_rate):
            raise ValueError(
                f"Argument `learning_rate` must be finite. Received: learning_rate={learning_rate}"
            )
        path = f"{self.name}/learning_rate"
        return self._track(_internal_variable(learning_rate, "learning_rate", path, "float32"))

    @property
    def learning_rate(self):
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            return lr(self._iterations.numpy())
        if isinstance(lr, Variable):
            return lr
        return lr() if callable(lr) else lr

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, LearningRateSchedule) or callable(value):
            if isinstance(self._learning_rate, Variable):
                self._variables.remove(self._learning_rate)
            self._learning_rate = value
            return
        if isinstance(self._learning_rate, LearningRateSchedule):
            raise TypeError(
                "This optimizer was created with a `LearningRateSchedule` object as its "
                "`learning_rate` constructor argument, hence its learning rate is not settable. "
                "If you need the learning rate to be settable, you should instantiate the "
                "optimizer with a float `learning_rate` argument."
            )
        if not isinstance(self._learning_rate, Variable):
            raise TypeError(
                "This optimizer was created with a callable `learning_rate`; set another "
                f"callable or schedule instead of a value. Received: {value!r}"
            )
        self._learning_rate.assign(value)

    def _learning_rate_value(self) -> float:
        lr = self.learning_rate
        return float(np.asarray(lr.value if isinstance(lr, Variable) else lr))

    # -- variables ----------------------------------------------------------------------------
    def _track(self, variable: Variable) -> Variable:
        self._variables.append(variable)
        return variable

    @property
    def variables(self) -> list[Variable]:
        """A copy of the list of optimizer variables, in creation (and save) order."""
        return list(self._variables)

    @property
    def iterations(self):
        """Completed updates: the counter variable, or `_iterations // N` under accumulation."""
        if self.gradient_accumulation_steps:
            return np.int32(self._iteration_count() // self.gradient_accumulation_steps)
        return self._iterations

    def _iteration_count(self) -> int:
        return int(self._iterations.value)

    def _step_count(self) -> int:
        """Completed real updates (the `iterations` property as an int)."""
        return int(
            np.asarray(
                self.iterations if self.gradient_accumulation_steps else self._iterations.value
            )
        )

    def build(self, variables):
        """Creates the optimizer state for `variables` (once; later calls do nothing)."""
        if self.built:
            return
        variables = variable_list(variables)
        sharding = _engine.sharding_for(self)
        self._trainable_variables = variables
        self._trainable_variables_indices = {id(v): i for i, v in enumerate(variables)}
        movable = [v for v in variables if not v.overwrite_with_gradient]
        weights = None
        if sharding is not None and self._kernel is None:  # per-tensor ZeRO-1
            weights = [self._state_size(v) for v in movable]
        self._layout = _engine.ArenaLayout(movable, self, sharding, weights)
        if self.use_ema:
            self._model_variables_moving_average = self.add_optimizer_variables(
                variables, "average"
            )
        if self.gradient_accumulation_steps:
            self._accumulated_gradients = [
                self.add_variable_from_reference(v, "gradient_accumulator") for v in variables
            ]
        self.built = True

    # -- applying gradients -------------------------------------------------------------------
    def apply_gradients(
        self, grads_and_vars, name=None, skip_gradients_aggregation=False, **kwargs
    ):
        """Applies (gradient, variable) pairs; returns the iterations variable.

        Inside `strategy.run` the gradients are SUM-all-reduced across replicas first (unless
        `skip_gradients_aggregation=True`): this is collective, call it on all ranks, in the same
        order. Raises RuntimeError in a cross-replica context, TypeError for malformed pairs,
        ValueError for shape or variable problems; a call that raises changes nothing.
        """
        aggregate = self._aggregation_requested(skip_gradients_aggregation, kwargs)
        self._require_replica_context()
        grads, variables = unzip_pairs(grads_and_vars)
        self._apply(grads, variables, aggregate)
        return self._iterations

    def apply(self, grads, trainable_variables=None):
        """Keras 3's `apply`: gradients in the order of `trainable_variables` (or of the build).

        Aggregates across replicas like `apply_gradients`: call it on all ranks.
        """
        self._require_replica_context()
        grads = list(grads)
        if not grads:
            return  # as Keras: nothing to apply, and the counter is not incremented
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "When passing `grads` without `variables`, the optimizer must already be "
                    "built on a list of variables. Call `optimizer.build(trainable_variables)` "
                    "first. "
                )
            if len(grads) != len(self._trainable_variables):
                raise ValueError(
                    "When passing `grads` as a list of gradient tensors, the gradients must match "
                    "`optimizer.variables` one-to-on. Received a list of "
                    f"{len(grads)} gradients, but the optimizer is tracking "
                    f"{len(self._trainable_variables)} trainable variables."
                )
            trainable_variables = self._trainable_variables
        grads, variables = unzip_pairs(zip(grads, trainable_variables))
        self._apply(grads, variables, True)

    @staticmethod
    def _aggregation_requested(skip, kwargs) -> bool:
        legacy = kwargs.pop("experimental_aggregate_gradients", True)
        if kwargs:
            raise TypeError(
                f"apply_gradients() got unexpected keyword argument(s) {sorted(kwargs)}; it "
                "takes `name`, `skip_gradients_aggregation` and the legacy "
                "`experimental_aggregate_gradients`."
            )
        return not skip and bool(legacy)

    @staticmethod
    def _require_replica_context():
        if _context.get_replica_context() is None:
            raise RuntimeError(_CROSS_REPLICA_MESSAGE)

    def _check_strategy(self, variables) -> object:
        strategy = _context.get_strategy()
        # Messages are built only on error: this runs for every variable at every step.
        if self._strategy is not None and self._strategy is not strategy:
            self._strategy_mismatch(f"Optimizer `{self.name}`", self._strategy, strategy)
        bound = set(map(_bound_strategy, variables))
        bound.discard(None)
        bound.discard(strategy)
        for v in variables if bound else ():
            if v._strategy is not None and v._strategy is not strategy:
                self._strategy_mismatch(f"Variable `{v.path}`", v._strategy, strategy)
        return strategy

    @staticmethod
    def _strategy_mismatch(what, bound, strategy):
        where = "no strategy" if strategy._is_default else repr(strategy)
        raise ValueError(
            f"{what} was created under the scope of {bound!r} but is being updated under "
            f"{where}. Update mirrored state inside `strategy.run(...)` of the strategy "
            "it was created with, so that every rank aggregates the same gradients."
        )

    def _apply(self, grads, variables, aggregate):
        # The steady state (built, a known variable list, no overwrite variable, every
        # gradient an ndarray of its variable's shape) needs no per-pair work to validate.
        steady = facts = None
        if self.built:
            facts = list_facts(self._list_facts, variables, self._trainable_variables_indices)
            if facts is not None and not facts.overwrite:
                steady = steady_gradients(grads, facts)
        if steady is None:
            self._apply_checked(grads, variables, aggregate)
            return
        strategy = _context.get_strategy()
        mine = self._strategy
        if (mine is not None and mine is not strategy) or any(
            b is not strategy for b in facts.bound
        ):
            self._check_strategy(variables)  # raises, naming the optimizer or variable
        _timeline.set_step(self._iteration_count())
        self._apply_pairs(grads, variables, strategy, aggregate, not steady, facts.constrained)
        self._iterations.value[...] += 1

    def _apply_checked(self, grads, variables, aggregate):
        known = self._trainable_variables_indices if self.built else None
        grads = check_gradients(grads, variables, known)
        strategy = self._check_strategy(variables)
        present = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not present:
            raise ValueError("No gradients provided for any variable.")
        if not self.built:
            self.build(variables)
        _timeline.set_step(self._iteration_count())
        if len(present) < len(variables):
            missing = [v.path for g, v in zip(grads, variables) if g is None]
            warnings.warn(
                f"Gradients do not exist for variables {missing} when minimizing the loss. If "
                "using `model.compile()`, did you forget to provide a `loss` argument?",
                stacklevel=4,
            )
        overwrite = [(g, v) for g, v in present if v.overwrite_with_gradient]
        pairs = [(g, v) for g, v in present if not v.overwrite_with_gradient]
        self._apply_overwrite(overwrite, strategy if aggregate else None)
        if pairs:
            grads = [g for g, _ in pairs]
            variables = [v for _, v in pairs]
            self._apply_pairs(grads, variables, strategy, aggregate, True)
        self._iterations.value[...] += 1

    def _apply_pairs(self, grads, variables, strategy, aggregate, cast, constrained=True):
        """Aggregate, unscale, update, EMA, constraints; `cast=False`: every gradient is an
        ndarray of its variable's dtype already (the default strategy's reduction is then
        the identity); `constrained=False`: no variable has a constraint."""
        reduce = strategy._reduce_gradients if aggregate else None
        if self.gradient_accumulation_steps:
            self._accumulate_and_update(grads, variables, reduce)
        else:
            if reduce is not None and (cast or not strategy._is_default):
                grads = self._unscale(reduce(grads, variables))  # in the variables' dtypes
            elif cast:
                grads = self._cast(self._unscale(grads), variables)
            else:
                grads = self._unscale(grads)
            self._update(grads, variables)
        if reduce is not None:
            strategy._release_gradients()  # the reduced buffers may be written again
        if self.use_ema:
            self._update_moving_averages()
        if constrained:
            self._apply_constraints(variables)

    @staticmethod
    def _cast(grads, variables):
        return [g if g.dtype == v.dtype else g.astype(v.dtype) for g, v in zip(grads, variables)]

    def _update(self, grads, variables):
        """Clip, weight decay, then the update step of every pair (one real update)."""
        with _timeline.span("update"):
            grads = self._clip_gradients(grads)
            lr = self._learning_rate_value()
            fused = self._decay_in_kernel(variables)
            rest = [v for v in variables if v.dtype not in fused] if fused else variables
            self._apply_weight_decay(rest, lr)
            self._update_all(grads, variables, lr, fused)

    def _update_all(self, grads, variables, lr, fused=frozenset()):
        """The update of every pair; `fused` names the dtypes whose weight decay the kernel
        applies in the same pass."""
        self._prepare_step(lr)
        if self._kernel is None:
            owns = self._layout.owns  # per-tensor ZeRO-1: only this rank's tensors
            for g, v in zip(grads, variables):
                if owns(v):
                    self.update_step(g, v, lr)
            self._layout.gather()
            return
        layout = self._layout
        for dt, in_step, in_place in layout.step_groups(variables):
            if not in_place:
                if layout.sharding is not None:
                    raise ValueError(
                        "Under `shard_optimizer_state=True` every step must update all the "
                        f"variables `{self.name}` was built with, in the same order, with a "
                        "gradient for each."
                    )
                for k in in_step:
                    self.update_step(grads[k], variables[k], lr)
                continue
            dt_grads = grads if len(in_step) == len(grads) else [grads[k] for k in in_step]
            flat_g = _engine.flat_span(dt_grads)
            if flat_g is None:
                flat_g = np.concatenate(dt_grads, axis=None)
            slots = [self._slot_arenas[n][dt] for n in self._kernel_slots]
            kernel, coefficients = self._kernel, self._coefficients(lr, dt)
            if dt in fused:
                c = np.dtype(dt).type
                kernel = _engine.with_decay(kernel)
                coefficients = (*coefficients, c(self.weight_decay), c(lr))
            layout.run(kernel, dt, flat_g, slots, coefficients)
        layout.gather()

    def _prepare_step(self, lr) -> None:
        """Hook run once per real update, before the per-variable updates (e.g. Nadam)."""

    def _coefficients(self, lr, dtype) -> tuple:
        """The kernel's scalar arguments for this step, cast to `dtype`."""
        raise NotImplementedError(f"{type(self).__name__} must define `_coefficients`.")

    def update_step(self, gradient, variable, learning_rate):
        """Updates one variable. Elementwise optimizers run their kernel on its arena views."""
        if self._kernel is None:
            raise NotImplementedError(f"{type(self).__name__} must implement `update_step`.")
        i = self._trainable_variables_indices[id(variable)]
        slots = [self._slots[n][i].value.reshape(-1) for n in self._kernel_slots]
        g = np.asarray(gradient, dtype=variable.dtype).reshape(-1)
        coeffs = self._coefficients(learning_rate, variable.dtype)
        w = variable.value.reshape(-1)
        _engine.run_kernel(self._kernel, w, g, slots, coeffs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name}>"
