"""What CURVE costs: a leader's pull and push with and without encryption, against raw pyzmq with and without it.

Run: ``python -m benchmarks.security [--sizes 1000 10000 100000]``.

One shard process (ShardService, AdaGrad, one group, ASP) serving plain TCP and
one serving CURVE with its ZAP allow-list; one raw ROUTER process of each kind
answering with frames of the PS replies' sizes (``benchmarks.transport``'s
baseline). For each key count: the best pull and push round trip of each. The
headline compares the share of its speed the PS keeps with CURVE with the share
raw pyzmq keeps: encryption is a fixed cost per byte, so the PS, which does more
per byte, should lose a smaller share.
"""

from __future__ import annotations

import argparse
import logging
import math

import numpy as np
import zmq

from .common import best_time, finish, print_table
from .raw_server import serve_raw, start, stop
from .transport import WIDTH, RawClient

SIZES = [1_000, 10_000, 100_000]


def _serve_shard(curve_keys: dict | None, capacity: int, conn) -> None:
    """A ShardService on 127.0.0.1 (CURVE if ``curve_keys``); sends its endpoint back."""
    logging.basicConfig(level=logging.WARNING)
    from hybrid_ps.net.curve import JobKeys
    from hybrid_ps.placement.ring import HashRing
    from hybrid_ps.server.service import ShardService
    from hybrid_ps.server.shard import Shard
    from hybrid_ps.tables.optimizers import make_optimizer

    shard = Shard(WIDTH, make_optimizer("adagrad", 0.05), capacity=capacity)
    context = zmq.Context()
    service = ShardService(shard, 0, HashRing([0]), 1, math.inf, "127.0.0.1", context=context,
                           curve_keys=JobKeys.from_dict(curve_keys) if curve_keys else None)
    conn.send(service.endpoint)
    conn.close()
    with service:
        service.serve()
    context.term()


def measure(sizes: list[int]) -> list[dict]:
    from hybrid_ps.net.curve import JobKeys
    from hybrid_ps.placement.ring import HashRing
    from hybrid_ps.worker.client import PSClient

    curve_keys = JobKeys.generate()
    largest = max(sizes)
    context = zmq.Context()
    clients, raws, processes = {}, {}, []
    for mode, job_keys in (("plain", None), ("curve", curve_keys)):
        shard, endpoint = start(_serve_shard, job_keys and job_keys.to_dict(), 2 * largest)
        raw, raw_endpoint = start(serve_raw, largest * WIDTH, 1, job_keys and job_keys.to_dict())
        processes += [shard, raw]
        clients[mode] = PSClient([endpoint], 0, 1, HashRing([0]), WIDTH, timeout=120, context=context,
                                 curve_keys=job_keys)
        raws[mode] = RawClient(context, [raw_endpoint], job_keys)
    rows = []
    rng = np.random.default_rng(0)
    try:
        for size in sizes:
            ids = np.unique(rng.integers(0, 2**63, int(size * 1.01) + 8, dtype=np.uint64))[:size]
            grads = (rng.standard_normal((size, WIDTH)) * 0.01).astype(np.float32)
            row = {"keys": size}
            for mode in ("plain", "curve"):
                client, raw = clients[mode], raws[mode]
                client.wait(client.push(ids, grads, 0))
                row[f"ps_pull_{mode}_ms"] = 1e3 * best_time(lambda: client.wait(client.pull(ids, 0)))
                row[f"ps_push_{mode}_ms"] = 1e3 * best_time(lambda: client.wait(client.push(ids, grads, 0)))
                row[f"raw_pull_{mode}_ms"] = 1e3 * best_time(lambda: raw.round_trip([[ids]]))
                row[f"raw_push_{mode}_ms"] = 1e3 * best_time(lambda: raw.round_trip([[ids, grads]]))
            total = {f"{kind}_{mode}": row[f"{kind}_pull_{mode}_ms"] + row[f"{kind}_push_{mode}_ms"]
                     for kind in ("ps", "raw") for mode in ("plain", "curve")}
            row["ps_curve_speed"] = total["ps_plain"] / total["ps_curve"]
            row["raw_curve_speed"] = total["raw_plain"] / total["raw_curve"]
            row["curve_vs_raw"] = total["raw_curve"] / total["ps_curve"]
            rows.append(row)
    finally:
        for mode in clients:
            clients[mode].shutdown()
            clients[mode].close()
            raws[mode].close()
        context.destroy(linger=0)
        stop(processes)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    args = parser.parse_args()
    rows = measure(args.sizes)
    print_table(["keys", "PS pull ms", "PS pull CURVE ms", "PS push ms", "PS push CURVE ms", "raw pull ms",
                 "raw pull CURVE ms", "raw push ms", "raw push CURVE ms", "PS speed with CURVE",
                 "raw speed with CURVE", "PS CURVE vs raw CURVE"],
                [[r["keys"], r["ps_pull_plain_ms"], r["ps_pull_curve_ms"], r["ps_push_plain_ms"],
                  r["ps_push_curve_ms"], r["raw_pull_plain_ms"], r["raw_pull_curve_ms"], r["raw_push_plain_ms"],
                  r["raw_push_curve_ms"], f"{r['ps_curve_speed']:.2f}x", f"{r['raw_curve_speed']:.2f}x",
                  f"{r['curve_vs_raw']:.2f}x"] for r in rows])
    largest = rows[-1]
    relative = largest["ps_curve_speed"] / largest["raw_curve_speed"]
    finish("security", {"results": rows},
           f"share of its speed the PS keeps with CURVE ({largest['ps_curve_speed']:.2f}x) vs raw pyzmq's "
           f"({largest['raw_curve_speed']:.2f}x), pull + push of {largest['keys']} keys", relative,
           "raw pyzmq", ">= 1 (CURVE costs the PS no larger share)", relative >= 1)

if __name__ == "__main__":
    main()
