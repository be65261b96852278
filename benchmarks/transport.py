"""PS transport: a leader's pull and push through PSClient + ShardService vs raw pyzmq DEALER/ROUTER round trips.

Run: ``python -m benchmarks.transport [--max-keys 1000000] [--shards 1 2]``.

For 10^3 .. 10^6 unique sorted uint64 keys, already held by the shards (pushed
once beforehand: steady state), against one and two shard processes:

- PS pull: ``client.wait(client.pull(keys, 0))``: split by the hash ring, one
  request per shard, the shard's key validation, ownership check and lookup,
  the reply scattered into one ``[n, 1]`` float32 array;
- PS push: ``client.wait(client.push(keys, grads, 0))``: the same split, the
  shard's validation and AdaGrad update, and the acknowledgement;
- raw: one plain ROUTER process per shard answering a DEALER with frames of the
  same sizes and structure (pull: header + keys -> header + values + clocks;
  push: header + keys + grads -> header), ``copy=False`` both ways, the request
  split into the same per-shard parts ahead of time and sent to every raw
  server at once.

The breakdown times in this process what the PS adds on top of the bytes:
``Shard.pull`` / ``Shard.push`` of each shard's part (the slowest shard: the
shards run in parallel), the ring split on the client, and the server's
validation of a request (strictly increasing keys, ownership, finite values).

Shards run in 'spawn' processes (no mpi4py). The machine has 2 cores: with two
shards, the client and two shard processes share them (oversubscribed), which
the raw baseline suffers alike.
"""

from __future__ import annotations

import argparse
import logging
import math
import os

import numpy as np
import zmq

from hybrid_ps.server.shard import Shard
from hybrid_ps.tables.optimizers import make_optimizer

from .common import best_time, finish, print_table
from .raw_server import connect_raw, serve_raw, start, stop

SIZES = [10**3, 10**4, 10**5, 10**6]
WIDTH = 1
VNODES = 256  # the config default (cluster.vnodes)
LEARNING_RATE = 0.05
TARGET = 0.6


# -- child processes (spawned: they import only numpy, zmq and hybrid_ps' non-MPI modules) --------------------


class NullShard(Shard):
    """A shard without math (transport-only figures): pull returns a preallocated buffer, push does nothing.

    A ``Shard`` otherwise (an empty table), so the service finds everything it uses of one.
    """

    def __init__(self, max_keys: int) -> None:
        super().__init__(WIDTH, make_optimizer("adagrad", LEARNING_RATE), capacity=16)
        self.values = np.zeros((max_keys, WIDTH), dtype=np.float32)

    def pull(self, keys: np.ndarray) -> np.ndarray:
        return self.values[: keys.size]

    def push(self, keys: np.ndarray, grads: np.ndarray, clock: int = 0) -> None:
        pass


def _serve_shard(shard_id: int, num_shards: int, capacity: int, null: bool, conn) -> None:
    """A shard: ShardService (AdaGrad, ASP, one group) on 127.0.0.1; sends its endpoint back.

    ``null``: the service runs over a NullShard (all of the PS path but the shard's math).
    """
    logging.basicConfig(level=logging.WARNING)
    from hybrid_ps.placement.ring import HashRing
    from hybrid_ps.server.service import ShardService

    ring = HashRing(range(num_shards), VNODES)
    shard = NullShard(capacity) if null else Shard(WIDTH, make_optimizer("adagrad", LEARNING_RATE), capacity=capacity)
    service = ShardService(shard, shard_id, ring, 1, math.inf, "127.0.0.1", context=zmq.Context())
    conn.send(service.endpoint)
    conn.close()
    with service:
        service.serve()


# -- the measurements ----------------------------------------------------------------------------------------


class RawClient:
    """DEALER sockets to the raw servers; a round trip sends every part at once, then takes every reply."""

    def __init__(self, context: zmq.Context, endpoints: list[str], curve_keys=None) -> None:
        from hybrid_ps.protocol import wire

        self.sockets = [connect_raw(context, endpoint, curve_keys) for endpoint in endpoints]
        self.header = wire.encode_header(wire.Header(wire.Op.PULL))

    def round_trip(self, parts: list[list[np.ndarray]]) -> None:
        for sock, arrays in zip(self.sockets, parts):
            sock.send_multipart([self.header, *arrays], copy=False)
        for sock in self.sockets:
            sock.recv_multipart(copy=False)

    def close(self) -> None:
        for sock in self.sockets:
            sock.send_multipart([self.header], copy=False)
            sock.recv_multipart(copy=False)
            sock.close()


def _validation_seconds(checker, parts, grad_parts, push: bool) -> float:
    """The server-side checks of one request per shard (slowest shard): what a shard does before its table."""
    from hybrid_ps.protocol import wire

    worst = 0.0
    for shard_id, (keys, grads) in enumerate(zip(parts, grad_parts)):
        header = wire.Header(wire.Op.PUSH if push else wire.Op.PULL, 0, 1, 0, keys.size, WIDTH)
        frames = [wire.encode_header(header), memoryview(keys).cast("B"), memoryview(grads).cast("B")]
        checker.shard_id = shard_id

        def check():
            h = wire.decode_header(frames[: 3 if push else 2])
            checker.checked(b"", frames[1], h, primary=not push)
            if push:
                wire.values_from_frame(frames[2], h)

        worst = max(worst, best_time(check, repeat=3, min_seconds=0.02))
    return worst


def measure(num_shards: int, sizes: list[int], rng: np.random.Generator) -> list[dict]:
    from hybrid_ps.placement.replicas import Placement
    from hybrid_ps.placement.ring import HashRing
    from hybrid_ps.server.request_keys import RequestKeys
    from hybrid_ps.server.shard import Shard
    from hybrid_ps.tables.optimizers import make_optimizer
    from hybrid_ps.worker.client import PSClient

    largest = max(sizes)
    ring = HashRing(range(num_shards), VNODES)
    all_keys = np.unique(rng.integers(0, 2**63, int(largest * 1.02) + 16, dtype=np.uint64))[:largest]
    all_keys = all_keys[rng.permutation(all_keys.size)]  # subsets below: random keys of the held set
    capacity = 2 * largest // num_shards + 1024

    started = [start(_serve_shard, shard, num_shards, capacity, False) for shard in range(num_shards)]
    null_started = [start(_serve_shard, shard, num_shards, largest, True) for shard in range(num_shards)]
    raw_started = [start(serve_raw, largest * WIDTH, 1, None) for _ in range(num_shards)]
    context = zmq.Context()
    client = PSClient([e for _, e in started], 0, 1, ring, WIDTH, timeout=120, context=context)
    null_client = PSClient([e for _, e in null_started], 0, 1, ring, WIDTH, timeout=120, context=context)
    raw = RawClient(context, [e for _, e in raw_started])
    local = [Shard(WIDTH, make_optimizer("adagrad", LEARNING_RATE), capacity=capacity) for _ in range(num_shards)]
    checker = RequestKeys(shard_id=0, width=WIDTH, max_keys=1 << 24, num_groups=1,
                          placement=lambda: Placement(ring))  # a shard's key check, without a socket
    rows = []
    try:
        held = np.sort(all_keys)
        warm = rng.standard_normal((held.size, WIDTH)).astype(np.float32)
        client.wait(client.push(held, warm, 0))
        held_owner = ring.shard_of(held)
        for shard in range(num_shards):
            local[shard].push(held[held_owner == shard], warm[held_owner == shard])
        for size in sizes:
            keys = np.sort(all_keys[:size])
            grads = (rng.standard_normal((size, WIDTH)) * 0.01).astype(np.float32)
            key_owner = ring.shard_of(keys)
            parts = [np.ascontiguousarray(keys[key_owner == s]) for s in range(num_shards)]
            grad_parts = [np.ascontiguousarray(grads[key_owner == s]) for s in range(num_shards)]
            values = client.wait(client.pull(keys, 0))
            assert values.shape == (size, WIDTH) and np.isfinite(values).all()
            times = {
                "raw_pull": best_time(lambda: raw.round_trip([[p] for p in parts])),
                "ps_pull": best_time(lambda: client.wait(client.pull(keys, 0))),
                "raw_push": best_time(lambda: raw.round_trip([[p, g] for p, g in zip(parts, grad_parts)])),
                "ps_push": best_time(lambda: client.wait(client.push(keys, grads, 0))),
                "null_pull": best_time(lambda: null_client.wait(null_client.pull(keys, 0))),
                "null_push": best_time(lambda: null_client.wait(null_client.push(keys, grads, 0))),
                "shard_pull": max(best_time(lambda s=s: local[s].pull(parts[s]), 3, 0.02) for s in range(num_shards)),
                "shard_push": max(best_time(lambda s=s: local[s].push(parts[s], grad_parts[s]), 3, 0.02)
                                  for s in range(num_shards)),
                "split": best_time(lambda: ring.split(keys), 3, 0.02),
                "check_pull": _validation_seconds(checker, parts, grad_parts, push=False),
                "check_push": _validation_seconds(checker, parts, grad_parts, push=True),
            }
            ms = {f"{name}_ms": seconds * 1e3 for name, seconds in times.items()}
            rows.append({"shards": num_shards, "keys": size, "pull_bytes": size * (8 + 4 * WIDTH),
                         "push_bytes": size * (8 + 4 * WIDTH), **ms,
                         "pull_ratio": times["raw_pull"] / times["ps_pull"],
                         "push_ratio": times["raw_push"] / times["ps_push"],
                         "null_pull_ratio": times["raw_pull"] / times["null_pull"],
                         "null_push_ratio": times["raw_push"] / times["null_push"]})
    finally:
        for ps in (client, null_client):
            ps.shutdown()
            ps.close()
        raw.close()
        context.term()
        stop([process for process, _ in started + null_started + raw_started])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-keys", type=int, default=SIZES[-1], help="largest key count (sizes: 10^3 ..)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    sizes = [size for size in SIZES if size <= args.max_keys] or [args.max_keys]
    rng = np.random.default_rng(0)
    rows = [row for shards in args.shards for row in measure(shards, sizes, rng)]
    print(f"PS transport: PSClient + ShardService (AdaGrad, width {WIDTH}) vs raw pyzmq DEALER/ROUTER, "
          f"tcp 127.0.0.1, {os.cpu_count()} cores (2 shards + client oversubscribe 2 cores); times in ms")
    print_table(
        ["shards", "keys", "raw pull", "PS pull", "pull/raw", "raw push", "PS push", "push/raw",
         "null pull", "/raw", "null push", "/raw", "shard pull", "shard push", "split", "check pull", "check push"],
        [[r["shards"], r["keys"], r["raw_pull_ms"], r["ps_pull_ms"], r["pull_ratio"], r["raw_push_ms"],
          r["ps_push_ms"], r["push_ratio"], r["null_pull_ms"], r["null_pull_ratio"], r["null_push_ms"],
          r["null_push_ratio"], r["shard_pull_ms"], r["shard_push_ms"], r["split_ms"], r["check_pull_ms"],
          r["check_push_ms"]] for r in rows])
    print("ratio = raw time / PS time (1 = as fast as raw). null: the same PS path over a shard without math "
          "(transport only). shard pull/push: Shard.pull/push of the slowest shard's part in-process; split: "
          "HashRing.split on the client; check: the server's request validation (slowest shard).")
    big = [r for r in rows if r["keys"] >= 10**5] or rows
    worst = min(min(r["pull_ratio"], r["push_ratio"]) for r in big)
    transport_only = min(min(r["null_pull_ratio"], r["null_push_ratio"]) for r in big)
    print(f"transport only (null shard), >= 10^5 keys, worst: {transport_only:.2f}x raw")
    finish("transport", {"sizes": sizes, "shards": args.shards, "width": WIDTH, "rows": rows,
                         "transport_only_worst_ratio": transport_only},
           "PS transport, pull and push, >= 10^5 keys, 1-2 shards (worst)", worst, "raw pyzmq DEALER/ROUTER",
           f">= {TARGET}x", worst >= TARGET)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
