"""``mpiexec -n N python -m hybrid_ps.train [--config job.toml] [flags]``: train a model."""

from __future__ import annotations

import logging
import os
import sys
import time

from .config import build_parser, load_config
from .errors import HybridPSError
from .preemption import StopRequest

log = logging.getLogger("hybrid_ps.train")

_ABORT_GRACE_SECONDS = 1.0

_DESCRIPTION = """Train sparse logistic regression with MPI worker groups and a ZeroMQ parameter-server tier.
Settings come from defaults < --config FILE < --set SECTION.KEY=VALUE < the flags below."""


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the job on this rank, and return the exit code."""
    parser = build_parser("python -m hybrid_ps.train", _DESCRIPTION)
    args = parser.parse_args(argv)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    try:
        config = load_config(args)
    except HybridPSError as e:
        print(f"hybrid_ps.train: error: {e}", file=sys.stderr)
        return 2

    from mpi4py import MPI  # after argument parsing: --help and bad flags need no MPI

    from .job import plan_job, run_job

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    try:
        plan_job(config, world.Get_size())
    except HybridPSError as e:  # the same verdict on every rank, before any collective: no abort needed
        if rank == 0:
            print(f"hybrid_ps.train: error: {e}", file=sys.stderr, flush=True)
        return 2
    stop = StopRequest().install()  # SIGTERM/SIGUSR1: checkpoint at one clock, then exit 0
    try:
        run_job(config, world, debug=args.debug, stop=stop)
    except BaseException as e:  # one rank failing must end the whole job, not hang the others
        if isinstance(e, HybridPSError) and not args.debug:
            print(f"hybrid_ps.train: rank {rank}: error: {e}", file=sys.stderr, flush=True)
        else:
            log.exception("rank %d failed", rank)
        sys.stderr.flush()
        # MPI_Abort makes the launcher kill every process at once; output still sitting in the launcher's
        # pipes would be lost, and with it the one line saying what went wrong. Give it a moment to drain.
        time.sleep(_ABORT_GRACE_SECONDS)
        world.Abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
