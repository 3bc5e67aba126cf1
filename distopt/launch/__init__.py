"""`distoptrun`: launch a Python program on N MPI ranks with abort-on-exception.

    distoptrun -np 4 train.py --epochs 3
    distoptrun -np 4 -m mypackage.train
    distoptrun -np 4 python -c 'import distopt; ...'
    distoptrun -np 4 --dry-run train.py      # print the mpiexec command, run nothing

Each rank runs through `distopt.launch._runner`, which turns an unhandled exception (or a
non-zero `sys.exit`) on any rank into `MPI_Abort`, so the job ends instead of hanging.
"""

from distopt.launch._cli import build_command, find_mpiexec, main

__all__ = ["build_command", "find_mpiexec", "main"]
