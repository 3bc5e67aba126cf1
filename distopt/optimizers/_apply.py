"""How the base optimizer applies gradients (DESIGN.md semantics 2).

`apply_gradients` / `apply` check the context and unzip the pairs; `_apply` takes the steady
state (built, a known variable list, every gradient an ndarray of its variable's shape) with
whole-list checks only, and sends anything else through `_apply_checked`, which validates
pair by pair and changes nothing when it raises. Both end in `_apply_pairs`: all-reduce,
unscale, accumulate, clip, weight decay, the update over whole arenas, EMA, constraints.
"""

from __future__ import annotations

import operator
import warnings

import numpy as np

from distopt.collectives import _timeline
from distopt.distribute import _context
from distopt.optimizers import _arena, _engine, _slots
from distopt.optimizers._validation import (
    check_gradients,
    list_facts,
    snapshot_aliases,
    steady_gradients,
    unzip_pairs,
)

_bound_strategy = operator.attrgetter("_strategy")


class _Skipped:
    """`aggregate` when the caller asked to skip aggregation: false, yet under a strategy
    of several ranks they still check, where the reduction would be, that all of them skip
    (one rank skipping alone would mix gradients of different steps)."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED = _Skipped()
_CROSS_REPLICA_MESSAGE = (
    "`apply_gradients()` cannot be called in cross-replica context. Use `Strategy.run` to "
    "enter replica context. For more information, please see the docstring of "
    "`distopt.distribute.get_replica_context`."
)


class ApplyMixin:
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
        return True if not skip and bool(legacy) else SKIPPED

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
        state = self._steady_state(grads, variables, self._trainable_variables_indices)
        if state is None:
            self._apply_checked(grads, variables, aggregate)
            return
        facts, same_dtypes = state
        strategy = self._steady_strategy(facts, variables)
        self._apply_steady(grads, variables, aggregate, strategy, facts, same_dtypes)

    def _apply_steady(self, grads, variables, aggregate, strategy, facts, same_dtypes):
        """`_apply` once `_steady_state` and `_steady_strategy` have passed."""
        _timeline.set_step(self._iteration_count())
        self._apply_pairs(grads, variables, strategy, aggregate, not same_dtypes, facts.constrained)
        self._iterations.value[...] += 1

    def _steady_state(self, grads, variables, known):
        """`(facts, same_dtypes)` in the steady state, which needs no per-pair work to
        validate: built, a list of variables all in `known` (id -> index) without duplicate
        or overwrite variable, every gradient an ndarray of its variable's shape and a real
        dtype (`same_dtypes`: its variable's dtype). Else None: validate pair by pair."""
        if not self.built:
            return None
        facts = list_facts(self._list_facts, variables, known)
        if facts is None or facts.overwrite:
            return None
        same_dtypes = steady_gradients(grads, facts)
        return None if same_dtypes is None else (facts, same_dtypes)

    def _steady_strategy(self, facts, variables):
        """The current strategy; raises, naming the optimizer or variable, when this
        optimizer or one of `facts`' variables is bound to another."""
        strategy = _context.get_strategy()
        mine = self._strategy
        if (mine is not None and mine is not strategy) or any(
            b is not strategy for b in facts.bound
        ):
            self._check_strategy(variables)
        return strategy

    def _apply_checked(self, grads, variables, aggregate):
        known = self._trainable_variables_indices if self.built else None
        grads = check_gradients(grads, variables, known)
        strategy = self._check_strategy(variables)
        present = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not present:
            raise ValueError("No gradients provided for any variable.")
        _timeline.set_step(self._iteration_count())  # may raise (DISTOPT_TIMELINE): first
        if not self.built:
            with _slots.name_scope(self):
                self.build(variables)
        if len(present) < len(variables):
            missing = [v.path for g, v in zip(grads, variables) if g is None]
            warnings.warn(
                f"Gradients do not exist for variables {missing} when minimizing the loss. If "
                "using `model.compile()`, did you forget to provide a `loss` argument? In a "
                "custom training loop, compute a gradient for each of these variables or leave "
                "them out of the (gradient, variable) pairs; they were not updated.",
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
        if aggregate is SKIPPED and not strategy._is_default:
            reduce = strategy._skip_reduction
        if self.gradient_accumulation_steps:
            self._accumulate_and_update(grads, variables, reduce)
        else:
            if reduce is not None and (cast or not strategy._is_default):
                scatter = self._gradient_scatter(variables)
                extra = () if scatter is None else (scatter,)
                grads = self._unscale(reduce(grads, variables, *extra))  # variables' dtypes
            elif cast:
                grads = self._cast(self._unscale(grads), variables)
            else:
                grads = self._unscale(grads)
            self._update(grads, variables)
        if aggregate:
            strategy._release_gradients()  # the reduced buffers may be written again
        if self.use_ema:
            self._update_moving_averages()
        if constrained:
            self._apply_constraints(variables)

    def _gradient_scatter(self, variables):
        """Under ZeRO-1 with an elementwise kernel, every rank's range of each dtype's flat
        gradients (the part of the arena it updates), when this step reads nothing else:
        then the gradients need only be reduce-scattered. Else None."""
        layout = getattr(self, "_layout", None)
        if (
            layout is None
            or layout.sharding is None
            or layout.owned is not None  # whole tensors: laid out by owner, not by list
            or self._kernel is None
            or (self.clipnorm and self.clipnorm > 0)  # norms read whole gradients
            or (self.global_clipnorm and self.global_clipnorm > 0)
            or len(variables) != len(layout.variables)
        ):
            return None
        if not all(in_place for _, _, in_place in layout.step_groups(variables)):
            return None  # not the arena in order: the update step raises
        sharding = layout.sharding
        return {dt: sharding.ranges(dt, n) for dt, n in layout.totals.items()}

    @staticmethod
    def _cast(grads, variables):
        return [g if g.dtype == v.dtype else g.astype(v.dtype) for g, v in zip(grads, variables)]

    def _update(self, grads, variables):
        """Clip, weight decay, then the update step of every pair (one real update)."""
        with _timeline.span("update"):
            if self._kernel is None:  # variable by variable: none may read an updated one
                grads = snapshot_aliases(grads, variables)
            grads = self._clip_gradients(grads)
            lr = self._learning_rate_value()
            fused = self._decay_in_kernel(variables)
            rest = [v for v in variables if v.dtype not in fused] if fused else variables
            if self.weight_decay is not None and rest and self._kernel is not None:
                grads = snapshot_aliases(grads, variables)  # decay writes before the kernel
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
                snapshot = snapshot_aliases([grads[k] for k in in_step], variables)
                for k, g in zip(in_step, snapshot):
                    self.update_step(g, variables[k], lr)
                continue
            dt_grads = grads if len(in_step) == len(grads) else [grads[k] for k in in_step]
            flat_g = _arena.flat_span(dt_grads)
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
