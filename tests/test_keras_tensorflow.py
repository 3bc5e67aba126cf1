"""distopt.keras on the TensorFlow backend: the all-reduce inside `tf.function`, XLA and
dtype mistakes caught while tracing, sparse gradients, several steps per call."""

import importlib.util

import _keras_jobs as jobs
import pytest
from _keras_subprocess import run_keras

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("keras", "tensorflow")),
    reason='needs keras and tensorflow (pip install ".[tensorflow]")',
)

XLA_SCRIPT = """
import json, numpy as np, keras, tensorflow as tf
import distopt.keras as dk

keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
model.compile(loss="mse", optimizer=dk.DistributedOptimizer("adam"), jit_compile=True)
x, y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")
before = model.get_weights()
out = {}
try:
    model.fit(x, y, batch_size=4, verbose=0)
except RuntimeError as e:
    out["fit_error"] = str(e)
out["fit_same"] = all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
out["fit_built"] = model.optimizer.built

v = keras.Variable(np.ones(3), dtype="float32", name="w")
opt = dk.DistributedOptimizer(keras.optimizers.SGD(0.1))
@tf.function(jit_compile=True)
def step(g):
    opt.apply_gradients([(g, v)])
try:
    step(tf.ones(3))
except RuntimeError as e:
    out["loop_error"] = str(e)
out["loop_same"] = v.numpy().tolist() == [1.0, 1.0, 1.0]

model.compile(loss="mse", optimizer=dk.DistributedOptimizer("adam"))  # the default settings
model.fit(x, y, batch_size=4, verbose=0)
out["default_jit_compile"] = bool(model.jit_compile)
out["default_steps"] = int(model.optimizer.iterations.numpy())
model.compile(loss="mse", optimizer=dk.DistributedOptimizer("adam"), run_eagerly=True)
model.fit(x, y, batch_size=4, verbose=0)
out["eager_steps"] = int(model.optimizer.iterations.numpy())
print(json.dumps(out))
"""


@pytest.mark.timeout(300)
def test_xla_step_raises_what_to_change_and_changes_nothing():
    out = run_keras(XLA_SCRIPT, backend="tensorflow")
    for key in ("fit_error", "loop_error"):
        assert "cannot run inside an XLA-compiled TensorFlow step" in out[key]
        assert "`jit_compile=False`" in out[key]
    assert out["fit_same"] and out["loop_same"] and not out["fit_built"]
    assert out["default_jit_compile"] is False and out["default_steps"] == 2
    assert out["eager_steps"] == 2


GRAPH_SCRIPT = """
import json, numpy as np, keras, tensorflow as tf
import distopt.keras as dk

out = {"kinds": []}
v = keras.Variable(np.ones(3), dtype="float32", name="w")
opt = dk.DistributedOptimizer(keras.optimizers.SGD(0.1))
opt.build([v])
@tf.function
def bad(g):
    opt.apply([g], [v])
try:
    bad(tf.ones(3, tf.int32))
except TypeError as e:
    out["dtype_error"] = str(e)
out["dtype_same"] = v.numpy().tolist() == [1.0, 1.0, 1.0]
out["dtype_iterations"] = int(opt.iterations.numpy())
try:
    opt.stateless_apply([w.value for w in opt.variables], [tf.ones(3)], [v.value])
except ValueError as e:
    out["stateless_error"] = str(e)

def train(wrap):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,), dtype="int32"), keras.layers.Embedding(10, 3),
                              keras.layers.Flatten(), keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(0.1)
    opt = dk.DistributedOptimizer(opt) if wrap else opt
    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_weights)
        out["kinds"].append(type(grads[0]).__name__)
        if not wrap:
            grads = [tf.convert_to_tensor(g) for g in grads]
        opt.apply_gradients(zip(grads, model.trainable_weights))
    args = tf.constant([[1, 2], [3, 1]]), tf.constant([[1.0], [0.0]])
    for _ in range(3):
        step(*args)
    ops = step.get_concrete_function(*args).graph.get_operations()
    out["in_graph" if wrap else "plain_in_graph"] = any("distopt_allreduce" in o.name for o in ops)
    return [w.tolist() for w in model.get_weights()]

out["wrapped"], out["dense"] = train(True), train(False)
print(json.dumps(out))
"""


@pytest.mark.timeout(300)
def test_all_reduce_is_in_the_graph_and_sparse_gradients_are_averaged_dense():
    out = run_keras(GRAPH_SCRIPT, backend="tensorflow")
    assert "The gradient of `0:w` has dtype int32" in out["dtype_error"]
    assert out["dtype_same"] and out["dtype_iterations"] == 0
    assert "`stateless_apply` is not supported on the TensorFlow backend" in out["stateless_error"]
    assert "IndexedSlices" in out["kinds"]
    assert out["in_graph"] and not out["plain_in_graph"]
    assert out["wrapped"] == out["dense"]  # one process: the inner update of the dense gradient


@pytest.mark.timeout(600)
@pytest.mark.parametrize("ranks", [2])
def test_two_optimizers_in_one_step_and_steps_per_execution(ranks, tmp_path):
    proc = jobs.run("tensorflow", ranks, "tf-graph", tmp_path)
    jobs.check(proc)
    for rank in range(ranks):
        assert f"TF-GRAPH-DONE rank {rank}" in proc.stdout
        one, four = (jobs.load(tmp_path, f"per-call-{k}", rank) for k in (1, 4))
        for key in one:
            assert one[key].tobytes() == four[key].tobytes(), (rank, key)


@pytest.mark.timeout(600)
def test_deadline_ends_a_job_whose_rank_stalls_outside_the_graph(tmp_path):
    deadline = 30
    proc = jobs.run("tensorflow", 2, "stall", tmp_path, deadline, timeout=500)
    assert proc.returncode != 0
    assert f"did not complete within collective_timeout={deadline} s" in proc.stderr, proc.stderr
    assert "rank 1: running outside distopt collectives" in proc.stderr, proc.stderr
    assert "NOT-REACHED" not in proc.stdout
    assert proc.elapsed < 300, "the job ended when the stall did, not at the deadline"
