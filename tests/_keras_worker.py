"""Keras training scenarios run under a real mpiexec by tests/test_keras_*.py.

    KERAS_BACKEND=jax mpiexec -n N python tests/_keras_worker.py SCENARIO OUT_DIR [args]

The backend comes from KERAS_BACKEND (float64 under jax also needs JAX_ENABLE_X64=1).
Results go to OUT_DIR/<name>-rank<r>.npz; messages the tests read are printed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import keras
import numpy as np

import distopt.keras as dk
from distopt.distribute import CollectiveMismatchError

FEATURES, CLASSES = 10, 8
STALL_SECONDS = 600


def make_data(n: int, dtype: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES))
    labels = (np.abs(x[:, :3].sum(axis=1) * 2).astype(int) + (x[:, 3] > 0)) % CLASSES
    return x.astype(dtype), np.eye(CLASSES, dtype=dtype)[labels]


def mean_crossentropy(y_true, y_pred):
    """Keras's categorical crossentropy, summed and divided by the batch size in the input's
    dtype. On the torch backend, Keras 3.15 averages float64 values with a float32 factor
    (`ops.mean` and the "sum_over_batch_size" reduction's `divide_no_nan`), which would make
    a float64 comparison a float32 one."""
    values = keras.losses.categorical_crossentropy(y_true, y_pred)
    count = keras.ops.cast(keras.ops.shape(values)[0], values.dtype)
    return keras.ops.sum(values) / count


def make_model(dtype: str, hidden: int = 16, seed: int = 1, loss=None):
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(hidden, activation="sigmoid"),
            keras.layers.Dense(CLASSES, kernel_initializer="uniform"),
            keras.layers.Activation("softmax"),
        ]
    )
    model.compile(
        loss=loss or "categorical_crossentropy",
        optimizer=dk.DistributedOptimizer(keras.optimizers.Adam(learning_rate=0.01)),
    )
    return model


def save(out: Path, name: str, model) -> None:
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    opt = model.optimizer
    arrays.update(
        {f"o{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(opt.variables)}
    )
    np.savez(out / f"{name}-rank{dk.rank()}.npz", **arrays)


def fit(model, x, y, global_batch: int, epochs: int = 1, callbacks=()):
    local = global_batch // dk.size()
    xs, ys = dk.shard_arrays(x, y, batch_size=local)
    model.fit(xs, ys, batch_size=local, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[dk.BroadcastGlobalVariablesCallback(), *callbacks])  # fmt: skip


def scenario_fit(out: Path, global_batch: str, steps: str, dtypes: str) -> None:
    """Same global batches at any world size: the weights must match one process's."""
    gb, n = int(global_batch), int(steps)
    for dtype in dtypes.split(","):
        x, y = make_data(gb * n, dtype)
        # XLA's float64 tanh is float32-accurate at some shapes: a sigmoid layer instead.
        model = make_model(dtype, loss=mean_crossentropy if dtype == "float64" else None)
        fit(model, x, y, gb)
        assert int(model.optimizer.iterations.numpy()) == n
        save(out, f"fit-{dtype}", model)


def scenario_save(out: Path, global_batch: str) -> None:
    """Fit, save on rank 0, load on every rank, fit on == two epochs without a break."""
    gb = int(global_batch)
    x, y = make_data(gb * 5, "float32")
    straight = make_model("float32")
    fit(straight, x, y, gb, epochs=2)
    save(out, "straight", straight)
    first = make_model("float32")
    fit(first, x, y, gb)
    if dk.rank() == 0:
        first.save(out / "model.keras")
    dk.get_strategy().reduce("sum", np.ones(1))  # the file is written before anyone reads
    save(out, "saved", first)
    loaded = keras.models.load_model(out / "model.keras")
    assert isinstance(loaded.optimizer, dk.DistributedOptimizer), loaded.optimizer
    fit(loaded, x, y, gb)
    save(out, "resumed", loaded)


def scenario_load_single(out: Path) -> None:
    """A model saved by a distributed job, loaded and trained on in a single process."""
    loaded = keras.models.load_model(out / "model.keras")
    assert dk.size() == 1
    save(out, "loaded", loaded)
    x, y = make_data(40, "float32")
    history = loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    print("LOADED-AND-TRAINED", int(loaded.optimizer.iterations.numpy()))


def scenario_mistakes(out: Path) -> None:
    """Different models per rank, then unequal data: CollectiveMismatchError everywhere."""
    rank = dk.rank()
    x, y = make_data(64, "float32")
    model = make_model("float32", hidden=16 + rank)
    try:
        fit(model, x, y, 8 * dk.size())
    except CollectiveMismatchError as e:
        print(f"MODELS-MISMATCH rank {rank}: {e}", flush=True)
    model = make_model("float32")
    xs, ys = x[: 64 - 8 * rank], y[: 64 - 8 * rank]
    try:
        model.fit(xs, ys, batch_size=8, shuffle=False, verbose=0,
                  callbacks=[dk.BroadcastGlobalVariablesCallback()])  # fmt: skip
    except CollectiveMismatchError as e:
        print(f"STEPS-MISMATCH rank {rank}: {e}", flush=True)
    # Uneven rows through shard_arrays: equal steps on every rank, training completes.
    x, y = make_data(8 * dk.size() * 3 + 5, "float32")
    model = make_model("float32")
    fit(model, x, y, 8 * dk.size(), callbacks=[dk.MetricAverageCallback()])
    save(out, "uneven", model)
    print(f"DONE rank {rank} steps {int(model.optimizer.iterations.numpy())}", flush=True)


class _RaiseAt(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if dk.rank() == 1 and batch == 2:
            raise RuntimeError("boom on rank 1 mid-epoch")


def scenario_raise(out: Path) -> None:
    x, y = make_data(8 * dk.size() * 20, "float32")
    model = make_model("float32")
    fit(model, x, y, 8 * dk.size(), callbacks=[_RaiseAt()])
    print("NOT-REACHED", flush=True)


class _StallAt(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if dk.rank() == 1 and batch == 3:
            time.sleep(STALL_SECONDS)


def scenario_stall(out: Path, deadline: str) -> None:
    """Rank 1 stalls between steps while the others wait in the step's all-reduce: the
    collective deadline must end the job."""
    from distopt.distribute import MPIStrategy, ReduceOp

    strategy = MPIStrategy(gradient_reduce_op=ReduceOp.MEAN, collective_timeout=float(deadline))
    model = make_model("float32")
    model.compile(loss="categorical_crossentropy",
                  optimizer=dk.DistributedOptimizer("adam", strategy=strategy))  # fmt: skip
    # Built here, eagerly and right after the strategy: only the stall outlasts the deadline.
    model.optimizer.build(model.trainable_variables)
    x, y = make_data(8 * 20, "float32")
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0, callbacks=[_StallAt()])
    print("NOT-REACHED", flush=True)


def scenario_tf_graph(out: Path) -> None:
    """TensorFlow: two optimizers in one `tf.function` step, rank-dependent gradients; then
    `fit` with `steps_per_execution=4` (steps inside a `tf.while_loop`) against 1."""
    import tensorflow as tf

    rank, n = dk.rank(), dk.size()
    first, second = (
        keras.Variable(np.zeros(3), name="first"),
        keras.Variable(np.zeros(2), name="second"),
    )
    opt_a = dk.DistributedOptimizer(keras.optimizers.SGD(1.0), name="a")
    opt_b = dk.DistributedOptimizer(keras.optimizers.SGD(1.0), name="b")

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = (rank + 1) * tf.reduce_sum(first) + 10.0 * (rank + 1) * tf.reduce_sum(second)
        grad_first, grad_second = tape.gradient(loss, [first, second])
        opt_a.apply_gradients([(grad_first, first)])
        opt_b.apply_gradients([(grad_second, second)])

    for _ in range(5):
        step()
    mean = (n + 1) / 2  # of rank + 1 over the ranks
    np.testing.assert_array_equal(first.numpy(), np.full(3, -5 * mean, "float32"))
    np.testing.assert_array_equal(second.numpy(), np.full(2, -50 * mean, "float32"))
    assert int(opt_a.iterations.numpy()) == int(opt_b.iterations.numpy()) == 5
    x, y = make_data(12 * n * 8, "float32")
    for per_call in (1, 4):
        model = make_model("float32")
        model.compile(loss="categorical_crossentropy", steps_per_execution=per_call,
                      optimizer=dk.DistributedOptimizer(keras.optimizers.Adam(0.01)))  # fmt: skip
        fit(model, x, y, 12 * n)
        assert int(model.optimizer.iterations.numpy()) == 8
        save(out, f"per-call-{per_call}", model)
    print(f"TF-GRAPH-DONE rank {rank}", flush=True)


if __name__ == "__main__":
    name, out, *rest = sys.argv[1:]
    globals()[f"scenario_{name.replace('-', '_')}"](Path(out), *rest)
