"""`DISTOPT_TIMELINE=path.json`: a Chrome trace of pack / reduce / update per rank and step."""

import json
import textwrap

from conftest import run_distoptrun

SCRIPT = textwrap.dedent(
    """
    import numpy as np, distopt
    from distopt.distribute import MPIStrategy
    strategy = MPIStrategy(shard_optimizer_state=True)
    with strategy.scope():
        v = distopt.Variable(np.zeros(1000))
        opt = distopt.optimizers.Adam(0.1)
    for step in range(3):
        strategy.run(lambda: opt.apply_gradients([(np.ones(1000, np.float32), v)]))
    """
)


def _events(path):
    data = json.loads(path.read_text())
    return [e for e in data["traceEvents"] if e["ph"] == "X"], data


def test_two_rank_job_writes_one_trace_with_every_phase(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    trace = tmp_path / "trace.json"
    trace.write_text('{"traceEvents": [{"name": "stale", "ph": "X"}], "otherData": {"job": "old"}}')
    out = run_distoptrun(2, str(script), env={"DISTOPT_TIMELINE": str(trace)})
    assert out.returncode == 0, out.stderr
    events, data = _events(trace)
    assert "stale" not in {e["name"] for e in events}  # an earlier job's file is replaced
    names = {(e["pid"], e["name"], e["args"]["step"]) for e in events}
    for rank in (0, 1):
        for step in (0, 1, 2):
            for phase in ("pack", "reduce", "update", "kernel", "allgather"):
                assert (rank, phase, step) in names, (rank, phase, step)
    assert all(e["dur"] >= 0 for e in events)
    ranks = {e["pid"] for e in data["traceEvents"] if e["ph"] == "M"}
    assert ranks == {0, 1}


def test_no_file_without_the_variable(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = run_distoptrun(2, str(script), env={"DISTOPT_TIMELINE": ""})
    assert out.returncode == 0, out.stderr
    assert not list(tmp_path.glob("*.json"))
