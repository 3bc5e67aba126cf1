"""Learning-rate schedules, as `keras.optimizers.schedules`."""

from distopt.optimizers.schedules._base import LearningRateSchedule

__all__ = ["LearningRateSchedule"]
