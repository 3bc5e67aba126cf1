"""CheckpointManager under mpiexec: collective save/restore, errors on every rank, data position."""

import os
import shutil
import tempfile

import numpy as np
import pytest
from mpi4py import MPI  # noqa: F401 (the skipif condition)

import distopt
from distopt.checkpoint import CheckpointError, CheckpointManager
from distopt.distribute import MPIStrategy

SHAPES = [(9, 7), (7,), (5, 3, 2)]
pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]


@pytest.fixture
def shared_dir(comm_world):
    """A folder every rank sees (rank 0's temporary folder)."""
    path = tempfile.mkdtemp(prefix="distopt-ckpt-") if comm_world.rank == 0 else None
    path = comm_world.bcast(path, root=0)
    yield path
    comm_world.Barrier()
    if comm_world.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


def _setup(shard, seed=0, factory=lambda: distopt.optimizers.Adam(0.01)):
    strategy = MPIStrategy(shard_optimizer_state=shard)
    with strategy.scope():
        rng = np.random.default_rng(seed)
        weights = [distopt.Variable(rng.standard_normal(s), dtype="float64") for s in SHAPES]
        optimizer = factory()
    return strategy, weights, optimizer


def _train(strategy, weights, optimizer, start, stop):
    rank = strategy.communicator.rank
    for step in range(start, stop):
        rng = np.random.default_rng([step, rank])
        grads = [rng.standard_normal(w.shape) for w in weights]
        strategy.run(lambda g=grads: optimizer.apply_gradients(zip(g, weights)))


def _state(weights, optimizer):
    return [v.numpy().tobytes() for v in list(weights) + optimizer.variables]


@pytest.mark.parametrize("shard", [False, True])
@pytest.mark.parametrize("family", ["adam", "lamb"])
def test_resume_in_the_same_job_is_bitwise(comm_world, shared_dir, shard, family):
    factory = {"adam": lambda: distopt.optimizers.Adam(0.01), "lamb": distopt.optimizers.Lamb}
    strategy, weights, optimizer = _setup(shard, factory=factory[family])
    _train(strategy, weights, optimizer, 0, 3)
    manager = CheckpointManager(shared_dir)
    manager.save(3, weights, optimizer)
    files = sorted(os.listdir(os.path.join(shared_dir, "step_000000003")))
    # ZeRO-1: a shard per rank holding state (per tensor: those owning one); without it
    # rank 0 writes everything.
    holders = comm_world.size if family == "adam" else min(comm_world.size, len(SHAPES))
    shards = holders if shard else 1
    assert files == ["manifest.json"] + [f"shard-{r:05d}.safetensors" for r in range(shards)]
    _train(strategy, weights, optimizer, 3, 6)
    strategy2, resumed, fresh = _setup(shard, seed=5, factory=factory[family])
    manager.restore(resumed, fresh)
    _train(strategy2, resumed, fresh, 3, 6)
    assert _state(resumed, fresh) == _state(weights, optimizer)
    strategy.close()
    strategy2.close()


def _damage_last_shard(shared_dir, size):
    path = os.path.join(shared_dir, "step_000000003", f"shard-{size - 1:05d}.safetensors")
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\xff\xfe\xfd")
    return path


def _remove_last_shard(shared_dir, size):
    path = os.path.join(shared_dir, "step_000000003", f"shard-{size - 1:05d}.safetensors")
    os.remove(path)
    return path


@pytest.mark.parametrize(
    "damage,message",
    [(_damage_last_shard, "is corrupted"), (_remove_last_shard, "in the manifest is missing")],
)
def test_a_damaged_shard_raises_on_every_rank_and_changes_nothing(
    comm_world, shared_dir, damage, message
):
    strategy, weights, optimizer = _setup(True)
    _train(strategy, weights, optimizer, 0, 3)
    manager = CheckpointManager(shared_dir)
    manager.save(3, weights, optimizer)
    comm_world.Barrier()
    if comm_world.rank == 0:
        path = damage(shared_dir, comm_world.size)
    path = comm_world.bcast(path if comm_world.rank == 0 else None, root=0)
    comm_world.Barrier()
    _train(strategy, weights, optimizer, 3, 4)
    before = _state(weights, optimizer)
    with pytest.raises(CheckpointError, match=message) as info:
        manager.restore(weights, optimizer)
    assert os.path.basename(path) in str(info.value)
    assert _state(weights, optimizer) == before
    # The ranks are still in step: the next collective works.
    _train(strategy, weights, optimizer, 4, 5)
    strategy.close()


def test_the_data_position_is_restored(comm_world, shared_dir):
    strategy, weights, optimizer = _setup(False)
    n = comm_world.size
    batches = [np.arange(k * 4 * n, (k + 1) * 4 * n, dtype=np.float64) for k in range(10)]
    iterator = iter(strategy.experimental_distribute_dataset(batches))
    for _ in range(4):
        next(iterator)
    manager = CheckpointManager(shared_dir)
    manager.save(4, weights, optimizer, extras={"data": iterator, "epoch": 0})
    expected = next(iterator)
    fresh = iter(strategy.experimental_distribute_dataset(batches))
    extras = manager.restore(weights, optimizer, datasets={"data": fresh})
    assert extras["data"] is fresh and extras["epoch"] == 0
    assert np.array_equal(next(fresh), expected)
    assert manager.restore(weights, optimizer)["data"] == 4  # without `datasets`: the position
    strategy.close()


@pytest.mark.skipif("MPI.COMM_WORLD.Get_size() < 2", reason="needs peers")
def test_ranks_saving_different_steps_fail_clearly(comm_world, shared_dir):
    from distopt.collectives._guard import CollectiveMismatchError

    strategy, weights, optimizer = _setup(False)
    manager = CheckpointManager(shared_dir)
    with pytest.raises(CollectiveMismatchError, match="checkpoint"):
        manager.save(1 if comm_world.rank == 0 else 2, weights, optimizer)
    assert manager.latest_step() is None
    strategy.close()
