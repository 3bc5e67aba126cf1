"""The mistakes a Keras user makes under mpiexec end in an error on every rank, never a hang:
different models, unequal data, a rank raising mid-epoch (torch, jax and tensorflow backends)."""

import _keras_jobs as jobs
import numpy as np
import pytest


@pytest.mark.timeout(400)
@pytest.mark.parametrize("backend", jobs.backend_params())
def test_mismatched_models_and_unequal_data_raise_on_every_rank(backend, tmp_path):
    proc = jobs.run(backend, 2, "mistakes", tmp_path)
    jobs.check(proc)
    for rank in (0, 1):
        assert f"MODELS-MISMATCH rank {rank}: Ranks disagree about `broadcast`" in proc.stdout
        assert f"STEPS-MISMATCH rank {rank}: The ranks run different numbers of steps per " \
            "epoch (rank 0: 8, rank 1: 7)" in proc.stdout  # fmt: skip
        # 53 rows through shard_arrays on 2 ranks of 8: 3 full global batches + 2 rows each.
        assert f"DONE rank {rank} steps 4" in proc.stdout
    first, second = (jobs.load(tmp_path, "uneven", r) for r in (0, 1))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


@pytest.mark.timeout(400)
@pytest.mark.parametrize("backend", jobs.backend_params())
def test_rank_raising_mid_epoch_ends_the_job(backend, tmp_path):
    proc = jobs.run(backend, 2, "raise", tmp_path)
    assert proc.returncode != 0
    assert "RuntimeError: boom on rank 1 mid-epoch" in proc.stderr
    assert "aborting the job" in proc.stderr
    assert "NOT-REACHED" not in proc.stdout
    assert proc.elapsed < jobs.DEADLINE, "the job ended by the deadline, not by the abort"
