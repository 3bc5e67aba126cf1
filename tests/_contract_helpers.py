"""Shared pieces of the contract and equivalence suites: the test quadratic, state snapshots,
and every kind of bad call an optimizer must reject without changing anything."""

from __future__ import annotations

import re

import numpy as np

from distopt import Variable
from distopt.comm import LocalCommunicator
from distopt.distribute import Strategy


# -- the test problem -------------------------------------------------------------------------
class Quadratic:
    """f(w) = 1/2 sum a * (w - t)**2 over a (4, 3) kernel and a (3,) bias."""

    shapes = {"kernel": (4, 3), "bias": (3,)}

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.a = {n: rng.uniform(0.5, 2.0, s) for n, s in self.shapes.items()}
        self.t = {n: rng.uniform(-1.0, 1.0, s) for n, s in self.shapes.items()}
        self.w0 = {n: rng.uniform(-1.0, 1.0, s) for n, s in self.shapes.items()}

    def variables(self, dtype="float64", **kwargs):
        return [Variable(self.w0[n], name=n, dtype=dtype, **kwargs) for n in self.shapes]

    def loss(self, variables):
        return sum(
            0.5 * float(np.sum(self.a[v.name] * (v.value.astype("float64") - self.t[v.name]) ** 2))
            for v in variables
        )

    def grads(self, variables, scale=1.0, dtype=None):
        out = []
        for v in variables:
            g = scale * self.a[v.name] * (v.value.astype("float64") - self.t[v.name])
            out.append(g.astype(dtype or v.dtype))
        return out


def loss_scale(opt) -> float:
    """The factor a user multiplies the loss by (`scale_loss`), so gradients are scaled too."""
    return float(np.asarray(opt.scale_loss(1.0)))


def step(opt, problem, variables, **kwargs):
    grads = problem.grads(variables, loss_scale(opt), **kwargs)
    return opt.apply_gradients(zip(grads, variables))


def snapshot(opt, variables) -> dict:
    """Bytes of every model variable and every optimizer variable, by position.

    Keys hold the last part of the path (without the optimizer names and scopes, which differ
    between twins and between building by `apply` or `build`); values are (dtype, bytes).
    Automatically named optimizer variables (Nadam's `u_product`) are keyed by position only,
    since their automatic names differ between instances.
    """
    state = {f"model:{v.path}": (v.dtype, v.value.tobytes()) for v in variables}
    for i, v in enumerate(opt.variables):
        tail = v.path.rsplit("/", 1)[-1]
        automatic = re.fullmatch(r"variable(_\d+)?", tail)
        state[f"opt[{i}]" if automatic else f"opt[{i}]:{tail}"] = (
            v.dtype,
            np.asarray(v.value).tobytes(),
        )
    return state


def assert_same_state(a: dict, b: dict):
    assert list(a) == list(b), "the two optimizers track different variables"
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"not bit-identical: {differ}"


def twin(entry, options, dtype="float64", seed=0):
    problem = Quadratic(seed)
    return problem, entry.make(**options), problem.variables(dtype)


def bad_calls(opt, v, g, strategy=None):
    """(kind, call, exception, regex[, needs_built]) for each kind of bad input.

    With `strategy`, each call runs inside `strategy.run` (where `apply_gradients` would
    aggregate), and the cross-replica kind is left out.
    """
    calls = _bad_calls(opt, v, g)
    if strategy is None:
        return calls
    return [
        (kind, (lambda c=call: strategy.run(c)), *rest)
        for kind, call, *rest in calls
        if kind != "cross_replica"
    ]


def _bad_calls(opt, v, g):
    local = Strategy(LocalCommunicator())

    def cross_replica():
        with local.scope():
            opt.apply_gradients(zip(g, v))

    other = Variable(np.zeros(3), name="stranger", dtype="float64")
    state = [np.asarray(x.value).copy() for x in opt.variables]
    wrong_state = state[:-1] + [np.zeros(np.shape(state[-1]) + (2,))]
    return [
        ("not_iterable", lambda: opt.apply_gradients(3), TypeError, "must be an iterable"),
        ("flat_pair", lambda: opt.apply_gradients([g[0], v[0]]), TypeError, "pairs"),
        (
            "not_a_variable",
            lambda: opt.apply_gradients([(g[0], v[0]), (g[1], v[1].numpy())]),
            TypeError,
            "not a `distopt.Variable`",
        ),
        (
            "string_gradient",
            lambda: opt.apply_gradients([(g[0], v[0]), ("abc", v[1])]),
            TypeError,
            "must be array-like",
        ),
        (
            "complex_gradient",
            lambda: opt.apply_gradients([(g[0], v[0]), (g[1] * 1j, v[1])]),
            TypeError,
            "real numeric",
        ),
        (
            "wrong_shape",
            lambda: opt.apply_gradients([(g[0], v[0]), (np.ones(4), v[1])]),
            ValueError,
            r"has shape \(4,\), but the variable has shape \(3,\)",
        ),
        (
            "all_none",
            lambda: opt.apply_gradients([(None, v[0]), (None, v[1])]),
            ValueError,
            "No gradients provided for any variable.",
        ),
        (
            "duplicate_variable",
            lambda: opt.apply_gradients([(g[0], v[0]), (g[0], v[0])]),
            ValueError,
            "appears more than once",
        ),
        ("empty", lambda: opt.apply_gradients([]), ValueError, "no gradient at all"),
        ("bad_keyword", lambda: opt.apply_gradients(zip(g, v), foo=1), TypeError, "foo"),
        ("cross_replica", cross_replica, RuntimeError, "cannot be called in cross-replica"),
        (
            "unknown_variable",
            lambda: opt.apply_gradients([(g[0], v[0]), (np.ones(3), other)]),
            ValueError,
            "Unknown variable",
            True,
        ),
        ("apply_count", lambda: opt.apply(g[:1]), ValueError, "one-to-on", True),
        (
            "set_weights_shape",
            lambda: opt.set_weights(wrong_state),
            ValueError,
            "not compatible with provided weight shape",
            True,
        ),
        (
            "load_shape",
            lambda: opt.load_own_variables({str(i): s for i, s in enumerate(wrong_state)}),
            ValueError,
            "not compatible with provided weight shape",
            True,
        ),
        (
            "stateless_count",
            lambda: opt.stateless_apply(state[:-1], g, [x.numpy() for x in v]),
            ValueError,
            "corresponding 1:1",
            True,
        ),
        (
            "stateless_bad_gradient",
            lambda: opt.stateless_apply(state, [g[0], np.ones(4)], [x.numpy() for x in v]),
            ValueError,
            "has shape",
            True,
        ),
    ]


BAD_KINDS = {
    "not_iterable", "flat_pair", "not_a_variable", "string_gradient", "complex_gradient",
    "wrong_shape", "all_none", "duplicate_variable", "empty", "bad_keyword", "cross_replica",
    "unknown_variable", "apply_count", "set_weights_shape", "load_shape", "stateless_count",
    "stateless_bad_gradient",
}  # fmt: skip
