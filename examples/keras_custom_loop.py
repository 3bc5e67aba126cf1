"""A custom training loop on a Keras model, data-parallel (the seed's second pattern).

    KERAS_BACKEND=torch distoptrun -np 2 examples/keras_custom_loop.py
    KERAS_BACKEND=jax   distoptrun -np 2 examples/keras_custom_loop.py
    KERAS_BACKEND=tensorflow distoptrun -np 2 examples/keras_custom_loop.py

torch: `loss.backward()`, then `optimizer.apply_gradients(zip(grads,
model.trainable_weights))`. jax: a jit-compiled step around `model.stateless_call` and
`optimizer.stateless_apply` (the all-reduce runs inside the compiled step). tensorflow: a
`tf.function` step with `tf.GradientTape`, then `apply_gradients` (the all-reduce runs
inside the graph). Either way
`DistributedOptimizer` averages the gradients across ranks before Adam's update, and
`optimizer.build(...)` starts every rank from rank 0's weights.
"""

from __future__ import annotations

import argparse
import hashlib
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import distopt.keras as dk  # noqa: E402

FEATURES, CLASSES = 10, 8


def make_data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(CLASSES, FEATURES))
    labels = rng.integers(0, CLASSES, size=n)
    x = centers[labels] + rng.normal(0, 0.7, size=(n, FEATURES))
    return x.astype("float32"), keras.utils.to_categorical(labels, CLASSES).astype("float32")


def make_model():
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )


def batches(x, y, batch_size):
    for start in range(0, len(x) - batch_size + 1, batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def train_torch(model, optimizer, loss_fn, x, y, args):
    import torch

    for _ in range(args.epochs):
        for xb, yb in batches(x, y, args.batch_size):
            model.zero_grad()
            loss = loss_fn(torch.from_numpy(yb), model(torch.from_numpy(xb)))
            loss.backward()
            grads = [v.value.grad for v in model.trainable_weights]
            optimizer.apply_gradients(zip(grads, model.trainable_weights))
    return float(loss.detach())


def train_jax(model, optimizer, loss_fn, x, y, args):
    import jax

    def compute_loss(trainable, non_trainable, xb, yb):
        pred, non_trainable = model.stateless_call(trainable, non_trainable, xb, training=True)
        return loss_fn(yb, pred), non_trainable

    @jax.jit
    def step(state, xb, yb):
        trainable, non_trainable, opt_vars = state
        grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, xb, yb)
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return loss, (trainable, non_trainable, opt_vars)

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    for _ in range(args.epochs):
        for xb, yb in batches(x, y, args.batch_size):
            loss, state = step(state, xb, yb)
    for v, value in zip(model.trainable_variables, state[0]):
        v.assign(value)
    for v, value in zip(optimizer.variables, state[2]):
        v.assign(value)
    return float(loss)


def train_tensorflow(model, optimizer, loss_fn, x, y, args):
    import tensorflow as tf

    @tf.function  # not jit_compile=True: XLA cannot compile the all-reduce
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        return loss

    for _ in range(args.epochs):
        for xb, yb in batches(x, y, args.batch_size):
            loss = step(tf.constant(xb), tf.constant(yb))
    return float(loss)


TRAIN = {"torch": train_torch, "jax": train_jax, "tensorflow": train_tensorflow}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--samples", type=int, default=4096)
    args = parser.parse_args()
    rank = dk.rank()
    keras.utils.set_random_seed(rank)  # different on purpose: build() broadcasts rank 0's
    model = make_model()
    optimizer = dk.DistributedOptimizer(keras.optimizers.Adam(learning_rate=0.01))
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.CategoricalCrossentropy()
    x, y = make_data(args.samples)
    x, y = dk.shard_arrays(x, y, batch_size=args.batch_size)
    loss = TRAIN[keras.backend.backend()](model, optimizer, loss_fn, x, y, args)
    digest = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    steps = int(keras.ops.convert_to_numpy(optimizer.iterations))
    print(
        f"rank {rank}: {steps} steps, last loss {loss:.4f}, weights sha256 {digest[:16]}",
        flush=True,
    )


if __name__ == "__main__":
    main()
