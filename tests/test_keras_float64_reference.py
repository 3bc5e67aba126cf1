"""Every optimizer against REAL Keras 3.15 in float64 (JAX backend with x64), 40 steps, 1e-12
relative, model variables and every optimizer variable (by position).

Keras keeps its learning rate a float32 variable, so this also checks that distopt rounds
where Keras rounds (Muon's `learning_rate * adam_lr_ratio` drifted by 1.6e-8 before).
LossScaleOptimizer is not here: Keras's JAX backend cannot run its `apply` eagerly (its
`lax.cond` branches assign variables); its inner optimizers are.

Keras's float64 maths is taken as its TensorFlow backend does it: on the JAX (and numpy and
torch) backends Keras's dtype promotion narrows float64 results to float32 (to match JAX's
default 32-bit mode), so e.g. `ops.norm` in Muon and `ops.mean` in Adafactor round a float64
tensor to float32. The reference script turns that narrowing off, as TensorFlow has it.
"""

import inspect

import numpy as np
import pytest
from _keras_subprocess import requires_keras, run_keras

import distopt
import distopt.optimizers

STEPS = 40
RTOL = 1e-12

CONFIGS = [
    ("SGD", {"learning_rate": 0.05}),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}),
    ("RMSprop", {"learning_rate": 0.01}),
    ("RMSprop", {"learning_rate": 0.01, "momentum": 0.5, "centered": True}),
    ("Adam", {"learning_rate": 0.01}),
    ("Adam", {"learning_rate": 0.01, "amsgrad": True, "clipnorm": 0.5}),
    ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.1}),
    ("Adadelta", {"learning_rate": 1.0}),
    ("Adagrad", {"learning_rate": 0.1}),
    ("Adamax", {"learning_rate": 0.01}),
    ("Adafactor", {"learning_rate": 0.01}),
    ("Adafactor", {"learning_rate": 0.5, "relative_step": False, "clip_threshold": 0.5}),
    ("Nadam", {"learning_rate": 0.01}),
    ("Ftrl", {"learning_rate": 0.1, "l1_regularization_strength": 0.001, "beta": 0.1}),
    ("Ftrl", {"learning_rate": 0.1, "l2_shrinkage_regularization_strength": 0.01}),
    ("Lion", {"learning_rate": 0.001}),
    ("Lamb", {"learning_rate": 0.01}),
    ("Muon", {"learning_rate": 0.01, "adam_lr_ratio": 0.3}),
    ("Muon", {"learning_rate": 0.02, "nesterov": False, "rms_rate": None, "weight_decay": 0.1}),
    ("ScheduleFreeAdamW", {"learning_rate": 0.01, "warmup_steps": 5}),
    # A schedule of arithmetic only: float32 `cos` / `exp` differ in the last bit between
    # JAX's and numpy's maths libraries (schedules match Keras's numpy-backend goldens).
    ("Adam", {"schedule": 0.01, "global_clipnorm": 1.0}),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.5, "use_ema": True, "ema_momentum": 0.9}),
    ("Adam", {"learning_rate": 0.01, "gradient_accumulation_steps": 3}),
]


def run(module, Variable, cls, kwargs, steps):
    """Trains a kernel (4, 3) and a bias (3,) in float64; returns the final model values
    and every optimizer variable's value, as lists."""
    kwargs = dict(kwargs)
    if "schedule" in kwargs:
        # float32, as Keras computes a schedule of a Python float (JAX's x64 mode would
        # make the Python float a float64 tensor).
        initial = np.float32(kwargs.pop("schedule"))
        kwargs["learning_rate"] = module.schedules.InverseTimeDecay(initial, 5, 0.5)
    optimizer = getattr(module, cls)(**kwargs)
    rng = np.random.default_rng(7)
    kernel = Variable(rng.normal(size=(4, 3)), dtype="float64", name="kernel")
    bias = Variable(rng.normal(size=3), dtype="float64", name="bias")
    for _ in range(steps):
        grads = [rng.normal(size=(4, 3)), rng.normal(size=3)]
        optimizer.apply_gradients(zip(grads, [kernel, bias]))
    model = [np.asarray(kernel.value).tolist(), np.asarray(bias.value).tolist()]
    state = [np.asarray(v.value, dtype="float64").tolist() for v in optimizer.variables]
    return model, state


KERAS_SCRIPT = """
import json, jax, numpy as np, keras
from keras.src.backend.common import dtypes
assert jax.config.jax_enable_x64
dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
{run}
print(json.dumps([run(keras.optimizers, keras.Variable, c, k, {steps}) for c, k in {configs!r}]))
"""


@pytest.fixture(scope="module")
def keras_results():
    script = KERAS_SCRIPT.format(run=inspect.getsource(run), configs=CONFIGS, steps=STEPS)
    return run_keras(script, backend="jax", x64=True, timeout=900)


@requires_keras
@pytest.mark.timeout(900)
@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[f"{c}-{k}" for c, k in CONFIGS])
def test_matches_real_keras_in_float64(keras_results, index):
    cls, kwargs = CONFIGS[index]
    model, state = run(distopt.optimizers, distopt.Variable, cls, kwargs, STEPS)
    keras_model, keras_state = keras_results[index]
    for ours, theirs in zip(model, keras_model):
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=0)
    assert len(state) == len(keras_state)
    for i, (ours, theirs) in enumerate(zip(state, keras_state)):
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=0, err_msg=f"variables[{i}]")
