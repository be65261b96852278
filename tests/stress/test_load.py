"""Load: 32 leaders (one PSClient per group of a 32-group job) push and pull at once against two live shards.

The two shards are ``ShardService`` processes on 127.0.0.1 (SGD, learning rate
1, so a key's value is minus the sum of every gradient pushed for it); the 32
clients run in threads of the test process, each on its own sockets. For a
bounded time every client pushes small-integer gradients for a random subset
of 20,000 keys (most pushes pipelined, up to ``max_pushes_in_flight``; every
fourth one waited for and timed) and pulls another subset (timed); then every
client drains. Checked: every request was acknowledged (drain returns), each
key holds exactly minus the sum of what was pushed for it (integers: exact in
float32) on its primary and, with replication 2, on its backup too (read after
evicting the primaries), and the shards' peak RSS stays bounded. ``pytest -s``
prints the requests, latency percentiles and memory of each run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from hybrid_ps.placement.ring import HashRing
from hybrid_ps.protocol import wire
from hybrid_ps.worker.client import PSClient

pytestmark = pytest.mark.timeout(300)

GROUPS = 32
SHARDS = 2
VNODES = 64
UNIVERSE = 20_000
SECONDS = 7.0  # of load per run (two runs)
IN_FLIGHT = 4  # max_pushes_in_flight of every client
PEAK_RSS_GROWTH_LIMIT = 96 << 20  # per shard

_SHARD = r"""
import ctypes, json, logging, math, signal, sys
import zmq
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.tables.optimizers import make_optimizer
from hybrid_ps.server.service import ShardService
from hybrid_ps.server.shard import Shard
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the test
spec = json.loads(sys.argv[1])
logging.basicConfig(level=logging.WARNING, format=f"load shard {spec['shard']}: %(message)s")
staleness = math.inf if spec["staleness"] is None else spec["staleness"]
ring = HashRing(range(spec["shards"]), spec["vnodes"])
service = ShardService(Shard(1, make_optimizer("sgd", 1.0)), spec["shard"], ring, spec["groups"], staleness,
                       "127.0.0.1", context=zmq.Context(), replication=spec["replication"])
print(service.endpoint, flush=True)
with service:
    stats = service.serve()
print(json.dumps({"requests": stats.requests, "errors": stats.errors, "keys_pushed": stats.keys_pushed,
                  "keys_pulled": stats.keys_pulled}), flush=True)
"""


def memory_of(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) << 10, int(fields["VmHWM"].split()[0]) << 10


def percentiles(seconds: list[float]) -> str:
    ms = np.asarray(seconds) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return f"p50 {p50:.2f} p90 {p90:.2f} p99 {p99:.2f} max {ms.max():.1f} ms (n={ms.size})"


class Leader(threading.Thread):
    """One group's leader: pushes and pulls random subsets of the universe until the deadline, then drains."""

    def __init__(self, group: int, endpoints: list[str], ring: HashRing, context: zmq.Context, universe: np.ndarray,
                 replication: int, staleness: float, deadline: float) -> None:
        super().__init__(daemon=True, name=f"leader-{group}")
        self.client = PSClient(endpoints, group, GROUPS, ring, timeout=120, context=context, replication=replication,
                               max_pushes_in_flight=IN_FLIGHT, heartbeat_interval=1.0, failover_timeout=120)
        self.group, self.universe, self.staleness, self.deadline = group, universe, staleness, deadline
        self.pushed = np.zeros(universe.size, dtype=np.int64)  # the sum of this leader's gradients, per key
        self.keys_pushed = self.keys_pulled = 0
        self.pull_seconds: list[float] = []
        self.push_seconds: list[float] = []
        self.pushes = self.pulls = self.clocks = 0
        self.error: BaseException | None = None

    def _subset(self, rng: np.random.Generator) -> np.ndarray:
        return np.unique(rng.integers(0, self.universe.size, rng.integers(50, 1500)))

    def run(self) -> None:
        rng = np.random.default_rng(1000 + self.group)
        client, step = self.client, 0
        try:
            while time.monotonic() < self.deadline:
                rows = self._subset(rng)
                grads = rng.integers(-3, 4, (rows.size, 1))
                self.pushed[rows] += grads[:, 0]
                self.keys_pushed += rows.size
                started = time.perf_counter()
                ticket = client.push(self.universe[rows], grads.astype(np.float32), step)
                if step % 4 == 0:  # waited for and timed; the others are pipelined
                    client.wait(ticket)
                    self.push_seconds.append(time.perf_counter() - started)
                self.pushes += 1
                if not math.isinf(self.staleness):
                    client.clock(step + 1)  # acknowledged later (drain)
                    self.clocks += 1
                rows = self._subset(rng)
                self.keys_pulled += rows.size
                started = time.perf_counter()
                client.wait(client.pull(self.universe[rows], step))
                self.pull_seconds.append(time.perf_counter() - started)
                self.pulls += 1
                step += 1
            client.drain()  # every request acknowledged: none lost
        except BaseException as e:  # surfaced by the test
            self.error = e


def _stop_shards(shards: list[tuple[subprocess.Popen, str]], context: zmq.Context) -> list[dict | None]:
    """SHUTDOWN every shard still running; returns the counters each printed on exit (None: killed)."""
    stats = []
    for process, endpoint in shards:
        if process.stdout.closed:
            continue
        if process.poll() is None:
            admin = context.socket(zmq.DEALER)
            admin.setsockopt(zmq.LINGER, 1000)
            admin.connect(endpoint)
            admin.send(wire.encode_header(wire.Header(wire.Op.SHUTDOWN, request_id=1)))
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            admin.close(0)
        line = process.stdout.readline()
        process.stdout.close()
        stats.append(json.loads(line) if line.strip() else None)
    return stats


def _start_shards(replication: int, staleness: float) -> list[tuple[subprocess.Popen, str]]:
    shards = []
    for shard in range(SHARDS):
        spec = {"shard": shard, "shards": SHARDS, "vnodes": VNODES, "groups": GROUPS, "replication": replication,
                "staleness": None if math.isinf(staleness) else staleness}
        process = subprocess.Popen([sys.executable, "-c", _SHARD, json.dumps(spec)], stdout=subprocess.PIPE)
        endpoint = process.stdout.readline().decode().strip()
        assert endpoint.startswith("tcp://"), f"shard {shard} did not start"
        shards.append((process, endpoint))
    return shards


@pytest.mark.parametrize("replication, staleness", [(1, math.inf), (2, 10_000)], ids=["R1-ASP", "R2-SSP10000"])
def test_32_leaders_push_and_pull_at_once_and_nothing_is_lost(replication, staleness):
    shards = _start_shards(replication, staleness)
    context = zmq.Context()
    ring = HashRing(range(SHARDS), VNODES)
    endpoints = [endpoint for _, endpoint in shards]
    universe = np.unique(np.random.default_rng(3).integers(0, 2**64 - 2, UNIVERSE, dtype=np.uint64))
    try:
        memory_before = [memory_of(process.pid) for process, _ in shards]
        deadline = time.monotonic() + SECONDS
        leaders = [Leader(group, endpoints, ring, context, universe, replication, staleness, deadline)
                   for group in range(GROUPS)]
        started = time.monotonic()
        for leader in leaders:
            leader.start()
        for leader in leaders:
            leader.join(timeout=180)
        elapsed = time.monotonic() - started
        assert not any(leader.is_alive() for leader in leaders), "a leader is stuck"
        for leader in leaders:
            leader.client.close()
        errors = [f"group {leader.group}: {leader.error!r}" for leader in leaders if leader.error]
        assert not errors, errors
        assert all(leader.pushes >= 1 and leader.pulls >= 1 for leader in leaders)
        for process, _ in shards:
            assert process.poll() is None, "a shard died"
        memory_after = [memory_of(process.pid) for process, _ in shards]

        # nothing lost: every key holds minus the sum of its gradients, on its primary ...
        expected = -sum(leader.pushed for leader in leaders).astype(np.float32).reshape(-1, 1)
        checker = PSClient(endpoints, 0, GROUPS, ring, timeout=120, context=context, replication=replication)
        np.testing.assert_array_equal(checker.wait(checker.pull(universe, 0)), expected)
        checker.close()
        if replication == 2:  # ... and on its backup: tell each shard the other is dead, then read everything from it
            for survivor in range(SHARDS):
                dead = 1 - survivor
                admin = context.socket(zmq.DEALER)
                admin.connect(endpoints[survivor])
                admin.send_multipart([wire.encode_header(wire.Header(wire.Op.EVICT, 0, 1)), wire.encode_shard_id(dead)])
                assert admin.poll(30_000)
                assert wire.decode_header(admin.recv_multipart()).op is wire.Op.ACK
                admin.close(0)
                reader = PSClient({survivor: endpoints[survivor]}, 0, GROUPS, ring, timeout=120, context=context,
                                  replication=replication)
                reader.channel.routing.without(dead)  # this reader knows the shard is gone
                np.testing.assert_array_equal(reader.wait(reader.pull(universe, 0)), expected,
                                              err_msg=f"shard {survivor}'s copy")
                reader.close()

        reads = 1 + (SHARDS if replication == 2 else 0)  # of the whole universe, after the load
        stats = _stop_shards(shards, context)
        assert all(stats), "a shard did not stop cleanly"
        assert [shard["errors"] for shard in stats] == [0] * SHARDS
        # ... and the shards saw every key of every request exactly once per replica
        pushed = sum(leader.keys_pushed for leader in leaders)
        pulled = sum(leader.keys_pulled for leader in leaders)
        assert sum(shard["keys_pushed"] for shard in stats) == replication * pushed
        assert sum(shard["keys_pulled"] for shard in stats) == pulled + reads * universe.size

        pushes = sum(leader.pushes for leader in leaders)
        pulls = sum(leader.pulls for leader in leaders)
        requests = {op: sum(shard["requests"].get(op, 0) for shard in stats)
                    for op in ("PUSH", "PULL", "CLOCK", "PING")}
        print(f"\nload, replication {replication}, staleness {staleness}: {GROUPS} leaders x {elapsed:.1f}s: "
              f"{pushes} pushes, {pulls} pulls ({(pushes + pulls) / elapsed:.0f}/s); the shards answered "
              f"{sum(requests.values())} requests {requests}, no error, no update lost")
        print(f"  pull round trip: {percentiles([s for leader in leaders for s in leader.pull_seconds])}")
        print(f"  push ack (every 4th push, waited for): "
              f"{percentiles([s for leader in leaders for s in leader.push_seconds])}")
        for shard, ((rss0, hwm0), (rss1, hwm1)) in enumerate(zip(memory_before, memory_after)):
            print(f"  shard {shard}: RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MB, peak {hwm1 / 2**20:.1f} MB")
            assert hwm1 - hwm0 < PEAK_RSS_GROWTH_LIMIT, f"shard {shard} peak RSS grew by {(hwm1 - hwm0) / 2**20:.0f} MB"
    finally:
        _stop_shards(shards, context)
        context.destroy(linger=0)
