"""Every optimizer's `variables`: paths, shapes, dtypes and order exactly as Keras 3.15's,
when built by `apply_gradients` (inside the optimizer's name scope) and by `build()`.
`save_own_variables` / `set_weights` follow this order, so a state saved by Keras loads into
the same slots."""

import inspect
import re

import numpy as np
import pytest
from _keras_subprocess import requires_keras, run_keras

import distopt
import distopt.optimizers

CONFIGS = [
    ("SGD", {}),
    ("SGD", {"momentum": 0.9}),
    ("RMSprop", {}),
    ("RMSprop", {"momentum": 0.5, "centered": True}),
    ("Adam", {}),
    ("Adam", {"amsgrad": True}),
    ("AdamW", {"amsgrad": True}),
    ("Adadelta", {}),
    ("Adagrad", {}),
    ("Adamax", {}),
    ("Adafactor", {}),
    ("Nadam", {}),
    ("Ftrl", {}),
    ("Lion", {}),
    ("Lamb", {}),
    ("Muon", {}),
    ("Muon", {"exclude_layers": ["kernel"]}),
    ("ScheduleFreeAdamW", {}),
    ("SGD", {"momentum": 0.5, "use_ema": True, "gradient_accumulation_steps": 2}),
    ("LossScaleOptimizer", {}),
]


def layout(module, Variable, cls, kwargs, via):
    if cls == "LossScaleOptimizer":
        opt = module.LossScaleOptimizer(module.Adam(name="inner"), name="opt")
    else:
        opt = getattr(module, cls)(name="opt", **kwargs)
    k = Variable(np.ones((2, 3), "float32"), name="kernel")
    b = Variable(np.ones(3, "float32"), name="bias")
    if via == "apply":
        opt.apply_gradients([(np.ones((2, 3), "float32"), k), (np.ones(3, "float32"), b)])
    else:
        opt.build([k, b])
    # Automatic names ("variable_<n>") depend on what the process created before.
    return [
        [re.sub(r"variable(_\d+)?$", "variable*", v.path), list(v.shape), str(v.dtype)]
        for v in opt.variables
    ]


def _ours(cls, kwargs, via):
    return layout(distopt.optimizers, distopt.Variable, cls, kwargs, via)


# Keras 3.15.1 (numpy backend), where distopt used to differ.
EXPECTED = {
    ("Adadelta", "apply"): [
        ["opt/iteration", [], "int32"],
        ["opt/learning_rate", [], "float32"],
        ["opt/kernel_accumulated_grad", [2, 3], "float32"],
        ["opt/kernel_accumulated_delta_var", [2, 3], "float32"],
        ["opt/bias_accumulated_grad", [3], "float32"],
        ["opt/bias_accumulated_delta_var", [3], "float32"],
    ],
    ("Adafactor", "apply"): [
        ["opt/iteration", [], "int32"],
        ["opt/learning_rate", [], "float32"],
        ["opt/kernel", [2], "float32"],
        ["opt/kernel", [3], "float32"],
        ["opt/kernel_velocity", [2, 3], "float32"],
        ["opt/bias", [], "int32"],
        ["opt/bias", [], "int32"],
        ["opt/bias_velocity", [3], "float32"],
    ],
    ("Adafactor", "build"): [
        ["opt/iteration", [], "int32"],
        ["opt/learning_rate", [], "float32"],
        ["opt/kernel", [2], "float32"],
        ["opt/kernel", [3], "float32"],
        ["opt/kernel_velocity", [2, 3], "float32"],
        ["bias", [], "int32"],
        ["bias", [], "int32"],
        ["opt/bias_velocity", [3], "float32"],
    ],
    ("Nadam", "apply"): [
        ["opt/iteration", [], "int32"],
        ["opt/learning_rate", [], "float32"],
        ["opt/kernel_momentum", [2, 3], "float32"],
        ["opt/kernel_velocity", [2, 3], "float32"],
        ["opt/bias_momentum", [3], "float32"],
        ["opt/bias_velocity", [3], "float32"],
        ["opt/variable*", [], "float32"],
    ],
    ("Nadam", "build"): [
        ["opt/iteration", [], "int32"],
        ["opt/learning_rate", [], "float32"],
        ["opt/kernel_momentum", [2, 3], "float32"],
        ["opt/kernel_velocity", [2, 3], "float32"],
        ["opt/bias_momentum", [3], "float32"],
        ["opt/bias_velocity", [3], "float32"],
        ["variable*", [], "float32"],
    ],
    ("LossScaleOptimizer", "apply"): [
        ["opt/iteration", [], "int32"],
        ["opt/learning_rate", [], "float32"],
        ["opt/step_counter", [], "int32"],
        ["opt/dynamic_scale", [], "float32"],
        ["inner/iteration", [], "int32"],
        ["inner/learning_rate", [], "float32"],
        ["opt/inner/kernel_momentum", [2, 3], "float32"],
        ["opt/inner/kernel_velocity", [2, 3], "float32"],
        ["opt/inner/bias_momentum", [3], "float32"],
        ["opt/inner/bias_velocity", [3], "float32"],
    ],
}


@pytest.mark.parametrize("key", list(EXPECTED), ids=[f"{c}-{v}" for c, v in EXPECTED])
def test_layout_as_keras(key):
    cls, via = key
    assert _ours(cls, {}, via) == EXPECTED[key]


def test_adadelta_state_saved_in_keras_order_loads_into_the_right_slots():
    kernel = distopt.Variable(np.ones((2, 3)), name="kernel", dtype="float64")
    opt = distopt.optimizers.Adadelta(learning_rate=1.0)
    opt.apply_gradients([(np.full((2, 3), 0.5), kernel)])
    store = {}
    opt.save_own_variables(store)
    # Keras's order: iteration, learning_rate, then per variable grad then delta.
    np.testing.assert_allclose(store["2"], 0.05 * 0.25)
    assert not np.allclose(store["3"], store["2"])


def test_name_scope_is_left_when_build_raises():
    from distopt.optimizers._slots import _stack

    class Failing(distopt.optimizers.SGD):
        def build(self, variables):
            super().build(variables)
            raise RuntimeError("build failed")

    with pytest.raises(RuntimeError, match="build failed"):
        Failing().apply_gradients([(np.ones(2), distopt.Variable(np.ones(2)))])
    assert _stack() == []
    opt = distopt.optimizers.Nadam(name="later")
    opt.build([distopt.Variable(np.ones(2))])
    assert not opt.variables[-1].path.startswith("sgd/")


KERAS_SCRIPT = """
import json, re, numpy as np, keras
{layout}
out = {{}}
for via in ("apply", "build"):
    out[via] = [layout(keras.optimizers, keras.Variable, c, k, via) for c, k in {configs!r}]
print(json.dumps(out))
"""


@requires_keras
def test_every_optimizer_as_real_keras():
    script = KERAS_SCRIPT.format(layout=inspect.getsource(layout), configs=CONFIGS)
    expected = run_keras(script, backend="numpy")
    for via in ("apply", "build"):
        for (cls, kwargs), keras_layout in zip(CONFIGS, expected[via]):
            assert _ours(cls, kwargs, via) == keras_layout, (cls, kwargs, via)
