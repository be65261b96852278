"""``mpiexec -n N python -m hybrid_ps.train [--config job.toml] [flags]``: train a model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .cli import report, run_main
from .config import Config, build_parser, load_config
from .errors import CheckpointError, ConfigError, HybridPSError
from .preemption import StopRequest

__all__ = ["main"]

log = logging.getLogger("hybrid_ps.train")

_PROG = "hybrid_ps.train"
_ABORT_GRACE_SECONDS = 1.0

_DESCRIPTION = """Train sparse models (logistic regression, factorization machines, wide & deep) with MPI worker
groups and a ZeroMQ parameter-server tier.
Settings come from defaults < --config FILE < --set SECTION.KEY=VALUE < the flags below."""


def _check_fit(config: Config, plan, world) -> None:
    """What plan_job leaves open, before any work: replication and the checkpoint to resume from.

    Rank 0 reads the checkpoint's attributes; every rank gets its verdict, so all stop the same way.

    Raises:
        ConfigError, CheckpointError: naming the setting or the file.
    """
    if plan.tier is None and config.cluster.replication > plan.layout.num_servers:
        raise ConfigError(f"cluster.replication = {config.cluster.replication} needs at least as many servers; "
                          f"this job has {plan.layout.num_servers} (cluster.servers)")
    if not config.train.resume:
        return
    import numpy as np

    from . import checkpoint
    from .models import build_model
    from .worker.group import wait_quietly

    problem = None
    if world.Get_rank() == 0:
        try:
            model = build_model(config.model)
            checkpoint.check_resumable(config.resume_path, model.kind, model.width, config.optimizer.name,
                                       model.attrs())
            checkpoint.resume_clocks(config.resume_path, plan.num_slots)
        except CheckpointError as e:
            problem = e
    failed = np.array([problem is not None], dtype=np.int8)
    wait_quietly(world.Ibcast(failed, root=0))  # sleeping, not spinning, while rank 0 reads
    if problem is not None:
        raise problem
    if failed[0]:
        raise CheckpointError(f"{config.resume_path}: cannot resume from it (rank 0 prints why)")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the job on this rank, and return the exit code."""
    parser = build_parser("python -m hybrid_ps.train", _DESCRIPTION)
    args = parser.parse_args(argv)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    # a bad setting, layout or checkpoint to resume from: one line (rank 0's), exit 2; run_job sets up logging
    return run_main(lambda: _train(args), prog=_PROG, errors={HybridPSError: 2}, debug=args.debug)


def _train(args: argparse.Namespace) -> int:
    """Check the settings, then run the job; a rank failing in the job aborts the whole MPI world."""
    config = load_config(args)

    from mpi4py import MPI  # after argument parsing: --help and bad flags need no MPI

    from .job import plan_job, run_job

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    try:
        plan = plan_job(config, world.Get_size())
        _check_fit(config, plan, world)
    except HybridPSError:  # the same verdict on every rank, before any other collective: no abort needed
        if rank == 0:
            raise  # run_main prints it
        return 2
    stop = StopRequest().install()  # SIGTERM/SIGUSR1: checkpoint at one clock, then exit 0
    try:
        run_job(config, world, debug=args.debug, stop=stop)
    except BaseException as e:  # one rank failing must end the whole job, not hang the others
        if isinstance(e, HybridPSError) and not args.debug:
            report(_PROG, e, where=f"rank {rank}")
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
