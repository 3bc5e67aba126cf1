"""Interpreter for tests/data/keras_goldens.json (its `conventions` block is the contract).

Builds optimizers, variables and gradients from a case and runs a scenario script, checking
each `expected[i]` right after `script[i]`. Used by tests/test_goldens.py; the per-optimizer
test modules take `CASES` and `array` from here too.
"""

from __future__ import annotations

import builtins
import contextlib
import fnmatch
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import distopt
from distopt import optimizers
from distopt.optimizers import schedules

GOLDENS = json.loads((Path(__file__).parent / "data" / "keras_goldens.json").read_text())
CASES = GOLDENS["cases"]
_SPECIAL = {"inf": np.inf, "-inf": -np.inf, "nan": np.nan}


def array(value, dtype="float32") -> np.ndarray:
    """JSON numbers (with 'inf' / 'nan' strings) as an array of `dtype`."""

    def conv(x):
        if isinstance(x, list):
            return [conv(y) for y in x]
        return _SPECIAL.get(x, x) if isinstance(x, str) else x

    return np.asarray(conv(value), dtype=dtype)


def close(actual, expected, rtol, atol, what=""):
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), array(expected, "float64"),
        rtol=rtol or 0.0, atol=atol or 0.0, err_msg=what,
    )  # fmt: skip


def learning_rate(spec):
    """A kwargs.learning_rate: float, schedule dict or {'callable': 'constant', 'value': v}."""
    if isinstance(spec, dict) and "callable" in spec:
        value = spec["value"]
        return lambda: value
    if isinstance(spec, dict):
        return schedules.deserialize(spec)
    return spec


def optimizer_class(name: str):
    if hasattr(optimizers, name):
        return getattr(optimizers, name)
    # Lower-case identifiers ('adam') are resolved as `optimizers.get` does.
    return type(optimizers.get(name))


def make_optimizer(name: str, kwargs: dict):
    kwargs = dict(kwargs)
    if "learning_rate" in kwargs:
        kwargs["learning_rate"] = learning_rate(kwargs["learning_rate"])
    if isinstance(kwargs.get("inner_optimizer"), dict):
        kwargs["inner_optimizer"] = optimizers.deserialize(kwargs["inner_optimizer"])
    return optimizer_class(name)(**kwargs)


def _non_neg(x):
    # keras.constraints.NonNeg: w * (w >= 0).
    return x * (x >= 0).astype(x.dtype)


CONSTRAINTS = {"NonNeg": _non_neg}


def make_variable(key: str, spec: dict) -> distopt.Variable:
    init = spec["init"] if "init" in spec else np.zeros(spec["shape"], "float32")
    return distopt.Variable(
        np.asarray(init, dtype="float32"),
        name=spec.get("name", key),
        constraint=CONSTRAINTS[spec["constraint"]] if "constraint" in spec else None,
        overwrite_with_gradient=spec.get("overwrite_with_gradient", False),
    )


def _slot(opt, attr, var):
    return getattr(opt, attr)[opt._trainable_variables_indices[id(var)]].value


class Scenario:
    """One replica's run of a `scenario` case (variables, optimizers, grads, script)."""

    def __init__(self, case, replica=0, aggregate=True):
        self.case = case
        self.replica = replica
        self.aggregate = aggregate
        self.vars = {k: make_variable(k, s) for k, s in case["variables"].items()}
        self.initial = {k: v.numpy() for k, v in self.vars.items()}
        self.opts = {
            k: make_optimizer(s["class"], s["kwargs"]) for k, s in case["optimizers"].items()
        }
        self.snapshots: dict[str, np.ndarray] = {}
        self.returned = None

    def grad(self, name):
        if name is None:
            return None
        spec = self.case["grads"][name]
        if isinstance(spec, dict):
            spec = spec["per_replica"][self.replica]
        return array(spec, self.case.get("grads_dtype", "float32"))

    def act(self, action, run=lambda fn: fn()):
        """Performs one script action; `run` wraps the calls that aggregate (strategy.run)."""
        op, opt = action["op"], self.opts.get(action.get("optimizer"))
        var_list = [self.vars[k] for k in action.get("vars", [])]
        if op == "apply_gradients":
            pairs = [(self.grad(g), self.vars[v]) for g, v in action["pairs"]]
            skip = not self.aggregate
            self.returned = run(lambda: opt.apply_gradients(pairs, skip_gradients_aggregation=skip))
        elif op == "apply":
            grads = [self.grad(g) for g in action["grads"]]
            run(lambda: opt.apply(grads, var_list or None))
        elif op == "build":
            opt.build(var_list)
        elif op == "exclude_from_weight_decay":
            ids = [self.vars[k] for k in action.get("var_ids", [])]
            opt.exclude_from_weight_decay(var_list=ids or None, var_names=action.get("var_names"))
        elif op == "finalize_variable_values":
            opt.finalize_variable_values(var_list)
        elif op == "apply_weight_decay":
            opt.build(var_list)
            opt._apply_weight_decay(var_list, opt._learning_rate_value())
        elif op == "set_learning_rate":
            value = json.loads(
                json.dumps(action["value"]).replace(
                    '"<current learning_rate>"', repr(float(opt._learning_rate_value()))
                )
            )
            opt.learning_rate = learning_rate(value)
        elif op != "check":
            raise AssertionError(f"unknown script op {op!r}")

    def run_script(self, run=lambda fn: fn(), expected=None):
        case = self.case
        expected = case["expected"] if expected is None else expected
        observed = case.get("expected_observed") or [{}] * len(expected)
        for i, action in enumerate(case["script"]):
            exp = expected[i] if i < len(expected) else {}
            with _raising(exp):
                self.act(action, run)
            self.check(exp, action, case["rtol"], case["atol"])
            if i < len(observed) and observed[i]:
                self.check(observed[i], action, case["rtol"], case["atol"])
        # Checks listed after the last action (e.g. the 5th entry of a 4-action script).
        for exp in expected[len(case["script"]) :]:
            self.check(exp, case["script"][-1], case["rtol"], case["atol"])

    def check(self, exp, action, rtol, atol):
        tol = exp.get("tol", {})
        rtol, atol = tol.get("rtol", rtol), tol.get("atol", atol)
        opt = self.opts.get(exp.get("optimizer", action.get("optimizer")))
        for name, var in exp.get("snapshot", {}).items():
            self.snapshots[name] = self.vars[var].numpy()
        for k, value in exp.get("vars", {}).items():
            close(self.vars[k].value, value, rtol, atol, f"variable {k}")
        by_replica = exp.get("vars_by_replica", {})
        for k, value in by_replica.get("all", by_replica.get(str(self.replica), {})).items():
            close(self.vars[k].value, value, rtol, atol, f"variable {k} on replica {self.replica}")
        for k, value in exp.get("ema", {}).items():
            close(_slot(opt, "_model_variables_moving_average", self.vars[k]), value, rtol, atol)
        for k, value in exp.get("accumulators", {}).items():
            close(_slot(opt, "_accumulated_gradients", self.vars[k]), value, rtol, atol)
        for k, terms in exp.get("vars_relation", {}).items():
            combo = sum(c * self.snapshots[s] for c, s in terms)
            close(self.vars[k].value, combo, rtol, atol, f"relation of {k}")
        for k, terms in exp.get("ema_relation", {}).items():
            combo = sum(c * self.snapshots[s] for c, s in terms)
            close(_slot(opt, "_model_variables_moving_average", self.vars[k]), combo, rtol, atol)
        if "_iterations" in exp:
            assert int(opt._iterations.value) == exp["_iterations"]
        if "iterations" in exp:
            assert int(np.asarray(opt.iterations)) == exp["iterations"]
        if "returns" in exp:
            assert int(np.asarray(self.returned)) == exp["returns"]
        if "num_variables" in exp:
            assert len(opt.variables) == exp["num_variables"]
        if "scale_loss" in exp:
            s = exp["scale_loss"]
            close(opt.scale_loss(s["input"]), s["output"], rtol, atol, "scale_loss")
        for k, low in exp.get("min_var", {}).items():
            assert np.min(self.vars[k].value) >= low
        for a, b in exp.get("abs_change_less", []):
            change_a = np.abs(self.vars[a].value - self.initial[a])
            change_b = np.abs(self.vars[b].value - self.initial[b])
            assert np.all(change_a < change_b), (change_a, change_b)


@contextlib.contextmanager
def _raising(exp):
    """pytest.raises / pytest.warns for an expected entry's 'raises' / 'warns' keys."""
    if "raises" in exp:
        with pytest.raises(_exception(exp["raises"]["type"]), match=exp["raises"]["regex"]):
            yield
    elif "warns" in exp:
        with pytest.warns(_exception(exp["warns"]["type"]), match=exp["warns"]["regex"]):
            yield
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an unexpected warning is a failure
            yield


def _exception(name: str) -> type:
    return getattr(builtins, name)


def layout_matches(pattern: str, path: str, name: str) -> bool:
    return fnmatch.fnmatchcase(path, pattern.replace("{name}", name))


def dense_mse_fit(case):
    """Keras's `model.fit` on Dense + MSE, replaced by the explicit loop the case describes."""
    model, x, y = case["model"], array(case["x"]), array(case["y"])
    kernel = distopt.Variable(np.ones((x.shape[1], model["units"]), "float32"), name="kernel")
    params = [kernel]
    if model.get("use_bias"):
        params.append(distopt.Variable(np.ones(model["units"], "float32"), name="bias"))
    opt = make_optimizer(case["optimizer"], case["kwargs"])
    before = (len(opt.variables), int(np.asarray(opt.iterations)))
    history, bs = [], case["batch_size"]
    for _ in range(case["epochs"]):
        losses = []
        for start in range(0, len(x), bs):
            xb, yb = x[start : start + bs], y[start : start + bs]
            pred = xb @ kernel.value + (params[1].value if len(params) > 1 else 0)
            err = pred - yb
            losses.append(np.mean(err * err))
            dpred = np.float32(2) * err / np.float32(err.size)
            grads = [xb.T @ dpred] + ([dpred.sum(axis=0)] if len(params) > 1 else [])
            opt.apply_gradients(zip(grads, params, strict=True))
        history.append(np.mean(np.asarray(losses, dtype="float32")))
    if opt.use_ema:
        opt.finalize_variable_values(params)
    return opt, kernel, before, history


def match(regex: str, text: str) -> bool:
    return re.search(regex, text) is not None
