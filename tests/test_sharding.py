"""ZeRO-1: `MPIStrategy(shard_optimizer_state=True)` gives the same bits with 1/N of the state."""

import json
from pathlib import Path

import numpy as np
import pytest

import distopt
from distopt.collectives import _reducers
from distopt.distribute import MPIStrategy, ReduceOp
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
    # Per-tensor maths: each rank owns whole tensors.
    ("adafactor", {}),
    ("adafactor", {"weight_decay": 0.01, "clipnorm": 1.0}),
    ("lamb", {}),
    ("lamb", {"weight_decay": 0.01, "use_ema": True}),
    ("muon", {}),
    ("muon", {"exclude_embeddings": False, "gradient_accumulation_steps": 2}),
    ("loss_scale_lamb", {"initial_scale": 8.0}),
]


def _train(name, options, shard, shared_memory, dtype="float32", steps=3, op=ReduceOp.SUM):
    distopt.utils.clear_session()
    strategy = MPIStrategy(
        shard_optimizer_state=shard, shared_memory=shared_memory, gradient_reduce_op=op
    )
    rank = strategy.communicator.rank
    with strategy.scope():
        rng = np.random.default_rng(0)
        variables = [distopt.Variable(rng.standard_normal(s), dtype=dtype) for s in SHAPES]
        if name == "loss_scale_lamb":
            inner = distopt.optimizers.Lamb(learning_rate=0.01)
            opt = distopt.optimizers.LossScaleOptimizer(inner, **options)
        else:
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
    _, plain_opt, plain = _train(name, options, False, shared_memory)
    strategy, opt, sharded = _train(name, options, True, shared_memory)
    # Keras's state names and order hold (a rank's slots for others' tensors are empty).
    assert [v.path for v in opt.variables] == [v.path for v in plain_opt.variables]
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


@pytest.mark.mpi
@pytest.mark.parametrize("op", [ReduceOp.SUM, ReduceOp.MEAN])
@pytest.mark.parametrize(
    "name,options,scattered",
    [("adam", {}, True), ("sgd", {"clipvalue": 0.5}, True), ("lion", {"clipnorm": 1.0}, False)],
)
def test_plain_mpi_sharding_reduce_scatters_when_nothing_reads_whole_gradients(
    comm_world, monkeypatch, name, options, scattered, op
):
    calls = []
    real = _reducers.reduce_scatter_flat

    def spy(*args, **kwargs):
        calls.append(args[1].size)
        return real(*args, **kwargs)

    monkeypatch.setattr(_reducers, "reduce_scatter_flat", spy)
    _, _, plain = _train(name, options, False, False, dtype="float64", op=op)
    assert calls == []
    strategy, _, sharded = _train(name, options, True, False, dtype="float64", op=op)
    for a, b in zip(plain, sharded):
        assert a.numpy().tobytes() == b.numpy().tobytes()
    # Per-tensor clipping reads whole gradients: those keep the full reduction.
    expect_calls = scattered and strategy.communicator.size > 1
    assert calls == ([sum(int(np.prod(s)) for s in SHAPES)] * 3 if expect_calls else [])


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


def _slot_bytes(opt):
    return sum(v.value.nbytes for v in opt.variables if v.ndim)  # scalars: step counters


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["adafactor", "lamb", "muon"])
def test_per_tensor_state_memory_per_rank_is_one_nth(comm_world, name):
    """ResNet-50's 161 tensor sizes (1-D): whole tensors balanced over the ranks."""
    size = comm_world.Get_size()
    sizes = json.loads((Path(__file__).parent / "data" / "resnet50_grad_sizes.json").read_text())
    variables = [distopt.Variable(np.zeros(n, np.float32)) for n in sizes["sizes"]]
    plain = _registry._BUILTINS[name](learning_rate=0.01)
    plain.build(variables)
    whole = _slot_bytes(plain)
    del plain
    strategy = MPIStrategy(shard_optimizer_state=True)
    with strategy.scope():
        variables = [distopt.Variable(np.zeros(n, np.float32)) for n in sizes["sizes"]]
        opt = _registry._BUILTINS[name](learning_rate=0.01)
    opt.build(variables)
    everyone = [b / whole for b in comm_world.allgather(_slot_bytes(opt))]
    assert abs(sum(everyone) - 1) < 1e-12  # every tensor's state on exactly one rank
    for fraction in everyone:
        assert abs(fraction - 1 / size) <= 0.05 / size, everyone
    if comm_world.rank == 0:
        print(f"{name} state per rank at {size} ranks: {[f'{f:.5f}' for f in everyone]}")


def _step(strategy, opt, variables, seed):
    rng = np.random.default_rng(seed + strategy.communicator.rank)
    grads = [rng.standard_normal(v.shape).astype(v.dtype) for v in variables]
    strategy.run(lambda: opt.apply_gradients(zip(grads, variables)))


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["adafactor", "lamb", "muon"])
def test_per_tensor_sharded_state_saves_and_loads(comm_world, name):
    strategy, opt, variables = _train(name, {}, True, True, steps=2)
    store = {}
    opt.save_own_variables(store)
    saved = [v.numpy() for v in variables]
    _step(strategy, opt, variables, 7)
    with strategy.scope():
        again = [distopt.Variable(x) for x in saved]
        fresh = _registry._BUILTINS[name](learning_rate=0.01)
    fresh.build(again)
    fresh.load_own_variables(store)
    _step(strategy, fresh, again, 7)
    for a, b in zip(variables, again):
        assert a.numpy().tobytes() == b.numpy().tobytes()


@pytest.mark.mpi
def test_per_tensor_owners_balance_and_agree(comm_world):
    strategy = MPIStrategy(shard_optimizer_state=True)
    sharding = strategy._optimizer_sharding
    owners = sharding.tensor_owners([5, 1, 5, 3, 3, 1, 0])
    assert len(set(map(tuple, comm_world.allgather(owners)))) == 1
    if comm_world.Get_size() == 2:
        assert owners == [0, 0, 1, 0, 1, 1, 0]  # largest first: loads 9 and 9


@pytest.mark.mpi
def test_custom_per_tensor_optimizer_is_refused_and_nothing_changes(comm_world):
    class Sign(distopt.optimizers.Optimizer):
        def update_step(self, gradient, variable, learning_rate):
            variable.assign_sub(np.sign(gradient) * learning_rate)

    distopt.utils.clear_session()
    strategy = MPIStrategy(shard_optimizer_state=True)
    with strategy.scope():
        v = distopt.Variable(np.ones((4, 4)))
        opt = Sign(learning_rate=0.1)
    with pytest.raises(
        ValueError,
        match=r"shards the state of elementwise optimizers .* by element and of Adafactor, "
        r"Lamb and Muon by whole tensor; Sign defines neither",
    ):
        strategy.run(lambda: opt.apply_gradients([(np.ones((4, 4), np.float32), v)]))
    np.testing.assert_array_equal(v.numpy(), np.ones((4, 4), np.float32))
    assert int(opt.iterations.value) == 0 and not opt.built


def test_bad_shard_argument_is_rejected():
    with pytest.raises(ValueError, match="`shard_optimizer_state` must be True or False"):
        MPIStrategy(shard_optimizer_state="yes")
