"""Chaos: shards SIGKILLed, and frozen (SIGSTOP) then woken, at random moments, again and again, while two groups
train; each supervisor restarts its shard and the others fill it. Short by default; by hand, e.g.
``HYBRID_PS_CHAOS_SECONDS=600 pytest -m chaos tests/fault/test_chaos.py``.

The groups push SGD gradients of small integers with learning rate 1: every key's value on every replica is
then minus the sum of the gradients applied to it, exact in float32, a counter that shows a push lost or
applied twice anywhere.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import zmq

from hybrid_ps.config import Config
from hybrid_ps.net.curve import JobKeys
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.protocol import wire
from hybrid_ps.server.process import ShardSpec
from hybrid_ps.server.restarts import RestartingShard
from hybrid_ps.worker.client import PSClient

pytestmark = [pytest.mark.fault, pytest.mark.chaos]

SECONDS = float(os.environ.get("HYBRID_PS_CHAOS_SECONDS", "15"))
SHARDS, GROUPS = 3, 2
UNIVERSE = np.arange(1, 6001, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)  # spread over the ring
UNIVERSE.sort()
FAILOVER_TIMEOUT = 1.5
FREEZE = os.environ.get("HYBRID_PS_CHAOS_FREEZE", "1") == "1"


class Group(threading.Thread):
    """A group's leader: pushes integer gradients to random keys (clocking every step), pulls what it pushed."""

    def __init__(self, client: PSClient, group: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client, self.stop, self.rng = client, stop, np.random.default_rng(group)
        self.pushed = np.zeros(UNIVERSE.size, dtype=np.int64)
        self.steps = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                rows = np.sort(self.rng.choice(UNIVERSE.size, 400, replace=False))
                grads = self.rng.integers(1, 4, (rows.size, 1))
                self.pushed[rows] += grads[:, 0]
                self.client.push(UNIVERSE[rows], grads.astype(np.float32), self.steps, tell_clock=True)
                self.steps += 1
                values = self.client.wait(self.client.pull(UNIVERSE[rows], self.steps))
                assert values.shape == (rows.size, 1)
            self.client.drain()
            self.client.wait(self.client.finish())  # the other group's pulls no longer wait for this one
        except BaseException as e:  # reported by the test
            self.error = e


class Tier:
    """Three supervised shards (replication 2, restarted when they die) in supervisor threads."""

    def __init__(self) -> None:
        config = Config()
        config.cluster.bind_host, config.cluster.staleness, config.train.checkpoint = "127.0.0.1", 2, False
        config.optimizer.name, config.optimizer.learning_rate = "sgd", 1.0
        config.cluster.replication = 2
        self.curve_keys = JobKeys.generate()
        ids = list(range(SHARDS))
        self.shards = [RestartingShard(ShardSpec(config.validate(), i, ids, GROUPS, 1, curve_keys=self.curve_keys),
                                       restarts=1000, curve_keys=self.curve_keys) for i in ids]
        self.endpoints = {i: shard.endpoint for i, shard in enumerate(self.shards)}
        self.codes: dict[int, int] = {}
        self.threads = [threading.Thread(target=self._supervise, args=(i,), daemon=True) for i in ids]
        for thread in self.threads:
            thread.start()
        self.context = zmq.Context()

    def _supervise(self, shard: int) -> None:
        self.codes[shard] = self.shards[shard].run(dict(self.endpoints))

    def client(self, group: int) -> PSClient:
        endpoints = {i: shard.endpoint for i, shard in enumerate(self.shards)}  # restarted ones have new ones
        return PSClient(endpoints, group, GROUPS, HashRing(range(SHARDS)), timeout=120, context=self.context,
                        replication=2, failover_timeout=FAILOVER_TIMEOUT, heartbeat_interval=0.3,
                        curve_keys=self.curve_keys)

    def rebuilt(self, shard: int) -> int:
        return len(self.shards[shard].rebuild_seconds)

    def wait_rebuilt(self, shard: int, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.rebuilt(shard) < count:
            assert time.monotonic() < deadline, f"shard {shard} was not rebuilt within {timeout:g}s"
            time.sleep(0.05)

    def replica_values(self, shard: int, keys: np.ndarray) -> np.ndarray:
        """``keys``' values on ``shard`` (each of them one of its ranges): the others are evicted there, so it
        answers as their acting primary."""
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        self.curve_keys.connect_as_client(sock)
        sock.connect(self.shards[shard].endpoint)

        def ask(frames: list) -> list[bytes]:
            sock.send_multipart(frames)
            assert sock.poll(10_000), f"shard {shard} did not answer"
            return sock.recv_multipart()

        try:
            for other in set(range(SHARDS)) - {shard}:
                ask([wire.encode_header(wire.Header(wire.Op.EVICT, 0, 1)), wire.encode_shard_id(other)])
            reply = ask([wire.encode_header(wire.Header(wire.Op.PULL, 0, 2, 0, keys.size)), keys.tobytes()])
            assert wire.decode_header(reply).op is wire.Op.PULL_REPLY, wire.error_text(reply[1])
            return np.frombuffer(reply[1], dtype=np.float32)
        finally:
            sock.close(0)

    def close(self) -> None:
        for shard in self.shards:
            shard.restarts_left = 0
        for shard in self.shards:
            shard.__exit__()
        for thread in self.threads:
            thread.join(timeout=10)
        self.context.destroy(linger=0)


def test_shards_killed_and_frozen_again_and_again_lose_no_push_and_apply_none_twice():
    tier = Tier()
    stop = threading.Event()
    groups = [Group(tier.client(g), g, stop) for g in range(GROUPS)]
    rng = np.random.default_rng(int(time.time()))
    events: list[str] = []
    try:
        for group in groups:
            group.start()
        started = time.monotonic()
        while time.monotonic() - started < SECONDS:
            time.sleep(rng.uniform(0.3, 1.5))
            victim = int(rng.integers(0, SHARDS))
            before = tier.rebuilt(victim)
            process = tier.shards[victim].process
            if len(events) % 4 == 2 and FREEZE:  # now and then a freeze past the failover timeout: fenced, then restarted
                os.kill(process.pid, signal.SIGSTOP)
                time.sleep(FAILOVER_TIMEOUT + rng.uniform(0.5, 1.5))
                os.kill(process.pid, signal.SIGCONT)
                events.append(f"froze shard {victim}")
            else:
                os.kill(process.pid, signal.SIGKILL)
                events.append(f"killed shard {victim}")
            tier.wait_rebuilt(victim, before + 1)
            assert all(g.is_alive() for g in groups), [repr(g.error) for g in groups]
        stop.set()
        for group in groups:
            group.join(timeout=120)
        errors = [f"group {i}: {g.error!r}" for i, g in enumerate(groups) if g.error]
        assert not errors, errors
        print(f"{len(events)} events in {SECONDS:g}s ({', '.join(events)}); steps {[g.steps for g in groups]}; "
              f"rebuilds took {[round(s, 2) for shard in tier.shards for s in shard.rebuild_seconds]} s")
        assert len(events) >= 3 and all(g.steps > 10 for g in groups)
        expected = -sum(g.pushed for g in groups).astype(np.float32)
        reader = tier.client(0)
        got = reader.wait(reader.pull(UNIVERSE, 0))[:, 0]
        extra = expected - got  # > 0: applied more often than acknowledged
        assert not extra.any(), (f"{(extra > 0).sum()} keys applied too often (by up to {extra.max():g}), "
                                 f"{(extra < 0).sum()} too rarely (by up to {-extra.min():g})")
        reader.close()
        for group in groups:  # before a replica is read alone: a leader told of the others' eviction would fence it
            group.client.close()
        replicas = reader.placement.replicas_of(UNIVERSE)
        for shard in range(SHARDS):  # every replica holds exactly the acknowledged pushes, each once
            mine = (replicas == shard).any(axis=1)
            np.testing.assert_array_equal(tier.replica_values(shard, UNIVERSE[mine]), expected[mine],
                                          err_msg=f"shard {shard}'s replica")
    finally:
        stop.set()
        tier.close()
