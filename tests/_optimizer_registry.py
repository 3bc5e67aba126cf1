"""The one registry of optimizers that the contract and equivalence suites run over.

Classes are read from `distopt.optimizers` when the tests are collected: every exported
`Optimizer` subclass is covered (with its defaults if it has no entry below), and an entry whose
class has not landed yet is collected as a skipped test that says so. An entry is one way of
constructing an optimizer: a class, hyperparameters, and the settings that make it converge
on the test quadratic.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pytest

import distopt.optimizers as optimizers

# Keras's automatic names (spec 1.2, observed) and `get()` identifiers (spec 1.12; plus lamb).
AUTO_NAMES = {
    "SGD": "sgd",
    "RMSprop": "rm_sprop",
    "Adam": "adam",
    "AdamW": "adam_w",
    "Adadelta": "adadelta",
    "Adagrad": "adagrad",
    "Adamax": "adamax",
    "Adafactor": "adafactor",
    "Nadam": "nadam",
    "Ftrl": "ftrl",
    "Lion": "lion",
    "Lamb": "lamb",
    "Muon": "muon",
    "ScheduleFreeAdamW": "schedule_free_adam_w",
    "LossScaleOptimizer": "loss_scale_optimizer",
}
NOT_BY_STRING = {"LossScaleOptimizer"}

# Base options (every optimizer takes them). Values make each option bind on the test problems:
# gradients there have norms of order 1, so these clip, decay and average visibly.
BASE_OPTIONS = {
    "plain": {},
    "clipnorm": {"clipnorm": 0.3},
    "clipvalue": {"clipvalue": 0.05},
    "global_clipnorm": {"global_clipnorm": 0.3},
    "weight_decay": {"weight_decay": 0.1},
    "ema": {"use_ema": True, "ema_momentum": 0.9, "ema_overwrite_frequency": 3},
    "accumulation": {"gradient_accumulation_steps": 3},
    "loss_scale_factor": {"loss_scale_factor": 4.0},
    # Not a constructor keyword: `Entry.make` turns it into an ExponentialDecay learning rate.
    "schedule": {"schedule": {"decay_steps": 4, "decay_rate": 0.5}},
    "schedule_accumulation": {
        "schedule": {"decay_steps": 4, "decay_rate": 0.5, "staircase": True},
        "gradient_accumulation_steps": 3,
    },
}


@dataclass(frozen=True)
class Entry:
    """One way to construct an optimizer for the suites."""

    id: str
    class_name: str
    kwargs: dict = field(default_factory=dict)
    # Learning rate (or inner learning rate) for the convergence test, its steps, and the
    # required ratio final_loss / initial_loss.
    lr: float = 0.05
    steps: int = 200
    ratio: float = 1e-2
    wrapper: bool = False  # LossScaleOptimizer: `kwargs` go to the outer class, options inside

    @property
    def cls(self):
        return getattr(optimizers, self.class_name, None)

    def make(self, learning_rate=None, **options):
        """A new optimizer; `options` are base options (for a wrapper: of its inner optimizer).

        `schedule={...}` makes the learning rate `ExponentialDecay(lr, **schedule)`.
        """
        lr = self.lr if learning_rate is None else learning_rate
        options = dict(options)
        schedule = options.pop("schedule", None)
        if schedule is not None:
            lr = optimizers.schedules.ExponentialDecay(lr, **schedule)
        if self.wrapper:
            inner_cls = getattr(optimizers, self.kwargs["inner"])
            inner_kwargs = self.kwargs.get("inner_kwargs", {})
            outer = {k: v for k, v in self.kwargs.items() if k not in ("inner", "inner_kwargs")}
            if "name" in options:
                outer["name"] = options.pop("name")
            inner = inner_cls(learning_rate=lr, **inner_kwargs, **options)
            return self.cls(inner, **outer)
        return self.cls(learning_rate=lr, **self.kwargs, **options)


ENTRIES = [
    Entry("SGD", "SGD", lr=0.1),
    Entry("SGD-momentum", "SGD", {"momentum": 0.9}, lr=0.02),
    Entry("SGD-nesterov", "SGD", {"momentum": 0.9, "nesterov": True}, lr=0.02),
    Entry("RMSprop", "RMSprop", lr=0.01),
    Entry("RMSprop-momentum-centered", "RMSprop", {"momentum": 0.5, "centered": True}, lr=0.005),
    Entry("Adam", "Adam"),
    Entry("Adam-amsgrad", "Adam", {"amsgrad": True}),
    Entry("AdamW", "AdamW"),
    Entry("AdamW-amsgrad", "AdamW", {"amsgrad": True}),
    Entry("Adadelta", "Adadelta", lr=10.0),
    Entry("Adagrad", "Adagrad", lr=0.5),
    Entry("Adamax", "Adamax"),
    Entry("Nadam", "Nadam"),
    Entry("Ftrl", "Ftrl", lr=0.5),
    Entry(
        "Ftrl-regularized",
        "Ftrl",
        {
            "l1_regularization_strength": 0.001,
            "l2_regularization_strength": 0.001,
            "l2_shrinkage_regularization_strength": 0.001,
            "beta": 0.1,
        },
        lr=0.5,
    ),
    Entry("Lion", "Lion", lr=0.02),
    Entry("Lamb", "Lamb", lr=0.02),
    Entry("Adafactor", "Adafactor", lr=0.1),
    Entry("Muon", "Muon", lr=0.05),
    Entry("Muon-plain-momentum", "Muon", {"nesterov": False, "rms_rate": None}, lr=0.02),
    Entry("ScheduleFreeAdamW", "ScheduleFreeAdamW"),
    Entry("ScheduleFreeAdamW-warmup", "ScheduleFreeAdamW", {"warmup_steps": 5}),
    Entry(
        "LossScaleOptimizer-Adam",
        "LossScaleOptimizer",
        {"inner": "Adam", "initial_scale": 2.0, "dynamic_growth_steps": 3},
        wrapper=True,
    ),
    Entry(
        "LossScaleOptimizer-SGD-momentum",
        "LossScaleOptimizer",
        {"inner": "SGD", "inner_kwargs": {"momentum": 0.9}, "initial_scale": 4.0},
        lr=0.02,
        wrapper=True,
    ),
]


def exported_classes() -> dict[str, type]:
    """Every public Optimizer subclass of `distopt.optimizers`, by name."""
    found = {}
    for name in getattr(optimizers, "__all__", dir(optimizers)):
        obj = getattr(optimizers, name, None)
        if inspect.isclass(obj) and issubclass(obj, optimizers.Optimizer):
            if obj is not optimizers.Optimizer:
                found[name] = obj
    return found


def entries() -> list[Entry]:
    """The registry entries plus a defaults entry for every exported class without one."""
    covered = {e.class_name for e in ENTRIES}
    extra = [Entry(n, n) for n in sorted(exported_classes()) if n not in covered]
    return ENTRIES + extra


def params(filter_fn=None) -> list:
    """`pytest.param(entry)` for each entry; a class not landed yet is a skipped test."""
    out = []
    for e in entries():
        if filter_fn is not None and not filter_fn(e):
            continue
        marks = ()
        if e.cls is None:
            marks = pytest.mark.skip(reason=f"{e.class_name} is not in distopt.optimizers yet")
        out.append(pytest.param(e, id=e.id, marks=marks))
    return out


def classes() -> list:
    """One `pytest.param(class_name)` per class (the registry's and every exported one)."""
    names = list(dict.fromkeys([e.class_name for e in ENTRIES] + sorted(exported_classes())))
    out = []
    for n in names:
        marks = ()
        if getattr(optimizers, n, None) is None:
            marks = pytest.mark.skip(reason=f"{n} is not in distopt.optimizers yet")
        out.append(pytest.param(n, id=n, marks=marks))
    return out
