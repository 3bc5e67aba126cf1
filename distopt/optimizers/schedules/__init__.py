"""Learning-rate schedules, as `keras.optimizers.schedules`."""

from distopt.optimizers.schedules._base import LearningRateSchedule
from distopt.optimizers.schedules._cosine import CosineDecay, CosineDecayRestarts
from distopt.optimizers.schedules._decay import (
    ExponentialDecay,
    InverseTimeDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
)
from distopt.optimizers.schedules._serialization import deserialize, serialize

__all__ = [
    "CosineDecay",
    "CosineDecayRestarts",
    "ExponentialDecay",
    "InverseTimeDecay",
    "LearningRateSchedule",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "deserialize",
    "serialize",
]
