"""Adafactor, Lamb, Muon and ScheduleFreeAdamW: float64 parity with textbook implementations,
Keras goldens, layouts, errors, dtypes, serialization and state round trips."""

from __future__ import annotations

import re

import _pertensor_reference as ref
import numpy as np
import pytest
from _goldens import CASES, array

import distopt
from distopt import optimizers
from distopt.optimizers import Adafactor, Lamb, Muon, ScheduleFreeAdamW

RTOL = 1e-12
MINE = re.compile(
    r"^(adafactor|lamb|muon|schedule_free_adamw)\.|^observed\.variables_layout\.(adafactor|muon)$"
    r"|^optimizer\.gradient_accumulation_with_weigth_decay\.adafactor$"
)


def _variables(values, dtype="float64", names=None):
    names = names or [None] * len(values)
    return [distopt.Variable(v, name=n, dtype=dtype) for v, n in zip(values, names, strict=True)]


def _train(opt, values, grads_per_step, dtype="float64", names=None):
    variables = _variables(values, dtype, names)
    for grads in grads_per_step:
        opt.apply_gradients(zip(grads, variables, strict=True))
    return variables


def _random_problem(rng, shapes, steps):
    values = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    return values, grads


def _per_variable(grads, k):
    return [step[k] for step in grads]


def _lr(kwargs, default):
    """The learning rate a Keras optimizer uses: a float is stored in a float32 variable."""
    return float(np.float32(kwargs.get("learning_rate", default)))


def _ref_kwargs(kwargs, default_lr, drop=()):
    out = {k: v for k, v in kwargs.items() if k not in drop}
    out["lr"] = _lr(kwargs, default_lr)
    out.pop("learning_rate", None)
    return out


# -- parity with the textbook implementations (float64, rtol 1e-12) ------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"learning_rate": 0.5, "weight_decay": 0.01},
        {
            "learning_rate": 0.05,
            "beta_2_decay": -0.65,
            "epsilon_1": 1e-15,
            "epsilon_2": 1e-4,
            "clip_threshold": 0.9,
            "relative_step": False,
        },
    ],
)
def test_adafactor_matches_reference(kwargs):
    rng = np.random.default_rng(1)
    shapes = [(), (5,), (4, 3), (2, 3, 4)]
    values, grads = _random_problem(rng, shapes, steps=6)
    variables = _train(Adafactor(**kwargs), values, grads)
    ref_kwargs = _ref_kwargs(kwargs, 0.001, drop=("relative_step",))
    for k, var in enumerate(variables):
        expected = ref.adafactor(values[k], _per_variable(grads, k), **ref_kwargs)
        np.testing.assert_allclose(var.value, expected, rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    "kwargs", [{}, {"learning_rate": 0.1, "beta_1": 0.8, "weight_decay": 0.05}]
)
def test_lamb_matches_reference(kwargs):
    rng = np.random.default_rng(2)
    shapes = [(), (6,), (3, 4)]
    values, grads = _random_problem(rng, shapes, steps=6)
    values.append(np.zeros(3))  # zero weight norm: trust ratio 1
    for step in grads:
        step.append(rng.standard_normal(3))
    variables = _train(Lamb(**kwargs), values, grads)
    for k, var in enumerate(variables):
        expected = ref.lamb(values[k], _per_variable(grads, k), **_ref_kwargs(kwargs, 0.001))
        np.testing.assert_allclose(var.value, expected, rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {
            "learning_rate": 0.02,
            "nesterov": False,
            "rms_rate": None,
            "adam_lr_ratio": 0.5,
            "weight_decay": 0.1,
            "adam_weight_decay": None,
            "momentum": 0.9,
            "ns_steps": 3,
        },
        {"learning_rate": 0.01, "exclude_embeddings": False, "weight_decay": None},
    ],
)
def test_muon_matches_reference(kwargs):
    rng = np.random.default_rng(3)
    names = ["dense_kernel", "dense_bias", "tall_kernel", "token_embedding", "head_kernel", "scale"]
    shapes = [(3, 5), (5,), (6, 2), (7, 3), (4, 2), ()]
    values, grads = _random_problem(rng, shapes, steps=5)
    opt = Muon(exclude_layers=["^head"], **kwargs)
    variables = _train(opt, values, grads, names=names)
    lr = _lr(kwargs, 0.001)
    adam_kwargs = {
        "lr": lr,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "weight_decay": kwargs.get("adam_weight_decay", 0.004),
        "lr_ratio": kwargs.get("adam_lr_ratio", 1),
    }
    muon_kwargs = {
        "lr": lr,
        "momentum": kwargs.get("momentum", 0.95),
        "nesterov": kwargs.get("nesterov", True),
        "ns_steps": kwargs.get("ns_steps", 5),
        "rms_rate": kwargs.get("rms_rate", 0.2),
        "weight_decay": kwargs.get("weight_decay", 0.004),
    }
    embeddings_to_adam = kwargs.get("exclude_embeddings", True)
    for k, (name, var) in enumerate(zip(names, variables, strict=True)):
        adam_path = (
            var.ndim != 2 or name == "head_kernel" or (embeddings_to_adam and "embedding" in name)
        )
        if adam_path:
            expected = ref.adam(values[k], _per_variable(grads, k), **adam_kwargs)
        else:
            expected = ref.muon_matrix(values[k], _per_variable(grads, k), **muon_kwargs)
        np.testing.assert_allclose(var.value, expected, rtol=RTOL, atol=0, err_msg=name)


def test_newton_schulz_matches_reference_on_batches_and_tall_matrices():
    rng = np.random.default_rng(4)
    opt = Muon()
    for shape in [(3, 7), (7, 3), (4, 4)]:
        x = rng.standard_normal(shape)
        got = opt.zeropower_via_newtonschulz5(x, 5)
        np.testing.assert_allclose(got, ref.newton_schulz(x, 5), rtol=RTOL, atol=1e-15)
        assert got.dtype == np.float64
    batch = rng.standard_normal((2, 5, 3))
    got = opt.zeropower_via_newtonschulz5(batch, 4)
    for b in range(2):
        np.testing.assert_allclose(got[b], ref.newton_schulz(batch[b], 4), rtol=RTOL, atol=1e-15)
    assert opt.zeropower_via_newtonschulz5(batch.astype(np.float32), 4).dtype == np.float32


@pytest.mark.parametrize("kwargs", [{}, {"learning_rate": 0.3, "beta_1": 0.7, "warmup_steps": 3}])
def test_schedule_free_adamw_matches_reference(kwargs):
    rng = np.random.default_rng(5)
    shapes = [(), (4,), (3, 2)]
    values, grads = _random_problem(rng, shapes, steps=7)
    variables = _train(ScheduleFreeAdamW(**kwargs), values, grads)
    for k, var in enumerate(variables):
        expected = ref.schedule_free_adamw(
            values[k], _per_variable(grads, k), **_ref_kwargs(kwargs, 0.0025)
        )
        np.testing.assert_allclose(var.value, expected, rtol=RTOL, atol=1e-15)


def test_schedule_free_adamw_weight_decay_acts_through_the_recovered_average():
    # Keras decays y before the step; x is then recovered from the decayed y (spec §3.14).
    opt = ScheduleFreeAdamW(learning_rate=0.1, weight_decay=0.5)
    w0, g1, g2 = np.array([1.0, -2.0]), np.array([0.3, 0.1]), np.array([-0.2, 0.4])
    (var,) = _train(opt, [w0], [[g1], [g2]])
    beta_1, beta_2, eps, lr = 0.9, 0.999, 1e-8, float(np.float32(0.1))
    z = w0 - lr * g1 / (np.abs(g1) + eps)  # step 1: v/(1-beta_2) = g1**2, and y = z
    v = (1 - beta_2) * g1**2
    y = z - z * 0.5 * lr
    v = beta_2 * v + (1 - beta_2) * g2**2
    z_new = z - lr * g2 / (np.sqrt(v / (1 - beta_2**2)) + eps)
    x_old = (y - (1 - beta_1) * z) / beta_1
    expected = (1 - beta_1) * z_new + beta_1 * (0.5 * x_old + 0.5 * z_new)
    np.testing.assert_allclose(var.value, expected, rtol=RTOL)


# -- Keras goldens --------------------------------------------------------------------------------
def _goldens():
    return [c for c in CASES if MINE.search(c["id"])]


def _make(spec):
    kwargs = dict(spec["kwargs"])
    return getattr(optimizers, spec["class"])(**kwargs)


def _close(actual, expected, case, tol=None):
    tol = tol or {}
    rtol, atol = tol.get("rtol", case["rtol"]), tol.get("atol", case["atol"])
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), array(expected, "float64"), rtol=rtol, atol=atol
    )


def _run_update(case):
    opt = getattr(optimizers, case["optimizer"])(**case["kwargs"])
    var = distopt.Variable(np.asarray(case["var_init"], np.float32), name=case.get("var_name"))
    values = []
    if case.get("call") == "update_step":
        opt.build([var])
    for g in case["grads"]:
        g = np.asarray(g, np.float32)  # Keras casts to the variable dtype first
        if case.get("call") == "update_step":
            opt.update_step(g, var, case["update_step_learning_rate"])
        else:
            opt.apply_gradients([(g, var)])
        values.append(var.numpy())
    _close(values if case["expected_is_per_step"] else values[-1], case["expected"], case)


def _run_scenario(case):
    variables = {
        k: distopt.Variable(array(s["init"]), name=s.get("name"))
        for k, s in case["variables"].items()
    }
    opts = {k: _make(s) for k, s in case["optimizers"].items()}
    grads = {k: array(g) for k, g in case["grads"].items()}
    for action, expected in zip(case["script"], case["expected"], strict=True):
        opt = opts[action["optimizer"]]
        op = action["op"]
        if op == "apply_gradients":
            opt.apply_gradients([(grads[g], variables[v]) for g, v in action["pairs"]])
        elif op == "exclude_from_weight_decay":
            opt.exclude_from_weight_decay(
                var_list=[variables[v] for v in action.get("var_ids", [])],
                var_names=action.get("var_names"),
            )
        elif op == "apply_weight_decay":
            opt._apply_weight_decay([variables[v] for v in action["vars"]])
        else:
            raise AssertionError(f"unexpected action {op}")
        for name, value in expected.get("vars", {}).items():
            _close(variables[name].value, value, case, expected.get("tol"))
        for a, b in expected.get("abs_change_less", []):
            init = case["variables"]
            change_a = np.abs(variables[a].value - np.asarray(init[a]["init"]))
            change_b = np.abs(variables[b].value - np.asarray(init[b]["init"]))
            assert np.all(change_a < change_b)


def _run_function(case):
    opt = getattr(optimizers, case["optimizer"])(**case["kwargs"])
    args = case["args"]
    if case["function"] == "lr_adjust":
        out = opt.lr_adjust(np.asarray(args["x"], np.float32))
    else:
        out = opt.zeropower_via_newtonschulz5(np.asarray(args["x"], np.float32), args["steps"])
    _close(out, case["expected"], case)


def _run_layout(case):
    shapes = {k: s["shape"] for k, s in case["variables"].items()}
    variables = [distopt.Variable(np.zeros(s), name=k) for k, s in shapes.items()]
    opt = getattr(optimizers, case["optimizer"])(**case["kwargs"])
    opt.build(variables)
    got = [(v.path, list(v.shape), v.dtype.name) for v in opt.variables]
    expected = [(p.replace("{name}", opt.name), s, d) for p, s, d in case["expected"]]
    assert got == expected


def _run_accumulation(case):
    n = case["gradient_accumulation_steps"]
    config = {"class_name": case["optimizer"], "config": case["kwargs"]}
    plain = optimizers.get(config)
    accumulating = optimizers.get(
        {**config, "config": {**case["kwargs"], "gradient_accumulation_steps": n}}
    )
    var1 = distopt.Variable(np.asarray(case["var_init"], np.float32))
    var3 = distopt.Variable(np.asarray(case["var_init"], np.float32))
    for epoch in case["grads"]:
        micro = [np.asarray(g, np.float32) for g in epoch]
        plain.apply_gradients([(np.mean(micro, axis=0), var1)])
        for g in micro:
            accumulating.apply_gradients([(g, var3)])
    np.testing.assert_allclose(var1.value, var3.value, rtol=case["rtol"], atol=case["atol"])
    np.testing.assert_allclose(
        var3.value, case["expected"], rtol=case["expected_rtol"], atol=case["expected_atol"]
    )


_RUNNERS = {
    "update": _run_update,
    "scenario": _run_scenario,
    "function": _run_function,
    "variables_layout": _run_layout,
    "accumulation_equivalence": _run_accumulation,
}


def test_goldens_cover_every_case_of_these_optimizers():
    kinds = {c["kind"] for c in _goldens()}
    assert len(_goldens()) == 26 and kinds <= set(_RUNNERS)


@pytest.mark.parametrize("case", _goldens(), ids=lambda c: c["id"])
def test_golden(case):
    _RUNNERS[case["kind"]](case)


# -- layout, dtypes, errors -----------------------------------------------------------------------
def test_adafactor_layout_with_overwrite_variables():
    kernel = distopt.Variable(np.ones((2, 3)), name="kernel")
    scale = distopt.Variable(np.ones((2, 2)), name="scale", overwrite_with_gradient=True)
    amax = distopt.Variable(np.ones(4), name="amax", overwrite_with_gradient=True)
    opt = Adafactor(name="af")
    opt.build([kernel, scale, amax])
    got = [(v.path, v.shape, v.dtype.name) for v in opt.variables]
    assert got == [
        ("af/iteration", (), "int32"),
        ("af/learning_rate", (), "float32"),
        ("af/kernel", (2,), "float32"),
        ("af/kernel", (3,), "float32"),
        ("af/kernel_velocity", (2, 3), "float32"),
        ("amax", (), "int32"),
        ("amax", (), "int32"),
    ]
    opt.apply_gradients([(np.ones((2, 3)), kernel), (np.full((2, 2), 7.0), scale)])
    np.testing.assert_array_equal(scale.value, np.full((2, 2), 7.0))


def test_muon_routing_and_layout_follow_paths():
    names = ["dense_kernel", "word_embedding", "out_kernel", "conv_kernel"]
    shapes = [(3, 2), (4, 2), (2, 2), (2, 2, 3)]
    variables = [distopt.Variable(np.zeros(s), name=n) for n, s in zip(names, shapes, strict=True)]
    opt = Muon(exclude_layers=["out_"], name="mu")
    opt.build(variables)
    assert [opt._should_use_adamw(v) for v in variables] == [False, True, True, True]
    assert [v.path for v in opt.variables[2:]] == [
        "mu/dense_kernel_momentum",
        "mu/word_embedding_momentum",
        "mu/word_embedding_velocity",
        "mu/out_kernel_momentum",
        "mu/out_kernel_velocity",
        "mu/conv_kernel_momentum",
        "mu/conv_kernel_velocity",
    ]
    assert not Muon(exclude_embeddings=False)._should_use_adamw(variables[1])


@pytest.mark.parametrize("cls", [Adafactor, Lamb, Muon, ScheduleFreeAdamW])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dtype_is_kept_and_float32_tracks_float64(cls, dtype):
    rng = np.random.default_rng(6)
    shapes = [(), (4,), (3, 4)]
    values, grads = _random_problem(rng, shapes, steps=4)
    low = _train(cls(learning_rate=0.01), values, grads, dtype=dtype)
    high = _train(cls(learning_rate=0.01), values, grads, dtype="float64")
    for lo, hi in zip(low, high, strict=True):
        assert lo.dtype == np.dtype(dtype)
        tol = 2e-5 if dtype == "float32" else 5e-2
        np.testing.assert_allclose(lo.value, hi.value, rtol=tol, atol=tol)


@pytest.mark.parametrize("cls", [Adafactor, Lamb, Muon, ScheduleFreeAdamW])
def test_slots_keep_the_variable_dtype(cls):
    variables = _variables([np.ones((2, 3)), np.ones(3)], dtype="float64")
    opt = cls()
    opt.apply_gradients(
        zip([np.ones((2, 3), np.float32), np.ones(3, np.float32)], variables, strict=True)
    )
    for v in opt.variables[2:]:
        assert v.dtype in (np.dtype("float64"), np.dtype("int32")), v.path


def test_newton_schulz_rejects_vectors():
    with pytest.raises(ValueError) as e:
        Muon().zeropower_via_newtonschulz5(np.ones(3), 5)
    assert str(e.value) == (
        "Expected gradient or momentum to have at least 2 dimensions. Received: shape=(3,)"
    )


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"ns_steps": 2.5}, "Argument `ns_steps` must be an integer >= 0. Received: ns_steps=2.5"),
        ({"exclude_layers": "head"}, "Wrap it in a list: ['head']"),
        ({"exclude_layers": ["(head"]}, "'(head' is not a valid regex"),
        ({"exclude_layers": [3]}, "Received: exclude_layers=[3]"),
        ({"adam_weight_decay": "x"}, "Argument `adam_weight_decay` must be a float or None."),
    ],
)
def test_muon_rejects_bad_arguments_without_using_a_name(kwargs, text):
    with pytest.raises(ValueError) as e:
        Muon(**kwargs)
    assert text in str(e.value)
    assert Muon().name == "muon"  # the failed constructions consumed no automatic name


@pytest.mark.parametrize(
    "cls, kwargs, text",
    [
        (Adafactor, {"clip_threshold": 0.0}, "Argument `clip_threshold` must be a float > 0."),
        (Adafactor, {"epsilon_1": float("nan")}, "Argument `epsilon_1` must be a finite float."),
        (
            Lamb,
            {"beta_1": 1.5},
            "Argument `beta_1` must be a float in [0, 1]. Received: beta_1=1.5",
        ),
        (
            ScheduleFreeAdamW,
            {"warmup_steps": -1},
            "Argument `warmup_steps` must be an integer >= 0.",
        ),
        (
            Muon,
            {"momentum": "0.9"},
            "Argument `momentum` must be a float. Received: momentum='0.9'",
        ),
    ],
)
def test_bad_hyperparameters_raise_before_anything_is_created(cls, kwargs, text):
    with pytest.raises(ValueError) as e:
        cls(**kwargs)
    assert text in str(e.value)
    first = {Adafactor: "adafactor", Lamb: "lamb", Muon: "muon"}.get(cls, "schedule_free_adam_w")
    assert cls().name == first  # the failed construction used no automatic name


@pytest.mark.parametrize("cls", [Adafactor, Lamb, Muon, ScheduleFreeAdamW])
def test_a_raising_call_changes_nothing(cls):
    variables = _variables([np.ones((2, 2)), np.ones(3)])
    opt = cls(learning_rate=0.1)
    opt.apply_gradients(zip([np.ones((2, 2)), np.ones(3)], variables, strict=True))
    before = [v.numpy() for v in opt.variables + variables]
    with pytest.raises(ValueError, match="has shape"):
        opt.apply_gradients(zip([np.ones((2, 2)), np.ones(4)], variables, strict=True))
    for v, b in zip(opt.variables + variables, before, strict=True):
        np.testing.assert_array_equal(v.value, b)


# -- registry, config, state ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "identifier, cls",
    [
        ("lamb", Lamb),
        ("Lamb", Lamb),
        ("adafactor", Adafactor),
        ("MUON", Muon),
        ("schedulefreeadamw", ScheduleFreeAdamW),
    ],
)
def test_get_by_name(identifier, cls):
    opt = optimizers.get(identifier)
    assert type(opt) is cls
    assert opt.get_config() == cls(name=opt.name).get_config()


_CONFIGURED = [
    (Adafactor, {"beta_2_decay": -0.5, "clip_threshold": 2.0, "relative_step": False}),
    (Lamb, {"beta_1": 0.8, "epsilon": 1e-6, "clipnorm": 1.0}),
    (Muon, {"exclude_layers": ["head"], "rms_rate": None, "ns_steps": 3, "adam_lr_ratio": 0.1}),
    (ScheduleFreeAdamW, {"warmup_steps": 5, "beta_1": 0.85, "use_ema": True}),
]


@pytest.mark.parametrize("cls, kwargs", _CONFIGURED)
def test_config_round_trip(cls, kwargs):
    opt = cls(learning_rate=0.5, **kwargs)
    config = opt.get_config()
    for key, value in kwargs.items():
        assert config[key] == value
    assert cls.from_config(config).get_config() == config
    again = optimizers.deserialize(optimizers.serialize(opt))
    assert type(again) is cls and again.get_config() == config


@pytest.mark.parametrize("cls, kwargs", _CONFIGURED)
def test_saved_state_continues_the_identical_trajectory(cls, kwargs):
    rng = np.random.default_rng(7)
    shapes = [(), (3,), (4, 3)]
    values, grads = _random_problem(rng, shapes, steps=6)
    names = ["s", "b", "k"]
    opt = cls(learning_rate=0.05, **kwargs)
    variables = _train(opt, values, grads[:3], names=names)
    store = {}
    opt.save_own_variables(store)
    assert list(store) == [str(i) for i in range(len(opt.variables))]
    fresh = _variables([v.numpy() for v in variables], names=names)
    restored = cls(learning_rate=0.05, **kwargs)
    restored.build(fresh)
    restored.load_own_variables(store)
    for step in grads[3:]:
        opt.apply_gradients(zip(step, variables, strict=True))
        restored.apply_gradients(zip(step, fresh, strict=True))
    for a, b in zip(variables + opt.variables, fresh + restored.variables, strict=True):
        np.testing.assert_array_equal(a.value, b.value)


def test_lamb_whole_arena_and_per_tensor_paths_agree():
    # All gradients: one kernel pass per dtype; a None gradient or update_step: per tensor.
    rng = np.random.default_rng(10)
    shapes = [(3, 4), (5,), ()]
    values, grads = _random_problem(rng, shapes, steps=4)
    whole = _train(Lamb(learning_rate=0.1), values, grads)
    subset_opt, direct_opt = Lamb(learning_rate=0.1), Lamb(learning_rate=0.1)
    subset = _variables(values + [np.ones(2)])
    direct = _variables(values)
    direct_opt.build(direct)
    for step in grads:
        with pytest.warns(UserWarning, match="Gradients do not exist"):
            subset_opt.apply_gradients(zip(step + [None], subset, strict=True))
        for g, v in zip(step, direct, strict=True):
            direct_opt.update_step(g, v, float(np.float32(0.1)))
        direct_opt._iterations.assign(direct_opt._iterations.value + 1)
    for a, b, c in zip(whole, subset, direct, strict=False):  # subset has one extra
        np.testing.assert_array_equal(a.value, b.value)
        np.testing.assert_array_equal(a.value, c.value)


@pytest.mark.parametrize("cls", [Lamb, ScheduleFreeAdamW])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numba_and_numpy_engines_give_the_same_bits(cls, dtype):
    from distopt.optimizers import _engine

    pytest.importorskip("numba")
    rng = np.random.default_rng(11)
    values, grads = _random_problem(rng, [(40, 30), (7,)], steps=3)
    results = []
    for name in ("numpy", "numba"):
        with _engine.use_engine(name):
            results.append(_train(cls(learning_rate=0.01), values, grads, dtype=dtype))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a.value, b.value)


def test_lamb_accumulation_equals_the_mean_gradient():
    rng = np.random.default_rng(8)
    plain, accumulating = (
        Lamb(learning_rate=0.1),
        Lamb(learning_rate=0.1, gradient_accumulation_steps=2),
    )
    a, b = _variables([np.ones((2, 3))]), _variables([np.ones((2, 3))])
    for _ in range(3):
        g1, g2 = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
        plain.apply_gradients([((g1 + g2) / 2, a[0])])
        accumulating.apply_gradients([(g1, b[0])])
        accumulating.apply_gradients([(g2, b[0])])
    np.testing.assert_allclose(a[0].value, b[0].value, rtol=RTOL)


def test_adafactor_uses_the_schedule_value():
    schedule = lambda: 0.25  # noqa: E731 - a zero-argument callable learning rate
    opt = Adafactor(learning_rate=schedule)
    (var,) = _train(opt, [np.array([1.0, 2.0])], [[np.array([0.5, -1.0])]])
    expected = ref.adafactor([1.0, 2.0], [np.array([0.5, -1.0])], lr=0.25)
    np.testing.assert_allclose(var.value, expected, rtol=RTOL)


# -- data parallel --------------------------------------------------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("cls, kwargs", _CONFIGURED)
def test_ranks_agree_with_one_process_fed_the_summed_gradient(cls, kwargs, comm_world):
    from distopt.distribute import MPIStrategy

    rank, size = comm_world.Get_rank(), comm_world.Get_size()
    rng = np.random.default_rng(9)  # same draws on every rank
    shapes = [(), (3,), (4, 3)]
    values = [rng.standard_normal(s) for s in shapes]
    shards = [[[rng.standard_normal(s) for s in shapes] for _ in range(size)] for _ in range(4)]
    summed = [
        [np.sum([shard[r][k] for r in range(size)], axis=0) for k in range(3)] for shard in shards
    ]
    single = _train(cls(learning_rate=0.05, **kwargs), values, summed, names=["s", "b", "k"])
    strategy = MPIStrategy()
    with strategy.scope():
        variables = _variables(values, names=["s", "b", "k"])
        opt = cls(learning_rate=0.05, **kwargs)
    for shard in shards:
        strategy.run(opt.apply_gradients, args=(list(zip(shard[rank], variables, strict=True)),))
    for got, expected in zip(variables, single, strict=True):
        np.testing.assert_allclose(got.value, expected.value, rtol=RTOL, atol=1e-15)
        everyone = comm_world.allgather(got.numpy())
        assert all(np.array_equal(everyone[0], other) for other in everyone)


@pytest.mark.mpi
@pytest.mark.parametrize("shard", [False, True])
def test_schedule_free_adamw_under_zero1_sharding_gives_the_same_bits(comm_world, shard):
    from distopt.distribute import MPIStrategy

    rank = comm_world.Get_rank()
    rng = np.random.default_rng(12)
    values = [rng.standard_normal(s) for s in [(6, 5), (7,), ()]]
    grads = [[np.random.default_rng(100 * k + rank).standard_normal(v.shape) for v in values]
             for k in range(3)]  # fmt: skip
    results = []
    for sharded in (False, shard):
        strategy = MPIStrategy(shard_optimizer_state=sharded)
        with strategy.scope():
            variables = _variables(values, dtype="float32")
            opt = ScheduleFreeAdamW(learning_rate=0.1, warmup_steps=2)
        for step in grads:
            strategy.run(opt.apply_gradients, args=(list(zip(step, variables, strict=True)),))
        results.append([v.numpy() for v in variables])
    for a, b in zip(*results, strict=True):
        assert a.tobytes() == b.tobytes()
    everyone = comm_world.allgather(b"".join(a.tobytes() for a in results[1]))
    assert len(set(everyone)) == 1


@pytest.mark.mpi
@pytest.mark.parametrize("cls", [Adafactor, Lamb, Muon])
def test_per_tensor_optimizers_shard_zero1_by_whole_tensors(cls, comm_world):
    """Each variable has exactly one owner, which alone holds its state (tests/test_sharding.py
    checks the bits and the memory)."""
    from distopt.distribute import MPIStrategy

    strategy = MPIStrategy(shard_optimizer_state=True)
    with strategy.scope():
        values = [np.ones((3, 2)), np.ones((4, 5)), np.ones(7), np.ones((2, 2))]
        variables = _variables(values, names=["a", "b", "c", "d"])
        opt = cls()
    opt.build(variables)
    mine = [k for k, v in enumerate(variables) if opt._layout.owns(v)]
    everyone = sorted(k for ks in comm_world.allgather(mine) for k in ks)
    assert everyone == [0, 1, 2, 3]
    for v in variables:
        names = (f"{opt.name}/{v.name}", f"{opt.name}/{v.path}_")  # Adafactor's factors; slots
        slots = [s for s in opt.variables if s.ndim and s.path.startswith(names)]
        assert slots and all((s.value.size > 0) == opt._layout.owns(v) for s in slots)
