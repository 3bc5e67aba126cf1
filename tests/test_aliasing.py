"""A gradient that is a view of another variable's storage is read as it was passed: every
optimizer (per-tensor ones, and elementwise ones when they go variable by variable or decay
first) gives the bits of the same step with a copied gradient, in any pair order."""

from __future__ import annotations

import numpy as np
import pytest

import distopt
from distopt.optimizers import SGD, Adafactor, Adam, AdamW, Lamb, Muon

MAKERS = {
    "adafactor": lambda: Adafactor(learning_rate=0.1),
    "muon": lambda: Muon(learning_rate=0.1),
    "lamb": lambda: Lamb(learning_rate=0.1),
    "adafactor-decay": lambda: Adafactor(learning_rate=0.1, weight_decay=0.5),
    "adam-decay": lambda: Adam(learning_rate=0.1, weight_decay=0.5),
    "adamw": lambda: AdamW(learning_rate=0.1, weight_decay=0.5),
    "sgd-momentum": lambda: SGD(learning_rate=0.1, momentum=0.9),
}


def _run(make, order, copy, with_c):
    distopt.utils.clear_session()
    rng = np.random.default_rng(7)
    a, b, c = (distopt.Variable(rng.normal(size=(4, 3)), name=n) for n in "abc")
    opt = make()
    opt.build([a, b, c])
    for step in range(3):
        alias = a.value.copy() if copy else a.value  # b's gradient: a's storage
        pairs = {"a": (np.full((4, 3), 0.5 + step), a), "b": (alias, b),
                 "c": (np.ones((4, 3)) if with_c else None, c)}  # fmt: skip
        opt.apply_gradients([pairs[k] for k in order])
    return [v.numpy() for v in (a, b, c)]


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("with_c", [True, False], ids=["all", "one-none"])
@pytest.mark.parametrize("order", ["abc", "bac", "cba"])
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_aliased_gradient_reads_as_passed(name, order, with_c):
    make = MAKERS[name]
    expected = _run(make, order, copy=True, with_c=with_c)
    got = _run(make, order, copy=False, with_c=with_c)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_array_equal(g, e)
    if order != "abc":  # the order of the pairs changes nothing either
        for e, g in zip(_run(make, "abc", copy=True, with_c=with_c), got, strict=True):
            np.testing.assert_array_equal(g, e)
