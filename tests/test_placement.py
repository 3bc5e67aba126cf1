"""Same bits whatever the placement of ranks: the sum is ((x0 + x1) + x2) + ... in rank
order on the plain path, in shared memory and across (pseudo-)nodes alike."""

import numpy as np
import pytest

import distopt
from distopt.collectives import _nodes, _shm
from distopt.collectives._shm import SharedMemoryReducer
from distopt.distribute import MPIStrategy, ReduceOp

SHAPES = [(300,), (7, 3), (2000,)]
DTYPES = ["float32", "float64", "float32"]


def _grads(rank):
    # Magnitudes spread over many decades: a different order of additions shows in the bits.
    rng = np.random.default_rng(100 + rank)
    return [
        (rng.standard_normal(s) * 10.0 ** rng.uniform(-6, 6, s)).astype(d)
        for s, d in zip(SHAPES, DTYPES)
    ]


def _rank_order(size, mean):
    everyone = [_grads(r) for r in range(size)]
    out = []
    for k, dt in enumerate(DTYPES):
        acc = everyone[0][k].copy()
        for r in range(1, size):
            acc = acc + everyone[r][k]
        out.append(np.divide(acc, size).astype(dt) if mean else acc)
    return out


def _train_once(rank, op, **options):
    distopt.utils.clear_session()
    strategy = MPIStrategy(gradient_reduce_op=op, **options)
    with strategy.scope():
        variables = [distopt.Variable(np.zeros(s), dtype=d) for s, d in zip(SHAPES, DTYPES)]
        opt = distopt.optimizers.SGD(learning_rate=1.0)
    grads = _grads(rank)
    strategy.run(lambda: opt.apply_gradients(zip(grads, variables)))
    reducer = strategy._reducer
    kind = (type(reducer).__name__, getattr(getattr(reducer, "groups", None), "num_nodes", 0))
    strategy.close()
    return [-v.numpy() for v in variables], kind


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("op", [ReduceOp.SUM, ReduceOp.MEAN])
@pytest.mark.parametrize("in_place_bytes", [0, 1 << 40])
def test_every_grouping_gives_the_rank_order_bits(comm_world, monkeypatch, op, in_place_bytes):
    monkeypatch.setattr(_shm, "IN_PLACE_BYTES", in_place_bytes)
    rank, size = comm_world.Get_rank(), comm_world.Get_size()
    expected = _rank_order(size, op is ReduceOp.MEAN)
    layouts = {}
    for label, per_node in [("plain", None), ("one node", None), ("1", 1), ("2", 2), ("3", 3)]:
        if per_node is None:
            monkeypatch.delenv(_nodes.RANKS_PER_NODE_ENV, raising=False)
        else:
            monkeypatch.setenv(_nodes.RANKS_PER_NODE_ENV, str(per_node))
        got, layouts[label] = _train_once(rank, op, shared_memory=label != "plain")
        for g, want in zip(got, expected):
            assert g.tobytes() == want.tobytes(), (label, size)
    if size == 4:  # 1 x 4, 2 x 2 and 3 + 1 ranks all went through shared memory
        assert layouts["one node"] == ("SharedMemoryReducer", 1)
        assert layouts["2"] == ("SharedMemoryReducer", 2)
        assert layouts["3"] == ("SharedMemoryReducer", 2)
    assert layouts["plain"][0] == "PieceReducer"


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_pseudo_nodes_are_blocks_of_consecutive_ranks(comm_world, monkeypatch):
    rank, size = comm_world.Get_rank(), comm_world.Get_size()
    monkeypatch.setenv(_nodes.RANKS_PER_NODE_ENV, "2")
    strategy = MPIStrategy(shared_memory=True)
    reducer = strategy._reducer
    assert isinstance(reducer, SharedMemoryReducer)
    groups = reducer.groups
    assert (groups.node_index, groups.local_rank) == (rank // 2, rank % 2)
    assert groups.num_nodes == (size + 1) // 2 and groups.contiguous
    strategy.close()


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_bad_ranks_per_node_is_rejected_before_any_collective(monkeypatch, value):
    monkeypatch.setenv(_nodes.RANKS_PER_NODE_ENV, value)
    with pytest.raises(
        ValueError, match=f"DISTOPT_RANKS_PER_NODE must be a positive integer.*'{value}'"
    ):
        MPIStrategy()
