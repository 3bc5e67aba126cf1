"""Detects a job whose ranks each started as a separate 1-process MPI world."""

from __future__ import annotations

import os

# Set by every MPI process manager that started this process as one rank of a job.
_MPI_LAUNCHED = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_FD")


def check_world_size(size: int, environ=os.environ) -> None:
    """Raises when Slurm started several tasks but MPI sees a world of one: `srun
    --mpi=none` (or an MPI without Slurm's PMI) runs N separate 1-rank trainings."""
    tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS")
    if size != 1 or "SLURM_PROCID" not in environ or not (tasks or "").isdigit():
        return
    if int(tasks) > 1 and not any(v in environ for v in _MPI_LAUNCHED):
        raise RuntimeError(
            f"Slurm started {tasks} tasks (SLURM_STEP_NUM_TASKS={tasks}) but MPI sees a world "
            "of 1 process: each task would train alone. srun started the tasks without "
            "connecting them to MPI (`--mpi=none`, or the cluster's default MpiDefault). "
            "Launch with `srun --mpi=pmi2 python train.py` (see `srun --mpi=list`), or run "
            "`distoptrun -np $SLURM_NTASKS train.py` once from the batch script."
        )
