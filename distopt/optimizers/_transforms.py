"""The base optimizer's gradient pipeline pieces, in Keras's documented order.

unscale (loss_scale_factor) -> accumulate -> clip -> weight decay -> update -> EMA ->
constraints. Each piece is small and separately tested; `Optimizer._apply` composes them.
"""

from __future__ import annotations

import re

import numpy as np

from distopt.optimizers import _arena
from distopt.optimizers._hyperparameters import MAX_STEPS, check_float, describe


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


class TransformsMixin:
    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def _check_base_arguments(
        weight_decay, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
        ema_overwrite_frequency, loss_scale_factor, gradient_accumulation_steps,
    ):  # fmt: skip
        """Validates the base options (Keras's texts where Keras has one); nothing is stored."""
        for arg, value in [
            ("weight_decay", weight_decay),
            ("clipnorm", clipnorm),
            ("clipvalue", clipvalue),
            ("global_clipnorm", global_clipnorm),
        ]:
            if value is not None:
                check_float(arg, value, 0)
        if loss_scale_factor is not None:
            check_float("loss_scale_factor", loss_scale_factor, 0, low_open=True)
        if gradient_accumulation_steps and not (
            _is_number(gradient_accumulation_steps)
            and 2 <= gradient_accumulation_steps <= MAX_STEPS
            and gradient_accumulation_steps == int(gradient_accumulation_steps)
        ):
            raise ValueError(
                "`gradient_accumulation_steps` must be an integer >= 2 (and at most 2**31 - 1, "
                "the range of `iterations`). Received: "
                f"gradient_accumulation_steps={describe(gradient_accumulation_steps)}"
            )
        if not isinstance(use_ema, (bool, np.bool_)):
            raise ValueError(
                f"Argument `use_ema` must be a bool. Received: use_ema={describe(use_ema)}"
            )
        if use_ema:
            if not _is_number(ema_momentum) or not 0 <= ema_momentum <= 1:
                raise ValueError(
                    "`ema_momentum` must be in the range [0, 1]. "
                    f"Received: ema_momentum={describe(ema_momentum)}"
                )
            if ema_overwrite_frequency and (
                not isinstance(ema_overwrite_frequency, int) or ema_overwrite_frequency < 1
            ):
                raise ValueError(
                    "`ema_overwrite_frequency` must be an integer >= 1 or None. "
                    f"Received: ema_overwrite_frequency={describe(ema_overwrite_frequency)}"
                )
        if sum(x is not None for x in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}"
            )

    def scale_loss(self, loss):
        """`loss * loss_scale_factor` when it is set, else `loss`."""
        return loss * self.loss_scale_factor if self.loss_scale_factor is not None else loss

    # -- gradient transforms ------------------------------------------------------------------
    def _unscale(self, grads):
        if self.loss_scale_factor is None:
            return grads
        return [g / np.asarray(self.loss_scale_factor, dtype=g.dtype) for g in grads]

    def _clip_gradients(self, grads):
        """Per-tensor clipnorm, global_clipnorm or clipvalue (the first set and positive)."""
        if self.clipnorm and self.clipnorm > 0:
            out = []
            for g in grads:
                c = np.asarray(self.clipnorm, dtype=g.dtype)
                norm = np.sqrt(np.sum(g * g))
                out.append(g * c / np.maximum(norm, c) if norm > 0 else g)
            return out
        if self.global_clipnorm and self.global_clipnorm > 0:
            dtype = np.result_type(*grads)
            c = np.asarray(self.global_clipnorm, dtype=dtype)
            norm = np.sqrt(sum(np.sum(np.square(g, dtype=dtype)) for g in grads))
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = c * np.minimum(1 / norm, 1 / c) + (norm - norm)
            return [g * scale.astype(g.dtype) for g in grads]
        if self.clipvalue and self.clipvalue > 0:
            return [np.clip(g, -self.clipvalue, self.clipvalue).astype(g.dtype) for g in grads]
        return grads

    # -- weight decay -------------------------------------------------------------------------
    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Exempts variables (by object, or by `re.search` on their names) from weight decay.

        Each call replaces the previous exclusions, as in Keras.
        """
        var_list = list(var_list or [])
        names = list(var_names or [])
        for n in names:
            if not isinstance(n, str):
                raise TypeError(
                    "Argument `var_names` must be a list of strings (regular expressions "
                    f"searched in variable names). Received an item {n!r}"
                )
        try:
            pattern = re.compile("|".join(names)) if names else None
        except re.error as e:
            raise ValueError(
                "Argument `var_names` must hold valid regular expressions. "
                f"Received: {names!r} ({e})"
            ) from e
        self._exclude_ids = {id(v) for v in var_list}
        self._exclude_pattern = pattern

    def _use_weight_decay(self, variable) -> bool:
        if id(variable) in self._exclude_ids:
            return False
        return not (self._exclude_pattern and self._exclude_pattern.search(variable.name))

    def _decay_in_kernel(self, variables) -> frozenset:
        """The dtypes whose weight decay can ride in the update kernel's pass: the whole
        arena is in this step, in order, and every variable in it is decayed."""
        if (
            self.weight_decay is None
            or self._kernel is None
            or self._layout is None
            or type(self)._apply_weight_decay is not TransformsMixin._apply_weight_decay
        ):
            return frozenset()
        return frozenset(
            dt
            for dt, in_step, in_place in self._layout.step_groups(variables)
            if in_place and all(self._use_weight_decay(variables[k]) for k in in_step)
        )

    def _apply_weight_decay(self, variables, lr):
        if self.weight_decay is None:
            return
        decayed = [v for v in variables if self._use_weight_decay(v)]
        # Whole arenas in one pass where possible; the rest (and the fallback) per variable.
        for v in _arena.decay_in_arenas(self._layout, decayed, self.weight_decay, lr):
            w = v.value
            wd = np.asarray(self.weight_decay, dtype=w.dtype)
            w -= w * wd * np.asarray(lr, dtype=w.dtype)

    # -- accumulation -------------------------------------------------------------------------
    def _accumulate_and_update(self, grads, variables, reduce):
        """Local accumulation; on every N-th call: (g + acc) / N, all-reduce, then update."""
        n = self.gradient_accumulation_steps
        idx = [self._trainable_variables_indices[id(v)] for v in variables]
        accs = [self._accumulated_gradients[i].value for i in idx]
        grads = self._cast(self._unscale(grads), variables)
        if (self._iteration_count() + 1) % n != 0:
            for a, g in zip(accs, grads):
                a += g
            return
        steps = np.asarray(n)
        grads = [(g + a) / steps.astype(a.dtype) for a, g in zip(accs, grads)]
        if reduce is not None:
            grads = reduce(grads, variables)
        self._update(self._cast(grads, variables), variables)
        for acc in self._accumulated_gradients:
            acc.value[...] = 0

    def _apply_overwrite(self, pairs, strategy):
        """`overwrite_with_gradient` variables take their gradient (max-accumulated).

        Under a strategy the value assigned is the MAX over ranks, reduced only when a variable
        is assigned (every call, or every N-th call under accumulation): max is exact and
        associative, so accumulating locally first gives the same bits.
        """
        if not pairs:
            return
        grads = [np.asarray(g, dtype=v.dtype) for g, v in pairs]
        variables = [v for _, v in pairs]
        n = self.gradient_accumulation_steps
        accs = None
        if n:
            accs = [
                self._accumulated_gradients[self._trainable_variables_indices[id(v)]].value
                for v in variables
            ]
            if (self._iteration_count() + 1) % n != 0:
                for acc, g in zip(accs, grads):
                    np.maximum(acc, g, out=acc)
                return
            grads = [np.maximum(g, acc) for g, acc in zip(grads, accs)]
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            from distopt.distribute import ReduceOp

            grads = strategy._reduce_leaves(ReduceOp.MAX, grads)
        for g, v in zip(grads, variables):
            v.assign(g)
        for acc in accs or ():
            acc[...] = 0

    # -- EMA and constraints ------------------------------------------------------------------
    def _update_moving_averages(self):
        first = self._step_count() == 0
        for v, avg in zip(self._trainable_variables, self._model_variables_moving_average):
            if avg is None:
                continue
            m = np.asarray(0.0 if first else self.ema_momentum, dtype=v.dtype)
            a = avg.value
            a[...] = m * a + (1 - m) * v.value
        freq = self.ema_overwrite_frequency
        if freq and (self._step_count() + 1) % freq == 0:
            self.finalize_variable_values(self._trainable_variables)

    def finalize_variable_values(self, var_list):
        """Copies the moving averages into the variables (when `use_ema`)."""
        if not self.use_ema:
            return
        var_list = list(var_list)
        averages = self._model_variables_moving_average
        if len(var_list) != len(averages):
            raise ValueError(
                f"The length of model variables ({len(var_list)}) to override does not match "
                f"the length of model variables stored in the optimizer ({len(averages)}). "
                "Please check if the optimizer was called on your model."
            )
        for v, avg in zip(var_list, averages):
            if avg is not None:
                v.assign(avg.value)

    @staticmethod
    def _apply_constraints(variables):
        for v in variables:
            if v.constraint is not None:
                v.assign(v.constraint(v.value))
