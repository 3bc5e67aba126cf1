"""Distributed datasets: disjoint shares, the tail rule, the same step count on every rank."""

import warnings

import numpy as np
import pytest

from distopt.comm import LocalCommunicator
from distopt.distribute import (
    CollectiveMismatchError,
    DistributedDataset,
    InputContext,
    MPIStrategy,
    Strategy,
)


def batches(num_examples, batch_size):
    """Global batches of example ids, as a (features, {"id": ids}) structure."""
    ids = np.arange(num_examples)
    return [
        (ids[i : i + batch_size, None] * np.ones((1, 2)), {"id": ids[i : i + batch_size]})
        for i in range(0, num_examples, batch_size)
    ]


def expected_ids(num_examples, batch_size, size):
    """The ids the tail rule keeps: the first (B // N) * N of each global batch."""
    kept = []
    for b in batches(num_examples, batch_size):
        ids = b[1]["id"]
        kept += list(ids[: (len(ids) // size) * size])
    return kept


@pytest.mark.mpi
@pytest.mark.parametrize(
    "num_examples, batch_size",
    [(24, 12), (24, 8), (25, 12), (23, 6), (10, 4), (7, 7), (3, 2), (13, 5)],
)
def test_shared_dataset_sharding(comm_world, num_examples, batch_size):
    strategy = MPIStrategy()
    size = comm_world.size
    data = strategy.experimental_distribute_dataset(batches(num_examples, batch_size))
    assert isinstance(data, DistributedDataset)
    for _epoch in range(2):
        seen, shares = [], set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for features, extra in data:
                assert features.shape == (len(extra["id"]), 2)
                np.testing.assert_array_equal(features[:, 0], extra["id"])
                shares.add(len(extra["id"]))
                seen.append(list(extra["id"]))
        everyone = comm_world.allgather(seen)
        steps = {len(s) for s in everyone}
        assert len(steps) == 1, f"ranks ran different step counts: {steps}"
        flat = [i for s in everyone for step in s for i in step]
        assert len(flat) == len(set(flat)), "an example was seen twice"
        assert sorted(flat) == expected_ids(num_examples, batch_size, size)
        if num_examples % batch_size == 0 and batch_size % size == 0:
            assert sorted(flat) == list(range(num_examples))
        # Within a step the shares are equal and consecutive, rank order.
        for step in zip(*everyone):
            assert len({len(s) for s in step}) == 1
            joined = [i for s in step for i in s]
            assert joined == list(range(joined[0], joined[0] + len(joined)))


@pytest.mark.mpi
def test_tail_rule_warns(comm_world):
    strategy = MPIStrategy()
    size = comm_world.size
    data = strategy.experimental_distribute_dataset([np.arange(size + 1)])
    if size == 1:
        assert [list(x) for x in data] == [[0, 1]]
        return
    with pytest.warns(UserWarning, match=rf"global batch of {size + 1} examples does not divide"):
        out = list(data)
    assert [list(x) for x in out] == [[comm_world.rank]]


@pytest.mark.mpi
def test_per_rank_datasets_stop_together(comm_world):
    strategy = MPIStrategy()
    rank, size = comm_world.rank, comm_world.size
    contexts = []

    def dataset_fn(ctx):
        contexts.append(ctx)
        # Rank r shards ids r, r + N, ...: uneven lengths when N does not divide 10.
        ids = np.arange(ctx.input_pipeline_id, 10, ctx.num_input_pipelines)
        return [ids[i : i + 2] for i in range(0, len(ids), 2)]

    data = strategy.distribute_datasets_from_function(dataset_fn)
    (ctx,) = contexts
    assert (ctx.input_pipeline_id, ctx.num_input_pipelines, ctx.num_replicas_in_sync) == (
        rank,
        size,
        size,
    )
    mine = dataset_fn(InputContext(size, rank, size))
    shortest = min(len(dataset_fn(InputContext(size, r, size))) for r in range(size))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [list(b) for b in data]
    assert got == [list(b) for b in mine[:shortest]]
    dropped = len(mine) > shortest
    assert any("dataset ended" in str(w.message) for w in caught) == dropped
    everyone = comm_world.allgather(got)
    flat = [i for s in everyone for b in s for i in b]
    assert len(flat) == len(set(flat))
    assert len({len(s) for s in everyone}) == 1


@pytest.mark.mpi(min_size=2)
def test_shared_dataset_that_differs_across_ranks_raises_everywhere(comm_world):
    strategy = MPIStrategy(collective_timeout=60)
    rank = comm_world.rank
    data = [np.arange(4), np.arange(4 + (rank == 1))]
    it = iter(strategy.experimental_distribute_dataset(data))
    next(it)
    with pytest.raises(
        CollectiveMismatchError, match=r"global batch sizes of step 2 differ .*rank 1: 5"
    ):
        next(it)
    assert strategy.reduce("SUM", 1) == comm_world.size


@pytest.mark.mpi(min_size=2)
def test_shared_dataset_of_different_lengths_stops_at_the_shortest(comm_world):
    strategy = MPIStrategy(collective_timeout=60)
    size = comm_world.size
    data = [np.arange(size)] * (3 if comm_world.rank == 1 else 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(list(strategy.experimental_distribute_dataset(data))) == 2


def test_single_process_datasets():
    strategy = Strategy(LocalCommunicator())
    assert [list(x) for x in strategy.experimental_distribute_dataset([np.arange(3)])] == [
        [0, 1, 2]
    ]
    gen = strategy.experimental_distribute_dataset(np.arange(6).reshape(3, 2) for _ in range(2))
    assert len(list(gen)) == 2 and list(gen) == []  # a generator is one pass, as in Python
    data = strategy.distribute_datasets_from_function(
        lambda ctx: [np.zeros(ctx.num_replicas_in_sync)]
    )
    assert len(list(data)) == 1
    assert "global batches" in repr(strategy.experimental_distribute_dataset([]))


@pytest.mark.parametrize(
    "batch, message",
    [
        (np.float64(1.0), r"batch has shape \(\)"),
        ((np.zeros(3), np.zeros(4)), r"same leading \(batch\) size. Received sizes \[3, 4\]"),
        ({"x": 5}, r"batch\['x'\] has shape \(\)"),
    ],
)
def test_bad_batches(batch, message):
    strategy = Strategy(LocalCommunicator())
    with pytest.raises(ValueError, match=message):
        list(strategy.experimental_distribute_dataset([batch]))


def test_bad_dataset_arguments():
    strategy = Strategy(LocalCommunicator())
    with pytest.raises(TypeError, match="`dataset` must be an iterable of batches"):
        strategy.experimental_distribute_dataset(3)
    with pytest.raises(TypeError, match="`dataset_fn` must be callable"):
        strategy.distribute_datasets_from_function([1])
    with pytest.raises(TypeError, match="must return an iterable of per-replica batches"):
        strategy.distribute_datasets_from_function(lambda ctx: 3)


def test_input_context():
    ctx = InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4)
    assert ctx.get_per_replica_batch_size(8) == 2
    with pytest.raises(ValueError, match="The `global_batch_size` 6 is not divisible by"):
        ctx.get_per_replica_batch_size(6)
    assert "input_pipeline_id=1" in repr(ctx)
