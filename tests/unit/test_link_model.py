"""The simulated link's timing model and its accounting (no sockets)."""

from __future__ import annotations

import math

import pytest

from hybrid_ps.errors import ConfigError
from hybrid_ps.net.link_model import NETWORK_FIELDS, DirectionStats, Link, LinkStats

GBIT = 1e9 / 8  # bytes per second


def test_a_lone_chunk_takes_the_latency_then_its_serialization():
    link = Link(latency=0.001, bandwidth=GBIT)
    assert link.departure(10.0, 125_000) == pytest.approx(10.0 + 0.001 + 0.001)  # 125 kB at 1 Gbit/s: 1 ms
    assert link.stats.queue_seconds == 0
    assert link.stats.serialization_seconds == pytest.approx(0.001)


def test_chunks_arriving_together_queue_behind_each_other_on_the_shared_link():
    link = Link(latency=0.0005, bandwidth=GBIT)
    first = link.departure(1.0, 125_000)  # e.g. two connections of one leader, at the same moment
    second = link.departure(1.0, 125_000)
    assert first == pytest.approx(1.0015) and second == pytest.approx(1.0025)
    assert link.stats.queue_seconds == pytest.approx(0.001)  # the second waited for the first's serialization
    later = link.departure(2.0, 1250)  # the link is free again by then: no queueing
    assert later == pytest.approx(2.0 + 0.0005 + 1e-5)
    assert link.stats.queue_seconds == pytest.approx(0.001)


def test_a_busy_link_sends_at_its_bandwidth_whatever_the_latency():
    link = Link(latency=0.002, bandwidth=GBIT)
    size, count = 65536, 200
    last = max(link.departure(0.0, size) for _ in range(count))
    assert last == pytest.approx(0.002 + count * size / GBIT)


def test_unlimited_bandwidth_adds_only_the_latency():
    link = Link(latency=0.00025, bandwidth=0)
    assert [link.departure(t, 10**9) for t in (0.0, 0.0, 1.0)] == pytest.approx([0.00025, 0.00025, 1.00025])
    assert link.stats.queue_seconds == 0 and link.stats.serialization_seconds == 0


def test_the_counters_add_up_exactly():
    link = Link(latency=0.001, bandwidth=GBIT / 10)
    sizes = [1, 500, 65536, 65536, 3, 70_000]
    for i, size in enumerate(sizes):
        link.departure(0.0001 * i, size)
    stats = link.stats
    assert stats.bytes == sum(sizes) and stats.chunks == len(sizes)
    assert stats.serialization_seconds == pytest.approx(sum(sizes) / (GBIT / 10), rel=1e-12)
    assert stats.delay_seconds == pytest.approx(
        len(sizes) * 0.001 + stats.queue_seconds + stats.serialization_seconds, rel=1e-12)
    assert stats.queue_seconds > 0


@pytest.mark.parametrize("latency, bandwidth", [(-0.001, 0), (math.inf, 0), (0, -1.0), (0, math.inf)])
def test_bad_settings_are_refused(latency, bandwidth):
    with pytest.raises(ConfigError, match="simulated network"):
        Link(latency=latency, bandwidth=bandwidth)


def test_lateness_keeps_a_sum_and_a_maximum():
    stats = DirectionStats()
    for late in (0.001, -0.5, 0.003):  # early (a clock step) counts as on time
        stats.add_late(late)
    assert stats.late_seconds == pytest.approx(0.004) and stats.max_late_seconds == pytest.approx(0.003)


def test_link_stats_round_trip_and_line_up_with_the_network_fields():
    up, down = Link(latency=0.001, bandwidth=GBIT), Link(latency=0.001, bandwidth=GBIT)
    up.departure(0.0, 1000)
    down.departure(0.0, 30)
    down.departure(0.0, 30)
    stats = LinkStats(up.stats, down.stats, 3)
    assert LinkStats.from_dict(stats.to_dict()) == stats
    named = dict(zip(NETWORK_FIELDS, stats.as_array(), strict=True))
    assert named["up_bytes"] == 1000 and named["down_chunks"] == 2 and named["connections"] == 3
    assert named["down_delay_seconds"] == pytest.approx(down.stats.delay_seconds)
