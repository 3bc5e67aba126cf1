"""Optimizers with the Keras 3 API: `Optimizer`, `SGD`, `Adam`, `get`, `serialize`, ..."""

from distopt.optimizers import schedules
from distopt.optimizers._base import Optimizer
from distopt.optimizers._registry import deserialize, get, serialize
from distopt.optimizers.adadelta import Adadelta
from distopt.optimizers.adafactor import Adafactor
from distopt.optimizers.adagrad import Adagrad
from distopt.optimizers.adam import Adam
from distopt.optimizers.adamax import Adamax
from distopt.optimizers.adamw import AdamW
from distopt.optimizers.ftrl import Ftrl
from distopt.optimizers.lamb import Lamb
from distopt.optimizers.lion import Lion
from distopt.optimizers.loss_scale_optimizer import LossScaleOptimizer
from distopt.optimizers.muon import Muon
from distopt.optimizers.nadam import Nadam
from distopt.optimizers.rmsprop import RMSprop
from distopt.optimizers.schedule_free_adamw import ScheduleFreeAdamW
from distopt.optimizers.sgd import SGD

__all__ = [
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "Adamax",
    "AdamW",
    "Ftrl",
    "Lamb",
    "Lion",
    "LossScaleOptimizer",
    "Muon",
    "Nadam",
    "Optimizer",
    "RMSprop",
    "SGD",
    "ScheduleFreeAdamW",
    "deserialize",
    "get",
    "schedules",
    "serialize",
]
