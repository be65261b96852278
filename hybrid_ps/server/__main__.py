"""``python -m hybrid_ps.server``: one PS shard process; reads its spec (JSON) on stdin, prints its endpoint.

Started by a server rank or by ``hybrid_ps.serve`` (see hybrid_ps/server/process.py),
not by hand. The spec comes on stdin, never on the command line.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import HybridPSError
from ..logs import configure_logging
from ..preemption import StopRequest
from .process import ShardSpec, build_service, die_with_parent

log = logging.getLogger("hybrid_ps.server")


def main(argv: list[str] | None = None) -> int:
    """Run one shard until every group left; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m hybrid_ps.server", description=__doc__)
    parser.add_argument("--shard-id", type=int, required=True, help="shown in ps; the spec on stdin is authoritative")
    parser.add_argument("--label", default="", help="shown in ps only (e.g. the job's output directory)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(f"server {args.shard_id}", args.debug)
    stop = StopRequest().install()  # SIGTERM/SIGUSR1 (forwarded by the supervisor) must not kill a shard
    try:
        spec = ShardSpec.from_json(sys.stdin.read())
        die_with_parent(spec.parent_pid)
        with build_service(spec, stop) as service:
            print(service.endpoint, flush=True)
            sys.stdout = sys.stderr  # the supervisor reads one line only
            service.serve()
    except (HybridPSError, KeyError, ValueError) as e:
        if args.debug:
            log.exception("shard %d failed", args.shard_id)
        print(f"hybrid_ps.server: shard {args.shard_id}: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
