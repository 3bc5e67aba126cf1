"""Keras weight files and ZeRO-1: each rank loads its part, saving gathers the whole state.

The file is written in Keras's layout (`optimizer/vars/<i>`) with h5py alone, so this runs
under mpiexec without importing Keras (test_checkpoint_keras.py uses real Keras models).
"""

import tempfile

import numpy as np
import pytest

import distopt
from distopt.checkpoint import (
    load_keras_optimizer_state,
    read_keras_optimizer_variables,
    save_keras_optimizer_state,
)
from distopt.distribute import MPIStrategy

h5py = pytest.importorskip("h5py")
SHAPES = [(9, 7), (7,), (5, 3, 2)]
pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]
FAMILIES = {
    "adam": lambda: distopt.optimizers.Adam(0.01),
    "lamb": lambda: distopt.optimizers.Lamb(0.01),
    "accumulation": lambda: distopt.optimizers.Adam(0.01, gradient_accumulation_steps=2),
}


def _trained(shard, family, steps=3):
    strategy = MPIStrategy(shard_optimizer_state=shard)
    with strategy.scope():
        rng = np.random.default_rng(0)
        weights = [distopt.Variable(rng.standard_normal(s), dtype="float64") for s in SHAPES]
        optimizer = FAMILIES[family]()
    for step in range(steps):
        grads = [np.random.default_rng([step, 7]).standard_normal(s) for s in SHAPES]
        strategy.run(lambda g=grads: optimizer.apply_gradients(zip(g, weights)))
    return strategy, weights, optimizer


def _keras_file(comm, values):
    path = tempfile.mktemp(suffix=".weights.h5") if comm.rank == 0 else None
    path = comm.bcast(path, root=0)
    if comm.rank == 0:
        with h5py.File(path, "w") as f:
            group = f.create_group("optimizer/vars")
            for i, value in enumerate(values):
                group[str(i)] = value
    comm.Barrier()
    return path


@pytest.mark.parametrize("family", list(FAMILIES))
def test_zero_sharded_state_to_and_from_a_keras_file(comm_world, family):
    # Steps 1..3 with accumulation leave gradients accumulated (identical on every rank,
    # as these gradients are): the file then holds their sum over the ranks.
    plain_strategy, _, plain = _trained(False, family)
    whole = [v.numpy() for v in plain.variables]
    strategy, _, sharded = _trained(True, family)
    path = _keras_file(comm_world, [np.zeros_like(v) for v in whole])
    save_keras_optimizer_state(path, sharded)
    comm_world.Barrier()
    saved = read_keras_optimizer_variables(path)
    ranks = comm_world.size
    for i, (got, expected) in enumerate(zip(saved, whole)):
        is_accumulator = "gradient_accumulator" in plain.variables[i].path
        assert np.array_equal(got, expected * ranks if is_accumulator else expected), i
    # Back: every rank takes its part; rank 0 the accumulators' sum.
    strategy2, weights2, fresh = _trained(True, family, steps=0)
    fresh.build(weights2)
    load_keras_optimizer_state(path, fresh)
    for mine, theirs in zip(fresh.variables, sharded.variables):
        if "gradient_accumulator" in mine.path:
            expected = theirs.numpy() * ranks if comm_world.rank == 0 else 0 * theirs.numpy()
            assert np.array_equal(mine.numpy(), expected), mine.path
        else:
            assert np.array_equal(mine.numpy(), theirs.numpy()), mine.path
    comm_world.Barrier()
    for s in (plain_strategy, strategy, strategy2):
        s.close()
