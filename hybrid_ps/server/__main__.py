"""``python -m hybrid_ps.server``: one PS shard process; reads its spec (JSON) on stdin, prints its endpoint.

Started by a server rank or by ``hybrid_ps.serve`` (see hybrid_ps/server/process.py),
not by hand. The spec comes on stdin, never on the command line.
"""

from __future__ import annotations

import argparse
import functools
import sys

from ..cli import run_main
from ..errors import HybridPSError
from ..logs import configure_logging
from ..preemption import StopRequest
from .process import FENCED, ShardSpec, build_service, die_with_parent

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run one shard until every group left; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m hybrid_ps.server", description=__doc__)
    parser.add_argument("--shard-id", type=int, required=True, help="shown in ps; the spec on stdin is authoritative")
    parser.add_argument("--label", default="", help="shown in ps only (e.g. the job's output directory)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    return run_main(_serve, prog="hybrid_ps.server", errors={HybridPSError: 1, KeyError: 1, ValueError: 1},
                    debug=args.debug, logs=functools.partial(configure_logging, f"server {args.shard_id}"),
                    where=f"shard {args.shard_id}", traceback="log")


def _serve() -> int:
    """Read the spec, bind, print the endpoint on stdout, serve; returns 0 (``FENCED`` if fenced)."""
    stop = StopRequest().install()  # SIGTERM/SIGUSR1 (forwarded by the supervisor) must not kill a shard
    spec = ShardSpec.from_json(sys.stdin.read())  # KeyError, ValueError: not a spec
    die_with_parent(spec.parent_pid)
    with build_service(spec, stop) as service:
        print(service.endpoint, flush=True)
        sys.stdout = sys.stderr  # the supervisor reads one line only
        service.serve()
    return FENCED if service.fenced else 0


if __name__ == "__main__":
    sys.exit(main())
