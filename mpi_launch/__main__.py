"""``python -m mpi_launch -n 8 [--dry-run] -- <train args>``: start hybrid_ps.train under the right mpiexec."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from .detect import (
    allocation,
    find_mpiexec,
    idle_friendly_environment,
    mpi_implementation,
)


def main(argv: list[str] | None = None) -> int:
    """Build the mpiexec command and environment, print or run it; returns its exit code."""
    parser = argparse.ArgumentParser(prog="python -m mpi_launch", description=__doc__)
    parser.add_argument("-n", "--ranks", type=int, default=None,
                        help="MPI ranks to start (default: the Slurm/PBS allocation's, else 8)")
    parser.add_argument("--module", default="hybrid_ps.train", help="Python module to run on every rank")
    parser.add_argument("--dry-run", action="store_true", help="print the environment and command, run nothing")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the module (after --)")
    options = parser.parse_args(argv)
    given = allocation()
    ranks = options.ranks or given.ranks or 8
    if ranks < 1:
        parser.error(f"-n must be >= 1, got {ranks}")
    module_args = options.args[1:] if options.args[:1] == ["--"] else options.args
    if given.nodes and given.nodes > 1 and "--groups" not in module_args:
        module_args = [*module_args, "--groups", str(given.nodes)]  # one group per node: Allreduce stays on-node
    mpiexec = find_mpiexec()
    env_changes = idle_friendly_environment(mpi_implementation(mpiexec), ranks)
    command = [mpiexec, "-n", str(ranks), sys.executable, "-m", options.module, *module_args]
    line = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env_changes.items()), *map(shlex.quote, command)])
    if options.dry_run:
        print(line)
        return 0
    print(f"mpi_launch ({given.scheduler}): {line}", file=sys.stderr, flush=True)
    os.execve(command[0], command, {**os.environ, **env_changes})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
