"""apply_gradients: the seed's contract, input checking, and "a raising call changes nothing"."""

import warnings

import numpy as np
import pytest

import distopt
from distopt.optimizers import SGD, Adam


def _snapshot(opt, variables):
    return [v.numpy() for v in variables] + [v.numpy() for v in opt.variables], opt.built


def _assert_unchanged(before, opt, variables):
    values, built = _snapshot(opt, variables)
    assert built == before[1]
    assert len(values) == len(before[0])
    for a, b in zip(values, before[0]):
        np.testing.assert_array_equal(a, b)


def test_keras_observed_single_steps():
    # Spec §6.2: Keras 3.15.1 numpy backend, float32.
    g = np.array([1.0, 6.0, 7.0, 2.0])
    for opt, expected in [
        (SGD(learning_rate=0.5), [0.5, -1.0, -0.5, 3.0]),
        (Adam(0.5), [0.50000495, 1.5000036, 2.5000036, 3.500004]),
        (SGD(0.5, momentum=0.9, nesterov=True), [0.05000001, -3.6999998, -3.6499996, 2.1]),
    ]:
        v = distopt.Variable([1.0, 2.0, 3.0, 4.0])
        it = opt.apply_gradients([(g, v)])
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6)
        assert it is opt.iterations and int(it.value) == 1


def test_accepts_zip_and_any_iterable_and_returns_iterations():
    a, b = distopt.Variable([1.0, 2.0]), distopt.Variable([[1.0]])
    opt = SGD(1.0)
    it = opt.apply_gradients(zip([np.ones(2), np.ones((1, 1))], [a, b]))
    it = opt.apply_gradients(((g, v) for g, v in [(np.ones(2), a), (np.ones((1, 1)), b)]))
    assert int(it.value) == 2
    np.testing.assert_array_equal(a.numpy(), [-1.0, 0.0])


def test_variables_names_and_order():
    kernel = distopt.Variable(np.zeros((2, 3)), name="kernel")
    bias = distopt.Variable(np.zeros(3), name="bias")
    opt = Adam(amsgrad=True)
    opt.build([kernel, bias])
    assert [(v.path, v.shape, v.dtype.name) for v in opt.variables] == [
        ("adam/iteration", (), "int32"),
        ("adam/learning_rate", (), "float32"),
        ("adam/kernel_momentum", (2, 3), "float32"),
        ("adam/kernel_velocity", (2, 3), "float32"),
        ("adam/bias_momentum", (3,), "float32"),
        ("adam/bias_velocity", (3,), "float32"),
        ("adam/kernel_velocity_hat", (2, 3), "float32"),
        ("adam/bias_velocity_hat", (3,), "float32"),
    ]


def test_learning_rate_is_settable_and_configurable():
    opt = Adam(0.001)
    assert opt.get_config()["learning_rate"] == pytest.approx(0.0010000000474974513, abs=0)
    opt.learning_rate = 0.5
    assert float(opt.learning_rate.value) == 0.5
    clone = Adam.from_config(opt.get_config())
    assert clone.get_config() == opt.get_config()


@pytest.mark.parametrize("ident", ["adam", "Adam", "ADAM", "sgd", "SGD"])
def test_get_by_name_any_case(ident):
    opt = distopt.optimizers.get(ident)
    assert type(opt).__name__.lower() == ident.lower()
    assert opt.get_config()["learning_rate"] == pytest.approx(
        0.001 if "a" in ident.lower() else 0.01
    )


def test_get_unknown_name():
    with pytest.raises(ValueError, match="Could not interpret optimizer identifier: typo"):
        distopt.optimizers.get("typo")


BAD_INPUTS = [
    (lambda v: 5, TypeError, r"must be an iterable of \(gradient, variable\) pairs"),
    (lambda v: [np.ones(2)], TypeError, r"item 0 is"),
    (lambda v: [(np.ones(2), v, 1)], TypeError, r"item 0 is"),
    (lambda v: (np.ones(2), v), TypeError, r"item 0 is"),
    (lambda v: [(np.ones(2), np.zeros(2))], TypeError, r"not a `distopt.Variable`"),
    (lambda v: [("abc", v)], TypeError, r"must be array-like"),
    (lambda v: [(np.array(["a", "b"]), v)], TypeError, r"real numeric array"),
    (lambda v: [(object(), v)], TypeError, r"real numeric array"),
    (lambda v: [(np.ones(3), v)], ValueError, r"`w` has shape \(3,\).*shape \(2,\)"),
    (lambda v: [], ValueError, r"no gradient at all"),
    (lambda v: [(None, v)], ValueError, r"No gradients provided for any variable"),
    (lambda v: [(np.ones(2), v), (np.ones(2), v)], ValueError, r"appears more than once"),
]


@pytest.mark.parametrize("make, error, message", BAD_INPUTS)
@pytest.mark.parametrize("prebuilt", [False, True])
def test_bad_input_raises_and_changes_nothing(make, error, message, prebuilt):
    v = distopt.Variable([1.0, 2.0], name="w")
    opt = Adam(0.1)
    if prebuilt:
        opt.apply_gradients([(np.ones(2), v)])
    before = _snapshot(opt, [v])
    with pytest.raises(error, match=message):
        opt.apply_gradients(make(v))
    _assert_unchanged(before, opt, [v])


def test_unknown_variable_after_build_changes_nothing():
    a, b = distopt.Variable([1.0], name="a"), distopt.Variable([2.0], name="b")
    opt = SGD(0.1, momentum=0.5)
    opt.apply_gradients([(np.ones(1), a)])
    before = _snapshot(opt, [a, b])
    with pytest.raises(ValueError, match=r"Unknown variable: .*originally built with"):
        opt.apply_gradients([(np.ones(1), a), (np.ones(1), b)])
    _assert_unchanged(before, opt, [a, b])


def test_unknown_keyword_is_an_error_and_changes_nothing():
    v = distopt.Variable([1.0])
    opt = SGD(0.1)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['foo'\]"):
        opt.apply_gradients([(np.ones(1), v)], foo=1)
    assert not opt.built and float(v.value[0]) == 1.0


def test_none_gradients_are_dropped_with_keras_warning():
    a, b = distopt.Variable([1.0], name="a"), distopt.Variable([2.0], name="b")
    opt = SGD(1.0)
    with pytest.warns(UserWarning, match=r"Gradients do not exist for variables \['a'\]"):
        opt.apply_gradients([(None, a), (np.ones(1), b)])
    assert float(a.value[0]) == 1.0 and float(b.value[0]) == 1.0
    assert [v.path for v in opt._trainable_variables] == ["a", "b"]  # built on both


def test_float64_gradient_is_cast_to_float32_variable():
    v = distopt.Variable([1.0, 2.0])  # float32 (floatx)
    SGD(0.1).apply_gradients([(np.array([0.1, 0.2], dtype=np.float64), v)])
    assert v.dtype == np.float32
    expected = np.array([1.0, 2.0], np.float32) - np.array([0.1, 0.2], np.float32) * np.float32(0.1)
    np.testing.assert_array_equal(v.numpy(), expected)


def test_user_gradient_arrays_are_not_modified():
    v = distopt.Variable([1.0, 2.0], dtype="float64")
    g = np.array([3.0, 4.0])
    Adam(0.1, clipnorm=1.0).apply_gradients([(g, v)])
    np.testing.assert_array_equal(g, [3.0, 4.0])


def test_cross_replica_context_runtime_error_text():
    from mpi4py import MPI

    strategy = distopt.distribute.MPIStrategy(comm=MPI.COMM_SELF)
    with strategy.scope():
        v = distopt.Variable([1.0])
        opt = SGD(0.1)
        with pytest.raises(RuntimeError) as info:
            opt.apply_gradients([(np.ones(1), v)])
    assert str(info.value) == (
        "`apply_gradients()` cannot be called in cross-replica context. Use `Strategy.run` to "
        "enter replica context. For more information, please see the docstring of "
        "`distopt.distribute.get_replica_context`."
    )
    strategy.run(lambda: opt.apply_gradients([(np.ones(1), v)]))
    np.testing.assert_allclose(v.numpy(), [0.9])


def test_mirrored_state_outside_its_strategy_is_an_error():
    from mpi4py import MPI

    strategy = distopt.distribute.MPIStrategy(comm=MPI.COMM_SELF)
    with strategy.scope():
        v = distopt.Variable([1.0])
    opt = SGD(0.1)
    with pytest.raises(
        ValueError, match=r"created under the scope of .* updated under no strategy"
    ):
        opt.apply_gradients([(np.ones(1), v)])
    assert float(v.value[0]) == 1.0 and not opt.built


def test_no_warning_in_the_common_path():
    v = distopt.Variable(np.ones((3, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Adam().apply_gradients([(np.ones((3, 2)), v)])


@pytest.mark.parametrize(
    "make",
    [
        lambda: Adam(0.01, amsgrad=True, name="mine"),
        lambda: SGD(0.1, momentum=0.5, clipnorm=1.0),
        lambda: distopt.optimizers.LossScaleOptimizer(Adam(0.01)),
    ],
)
def test_unbuilt_optimizers_pickle_as_their_config(make):
    import pickle

    opt = make()
    clone = pickle.loads(pickle.dumps(opt))
    assert type(clone) is type(opt) and clone.get_config() == opt.get_config()


def test_pickling_a_built_optimizer_is_a_clear_error():
    import pickle

    opt = Adam()
    opt.build([distopt.Variable([1.0])])
    before = [v.numpy() for v in opt.variables]
    with pytest.raises(TypeError, match=r"A built Adam cannot be pickled.*save_own_variables"):
        pickle.dumps(opt)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, opt.variables, strict=True))
