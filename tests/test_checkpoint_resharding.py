"""A checkpoint saved at 2 ranks continues the same trajectory at 1, 2, 3 and 4 ranks.

Every optimizer family (elementwise, per-tensor, schedule, LossScaleOptimizer, EMA,
accumulation saved mid-accumulation), saved with ZeRO-1 and restored without, and the other
way round: bitwise the uninterrupted run at 2 ranks, within 1e-12 relative (float64) at
another world size. Each world size is one real `distoptrun` job (tests/_checkpoint_worker.py).
"""

import numpy as np
import pytest
from conftest import run_distoptrun

WORKER = "tests/_checkpoint_worker.py"


def _run(np_, *args):
    # The numpy engine: the numba one gives the same bits (test_engines) after seconds of
    # compiling per kernel and process, which would dominate these short jobs.
    out = run_distoptrun(np_, WORKER, *args, timeout=600, env={"DISTOPT_ENGINE": "numpy"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    _run(2, "save", str(folder), str(folder / "uninterrupted.npz"))
    return folder


@pytest.mark.timeout(900)
@pytest.mark.parametrize("np_", [1, 2, 3, 4])
def test_restore_continues_the_trajectory(saved, np_):
    out = saved / f"restored-{np_}.npz"
    _run(np_, "restore", str(saved), str(out))
    reference, restored = np.load(saved / "uninterrupted.npz"), np.load(out)
    assert len(restored.files) == len(reference.files)
    for key in restored.files:
        tag, index = key.split("/")
        expected, got = reference[f"{tag.split('-into-')[0]}/{index}"], restored[key]
        if np_ == 2:
            assert got.tobytes() == expected.tobytes(), key
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0, err_msg=key)
