"""The elementwise optimizers against textbook float64 formulas, and their Keras surface:
slot names and order, constructor validation (text, and no state change), config keys."""

from __future__ import annotations

import _elementwise_reference as ref
import numpy as np
import pytest

import distopt
from distopt import optimizers

LR = 0.0625  # exact in float32: the optimizer stores its learning rate as a float32 variable
SHAPES = [(3, 4), (5,), (2, 1, 3)]
STEPS = 7

# (class, reference, kwargs): every kernel variant and non-default hyperparameters.
PARITY = [
    (optimizers.SGD, ref.sgd, {}),
    (optimizers.SGD, ref.sgd, {"momentum": 0.9}),
    (optimizers.SGD, ref.sgd, {"momentum": 0.8, "nesterov": True}),
    (optimizers.Adam, ref.adam, {}),
    (optimizers.Adam, ref.adam, {"amsgrad": True, "beta_1": 0.8, "epsilon": 1e-3}),
    (optimizers.AdamW, ref.adam, {"weight_decay": 0.05}),
    (optimizers.RMSprop, ref.rmsprop, {}),
    (optimizers.RMSprop, ref.rmsprop, {"momentum": 0.5, "rho": 0.8}),
    (optimizers.RMSprop, ref.rmsprop, {"centered": True, "epsilon": 1e-3}),
    (optimizers.RMSprop, ref.rmsprop, {"centered": True, "momentum": 0.3}),
    (optimizers.Adadelta, ref.adadelta, {}),
    (optimizers.Adadelta, ref.adadelta, {"rho": 0.8, "epsilon": 1e-6}),
    (optimizers.Adagrad, ref.adagrad, {}),
    (optimizers.Adagrad, ref.adagrad, {"initial_accumulator_value": 0.3, "epsilon": 1e-4}),
    (optimizers.Adamax, ref.adamax, {}),
    (optimizers.Adamax, ref.adamax, {"beta_1": 0.85, "beta_2": 0.95}),
    (optimizers.Nadam, ref.nadam, {}),
    (optimizers.Nadam, ref.nadam, {"beta_1": 0.5, "beta_2": 0.67, "epsilon": 1e-5}),
    (optimizers.Ftrl, ref.ftrl, {}),
    (
        optimizers.Ftrl,
        ref.ftrl,
        {
            "learning_rate_power": -0.2,
            "initial_accumulator_value": 0.4,
            "l1_regularization_strength": 0.05,
            "l2_regularization_strength": 0.15,
            "l2_shrinkage_regularization_strength": 0.01,
            "beta": 0.3,
        },
    ),  # fmt: skip
    (optimizers.Lion, ref.lion, {}),
    (optimizers.Lion, ref.lion, {"beta_1": 0.7, "beta_2": 0.9}),
]
OPTIONS = [{}, {"weight_decay": 0.02}, {"clipnorm": 0.5}]


def _ids(params, kwargs_at=2):
    return [p[0].__name__ + "".join(f"-{k}={v}" for k, v in p[kwargs_at].items()) for p in params]


def _data(seed):
    rng = np.random.default_rng(seed)
    inits = [rng.standard_normal(s) for s in SHAPES]
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(STEPS)]
    return inits, grads


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "weight_decay", "clipnorm"])
@pytest.mark.parametrize(("cls", "reference", "kwargs"), PARITY, ids=_ids(PARITY))
def test_float64_matches_the_textbook_formula(cls, reference, kwargs, options):
    kwargs = {**kwargs, **options}
    inits, grads = _data(len(kwargs))
    variables = [distopt.Variable(x, dtype="float64") for x in inits]
    opt = cls(learning_rate=LR, **kwargs)
    for step in grads:
        opt.apply_gradients(zip(step, variables))
    for k, var in enumerate(variables):
        assert var.dtype == np.float64
        want = reference(inits[k], [step[k] for step in grads], LR, **kwargs)
        np.testing.assert_allclose(var.value, want, rtol=1e-12, atol=0, err_msg=f"var {k}")
    for slot in opt.variables[2:]:
        assert slot.dtype == np.float64, slot.path


# -- Keras surface ------------------------------------------------------------------------------
SLOTS = [
    (optimizers.RMSprop, {}, ["velocity"]),
    (optimizers.RMSprop, {"momentum": 0.5}, ["velocity", "momentum"]),
    (optimizers.AdamW, {"amsgrad": True}, [("momentum", "velocity"), "velocity_hat"]),
    (optimizers.Adadelta, {}, [("accumulated_grad", "accumulated_delta_var")]),
    (optimizers.Adagrad, {}, ["accumulator"]),
    (optimizers.Adamax, {}, [("momentum", "norm")]),
    (optimizers.Nadam, {}, [("momentum", "velocity")]),
    (optimizers.Ftrl, {}, [("accumulator", "linear")]),
    (optimizers.Lion, {}, ["momentum"]),
]


@pytest.mark.parametrize(("cls", "kwargs", "groups"), SLOTS, ids=_ids(SLOTS, 1))
def test_slot_names_and_order(cls, kwargs, groups):
    """Keras's order: one group per `add_optimizer_variables` call, interleaved per variable."""
    kernel = distopt.Variable(np.zeros((2, 3)), name="kernel")
    bias = distopt.Variable(np.zeros(3), name="bias")
    opt = cls(**kwargs)
    opt.build([kernel, bias])
    want = [f"{opt.name}/iteration", f"{opt.name}/learning_rate"]
    for group in groups:
        names = group if isinstance(group, tuple) else (group,)
        want += [f"{opt.name}/{v}_{n}" for v in ("kernel", "bias") for n in names]
    paths = [v.path for v in opt.variables]
    if cls is optimizers.Nadam:
        assert paths[-1].startswith("variable") and opt.variables[-1].shape == ()
        paths = paths[:-1]
    assert paths == want


def test_adagrad_and_ftrl_accumulators_start_at_the_initial_value():
    var = distopt.Variable(np.zeros(4))
    for opt in (optimizers.Adagrad(initial_accumulator_value=0.3),
                optimizers.Ftrl(initial_accumulator_value=0.3)):  # fmt: skip
        opt.build([var])
        np.testing.assert_array_equal(opt._accumulators[0].value, np.float32(0.3))


def test_nadam_u_product_has_the_first_variable_dtype_and_tracks_steps():
    var = distopt.Variable(np.ones(2), dtype="float64")
    opt = optimizers.Nadam(beta_1=0.5)
    for _ in range(3):
        opt.apply_gradients([(np.ones(2), var)])
    u_product = opt.variables[-1]
    assert u_product.dtype == np.float64
    want = np.prod([0.5 * (1 - 0.5 * 0.96**t) for t in (1, 2, 3)])
    np.testing.assert_allclose(u_product.value, want, rtol=1e-15)


def test_adamw_defaults_to_weight_decay_and_rejects_none():
    assert optimizers.AdamW().weight_decay == 0.004
    with pytest.raises(ValueError, match="^Argument `weight_decay` must be a float. Received: "
                       "weight_decay=None$"):  # fmt: skip
        optimizers.AdamW(weight_decay=None)


BAD_ARGUMENTS = [
    (optimizers.RMSprop, {"rho": 1.5}, "Argument `rho` must be a float in [0, 1]. "
     "Received: rho=1.5"),
    (optimizers.RMSprop, {"momentum": -0.1}, "Argument `momentum` must be a float in [0, 1]. "
     "Received: momentum=-0.1"),
    (optimizers.RMSprop, {"epsilon": "small"}, "Argument `epsilon` must be a float. "
     "Received: epsilon='small'"),
    (optimizers.Adadelta, {"rho": -1.0}, "Argument `rho` must be a float in [0, 1]. "
     "Received: rho=-1.0"),
    (optimizers.Adagrad, {"epsilon": -1e-7}, "Argument `epsilon` must be a float >= 0. "
     "Received: epsilon=-1e-07"),
    (optimizers.Adamax, {"beta_2": 2.0}, "Argument `beta_2` must be a float in [0, 1]. "
     "Received: beta_2=2.0"),
    (optimizers.Nadam, {"beta_1": True}, "Argument `beta_1` must be a float. "
     "Received: beta_1=True"),
    (optimizers.Lion, {"beta_2": 1.5}, "Argument `beta_2` must be a float in [0, 1]. "
     "Received: beta_2=1.5"),
    (optimizers.Lion, {"beta_1": None}, "Argument `beta_1` must be a float. Received: beta_1=None"),
    (optimizers.Ftrl, {"beta": "x"}, "Argument `beta` must be a float. Received: beta='x'"),
    (optimizers.AdamW, {"weight_decay": "x"}, "Argument `weight_decay` must be a float. "
     "Received: weight_decay='x'"),
]  # fmt: skip


@pytest.mark.parametrize(("cls", "kwargs", "text"), BAD_ARGUMENTS, ids=_ids(BAD_ARGUMENTS, 1))
def test_bad_hyperparameters_raise_before_anything_is_created(cls, kwargs, text):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert str(info.value) == text
    # No state changed: the failed constructor did not consume the automatic name.
    assert cls().name == distopt._naming.to_snake_case(cls.__name__)


CONFIG_KEYS = {
    optimizers.RMSprop: ["rho", "momentum", "epsilon", "centered"],
    optimizers.AdamW: ["beta_1", "beta_2", "epsilon", "amsgrad"],
    optimizers.Adadelta: ["rho", "epsilon"],
    optimizers.Adagrad: ["initial_accumulator_value", "epsilon"],
    optimizers.Adamax: ["beta_1", "beta_2", "epsilon"],
    optimizers.Nadam: ["beta_1", "beta_2", "epsilon"],
    optimizers.Ftrl: [
        "learning_rate_power",
        "initial_accumulator_value",
        "l1_regularization_strength",
        "l2_regularization_strength",
        "l2_shrinkage_regularization_strength",
        "beta",
    ],  # fmt: skip
    optimizers.Lion: ["beta_1", "beta_2"],
}
BASE_KEYS = [
    "name", "learning_rate", "weight_decay", "clipnorm", "global_clipnorm", "clipvalue", "use_ema",
    "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps",
]  # fmt: skip


@pytest.mark.parametrize("cls", list(CONFIG_KEYS), ids=lambda c: c.__name__)
def test_config_keys_and_round_trip(cls):
    opt = cls(learning_rate=0.25, name="custom")
    config = opt.get_config()
    assert list(config) == BASE_KEYS + CONFIG_KEYS[cls]
    again = optimizers.deserialize(optimizers.serialize(opt))
    assert type(again) is cls and again.get_config() == config
    assert type(optimizers.get(cls.__name__.upper())) is cls
