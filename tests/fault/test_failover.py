"""Killing PS shards under load: backups take over, no acknowledged push is lost, nothing hangs.

Shards are real processes; clients push SGD gradients of exactly 1.0 with learning rate 1, so
every key's value is minus the number of pushes a replica applied to it: a counter that shows
whether an acknowledged update went missing.
"""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

from hybrid_ps.errors import RangeLostError, ShardUnavailableError
from hybrid_ps.server.process import FENCED

pytestmark = pytest.mark.fault

UNIVERSE = np.arange(4000, dtype=np.uint64)


class Pusher(threading.Thread):
    """One group's leader: pushes +1 to random key sets, waiting for each acknowledgement, pulls now and then."""

    def __init__(self, client, steps: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.client, self.steps, self.rng = client, steps, np.random.default_rng(seed)
        self.sent = np.zeros(UNIVERSE.size, dtype=np.int64)
        self.acked = np.zeros(UNIVERSE.size, dtype=np.int64)
        self.completed = 0
        self.step_ends: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for step in range(self.steps):
                keys = np.sort(self.rng.choice(UNIVERSE, 300, replace=False))
                self.sent[keys] += 1
                self.client.wait(self.client.push(keys, np.ones((keys.size, 1), np.float32), step))
                self.acked[keys] += 1
                if step % 3 == 0:
                    values = self.client.wait(self.client.pull(keys, step))
                    assert values.shape == (keys.size, 1)
                self.completed = step + 1
                self.step_ends.append(time.monotonic())
                time.sleep(0.002)
        except BaseException as e:  # reported by the test
            self.error = e


def _run_with_a_kill(tier, victim: int, kill_after: int, groups: int = 2, steps: int = 120):
    pushers = [Pusher(tier.client(g), steps, seed=100 + g) for g in range(groups)]
    for p in pushers:
        p.start()
    while pushers[0].completed < kill_after and pushers[0].is_alive():
        time.sleep(0.005)
    killed_at = time.monotonic()
    tier.kill(victim)
    for p in pushers:
        p.join(timeout=60)
        assert not p.is_alive(), "a client hung after the shard was killed"
    return pushers, killed_at


def _counters_hold(tier, pushers) -> np.ndarray:
    """Pull every key through a fresh client; check acked <= applied <= sent for each."""
    reader = tier.client(0)
    applied = -reader.wait(reader.pull(UNIVERSE, 0))[:, 0]
    acked = sum(p.acked for p in pushers)
    sent = sum(p.sent for p in pushers)
    missing = np.flatnonzero(applied < acked)
    assert not missing.size, f"{missing.size} keys lost acknowledged updates, e.g. key {missing[0]}"
    assert (applied <= sent).all()
    assert np.array_equal(applied, np.round(applied)), "values are whole counts"
    return applied


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_primary_killed_at_a_random_moment_loses_no_acknowledged_push(tier, seed):
    rng = np.random.default_rng(seed)
    victim, kill_after = int(rng.integers(0, 3)), int(rng.integers(5, 60))
    t = tier(3, groups=2, replication=2)
    pushers, killed_at = _run_with_a_kill(t, victim, kill_after)
    for p in pushers:
        assert p.error is None, f"{type(p.error).__name__}: {p.error}"
        assert p.completed == p.steps
        assert [shard for shard, _ in p.client.channel.failovers] == [victim]
    applied = _counters_hold(t, pushers)
    assert applied.sum() >= sum(p.acked.sum() for p in pushers)
    stall = max(b - a for p in pushers for a, b in zip([killed_at] + p.step_ends, p.step_ends) if b > killed_at)
    print(f"killed shard {victim} after {kill_after} steps: longest step after the kill {stall:.2f}s "
          f"(failover timeout 1.5s)")
    assert stall < 1.5 + 2.0


def test_surviving_shards_answer_pulls_for_the_dead_shards_ranges(tier):
    t = tier(3, groups=1, replication=2)
    writer = t.client(0)
    values = np.arange(UNIVERSE.size, dtype=np.float32).reshape(-1, 1)
    writer.wait(writer.push(UNIVERSE, values, 0))
    t.kill(1)
    reader = t.client(0)
    assert np.array_equal(reader.wait(reader.pull(UNIVERSE, 0)), -values)  # SGD, lr 1: value = -gradient
    assert sorted(reader.placement.dead) == [1]


def test_losing_every_replica_of_a_range_stops_with_a_clear_error(tier):
    t = tier(3, groups=1, replication=2)
    client = t.client(0)
    client.wait(client.push(UNIVERSE, np.ones((UNIVERSE.size, 1), np.float32), 0))
    t.kill(0)
    t.kill(1)
    started = time.monotonic()
    with pytest.raises(RangeLostError, match=r"every replica of \d+ of the \d+ key ranges is dead .*"
                                             r"restart the job with --resume latest"):
        client.wait(client.pull(UNIVERSE, 1))
    assert time.monotonic() - started < 10, "the loss is found within a few failover timeouts, not ps_timeout"


def test_without_replication_a_dead_shard_is_reported_within_the_failover_timeout(tier):
    t = tier(2, groups=1, replication=1)
    client = t.client(0, failover_timeout=1.0)
    t.kill(1)
    started = time.monotonic()
    with pytest.raises(ShardUnavailableError, match="replication 1"):
        client.wait(client.pull(UNIVERSE, 0))
    assert time.monotonic() - started < 5


def test_a_frozen_shard_is_declared_dead_and_fences_itself_when_it_wakes(tier):
    t = tier(3, groups=1, replication=2)
    client = t.client(0, failover_timeout=1.0)
    client.wait(client.push(UNIVERSE, np.ones((UNIVERSE.size, 1), np.float32), 0))
    t.kill(2, signal.SIGSTOP)  # alive but silent: indistinguishable from dead for the client
    try:
        assert np.array_equal(client.wait(client.pull(UNIVERSE, 0)), -np.ones((UNIVERSE.size, 1)))
        assert sorted(client.placement.dead) == [2]
    finally:
        t.kill(2, signal.SIGCONT)
    assert t.shards[2].process.wait(timeout=10) == FENCED, "a shard told it is dead stops serving (and says so)"


def test_shard_processes_admit_only_the_jobs_curve_keys(tier):
    import zmq

    from hybrid_ps.net.curve import JobKeys
    from hybrid_ps.protocol import wire

    t = tier(1, groups=1)
    client = t.client(0)
    keys = np.arange(10, dtype=np.uint64)
    client.wait(client.push(keys, np.ones((keys.size, 1), np.float32), 0))
    push = [wire.encode_header(wire.Header(wire.Op.PUSH, num_keys=keys.size, request_id=5)), keys.tobytes(),
            np.full(keys.size, -100.0, np.float32).tobytes()]
    stranger = JobKeys.generate()
    for keys_of_peer in (None, JobKeys(t.curve_keys.server_public, "", stranger.client_public, stranger.client_secret)):
        sock = t.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if keys_of_peer is not None:
            keys_of_peer.connect_as_client(sock)
        sock.connect(t.shards[0].endpoint)
        sock.send_multipart(push)
        assert not sock.poll(1000), "a peer without the job's keys got an answer"
        sock.close(0)
    assert np.array_equal(client.wait(client.pull(keys, 1)), -np.ones((keys.size, 1), np.float32))
