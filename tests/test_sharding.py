"""ZeRO-1: `MPIStrategy(shard_optimizer_state=True)` gives the same bits with 1/N of the state."""

import numpy as np
import pytest

import distopt
from distopt.distribute import MPIStrategy
from distopt.optimizers import _registry

SHAPES = [(40, 30), (30,), (3, 3, 8, 16), (16,), (500,)]
CASES = [
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("adam", {}),
    ("adam", {"amsgrad": True}),
    ("adamw", {"weight_decay": 0.01}),
    ("rmsprop", {"centered": True, "momentum": 0.5}),
    ("adagrad", {}),
    ("adadelta", {}),
    ("adamax", {}),
    ("nadam", {}),
    ("ftrl", {"l1_regularization_strength": 0.01}),
    ("lion", {"global_clipnorm": 1.0}),
]


def _train(name, options, shard, shared_memory, dtype="float32", steps=3):
    distopt.utils.clear_session()
    strategy = MPIStrategy(shard_optimizer_state=shard, shared_memory=shared_memory)
    rank = strategy.communicator.rank
    with strategy.scope():
        rng = np.random.default_rng(0)
        variables = [distopt.Variable(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
        opt = _registry._BUILTINS[name](learning_rate=0.01, **options)
    rng = np.random.default_rng(100 + rank)
    for _ in range(steps):
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        strategy.run(lambda g=grads: opt.apply_gradients(zip(g, variables)))
    return strategy, opt, variables


@pytest.mark.mpi
@pytest.mark.parametrize("shared_memory", [True, False])
@pytest.mark.parametrize("name,options", CASES, ids=[f"{n}{o}" for n, o in CASES])
def test_sharded_state_gives_the_same_bits(comm_world, name, options, shared_memory):
    _, _, plain = _train(name, options, False, shared_memory)
    strategy, opt, sharded = _train(name, options, True, shared_memory)
    for a, b in zip(plain, sharded):
        assert a.numpy().tobytes() == b.numpy().tobytes()
    blobs = strategy.communicator.allgather_bytes(b"".join(v.numpy().tobytes() for v in sharded))
    assert len(set(blobs)) == 1


@pytest.mark.mpi
@pytest.mark.parametrize("shared_memory", [True, False])
def test_slot_parts_of_all_ranks_make_the_unsharded_slots(comm_world, shared_memory):
    _, plain_opt, _ = _train("adam", {}, False, shared_memory)
    strategy, opt, _ = _train("adam", {}, True, shared_memory)
    comm = strategy.communicator
    for name in ("momentum", "velocity"):
        full = np.concatenate([s.value.reshape(-1) for s in plain_opt._slots[name]])
        mine = np.concatenate([s.value.reshape(-1) for s in opt._slots[name]])
        parts = comm.allgather_bytes(mine.tobytes())
        np.testing.assert_array_equal(np.frombuffer(b"".join(parts), full.dtype), full)


def _state_bytes(opt):
    return sum(a.nbytes for arenas in opt._slot_arenas.values() for a in arenas.values())


@pytest.mark.mpi
def test_state_memory_per_rank_is_one_nth(comm_world):
    size = comm_world.Get_size()
    _, plain_opt, _ = _train("adam", {}, False, "auto", steps=1)
    _, opt, _ = _train("adam", {}, True, "auto", steps=1)
    ratio = _state_bytes(opt) / _state_bytes(plain_opt)
    everyone = comm_world.allgather(ratio)
    for r in everyone:
        assert abs(r - 1 / size) <= 0.05 / size, everyone
    assert abs(sum(everyone) - 1) < 1e-12


@pytest.mark.mpi
def test_per_tensor_optimizer_is_refused_and_nothing_changes(comm_world):
    distopt.utils.clear_session()
    strategy = MPIStrategy(shard_optimizer_state=True)
    with strategy.scope():
        v = distopt.Variable(np.ones((4, 4)))
        opt = distopt.optimizers.Lamb(learning_rate=0.1)
    with pytest.raises(
        ValueError, match=r"shards the state of elementwise optimizers.*Lamb updates whole tensors"
    ):
        strategy.run(lambda: opt.apply_gradients([(np.ones((4, 4), np.float32), v)]))
    np.testing.assert_array_equal(v.numpy(), np.ones((4, 4), np.float32))
    assert int(opt.iterations.value) == 0 and not opt.built


def test_bad_shard_argument_is_rejected():
    with pytest.raises(ValueError, match="`shard_optimizer_state` must be True or False"):
        MPIStrategy(shard_optimizer_state="yes")
