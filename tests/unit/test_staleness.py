"""Vector clock and the SSP rule."""

from __future__ import annotations

import math

import pytest

from hybrid_ps.staleness import VectorClock, parse_staleness
from hybrid_ps.wire import FINAL_CLOCK


@pytest.mark.parametrize("text, value", [(0, 0), ("3", 3), (2.0, 2), ("inf", math.inf), ("ASP", math.inf),
                                          ("bsp", 0), (math.inf, math.inf)])
def test_parse_staleness(text, value):
    assert parse_staleness(text) == value


@pytest.mark.parametrize("bad", [-1, "1.5", "soon", -math.inf])
def test_parse_staleness_rejects(bad):
    with pytest.raises(ValueError):
        parse_staleness(bad)


def test_bsp_is_lock_step():
    clock = VectorClock(3)
    assert clock.ready(0, 0) and not clock.ready(1, 0)
    clock.advance(0, 1)
    clock.advance(1, 1)
    assert not clock.ready(1, 0)
    clock.advance(2, 1)
    assert clock.ready(1, 0) and not clock.ready(2, 0)


def test_bounded_staleness_and_asp():
    clock = VectorClock(2)
    clock.advance(0, 5)
    assert clock.ready(2, 2) and not clock.ready(3, 2)
    assert clock.ready(10**9, math.inf)
    assert clock.gap() == 5


def test_clocks_never_go_back_and_finished_groups_do_not_hold_back():
    clock = VectorClock(2)
    clock.advance(0, 4)
    clock.advance(0, 2)
    assert clock.clocks[0] == 4
    assert clock.min_clock() == 0
    clock.finish(1)
    assert clock.min_clock() == 4 and clock.ready(4, 0)
    assert list(clock.effective()) == [4, FINAL_CLOCK]


def test_final_clock_waits_for_every_group_to_finish():
    clock = VectorClock(2)
    clock.advance(0, 100)
    clock.advance(1, 100)
    assert not clock.ready(FINAL_CLOCK, math.inf)
    clock.finish(0)
    assert not clock.ready(FINAL_CLOCK, math.inf)
    clock.finish(1)
    assert clock.ready(FINAL_CLOCK, 0) and clock.min_clock() == FINAL_CLOCK
