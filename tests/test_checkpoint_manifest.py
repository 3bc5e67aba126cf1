"""No manifest content makes a restore execute code, touch files, or change state on failure.

Hypothesis replaces any field of a real manifest (or the whole file) with arbitrary JSON,
path-like strings or bytes; a restore then either succeeds with well-formed values or raises
CheckpointError having changed nothing, never unpickles, and leaves every file as it was.
"""

import json
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import distopt
from distopt.checkpoint import CheckpointError, CheckpointManager

SHAPES = [(3, 2), (4,)]
PATHS = ["../outside/sentinel", "/etc/passwd", "shard-00000.safetensors/../../x", "..", "."]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(PATHS + ["F64", "I32", "o1", "v0", "x0", "shard-00001.safetensors"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


def _model(seed):
    rng = np.random.default_rng(seed)
    return [distopt.Variable(rng.standard_normal(s), dtype="float64") for s in SHAPES]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox")
    (root / "outside").mkdir()
    (root / "outside" / "sentinel").write_text("untouched")
    weights = _model(0)
    optimizer = distopt.optimizers.LossScaleOptimizer(
        distopt.optimizers.Adam(0.01, gradient_accumulation_steps=2)
    )
    for step in range(3):
        grads = [np.full(w.shape, 0.5 + step) for w in weights]
        optimizer.apply_gradients(zip(grads, weights))
    manager = CheckpointManager(root / "ckpt")
    manager.save(3, weights, optimizer, extras={"epoch": 1, "table": np.arange(4.0)})
    path = root / "ckpt" / "step_000000003" / "manifest.json"
    return root, manager, path, json.loads(path.read_text())


def _tree(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            p = os.path.join(folder, name)
            if name != "manifest.json":
                st_ = os.stat(p)
                out[p] = (st_.st_size, st_.st_mtime_ns)
    return out


def _leaves(value, prefix=()):
    """Every path into a JSON value (containers and leaves)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*prefix, i))


def _replaced(manifest, path, new):
    if not path:
        return new
    copy = json.loads(json.dumps(manifest))
    node = copy
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = new
    return copy


def _no_pickle(*args, **kwargs):
    raise AssertionError("a restore unpickled something")


def _restore_checked(sandbox, text: bytes, monkeypatch):
    root, manager, path, _ = sandbox
    path.write_bytes(text)
    before_files = _tree(root)
    weights = _model(1)
    optimizer = distopt.optimizers.LossScaleOptimizer(
        distopt.optimizers.Adam(0.01, gradient_accumulation_steps=2)
    )
    optimizer.build(weights)
    before = [v.numpy().tobytes() for v in weights + optimizer.variables]
    with monkeypatch.context() as m:
        for name in ("load", "loads", "Unpickler"):
            m.setattr(pickle, name, _no_pickle)
        try:
            extras = manager.restore(weights, optimizer)
        except CheckpointError:
            assert [v.numpy().tobytes() for v in weights + optimizer.variables] == before
        else:
            for v in weights + optimizer.variables:
                assert np.isfinite(v.numpy()).all()
            assert isinstance(extras, dict)
    assert _tree(root) == before_files
    assert (root / "outside" / "sentinel").read_text() == "untouched"
    assert sorted(os.listdir(root)) == ["ckpt", "outside"]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_field_replaced(sandbox, monkeypatch, data):
    manifest = sandbox[3]
    path = data.draw(st.sampled_from(list(_leaves(manifest))))
    new = data.draw(json_values)
    _restore_checked(sandbox, json.dumps(_replaced(manifest, path, new)).encode(), monkeypatch)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_manifest_file(sandbox, monkeypatch, text):
    _restore_checked(sandbox, text, monkeypatch)


def test_the_untouched_manifest_restores(sandbox, monkeypatch):
    _restore_checked(sandbox, json.dumps(sandbox[3]).encode(), monkeypatch)


@pytest.mark.parametrize(
    "path, new",
    [(("optimizer", "config"), 1), (("optimizer", "config", "inner_optimizer"), 1),
     (("optimizer", "config", "inner_optimizer", "config"), 1),
     (("optimizer", "config", "inner_optimizer", "config"), None)],
)  # fmt: skip
def test_optimizer_config_that_is_no_object_is_a_checkpoint_error(sandbox, path, new):
    root, manager, manifest_path, manifest = sandbox
    manifest_path.write_text(json.dumps(_replaced(manifest, path, new)))
    weights = _model(1)
    optimizer = distopt.optimizers.LossScaleOptimizer(
        distopt.optimizers.Adam(0.01, gradient_accumulation_steps=2)
    )
    optimizer.build(weights)
    before = [v.numpy().tobytes() for v in weights + optimizer.variables]
    with pytest.raises(CheckpointError, match="another optimizer configuration"):
        manager.restore(weights, optimizer)
    assert [v.numpy().tobytes() for v in weights + optimizer.variables] == before
