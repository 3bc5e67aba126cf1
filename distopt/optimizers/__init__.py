"""Optimizers with the Keras 3 API: `Optimizer`, `SGD`, `Adam`, `get`, `serialize`, ..."""

from distopt.optimizers import schedules
from distopt.optimizers._base import Optimizer
from distopt.optimizers._registry import deserialize, get, serialize
from distopt.optimizers.adam import Adam
from distopt.optimizers.sgd import SGD

__all__ = ["Adam", "Optimizer", "SGD", "deserialize", "get", "schedules", "serialize"]
