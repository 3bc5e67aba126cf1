"""Checkpoint cases run under mpiexec by test_checkpoint_resharding.py.

    _checkpoint_worker.py save DIR OUT      trains every case SAVE_AT steps, saves it in DIR,
                                            trains on to END; OUT gets the final weights
    _checkpoint_worker.py restore DIR OUT   restores every case into fresh variables (saved with
                                            ZeRO-1 into a run without, and the other way
                                            round) and trains to END; OUT gets the final weights

The gradient of a step is a sum over a global batch of 12 examples split among the ranks,
so the trajectory does not depend on the world size beyond the summation order.
"""

import sys

import numpy as np

import distopt
from distopt import optimizers as o
from distopt.checkpoint import CheckpointManager
from distopt.distribute import MPIStrategy

SHAPES = [(6, 5), (5,), (3, 4, 2), (7,)]
BATCH = 12
SAVE_AT, END = 5, 9
CASES = {
    "adam": lambda: o.Adam(0.01, weight_decay=0.004),
    "sgd_schedule": lambda: o.SGD(
        o.schedules.ExponentialDecay(0.1, 3, 0.5), momentum=0.9, nesterov=True
    ),
    "rmsprop": lambda: o.RMSprop(0.01, centered=True, momentum=0.5),
    "lamb": lambda: o.Lamb(0.01),
    "adafactor": lambda: o.Adafactor(0.05),
    "loss_scale": lambda: o.LossScaleOptimizer(
        o.Adam(0.01), initial_scale=2.0**10, dynamic_growth_steps=2
    ),
    "ema": lambda: o.Adam(0.01, use_ema=True, ema_overwrite_frequency=3),
    "accumulation": lambda: o.Adam(0.01, gradient_accumulation_steps=2),
}


def gradients(step, weights, rank, size):
    """This rank's share of the global batch's gradient (the SUM over ranks is the whole)."""
    rng = np.random.default_rng(1000 + step)
    scales = rng.standard_normal(BATCH)
    examples = [rng.standard_normal((BATCH, *s)) for s in SHAPES]
    share = BATCH // size
    mine = slice(rank * share, (rank + 1) * share)
    return [
        (w.value * scales[mine].reshape(-1, *([1] * w.ndim)) + x[mine]).sum(axis=0) / BATCH
        for w, x in zip(weights, examples)
    ]


def make(strategy, case, initial):
    with strategy.scope():
        weights = [distopt.Variable(initial(s), dtype="float64") for s in SHAPES]
        optimizer = CASES[case]()
    return weights, optimizer


def train(strategy, weights, optimizer, start, stop):
    comm = strategy.communicator
    for step in range(start, stop):
        grads = gradients(step, weights, comm.rank, comm.size)
        if isinstance(optimizer, o.LossScaleOptimizer):
            grads = [optimizer.scale_loss(g) for g in grads]
        strategy.run(lambda g=grads: optimizer.apply_gradients(zip(g, weights)))


def same_on_every_rank(strategy, weights):
    blobs = strategy.communicator.allgather_bytes(b"".join(w.value.tobytes() for w in weights))
    if len(set(blobs)) != 1:
        raise AssertionError("the ranks hold different weights")


def main(mode, directory, out):
    strategies = {shard: MPIStrategy(shard_optimizer_state=shard) for shard in (False, True)}
    rank = strategies[False].communicator.rank
    results = {}
    for case in CASES:
        for saved in (False, True):
            tag = f"{case}-{'zero' if saved else 'plain'}"
            manager = CheckpointManager(f"{directory}/{tag}")
            if mode == "save":
                distopt.utils.clear_session()
                rng = np.random.default_rng(7)
                strategy = strategies[saved]
                weights, optimizer = make(strategy, case, rng.standard_normal)
                train(strategy, weights, optimizer, 0, SAVE_AT)
                extras = {"epoch": 2, "marker": np.arange(3.0), "rng": rng.bit_generator.state}
                manager.save(SAVE_AT, weights, optimizer, extras=extras)
                train(strategy, weights, optimizer, SAVE_AT, END)
                same_on_every_rank(strategy, weights)
                results.update({f"{tag}/{i}": w.numpy() for i, w in enumerate(weights)})
                continue
            for restored in (not saved,):  # covers saving and restoring with and without
                distopt.utils.clear_session()
                strategy = strategies[restored]
                weights, optimizer = make(strategy, case, np.zeros)
                extras = manager.restore(weights, optimizer)
                if extras["epoch"] != 2 or not np.array_equal(extras["marker"], np.arange(3.0)):
                    raise AssertionError(f"extras came back as {extras}")
                it = optimizer.iterations
                if int(np.asarray(getattr(it, "value", it))) != SAVE_AT // (
                    2 if case == "accumulation" else 1
                ):
                    raise AssertionError(f"iterations came back as {optimizer.iterations}")
                train(strategy, weights, optimizer, SAVE_AT, END)
                same_on_every_rank(strategy, weights)
                key = f"{tag}-into-{'zero' if restored else 'plain'}"
                results.update({f"{key}/{i}": w.numpy() for i, w in enumerate(weights)})
    if rank == 0:
        np.savez(out, **results)
    for strategy in strategies.values():
        strategy.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
