"""Runs every benchmark as docs/performance.md reports them; prints markdown to stdout.

    python benchmarks/run_all.py > /tmp/results.md   [--quick]

Each script measures its own baselines in the same process or MPI job. MPI runs use the
`mpiexec` beside this Python (or on PATH); 4 ranks on fewer cores are oversubscribed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else (shutil.which("mpiexec") or "mpiexec")


def run(ranks: int | None, script: str, *args: str) -> None:
    cmd = [sys.executable, str(HERE / script), *args]
    if ranks is not None:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    shown = (
        " ".join(["mpiexec", "-n", str(ranks)] if ranks else []) + f" python benchmarks/{script}"
    )
    print(f"\n<!-- {shown} {' '.join(args)} -->\n`{shown} {' '.join(args)}`".rstrip(), flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(cmd, check=True, env=env, timeout=3600)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    r = ["--repeats", "5"] if args.quick else []
    run(None, "update.py", *r)
    run(None, "update.py", "--clock", "cpu", "--only", "adam,sgd,lion,rmsprop", *r)
    for n in (2, 4):
        run(n, "aggregation.py", *r)
    for n in (1, 2, 4):
        run(n, "apply.py", *r)
    run(None, "overhead.py")
    run(None, "overhead.py", "--clock", "cpu")
    run(2, "overhead.py")
    run(None, "checkpoint.py", *r)


if __name__ == "__main__":
    main()
