"""``python -m hybrid_ps.tierctl --tier-file FILE add|remove ID|status``: change a running PS tier's shards.

Talks to the ``hybrid_ps.serve`` process named in the tier file. ``add``
starts one more shard, ``remove ID`` retires one; in both cases every group
stops at the reshard clock the tier announces, the cut is checkpointed and
the ranges that move to or from the shard travel through its files while
training continues.
"""

from __future__ import annotations

import argparse
import json
import sys

import zmq

from .cli import report, run_main
from .errors import HybridPSError
from .net.sockets import connect_dealer
from .tier import read_tier_file

__all__ = ["main"]

_PROG = "hybrid_ps.tierctl"
_TIMEOUT_MS = 30_000


def main(argv: list[str] | None = None) -> int:
    """Send one request to the tier and print its JSON answer; returns 0 if it succeeded."""
    parser = argparse.ArgumentParser(prog="python -m hybrid_ps.tierctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier-file", required=True, metavar="FILE", help="the tier file hybrid_ps.serve wrote")
    parser.add_argument("op", choices=("add", "remove", "status"))
    parser.add_argument("shard", nargs="?", type=int, help="remove: the shard id to retire")
    args = parser.parse_args(argv)
    if args.op == "remove" and args.shard is None:
        parser.error("remove needs the shard id")
    # an unreadable tier file or no way to reach the tier: exit 2; the tier not answering or refusing: exit 1
    return run_main(lambda: _request(args), prog=_PROG, errors={HybridPSError: 2})


def _request(args: argparse.Namespace) -> int:
    """Send the request, print the answer; returns 1 if there was none in time or it was a refusal."""
    tier = read_tier_file(args.tier_file)
    if not tier.control:
        raise HybridPSError(f"{args.tier_file}: the tier has no control endpoint")
    context = zmq.Context()
    sock = connect_dealer(context, tier.control, tier.curve_keys, linger_ms=0, kind=zmq.REQ)
    try:
        sock.send(json.dumps({"op": args.op, "shard": args.shard}).encode())
        if not sock.poll(_TIMEOUT_MS):
            report(_PROG, f"no answer from {tier.control} in {_TIMEOUT_MS / 1000:g}s")
            return 1
        reply = json.loads(sock.recv())
    finally:
        sock.close()
        context.term()
    print(json.dumps(reply))
    if not reply.get("ok"):
        report(_PROG, reply.get("error"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
