"""Keras `fit` data-parallel under a real mpiexec, torch, jax and tensorflow backends.

Each world size trains on the same global batches; N ranks must match one process, hold
bitwise identical weights, and save/load/continue as an uninterrupted run.
"""

import _keras_jobs as jobs
import numpy as np
import pytest

GLOBAL_BATCH, STEPS = 12, 20
# Keras 3.15's torch backend averages float64 losses with float32 factors (`ops.mean`,
# `divide_no_nan`) inside the model's backward pass, so float64 is compared on jax only.
DTYPES = {
    "torch": ("float32",),
    "jax": ("float32", "float64"),
    "tensorflow": ("float32", "float64"),
}
RTOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.fixture(scope="module", params=jobs.backend_params())
def fits(request, tmp_path_factory):
    """{ranks: directory} of the fit scenario at 1, 2 and 3 ranks."""
    backend = request.param
    out = {}
    for ranks in (1, 2, 3):
        directory = tmp_path_factory.mktemp(f"{backend}-{ranks}")
        dtypes = ",".join(DTYPES[backend])
        jobs.check(jobs.run(backend, ranks, "fit", directory, GLOBAL_BATCH, STEPS, dtypes))
        out[ranks] = directory
    return backend, out


@pytest.mark.timeout(900)
def test_fit_on_n_ranks_matches_one_process(fits):
    backend, dirs = fits
    for dtype in DTYPES[backend]:
        ref = jobs.load(dirs[1], f"fit-{dtype}", 0)
        assert ref["w0"].dtype == np.dtype(dtype)
        for ranks in (2, 3):
            got = jobs.load(dirs[ranks], f"fit-{dtype}", 0)
            for key in sorted(k for k in ref if k.startswith("w")):
                # rtol on each tensor's scale: float32 sums of N partial means round
                # differently from one mean of N*b (elementwise max measured 1.7e-5 for
                # elements that trained towards zero)
                scale = np.abs(ref[key]).max()
                np.testing.assert_allclose(
                    got[key], ref[key], rtol=RTOL[dtype], atol=RTOL[dtype] * scale,
                    err_msg=f"{backend} {dtype} {ranks} ranks {key}",
                )  # fmt: skip


@pytest.mark.timeout(900)
def test_weights_and_state_bitwise_identical_across_ranks(fits):
    backend, dirs = fits
    for dtype in DTYPES[backend]:
        for ranks in (2, 3):
            first = jobs.load(dirs[ranks], f"fit-{dtype}", 0)
            for rank in range(1, ranks):
                other = jobs.load(dirs[ranks], f"fit-{dtype}", rank)
                for key in first:
                    assert first[key].tobytes() == other[key].tobytes(), (rank, key)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", jobs.backend_params())
def test_save_load_continue_equals_uninterrupted(backend, tmp_path):
    jobs.check(jobs.run(backend, 2, "save", tmp_path, 8))
    for rank in (0, 1):
        straight = jobs.load(tmp_path, "straight", rank)
        resumed = jobs.load(tmp_path, "resumed", rank)
        for key in straight:
            np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)
    # The distributed job's file, in a single process (no mpiexec).
    proc = jobs.run(backend, 0, "load-single", tmp_path)
    jobs.check(proc)
    saved, loaded = jobs.load(tmp_path, "saved", 0), jobs.load(tmp_path, "loaded", 0)
    for key in saved:
        np.testing.assert_array_equal(loaded[key], saved[key], err_msg=key)
    assert "LOADED-AND-TRAINED 10" in proc.stdout  # 5 saved steps + 5 new ones
