"""The SSP bound on a real job: one rank per group, one deliberately slow group, real shards.

Each pull reply carries the shard's vector clock at the moment it answered;
the bound says the slowest group had then finished at least ``c - s`` steps.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from hybrid_ps.job.topology import build_topology, exchange_endpoints
from hybrid_ps.placement.ring import HashRing
from hybrid_ps.protocol.wire import FINAL_CLOCK
from hybrid_ps.server.service import ShardService
from hybrid_ps.server.shard import Shard
from hybrid_ps.tables.optimizers import make_optimizer
from hybrid_ps.worker.client import PSClient
from hybrid_ps.worker.group import wait_quietly

STEPS = 12
SLOW_SECONDS = 0.03


def _run(world, staleness: float) -> list[tuple[int, int, int]] | None:
    """Every worker is a group of one; the last group sleeps each step. Returns (clock, min, max) per pull."""
    size = world.Get_size()
    servers = 1 if size < 8 else 2
    topology = build_topology(world, servers=servers, groups=size - servers)
    ring = HashRing(range(servers))
    keys = np.arange(1, 200, dtype=np.uint64)
    if topology.role == "server":
        shard = Shard(1, make_optimizer("sgd", 0.1))
        with ShardService(shard, topology.shard_id, ring, topology.layout.num_groups, staleness) as service:
            exchange_endpoints(topology, service.endpoint)
            service.serve()
        wait_quietly(world.Ibarrier())
        return None
    endpoints = exchange_endpoints(topology, None)
    slow = topology.group == topology.layout.num_groups - 1
    seen = []
    with PSClient(endpoints, topology.group, topology.layout.num_groups, ring, timeout=60) as client:
        for clock in range(STEPS):
            ticket = client.pull(keys, clock)
            client.wait(ticket)
            running = ticket.shard_clocks[ticket.shard_clocks != FINAL_CLOCK]  # finished groups: FINAL_CLOCK
            seen.append((clock, int(ticket.shard_clocks.min()), int(running.max())))
            if slow:
                time.sleep(SLOW_SECONDS)
            client.push(keys, np.ones((keys.size, 1), np.float32), clock)
            client.clock(clock + 1)
        client.finish()
        client.bye()
    wait_quietly(world.Ibarrier())
    return seen


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("staleness", [0, 1, 3])
def test_pull_answered_only_within_the_staleness_bound(world, staleness):
    seen = _run(world, staleness)
    if seen is None:
        return
    for clock, slowest, _ in seen:
        assert slowest >= clock - staleness, f"pull at clock {clock} answered when slowest group was at {slowest}"


@pytest.mark.mpi(min_size=4)
def test_bsp_is_lock_step(world):
    seen = _run(world, 0)
    if seen is None:
        return
    for clock, slowest, fastest in seen:
        assert slowest == clock  # everybody finished exactly `clock` steps ...
        assert fastest <= clock + 1  # ... and nobody got further than the step it is on


@pytest.mark.mpi(min_size=4)
def test_without_a_bound_fast_groups_run_ahead(world):
    """The control: with ASP the slow group really does fall behind (so the tests above can fail)."""
    seen = _run(world, math.inf)
    lags = world.allgather(max((clock - slowest for clock, slowest, _ in seen), default=0) if seen else 0)
    assert max(lags) > 3
