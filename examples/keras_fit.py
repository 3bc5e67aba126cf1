"""The seed's Keras model, trained data-parallel with `fit` (any number of MPI ranks).

    KERAS_BACKEND=jax distoptrun -np 2 examples/keras_fit.py --epochs 5

Every rank generates the same data set, takes its share of each global batch
(`shard_arrays`) and calls `fit` with the per-rank batch size. `DistributedOptimizer`
averages the gradients across ranks (Keras's losses are means over the local batch), so
every rank holds the same weights, and N ranks train as one process on batches N times
larger. Only rank 0 prints progress; metrics are averaged over the ranks first.
"""

from __future__ import annotations

import argparse
import hashlib
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

import distopt.keras as dk  # noqa: E402

FEATURES, CLASSES = 10, 64


def make_data(n: int, seed: int = 0):
    """64 classes of 10-D points around fixed centres (deterministic on every rank)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(CLASSES, FEATURES))
    labels = rng.integers(0, CLASSES, size=n)
    x = centers[labels] + rng.normal(0, 0.5, size=(n, FEATURES))
    return x.astype("float32"), keras.utils.to_categorical(labels, CLASSES)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--samples", type=int, default=8192)
    args = parser.parse_args()
    rank, size = dk.rank(), dk.size()
    keras.utils.set_random_seed(1)

    # The seed's model.
    model = keras.Sequential()
    model.add(keras.Input(shape=(FEATURES,)))
    model.add(layers.Dense(CLASSES, kernel_initializer="uniform"))
    model.add(layers.Activation("softmax"))
    opt = keras.optimizers.Adam(learning_rate=0.01)
    model.compile(
        loss="categorical_crossentropy",
        optimizer=dk.DistributedOptimizer(opt),
        metrics=["accuracy"],
    )

    x, y = make_data(args.samples)
    x_local, y_local = dk.shard_arrays(x, y, batch_size=args.batch_size)
    callbacks = [dk.BroadcastGlobalVariablesCallback(), dk.MetricAverageCallback()]
    if rank == 0:
        print(f"{size} ranks x {args.batch_size} examples per step ({keras.backend.backend()})")
    history = model.fit(
        x_local,
        y_local,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=False,  # keeps each rank's batches aligned with the global batches
        callbacks=callbacks,
        verbose=2 if rank == 0 else 0,
    )
    digest = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    accuracy = history.history["accuracy"][-1]
    print(f"rank {rank}: accuracy {accuracy:.3f} weights sha256 {digest[:16]}", flush=True)


if __name__ == "__main__":
    main()
