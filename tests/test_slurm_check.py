"""The `srun --mpi=none` trap: Slurm started N tasks, MPI sees a world of 1."""

import pytest

from distopt.comm._launch_check import check_world_size
from distopt.distribute import MPIStrategy

TRAP = {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4"}


def test_separate_one_rank_worlds_are_stopped_with_the_fix():
    with pytest.raises(RuntimeError, match=r"Slurm started 4 tasks .* world of 1") as e:
        check_world_size(1, TRAP)
    assert "srun --mpi=pmi2" in str(e.value) and "distoptrun -np $SLURM_NTASKS" in str(e.value)


@pytest.mark.parametrize(
    "size, env",
    [
        (4, TRAP),  # srun --mpi=pmi2: MPI sees the tasks
        (1, {**TRAP, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"}),
        (1, {**TRAP, "PMI_RANK": "0"}),  # distoptrun -np 1 inside a larger allocation
        (1, {}),
    ],
)
def test_real_jobs_pass(size, env):
    check_world_size(size, env)


def test_strategy_creation_raises_in_the_trap(monkeypatch):
    for k, v in TRAP.items():
        monkeypatch.setenv(k, v)
    for k in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_FD"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match="srun --mpi=pmi2"):
        MPIStrategy()
