"""Data-parallel training of a numpy MLP with distopt (the seed's custom-loop pattern).

    distoptrun -np 2 examples/mlp_classification.py --epochs 20
    distoptrun -np 2 --restarts 3 examples/mlp_classification.py --checkpoint-dir ckpt

Every rank generates the same deterministic 3-class data set, takes its share of each global
batch, computes gradients of the loss scaled by the global batch size, and calls
`optimizer.apply_gradients(zip(grads, weights))` inside `strategy.run`: the gradients are
SUM-all-reduced, so N ranks produce the same update as one process on the whole batch.

With `--checkpoint-dir`, the run saves a checkpoint every `--checkpoint-every` steps (the
weights, the optimizer state and where in the data it is) and, when started again (e.g.
relaunched by `distoptrun --restarts`), resumes from the newest one: the resumed run ends
with the same weights, bit for bit, as one that was never interrupted.
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np

import distopt
from distopt.checkpoint import CheckpointManager
from distopt.distribute import MPIStrategy, ReduceOp

NUM_CLASSES = 3
NUM_FEATURES = 10


def make_data(n: int = 1536, seed: int = 0):
    """Three Gaussian clusters in 10-D pushed through a fixed nonlinearity (deterministic)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, size=(NUM_CLASSES, NUM_FEATURES))
    y = rng.integers(0, NUM_CLASSES, size=n)
    x = centers[y] + rng.normal(0, 1.0, size=(n, NUM_FEATURES))
    x = np.tanh(x) + 0.1 * x**2
    return x.astype(np.float64), y


def init_weights(hidden: int, seed: int = 1, dtype="float64"):
    rng = np.random.default_rng(seed)
    shapes = [(NUM_FEATURES, hidden), (hidden,), (hidden, NUM_CLASSES), (NUM_CLASSES,)]
    names = ["dense/kernel", "dense/bias", "logits/kernel", "logits/bias"]
    values = [
        rng.normal(0, np.sqrt(2.0 / s[0]), size=s) if len(s) == 2 else np.zeros(s) for s in shapes
    ]
    return [
        distopt.Variable(v, name=n.replace("/", "_"), dtype=dtype) for v, n in zip(values, names)
    ]


def forward(weights, x):
    w1, b1, w2, b2 = (w.value for w in weights)
    h = np.maximum(x @ w1 + b1, 0.0)
    logits = h @ w2 + b2
    return h, logits


def loss_and_grads(weights, x, y, global_batch_size, out=None):
    """Cross-entropy summed over this shard / global batch size, and its gradients.

    `out` (e.g. `strategy.gradient_buffers(weights)`) receives the gradients in place.
    """
    w1, b1, w2, b2 = (w.value for w in weights)
    h, logits = forward(weights, x)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(y)), y].sum() / global_batch_size
    d_logits = np.exp(log_probs)
    d_logits[np.arange(len(y)), y] -= 1.0
    d_logits /= global_batch_size
    d_h = (d_logits @ w2.T) * (h > 0)
    grads = out if out is not None else [np.empty_like(w.value) for w in weights]
    np.matmul(x.T, d_h, out=grads[0])
    np.sum(d_h, axis=0, out=grads[1])
    np.matmul(h.T, d_logits, out=grads[2])
    np.sum(d_logits, axis=0, out=grads[3])
    return loss, grads


def shard(n: int, rank: int, size: int) -> slice:
    """This rank's contiguous share of n examples (sizes differ by at most one)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def train(
    strategy, epochs=20, batch_size=64, hidden=32, learning_rate=0.01, log=print,
    checkpoint_dir=None, checkpoint_every=10,
):  # fmt: skip
    """Trains on `strategy` (one replica per rank); returns (weights, per-epoch losses).

    With `checkpoint_dir`: resumes from its newest checkpoint if there is one, and saves
    one every `checkpoint_every` steps.
    """
    x, y = make_data()
    rank, size = strategy.communicator.rank, strategy.num_replicas_in_sync
    with strategy.scope():
        weights = init_weights(hidden)
        optimizer = distopt.optimizers.Adam(learning_rate=learning_rate)
    buffers = strategy.gradient_buffers(weights)

    def train_step(xb, yb, global_batch):
        loss, grads = loss_and_grads(weights, xb, yb, global_batch, out=buffers)
        optimizer.apply_gradients(zip(grads, weights))
        return loss

    # Where the run is: the next batch, and the losses so far (restored with the checkpoint).
    position = {"epoch": 0, "start": 0, "step": 0, "epoch_loss": 0.0, "losses": []}
    manager = CheckpointManager(checkpoint_dir) if checkpoint_dir else None
    if manager is not None and manager.latest_step() is not None:
        position = manager.restore(weights, optimizer)["position"]
        if rank == 0 and log:
            log(f"resumed from step {position['step']} (epoch {position['epoch'] + 1})")
    losses = position["losses"]
    for epoch in range(position["epoch"], epochs):
        first = position["start"] if epoch == position["epoch"] else 0
        epoch_loss = position["epoch_loss"] if epoch == position["epoch"] else 0.0
        for start in range(first, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            mine = shard(len(xb), rank, size)
            local = strategy.run(train_step, args=(xb[mine], yb[mine], len(xb)))
            epoch_loss += float(strategy.reduce(ReduceOp.SUM, local)) * len(xb) / len(x)
            position["step"] += 1
            if manager is not None and position["step"] % checkpoint_every == 0:
                position.update(epoch=epoch, start=start + batch_size, epoch_loss=epoch_loss)
                manager.save(position["step"], weights, optimizer, extras={"position": position})
        losses.append(epoch_loss)
        if rank == 0 and log:
            log(f"epoch {epoch + 1:3d}  loss {epoch_loss:.6f}")
    return weights, losses


def accuracy(weights) -> float:
    x, y = make_data()
    return float(np.mean(forward(weights, x)[1].argmax(axis=1) == y))


def weights_digest(weights) -> bytes:
    h = hashlib.sha256()
    for w in weights:
        h.update(w.value.tobytes())
    return h.digest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--checkpoint-dir", help="save checkpoints here; resume from the newest")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="steps between saves")
    args = parser.parse_args(argv)

    strategy = MPIStrategy()
    rank, size = strategy.communicator.rank, strategy.num_replicas_in_sync
    if rank == 0:
        print(f"distopt {distopt.__version__}: training on {size} rank(s)")
    weights, _ = train(
        strategy, args.epochs, args.batch_size, learning_rate=args.learning_rate,
        checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
    )  # fmt: skip
    acc = accuracy(weights)
    digests = strategy.communicator.allgather_bytes(weights_digest(weights))
    identical = all(d == digests[0] for d in digests)
    if rank == 0:
        print(f"final accuracy {acc:.4f}")
        print(f"weights identical on all {size} ranks: {identical} (sha256 {digests[0].hex()})")
    if not identical:
        raise SystemExit("ranks hold different weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
