"""The `Optimizer` base class: the Keras 3 optimizer contract over flat arenas."""

from __future__ import annotations

import warnings

import numpy as np

from distopt import _naming
from distopt._variable import Variable
from distopt.distribute import _context
from distopt.optimizers import _apply, _arena, _engine, _slots, _state, _transforms
from distopt.optimizers._hyperparameters import describe
from distopt.optimizers._slots import _internal_variable
from distopt.optimizers._validation import variable_list
from distopt.optimizers.schedules import LearningRateSchedule


def _check_finite_learning_rate(value) -> np.ndarray:
    """`value` as the float32 the learning-rate variable holds, or a ValueError (NaN, inf,
    beyond float32 range, or not a real scalar)."""
    arr = None
    if not isinstance(value, (bool, np.bool_, str, bytes)):
        try:
            with np.errstate(over="ignore"):
                arr = np.asarray(value, dtype=np.float64).astype(np.float32)
        except (TypeError, ValueError, OverflowError):
            pass
    if arr is None or arr.shape != () or not np.isfinite(arr):
        raise ValueError(
            "Argument `learning_rate` must be a finite float (within float32 range), a "
            "LearningRateSchedule or a callable. "
            f"Received: learning_rate={describe(value)}"
        )
    return arr


class Optimizer(
    _apply.ApplyMixin, _transforms.TransformsMixin, _state.StateMixin, _slots.SlotsMixin
):
    """Base class of every optimizer (Keras 3's `keras.optimizers.Optimizer`).

    Subclasses call `super().__init__(learning_rate, ...)`, create slots in `build()` with
    `add_optimizer_variables`, and either write an elementwise `_kernel` (applied over whole
    flat arenas) or override `update_step(gradient, variable, learning_rate)`. Applying
    gradients is `_apply.ApplyMixin`; the pipeline's pieces are `_transforms.TransformsMixin`.
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
        self._layout: _arena.ArenaLayout | None = None
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
                f"Received instead: learning_rate={describe(learning_rate)}"
            )
        _check_finite_learning_rate(learning_rate)
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
                # By identity: `==` on variables compares values.
                self._variables = [v for v in self._variables if v is not self._learning_rate]
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
        self._learning_rate.assign(_check_finite_learning_rate(value))

    def _learning_rate_value(self):
        """This step's learning rate in its own dtype, as Keras passes it to `update_step`:
        a numpy scalar (float32 for the variable) or a Python float from a callable."""
        lr = self.learning_rate
        if isinstance(lr, Variable):
            return lr.value[()]
        return lr if isinstance(lr, float) else np.asarray(lr)[()]

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
        self._agree_on_config()
        sharding = _arena.sharding_for(self)
        self._trainable_variables = variables
        self._trainable_variables_indices = {id(v): i for i, v in enumerate(variables)}
        movable = [v for v in variables if not v.overwrite_with_gradient]
        weights = None
        if sharding is not None and self._kernel is None:  # per-tensor ZeRO-1
            weights = [self._state_size(v) for v in movable]
        self._layout = _arena.ArenaLayout(movable, self, sharding, weights)
        if self.use_ema:
            self._model_variables_moving_average = self.add_optimizer_variables(
                variables, "average"
            )
        if self.gradient_accumulation_steps:
            self._accumulated_gradients = [
                self.add_variable_from_reference(v, "gradient_accumulator") for v in variables
            ]
        self.built = True

    def _agree_on_config(self) -> None:
        """Under a strategy of several ranks, checks once that every rank built this
        optimizer with the same config (raises `CollectiveMismatchError` on every rank,
        naming the keys that differ). Collective: call on all ranks, in the same order."""
        if self.__dict__.get("_config_agreed"):
            return
        strategy = self._strategy if self._strategy is not None else _context.get_strategy()
        if not strategy._is_default:
            strategy._agree_on_config({"class_name": type(self).__name__, **self.get_config()})
        self._config_agreed = True

    # -- the update, written by subclasses ----------------------------------------------------
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
