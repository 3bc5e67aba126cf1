"""Learning-rate warmup for large global batches (Goyal et al., 2017)."""

from __future__ import annotations

import keras

from distopt.keras import _runtime


@keras.saving.register_keras_serializable(package="distopt", name="WarmupSchedule")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Ramps the learning rate linearly from `initial_learning_rate` to `learning_rate`
    over `warmup_steps` optimizer steps, then follows `learning_rate`.

    `learning_rate` (a float or a schedule) is the rate for the global batch, typically the
    single-process rate times the number of ranks; `initial_learning_rate` defaults to
    `learning_rate / size()` (the single-process rate; collective the first time). A
    schedule, not a callback, so it holds inside a compiled (jax) train step, and is saved
    with the model.
    """

    def __init__(self, learning_rate, warmup_steps: int, initial_learning_rate=None):
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(
                "Argument `warmup_steps` must be a positive int. "
                f"Received: warmup_steps={warmup_steps!r}"
            )
        if isinstance(learning_rate, dict):
            learning_rate = keras.optimizers.schedules.deserialize(learning_rate)
        is_schedule = isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
        if not is_schedule and not isinstance(learning_rate, (int, float)):
            raise TypeError(
                "Argument `learning_rate` must be a float or a LearningRateSchedule. "
                f"Received: learning_rate={learning_rate!r}"
            )
        if initial_learning_rate is None:
            target = learning_rate(0) if is_schedule else learning_rate
            initial_learning_rate = float(target) / _runtime.size()
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.initial_learning_rate = float(initial_learning_rate)

    def __call__(self, step):
        ops = keras.ops
        target = self.learning_rate
        if isinstance(target, keras.optimizers.schedules.LearningRateSchedule):
            target = target(step)
        fraction = ops.minimum(ops.cast(step, "float32") / float(self.warmup_steps), 1.0)
        return self.initial_learning_rate + (target - self.initial_learning_rate) * fraction

    def get_config(self):
        rate = self.learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = keras.optimizers.schedules.serialize(rate)
        return {
            "learning_rate": rate,
            "warmup_steps": self.warmup_steps,
            "initial_learning_rate": self.initial_learning_rate,
        }
