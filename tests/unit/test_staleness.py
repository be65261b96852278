"""hybrid_ps.protocol.staleness: parse_staleness and the vector clock's SSP rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid_ps.protocol.staleness import VectorClock, parse_staleness
from hybrid_ps.protocol.wire import FINAL_CLOCK

# -- parse_staleness -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, expected",
    [
        (0, 0), (1, 1), (3, 3), (1000, 1000), (2.0, 2), ("0", 0), ("3", 3), (" 7 ", 7), ("4.0", 4),
        ("inf", math.inf), ("INF", math.inf), ("Infinity", math.inf), (" inf ", math.inf), ("asp", math.inf),
        ("ASP", math.inf), (math.inf, math.inf), (float("inf"), math.inf), ("bsp", 0), ("BSP", 0), (np.int64(5), 5),
    ],
)
def test_parse_staleness_accepts(given, expected):
    value = parse_staleness(given)
    assert value == expected
    if math.isinf(expected):
        assert value == math.inf
    else:
        assert isinstance(value, int) and not isinstance(value, bool)


@pytest.mark.parametrize("bad", [-1, -0.5, "-1", 1.5, "1.5", "0.1", "soon", "", "nan", float("nan"), -math.inf,
                                 "-inf", "ssp"])
def test_parse_staleness_rejects(bad):
    with pytest.raises(ValueError):
        parse_staleness(bad)


@pytest.mark.parametrize("bad", [-1, 1.5, "-inf"])
def test_parse_staleness_message_quotes_the_value(bad):
    with pytest.raises(ValueError, match="whole number >= 0 or 'inf'") as error:
        parse_staleness(bad)
    assert repr(bad) in str(error.value) or str(bad) in str(error.value)


# -- VectorClock basics ----------------------------------------------------------------------------


def test_a_new_clock_starts_at_zero():
    clock = VectorClock(3)
    assert clock.num_groups == 3
    assert clock.clocks.tolist() == [0, 0, 0] and clock.clocks.dtype == np.int64
    assert not clock.finished.any()
    assert clock.min_clock() == 0 and clock.gap() == 0
    assert clock.effective().tolist() == [0, 0, 0]


def test_clocks_never_go_back():
    clock = VectorClock(2)
    clock.advance(0, 4)
    clock.advance(0, 2)
    clock.advance(0, 4)
    clock.advance(0, -10)
    assert clock.clocks.tolist() == [4, 0]
    clock.advance(0, 5)
    assert clock.clocks.tolist() == [5, 0]


def test_advance_may_skip_clocks():
    clock = VectorClock(1)
    clock.advance(0, 10)
    assert clock.min_clock() == 10


def test_gap_is_fastest_minus_slowest():
    clock = VectorClock(3)
    clock.advance(0, 7)
    clock.advance(1, 3)
    assert clock.gap() == 7
    clock.advance(2, 5)
    assert clock.gap() == 4
    clock.advance(1, 7)
    clock.advance(2, 7)
    assert clock.gap() == 0


def test_gap_of_an_empty_clock():
    assert VectorClock(0).gap() == 0


# -- the SSP rule ----------------------------------------------------------------------------------


def test_bsp_is_lock_step():
    clock = VectorClock(3)
    assert clock.ready(0, 0) and not clock.ready(1, 0)
    clock.advance(0, 1)
    clock.advance(1, 1)
    assert not clock.ready(1, 0)  # group 2 has not finished step 1 yet
    clock.advance(2, 1)
    assert clock.ready(1, 0) and not clock.ready(2, 0)
    for group in range(3):
        clock.advance(group, 2)
    assert clock.ready(2, 0) and not clock.ready(3, 0)


def test_staleness_two():
    clock = VectorClock(2)
    clock.advance(0, 5)
    # group 1 is at 0: a pull for step c may be answered while 0 >= c - 2
    assert [clock.ready(c, 2) for c in range(5)] == [True, True, True, False, False]
    clock.advance(1, 1)
    assert clock.ready(3, 2) and not clock.ready(4, 2)
    clock.advance(1, 3)
    assert clock.ready(5, 2) and not clock.ready(6, 2)


@pytest.mark.parametrize("staleness", [0, 1, 2, 5])
def test_ready_is_exactly_min_clock_at_least_clock_minus_staleness(staleness):
    rng = np.random.default_rng(staleness)
    clock = VectorClock(4)
    for _ in range(50):
        clock.advance(int(rng.integers(4)), int(rng.integers(0, 20)))
        for c in range(0, 30):
            assert clock.ready(c, staleness) == (int(clock.clocks.min()) >= c - staleness)


def test_asp_is_always_ready():
    clock = VectorClock(3)
    assert clock.ready(0, math.inf) and clock.ready(10**12, math.inf)
    assert clock.ready(FINAL_CLOCK - 1, math.inf)


def test_ready_with_a_parsed_staleness():
    clock = VectorClock(2)
    clock.advance(0, 3)
    assert not clock.ready(3, parse_staleness("bsp"))
    assert clock.ready(3, parse_staleness("asp"))
    assert clock.ready(3, parse_staleness("3")) and not clock.ready(4, parse_staleness(3))


# -- finished groups -------------------------------------------------------------------------------


def test_finished_groups_do_not_hold_back_the_others():
    clock = VectorClock(3)
    clock.advance(0, 4)
    clock.advance(2, 6)
    assert clock.min_clock() == 0 and not clock.ready(4, 0)
    clock.finish(1)  # finished at clock 0
    assert clock.min_clock() == 4
    assert clock.ready(4, 0) and not clock.ready(5, 0) and clock.ready(6, 2)
    assert clock.effective().tolist() == [4, FINAL_CLOCK, 6]


def test_finish_keeps_the_clock_but_counts_as_infinitely_far_ahead():
    clock = VectorClock(2)
    clock.advance(0, 3)
    clock.finish(0)
    assert clock.clocks.tolist() == [3, 0]
    assert clock.finished.tolist() == [True, False]
    assert clock.effective().tolist() == [FINAL_CLOCK, 0]
    assert clock.min_clock() == 0  # the running group


def test_all_finished():
    clock = VectorClock(2)
    clock.finish(0)
    clock.finish(1)
    assert clock.min_clock() == FINAL_CLOCK
    assert clock.ready(10**15, 0)
    assert clock.effective().tolist() == [FINAL_CLOCK, FINAL_CLOCK]


@pytest.mark.parametrize("staleness", [0, 2, math.inf])
def test_final_clock_pull_is_ready_only_when_every_group_finished(staleness):
    clock = VectorClock(3)
    for group in range(3):
        clock.advance(group, 100)
    assert not clock.ready(FINAL_CLOCK, staleness)
    clock.finish(0)
    clock.finish(2)
    assert not clock.ready(FINAL_CLOCK, staleness)
    clock.finish(1)
    assert clock.ready(FINAL_CLOCK, staleness)


def test_finishing_twice_is_harmless():
    clock = VectorClock(2)
    clock.finish(1)
    clock.finish(1)
    assert clock.finished.tolist() == [False, True]
    assert not clock.ready(FINAL_CLOCK, 0)


def test_a_dropped_group_stops_holding_back_and_rejoins_at_the_slowest_running_clock():
    clock = VectorClock(3)
    for group, value in enumerate((5, 2, 7)):
        clock.advance(group, value)
    assert clock.min_clock() == 2 and not clock.ready(5, 0)
    clock.drop(1)
    assert clock.min_clock() == 5 and clock.ready(5, 0) and clock.effective()[1] == FINAL_CLOCK
    assert clock.rejoin(1) == 5 and clock.min_clock() == 5  # not back at 2: it would stall the others
    clock.finish(0), clock.finish(2), clock.drop(1)
    assert clock.ready(FINAL_CLOCK, 0)  # finished or dropped: nobody left to wait for


def test_join_keeps_a_running_groups_clock_and_takes_back_absent_or_finished_ones():
    clock = VectorClock(3)
    clock.dropped[:] = True  # a tier of its own: every slot absent until its group joins
    assert clock.join(0) == 0 and clock.min_clock() == 0
    clock.advance(0, 7)
    assert clock.join(1) == 7, "a group joining a running tier starts at the slowest running clock"
    assert clock.join(1) == 7 and clock.done.tolist() == [False, False, True]
    clock.advance(1, 9)
    clock.finish(0)
    assert clock.join(0) == 9, "a finished slot taken by a restarted job continues with the others"
    assert not clock.finished[0]
    fresh = VectorClock(2)
    assert fresh.join(0) == 0 and fresh.join(1) == 0 and not fresh.done.any()
