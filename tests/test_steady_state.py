"""The steady-state path of `apply_gradients` (checks cached per variable list) and the
one-call pack: the same checks, errors and bits as the per-pair path they short-cut."""

import warnings

import numpy as np
import pytest

import distopt
from distopt.collectives._bucket import BucketPlan
from distopt.optimizers import SGD, Adam


def _variables(mixed=True):
    return [
        distopt.Variable(np.linspace(-1, 1, 6).reshape(2, 3), name="k"),
        distopt.Variable([0.5, -0.25], name="b"),
        distopt.Variable(np.arange(4.0), name="d", dtype="float64" if mixed else None),
        distopt.Variable(1.5, name="s"),
    ]


def _grads(step):
    rng = np.random.default_rng(step)
    return [
        rng.standard_normal((2, 3)).astype(np.float32),
        rng.standard_normal(2),  # float64 for a float32 variable: cast
        rng.standard_normal(4),
        np.array(rng.standard_normal(), np.float32),  # 0-d
    ]


def _count_checked_steps(opt):
    """Counts the steps that take the per-pair path (the first one builds)."""
    calls = []
    checked = opt._apply_checked
    opt._apply_checked = lambda *args: calls.append(1) or checked(*args)
    return calls


def _snapshot(opt, variables):
    return [v.numpy() for v in variables] + [v.numpy() for v in opt.variables]


def _assert_unchanged(before, opt, variables):
    after = _snapshot(opt, variables)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Adam(0.01, amsgrad=True),
        lambda: SGD(0.1, momentum=0.9, clipnorm=0.5),
        lambda: Adam(0.01, loss_scale_factor=3.0, use_ema=True),
        lambda: SGD(0.1, gradient_accumulation_steps=2, global_clipnorm=1.0),
    ],
)
@pytest.mark.parametrize("mixed", [True, False])
def test_steady_path_gives_the_bits_of_the_per_pair_path(make, mixed):
    fast_vars, slow_vars = _variables(mixed), _variables(mixed)
    fast, slow = make(), make()
    fast_calls, slow_calls = _count_checked_steps(fast), _count_checked_steps(slow)
    slow._apply = slow._apply_checked  # every step on the per-pair path
    for step in range(6):
        fast.apply_gradients(zip(_grads(step), fast_vars))
        slow.apply_gradients(zip(_grads(step), slow_vars))
    assert len(fast._list_facts) == 1 and not slow._list_facts
    assert len(fast_calls) == 1 and len(slow_calls) == 6
    for a, b in zip(_snapshot(fast, fast_vars), _snapshot(slow, slow_vars), strict=True):
        np.testing.assert_array_equal(a, b)


BAD_STEADY = [
    (lambda g: [np.ones(3)] + g[1:], ValueError, r"`k` has shape \(3,\).*shape \(2, 3\)"),
    (lambda g: [np.ones((3, 2))] + g[1:], ValueError, r"`k` has shape \(3, 2\)"),
    (lambda g: g[:1] + [np.array(["a", "b"])] + g[2:], TypeError, r"`b` must be a real numeric"),
    (lambda g: g[:1] + [np.ones(2, complex)] + g[2:], TypeError, r"`b` must be a real numeric"),
    (lambda g: g[:3] + ["x"], TypeError, r"`s` must be array-like"),
    (lambda g: [None] * 4, ValueError, r"No gradients provided for any variable"),
]


@pytest.mark.parametrize("make, error, message", BAD_STEADY)
def test_bad_gradients_after_steady_steps_raise_and_change_nothing(make, error, message):
    variables = _variables()
    opt = Adam(0.1)
    for step in range(3):
        opt.apply_gradients(zip(_grads(step), variables))
    assert len(opt._list_facts) == 1
    calls = _count_checked_steps(opt)
    opt.apply_gradients(zip(_grads(3), variables))
    assert not calls  # the steady path
    before = _snapshot(opt, variables)
    with pytest.raises(error, match=message):
        opt.apply_gradients(zip(make(_grads(9)), variables))
    _assert_unchanged(before, opt, variables)


def test_duplicates_and_unknown_variables_after_steady_steps():
    variables = _variables()
    other = distopt.Variable([1.0, 2.0], name="other")
    opt = SGD(0.1)
    for step in range(3):
        opt.apply_gradients(zip(_grads(step), variables))
    before = _snapshot(opt, variables + [other])
    with pytest.raises(ValueError, match=r"`k` appears more than once"):
        opt.apply_gradients(zip(_grads(0) + _grads(0)[:1], variables + variables[:1]))
    with pytest.raises(ValueError, match=r"Unknown variable: .*originally built with"):
        opt.apply_gradients(zip(_grads(0)[1:2], [other]))
    _assert_unchanged(before, opt, variables + [other])
    assert len(opt._list_facts) == 1  # no list that failed a check is remembered


def test_none_and_non_array_gradients_after_steady_steps():
    variables = _variables()
    opt = SGD(1.0)
    for step in range(2):
        opt.apply_gradients(zip(_grads(step), variables))
    before = [v.numpy() for v in variables]
    grads = [None, [1.0, 2.0], None, 0.5]  # a list and a number are array-like
    with pytest.warns(UserWarning, match=r"Gradients do not exist for variables \['k', 'd'\]"):
        opt.apply_gradients(zip(grads, variables))
    np.testing.assert_array_equal(variables[0].numpy(), before[0])
    np.testing.assert_array_equal(variables[1].numpy(), before[1] - np.float32([1.0, 2.0]))
    np.testing.assert_array_equal(variables[3].numpy(), before[3] - np.float32(0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.apply_gradients(zip(_grads(5), variables))  # back on the steady path
    assert int(opt.iterations.value) == 4


def test_a_constraint_set_after_steady_steps_takes_effect():
    variables = _variables()
    opt = SGD(0.1)
    for step in range(3):
        opt.apply_gradients(zip(_grads(step), variables))
    variables[0].constraint = lambda w: np.clip(w, -0.01, 0.01)
    opt.apply_gradients(zip(_grads(7), variables))
    assert np.abs(variables[0].numpy()).max() <= np.float32(0.01)
    variables[0].constraint = None
    opt.apply_gradients(zip([np.ones((2, 3))] + _grads(8)[1:], variables))
    assert np.abs(variables[0].numpy()).max() > np.float32(0.01)


def test_overwrite_with_gradient_set_after_steady_steps_takes_effect():
    variables = _variables()
    opt = SGD(0.1)
    for step in range(3):
        opt.apply_gradients(zip(_grads(step), variables))
    variables[2].overwrite_with_gradient = True
    grads = _grads(7)
    opt.apply_gradients(zip(grads, variables))
    np.testing.assert_array_equal(variables[2].numpy(), grads[2])
    variables[2].overwrite_with_gradient = False
    d = variables[2].numpy()
    opt.apply_gradients(zip(grads, variables))
    np.testing.assert_array_equal(variables[2].numpy(), d - grads[2] * float(np.float32(0.1)))


def test_a_variable_bound_to_a_strategy_after_steady_steps_is_checked():
    from mpi4py import MPI

    variables = _variables()
    opt = SGD(0.1)
    for step in range(3):
        opt.apply_gradients(zip(_grads(step), variables))
    before = _snapshot(opt, variables)
    variables[1]._strategy = distopt.distribute.MPIStrategy(comm=MPI.COMM_SELF)
    with pytest.raises(ValueError, match=r"Variable `b` was created under the scope of "):
        opt.apply_gradients(zip(_grads(4), variables))
    _assert_unchanged(before, opt, variables)


def test_mirrored_variable_outside_its_strategy_after_steady_steps():
    from mpi4py import MPI

    strategy = distopt.distribute.MPIStrategy(comm=MPI.COMM_SELF)
    with strategy.scope():
        v = distopt.Variable([1.0, 2.0], name="m")
    plain = distopt.Variable([3.0], name="p")
    opt = SGD(0.1)
    for _ in range(3):
        strategy.run(lambda: opt.apply_gradients([(np.ones(2), v), (np.ones(1), plain)]))
    before = _snapshot(opt, [v, plain])
    with pytest.raises(ValueError, match=r"Variable `m` was created under the scope of .* no "):
        opt.apply_gradients([(np.ones(2), v), (np.ones(1), plain)])
    _assert_unchanged(before, opt, [v, plain])


def _loop_pack(plan, arrays):
    """What `pack` does, one `copyto` per tensor (the reference for the one-call pack)."""
    for v, a in zip(plan.views, arrays):
        if a is not v:
            np.copyto(v, a, casting="same_kind")


@pytest.mark.parametrize(
    "dtypes",
    [
        ["float32"] * 5,
        ["float32", "float32", "float64", "float64", "int32"],  # one concatenate per run
        ["float32", "float64", "float32", "int32", "float64"],  # interleaved: per tensor
    ],
)
def test_one_call_pack_equals_one_copy_per_tensor(dtypes):
    shapes = [(2, 3), (), (4,), (1, 1, 2), (0,)]
    rng = np.random.default_rng(0)
    fast, slow = BucketPlan(shapes, dtypes), BucketPlan(shapes, dtypes)
    interleaved = dtypes[2] == "float32" and dtypes[1] != "float32"
    assert (fast._concat_groups is None) == interleaved
    for step in range(3):
        arrays = [(rng.standard_normal(s) * 10).astype(d) for s, d in zip(shapes, dtypes)]
        arrays[0] = arrays[0].astype(np.float64)  # cast into float32
        if step == 1:  # some computed in place: the views themselves
            arrays[2], arrays[3] = fast.views[2], fast.views[3]
            fast.views[2][...] = slow.views[2][...] = 7
        if step == 2:  # a gradient that is another tensor's memory: copied in order
            arrays[1] = fast.views[0][0, :1].reshape(())
            fast.views[0][...] = slow.views[0][...] = 3
        fast.pack(arrays)
        if step == 2:
            arrays[1] = slow.views[0][0, :1].reshape(())
        _loop_pack(slow, [slow.views[i] if a is fast.views[i] else a for i, a in enumerate(arrays)])
        for dt in fast.buffers:
            np.testing.assert_array_equal(fast.buffers[dt], slow.buffers[dt])


def test_pack_of_a_wrong_kind_raises_like_copyto():
    plan = BucketPlan([(2,)], ["int32"])
    with pytest.raises(TypeError, match=r"Cannot cast .*float64.* to .*int32.*same_kind"):
        plan.pack([np.ones(2)])


def test_large_tensors_keep_the_per_tensor_pack():
    plan = BucketPlan([(1 << 15,), (2,)], ["float32", "float32"])
    assert plan._concat_groups is None  # 128 KB: the loop skips views that share memory
    a = np.arange(1 << 15, dtype=np.float32)
    plan.pack([a, np.ones(2, np.float32)])
    np.testing.assert_array_equal(plan.views[0], a)
