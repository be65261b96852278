"""Load: many leaders pushing and pulling at once against live shards; latencies vs raw pyzmq under the same load.

Run: ``python -m benchmarks.load [--groups 32] [--shards 2] [--seconds 10] [--replication 1 2] [--processes 4]``.

``--groups`` leaders (one ``PSClient`` each, its own group of a job with that
many groups, staleness inf) run in ``--processes`` client processes (threads
inside) against ``--shards`` ``ShardService`` processes (SGD, learning rate 1)
on 127.0.0.1. For ``--seconds`` every leader repeats: push small-integer
gradients for a random subset of ``--universe`` keys (``--keys`` min and max
per request) and wait for the acknowledgement, then pull another subset. Each
push ack and pull round trip is timed. Afterwards every key must hold minus the
sum of what was pushed for it (checked: no update lost).

Raw baseline, same run, same load: the same leaders, threads and processes, one
plain pyzmq ROUTER process per shard that answers each request with frames of
the PS reply's sizes (pull: header + values + clock vector; push: header), each
request split by the same ring and replica placement (so every message has the
size it has in the PS run), ``copy=False`` both ways. Ratio = raw latency / PS
latency (1 = the PS adds nothing to moving the bytes); headline: the worst p50
ratio over pulls and pushes and the replication settings.

The machine has 2 cores: the shard and client processes share them.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing as mp
import os
import threading
import time

import numpy as np
import zmq

from .common import finish, print_table
from .raw_server import connect_raw, serve_raw, start

VNODES = 256  # the config default (cluster.vnodes)
TARGET = 0.5


# -- servers (spawned processes: no mpi4py) --------------------------------------------------------------------


def _serve_shard(shard_id: int, num_shards: int, groups: int, replication: int, conn) -> None:
    """A shard: ShardService (SGD, learning rate 1, ASP) on 127.0.0.1; sends its endpoint back."""
    logging.basicConfig(level=logging.WARNING)
    from hybrid_ps.placement.ring import HashRing
    from hybrid_ps.server.service import ShardService
    from hybrid_ps.server.shard import Shard
    from hybrid_ps.tables.optimizers import make_optimizer

    service = ShardService(Shard(1, make_optimizer("sgd", 1.0)), shard_id, HashRing(range(num_shards), VNODES),
                           groups, math.inf, "127.0.0.1", context=zmq.Context(), replication=replication)
    conn.send(service.endpoint)
    conn.close()
    with service:
        service.serve()


def _spawn(target, *args) -> tuple[mp.Process, object]:
    """Start ``target(*args, conn)`` in a spawned process; returns it and the parent's end of the pipe."""
    context = mp.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    child.close()
    return process, parent


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status.read().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) << 10, int(fields["VmHWM"].split()[0]) << 10


# -- leaders (client processes, one thread per group) -------------------------------------------------------------


class RawLeader:
    """A leader without the PS: DEALERs to the raw servers; requests split by the same ring and replica placement."""

    def __init__(self, context: zmq.Context, endpoints: list[str], group: int, placement) -> None:
        from hybrid_ps.protocol import wire

        self.placement = placement
        self.sockets = [connect_raw(context, endpoint) for endpoint in endpoints]
        self.header = wire.encode_header(wire.Header(wire.Op.PULL, group))

    def round_trip(self, keys: np.ndarray, grads: np.ndarray | None = None) -> None:
        parts = self.placement.pull_parts(keys) if grads is None else self.placement.push_parts(keys)
        for shard, positions in parts:
            frames = [self.header, np.take(keys, positions)]
            if grads is not None:
                frames.append(np.take(grads, positions, axis=0))
            self.sockets[shard].send_multipart(frames, copy=False)
        for shard, _ in parts:
            self.sockets[shard].recv_multipart(copy=False)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)


def _leaders(raw: bool, groups: list[int], num_groups: int, endpoints: list[str], replication: int, universe: int,
             keys: tuple[int, int], seconds: float, go, conn) -> None:
    """Run ``groups`` leaders (threads) for ``seconds`` after ``go``; send back latencies, counts, pushed sums."""
    from hybrid_ps.placement.replicas import Placement
    from hybrid_ps.placement.ring import HashRing
    from hybrid_ps.worker.client import PSClient

    all_keys = _universe(universe)
    context = zmq.Context()
    ring = HashRing(range(len(endpoints)), VNODES)
    if raw:
        leaders = [RawLeader(context, endpoints, g, Placement(ring, replication)) for g in groups]
    else:
        leaders = [PSClient(endpoints, g, num_groups, ring, timeout=300, context=context, replication=replication,
                            failover_timeout=300) for g in groups]
    results = [{"pull": [], "push": [], "pushed": np.zeros(universe, np.int64), "keys": 0} for _ in groups]

    def run(index: int, deadline: float) -> None:
        leader, result = leaders[index], results[index]
        rng = np.random.default_rng(groups[index])
        step = 0
        while time.monotonic() < deadline:
            rows = np.unique(rng.integers(0, universe, rng.integers(*keys)))
            grads = rng.integers(-3, 4, (rows.size, 1))
            result["pushed"][rows] += grads[:, 0]
            started = time.perf_counter()
            if raw:
                leader.round_trip(all_keys[rows], grads.astype(np.float32))
            else:
                leader.wait(leader.push(all_keys[rows], grads.astype(np.float32), step))
            result["push"].append(time.perf_counter() - started)
            rows = np.unique(rng.integers(0, universe, rng.integers(*keys)))
            started = time.perf_counter()
            if raw:
                leader.round_trip(all_keys[rows])
            else:
                leader.wait(leader.pull(all_keys[rows], step))
            result["pull"].append(time.perf_counter() - started)
            result["keys"] += 2 * rows.size
            step += 1

    conn.send("ready")
    go.wait()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=run, args=(i, deadline)) for i in range(len(groups))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for leader in leaders:
        leader.close()
    context.term()
    conn.send({"pull": np.concatenate([np.asarray(r["pull"]) for r in results]),
               "push": np.concatenate([np.asarray(r["push"]) for r in results]),
               "pushed": sum(r["pushed"] for r in results)})
    conn.close()


def _universe(size: int) -> np.ndarray:
    return np.unique(np.random.default_rng(0).integers(0, 2**63, int(size * 1.01) + 16, dtype=np.uint64))[:size]


# -- one run --------------------------------------------------------------------------------------------------------


def run(raw: bool, args: argparse.Namespace, replication: int) -> dict:
    """One load run against fresh servers; returns its figures (PS runs: after checking that nothing was lost)."""
    from hybrid_ps.protocol import wire

    servers = [(start(serve_raw, 1 << 20, args.groups, None) if raw else
                start(_serve_shard, shard, args.shards, args.groups, replication)) for shard in range(args.shards)]
    endpoints = [endpoint for _, endpoint in servers]
    go = mp.get_context("spawn").Event()
    slices = np.array_split(np.arange(args.groups), args.processes)
    clients = [_spawn(_leaders, raw, part.tolist(), args.groups, endpoints, replication, args.universe,
                      tuple(args.keys), args.seconds, go) for part in slices if part.size]
    try:
        for process, conn in clients:
            if not conn.poll(120) or conn.recv() != "ready":
                raise RuntimeError("a client process did not start")
        before = [_memory(process.pid) for process, _ in servers]
        cpu = [_cpu_seconds(process.pid) for process, _ in servers + clients]
        go.set()
        started = time.monotonic()
        outcomes = [conn.recv() for _, conn in clients]
        elapsed = time.monotonic() - started
        cpu = [_cpu_seconds(process.pid) - used for (process, _), used in zip(servers + clients, cpu)]
        after = [_memory(process.pid) for process, _ in servers]
        lost = None
        if not raw:
            lost = _count_lost(endpoints, args, replication, sum(o["pushed"] for o in outcomes))
    finally:
        context = zmq.Context()
        for (process, _), endpoint in zip(servers, endpoints):
            admin = context.socket(zmq.DEALER)
            admin.setsockopt(zmq.LINGER, 1000)
            admin.connect(endpoint)
            admin.send(wire.encode_header(wire.Header(wire.Op.SHUTDOWN, request_id=1)))
            process.join(20)
            if process.is_alive():
                process.terminate()
            admin.close(0)
        context.term()
        for process, _ in clients:
            process.join(20)
    pull = np.concatenate([o["pull"] for o in outcomes]) * 1e3
    push = np.concatenate([o["push"] for o in outcomes]) * 1e3
    figures = {"mode": "raw" if raw else "ps", "replication": replication, "lost_keys": lost,
               "ops_per_s": (pull.size + push.size) / args.seconds,
               "server_cores": sum(cpu[: len(servers)]) / elapsed, "client_cores": sum(cpu[len(servers):]) / elapsed,
               "peak_rss_mb": [round(hwm / 2**20, 1) for _, hwm in after],
               "rss_growth_mb": [round((a[0] - b[0]) / 2**20, 1) for a, b in zip(after, before)]}
    for name, ms in (("pull", pull), ("push", push)):
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        figures[name] = {"n": int(ms.size), "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "max_ms": float(ms.max())}
    return figures


def _count_lost(endpoints: list[str], args: argparse.Namespace, replication: int, pushed: np.ndarray) -> int:
    """Keys whose value is not minus the sum of their gradients (0 = every push arrived, exactly once)."""
    from hybrid_ps.placement.ring import HashRing
    from hybrid_ps.worker.client import PSClient

    context = zmq.Context()
    checker = PSClient(endpoints, 0, args.groups, HashRing(range(args.shards), VNODES), timeout=300,
                       context=context, replication=replication)
    try:
        values = checker.wait(checker.pull(_universe(args.universe), 0))
    finally:
        checker.close()
        context.term()
    return int(np.count_nonzero(values[:, 0] != -pushed.astype(np.float32)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=32, help="leaders, one group each")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--processes", type=int, default=4, help="client processes the leaders are spread over")
    parser.add_argument("--seconds", type=float, default=10.0, help="of load per run")
    parser.add_argument("--replication", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--universe", type=int, default=100_000, help="keys the leaders draw from")
    parser.add_argument("--keys", type=int, nargs=2, default=[100, 2000], help="keys per request: min, max")
    args = parser.parse_args()
    args.processes = max(1, min(args.processes, args.groups))
    runs = [run(raw, args, r) for r in args.replication for raw in (True, False)]

    print(f"{args.groups} leaders in {args.processes} processes, {args.shards} shards, {args.seconds:g}s per run, "
          f"{args.keys[0]}-{args.keys[1]} of {args.universe} keys per request, tcp 127.0.0.1, {os.cpu_count()} cores; "
          "latencies in ms")
    print_table(["R", "run", "ops/s", "pull p50", "p90", "p99", "max", "push p50", "p90", "p99", "max",
                 "server cores", "client cores", "shard peak RSS MB", "lost"],
                [[f["replication"], f["mode"], f["ops_per_s"], f["pull"]["p50_ms"], f["pull"]["p90_ms"],
                  f["pull"]["p99_ms"], f["pull"]["max_ms"], f["push"]["p50_ms"], f["push"]["p90_ms"],
                  f["push"]["p99_ms"], f["push"]["max_ms"], f["server_cores"], f["client_cores"],
                  " ".join(map(str, f["peak_rss_mb"])),
                  "-" if f["lost_keys"] is None else f["lost_keys"]] for f in runs])
    ratios = {}
    for r in args.replication:
        raw, ps = (next(f for f in runs if f["replication"] == r and f["mode"] == mode) for mode in ("raw", "ps"))
        ratios[r] = {op: raw[op]["p50_ms"] / ps[op]["p50_ms"] for op in ("pull", "push")}
        ratios[r]["ops"] = ps["ops_per_s"] / raw["ops_per_s"]
        print(f"replication {r}: raw/PS p50 latency pull {ratios[r]['pull']:.2f}x, push {ratios[r]['push']:.2f}x; "
              f"PS ops/s {ratios[r]['ops']:.2f}x raw")
    lost = sum(f["lost_keys"] or 0 for f in runs)
    print("server/client cores: CPU time of the server (shard or raw) and client processes over the run's wall time")
    print(f"updates lost: {lost} keys (every key must hold minus the sum of its gradients)")
    worst = min(min(r["pull"], r["push"]) for r in ratios.values())
    finish("load", {"groups": args.groups, "shards": args.shards, "processes": args.processes,
                    "seconds": args.seconds, "universe": args.universe, "keys": args.keys, "runs": runs,
                    "ratios": {str(r): v for r, v in ratios.items()}, "lost_keys": lost},
           f"{args.groups} leaders at once, p50 latency, {args.shards} shards (worst of pull/push, "
           f"R {', '.join(map(str, args.replication))})",
           worst, "raw pyzmq DEALER/ROUTER, same load", f">= {TARGET}x", worst >= TARGET and lost == 0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
