"""CheckpointManager in one process: round trip, retention, atomicity, and bad input."""

import json
import os

import numpy as np
import pytest

import distopt
from distopt.checkpoint import CheckpointError, CheckpointManager
from distopt.checkpoint import _manager as manager_module

SHAPES = [(4, 3), (3,), (2, 2, 2)]


def _model(seed=0, dtype="float64", shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [distopt.Variable(rng.standard_normal(s), dtype=dtype) for s in shapes]


def _train(weights, optimizer, steps, start=0):
    for step in range(start, start + steps):
        rng = np.random.default_rng(step)
        optimizer.apply_gradients(zip([rng.standard_normal(w.shape) for w in weights], weights))


def _snapshot(weights, optimizer):
    return [v.numpy().tobytes() for v in list(weights) + optimizer.variables]


def _saved(tmp_path, optimizer_factory=lambda: distopt.optimizers.Adam(0.01), steps=3):
    weights, optimizer = _model(), optimizer_factory()
    _train(weights, optimizer, steps)
    manager = CheckpointManager(tmp_path / "ckpt")
    manager.save(steps, weights, optimizer, extras={"epoch": 1})
    return manager, weights, optimizer


def test_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    schedule = distopt.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)
    factory = lambda: distopt.optimizers.SGD(schedule, momentum=0.9)  # noqa: E731
    manager, weights, optimizer = _saved(tmp_path, factory)
    rng = np.random.default_rng(5)
    extras = {"rng": rng.bit_generator.state, "table": np.arange(6, dtype=np.int16).reshape(2, 3)}
    manager.save(4, weights, optimizer, extras={**extras, "note": ["a", {"b": None}]})
    _train(weights, optimizer, 4, start=4)
    resumed, fresh = _model(seed=9), factory()
    got = manager.restore(resumed, fresh)
    assert got["rng"] == rng.bit_generator.state and got["note"] == ["a", {"b": None}]
    assert got["table"].dtype == np.int16 and got["table"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert int(fresh.iterations.value) == 3  # the learning-rate schedule's position
    _train(resumed, fresh, 4, start=4)
    assert [w.numpy().tobytes() for w in resumed] == [w.numpy().tobytes() for w in weights]


def test_restores_an_older_step_and_keeps_the_newest(tmp_path):
    weights, optimizer = _model(), distopt.optimizers.Adam(0.01)
    manager = CheckpointManager(tmp_path, max_to_keep=2)
    assert manager.latest_step() is None
    values = {}
    for step in range(4):
        _train(weights, optimizer, 1, start=step)
        manager.save(step, weights, optimizer)
        values[step] = _snapshot(weights, optimizer)
    assert manager.all_steps() == [2, 3] and manager.latest_step() == 3
    assert sorted(os.listdir(tmp_path)) == ["step_000000002", "step_000000003"]
    other, fresh = _model(seed=3), distopt.optimizers.Adam(0.01)
    manager.restore(other, fresh, step=2)
    assert _snapshot(other, fresh) == values[2]


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    manager, weights, optimizer = _saved(tmp_path)
    before = _snapshot(weights, optimizer)
    _train(weights, optimizer, 1, start=3)

    def disk_full(directory, manifest):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(manager_module._manifest, "write", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        manager.save(4, weights, optimizer)
    monkeypatch.undo()
    assert manager.all_steps() == [3]
    assert os.listdir(manager.directory) == ["step_000000003"]  # no temporary folder left
    fresh_w, fresh = _model(seed=2), distopt.optimizers.Adam(0.01)
    manager.restore(fresh_w, fresh)
    assert _snapshot(fresh_w, fresh) == before


def test_a_killed_save_is_invisible_and_cleaned_up(tmp_path):
    manager, weights, optimizer = _saved(tmp_path)
    leftover = tmp_path / "ckpt" / ".tmp-step_000000004-deadbeef"
    leftover.mkdir()
    (leftover / "shard-00000.safetensors").write_bytes(b"\0" * 10)
    assert manager.latest_step() == 3
    manager.save(5, weights, optimizer)
    assert sorted(os.listdir(manager.directory)) == ["step_000000003", "step_000000005"]


def test_bad_arguments_write_nothing(tmp_path):
    weights, optimizer = _model(), distopt.optimizers.Adam(0.01)
    manager = CheckpointManager(tmp_path / "c")
    with pytest.raises(ValueError, match="`step` must be an integer >= 0"):
        manager.save(-1, weights, optimizer)
    with pytest.raises(TypeError, match="Extra `f` must be a numeric array, a JSON value"):
        manager.save(1, weights, optimizer, extras={"f": object()})
    with pytest.raises(TypeError, match="Extra `nan` must be"):
        manager.save(1, weights, optimizer, extras={"nan": float("nan")})
    with pytest.raises(TypeError, match="list of distopt.Variable"):
        manager.save(1, [np.zeros(3)], optimizer)
    with pytest.raises(ValueError, match="`max_to_keep` must be an integer >= 1"):
        CheckpointManager(tmp_path, max_to_keep=0)
    assert not (tmp_path / "c").exists()
    manager.save(1, weights, optimizer)
    with pytest.raises(CheckpointError, match="step 1 already exists"):
        manager.save(1, weights, optimizer)
    with pytest.raises(CheckpointError, match="No checkpoint to restore"):
        CheckpointManager(tmp_path / "empty").restore(weights, optimizer)


# -- damaged or mismatched checkpoints: a clear error, nothing changed ----------------------
def _shard(manager):
    return os.path.join(manager.directory, "step_000000003", "shard-00000.safetensors")


def _truncate(manager):
    path = _shard(manager)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 20)


def _flip_a_byte(manager):
    path = _shard(manager)
    with open(path, "r+b") as f:
        f.seek(-5, os.SEEK_END)
        byte = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x10]))


def _break_manifest(manager):
    path = os.path.join(manager.directory, "step_000000003", "manifest.json")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _remove_shard(manager):
    os.remove(_shard(manager))


DAMAGE = [
    (_truncate, "is truncated"),
    (_flip_a_byte, "is corrupted: tensor `.*` has CRC-32"),
    (_break_manifest, "is not valid JSON"),
    (_remove_shard, "shard-00000.safetensors listed in the manifest is missing"),
]


@pytest.mark.parametrize("damage,message", DAMAGE, ids=[d.__name__ for d, _ in DAMAGE])
@pytest.mark.parametrize("built", [True, False])
def test_damaged_checkpoint_is_a_clear_error_and_changes_nothing(tmp_path, damage, message, built):
    manager, _, _ = _saved(tmp_path)
    damage(manager)
    weights, optimizer = _model(seed=4), distopt.optimizers.Adam(0.01)
    if built:
        _train(weights, optimizer, 2)
    before = _snapshot(weights, optimizer)
    with pytest.raises(CheckpointError, match=message):
        manager.restore(weights, optimizer)
    assert _snapshot(weights, optimizer) == before


MISMATCH = [
    (lambda: _model(shapes=[(4, 3), (3,)]), None, "holds 3 variables, the restore was given 2"),
    (lambda: _model(shapes=[(4, 3), (4,), (2, 2, 2)]), None, r"variables 1 .*\(3,\).*\(4,\)"),
    (lambda: _model(dtype="float32"), None, "float64, given .* float32"),
    (None, lambda: distopt.optimizers.SGD(0.01), "class_name: saved 'Adam', given 'SGD'"),
    (None, lambda: distopt.optimizers.Adam(0.01, amsgrad=True), "amsgrad: saved False"),
    (None, lambda: distopt.optimizers.Adam(0.01, use_ema=True), "use_ema: saved False"),
]


@pytest.mark.parametrize("model,make_optimizer,message", MISMATCH)
def test_another_model_or_optimizer_is_named(tmp_path, model, make_optimizer, message):
    manager, _, _ = _saved(tmp_path)
    weights = model() if model else _model(seed=4)
    optimizer = make_optimizer() if make_optimizer else distopt.optimizers.Adam(0.01)
    before = [w.numpy().tobytes() for w in weights]
    with pytest.raises(CheckpointError, match=message):
        manager.restore(weights, optimizer)
    assert [w.numpy().tobytes() for w in weights] == before
    assert not optimizer.built  # not even built for the wrong checkpoint


def test_manifest_names_versions_world_size_and_checksums(tmp_path):
    manager, weights, optimizer = _saved(tmp_path)
    with open(os.path.join(manager.directory, "step_000000003", "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["world_size"] == 1 and manifest["step"] == 3
    assert set(manifest["versions"]) == {"distopt", "numpy", "python"}
    assert manifest["optimizer"]["class_name"] == "Adam"
    assert [e["path"] for e in manifest["optimizer_variables"]] == [
        v.path for v in optimizer.variables
    ]
    assert [e["shape"] for e in manifest["variables"]] == [list(s) for s in SHAPES]
    assert all(isinstance(p["crc32"], int) for e in manifest["variables"] for p in e["pieces"])
