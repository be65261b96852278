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

from .errors import HybridPSError
from .net.sockets import connect_dealer
from .tier import read_tier_file

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
    try:
        tier = read_tier_file(args.tier_file)
        if not tier.control:
            raise HybridPSError(f"{args.tier_file}: the tier has no control endpoint")
    except HybridPSError as e:
        print(f"hybrid_ps.tierctl: error: {e}", file=sys.stderr)
        return 2
    context = zmq.Context()
    try:
        sock = connect_dealer(context, tier.control, tier.keys, linger_ms=0, kind=zmq.REQ)
    except HybridPSError as e:
        print(f"hybrid_ps.tierctl: error: {e}", file=sys.stderr)
        return 2
    try:
        sock.send(json.dumps({"op": args.op, "shard": args.shard}).encode())
        if not sock.poll(_TIMEOUT_MS):
            print(f"hybrid_ps.tierctl: error: no answer from {tier.control} in {_TIMEOUT_MS / 1000:g}s",
                  file=sys.stderr)
            return 1
        reply = json.loads(sock.recv())
    finally:
        sock.close()
        context.term()
    print(json.dumps(reply))
    if not reply.get("ok"):
        print(f"hybrid_ps.tierctl: error: {reply.get('error')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
