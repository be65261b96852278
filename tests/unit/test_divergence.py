"""hybrid_ps.worker.divergence: constant_logloss, DivergenceGuard's windows, patience and error message, and
StepChecks (the non-finite gradient policy)."""

from __future__ import annotations

import math

import pytest

from hybrid_ps.config import Config
from hybrid_ps.errors import DivergenceError, HybridPSError, NonFiniteError
from hybrid_ps.worker.divergence import DivergenceGuard, StepChecks, constant_logloss

ROWS = 100


def _guard(**kwargs) -> DivergenceGuard:
    settings = {"group_id": 2, "learning_rate": 0.5, "window_rows": ROWS, "patience": 3} | kwargs
    return DivergenceGuard(**settings)


def _window(guard: DivergenceGuard, clock: int, logloss: float, *, rows: int = ROWS, positive_rate: float = 0.5,
            largest_value: float = 1.0) -> None:
    """One step of ``rows`` rows whose mean loss is ``logloss``."""
    guard.add(clock=clock, loss_sum=logloss * rows, rows=rows, positives=positive_rate * rows,
              largest_value=largest_value)


def test_constant_logloss_of_an_even_rate_is_ln_2():
    assert constant_logloss(0.5) == pytest.approx(math.log(2), rel=1e-12)
    p = 0.1
    assert constant_logloss(p) == pytest.approx(-(p * math.log(p) + (1 - p) * math.log(1 - p)), rel=1e-12)
    assert constant_logloss(0.2) == pytest.approx(constant_logloss(0.8), rel=1e-12)


def test_constant_logloss_clips_rates_at_zero_and_one():
    for rate in (0.0, 1.0, -0.5, 1.5):
        value = constant_logloss(rate)
        assert math.isfinite(value) and 0 < value < 1e-5
    assert constant_logloss(0.0) == pytest.approx(constant_logloss(1e-7), rel=1e-12)
    assert constant_logloss(-0.5) == constant_logloss(0.0)
    assert constant_logloss(1.5) == constant_logloss(1.0)


def test_divergence_error_is_a_one_line_user_error():
    assert issubclass(DivergenceError, HybridPSError)


def test_the_error_comes_only_after_patience_bad_windows_in_a_row():
    guard = _guard(patience=3)
    _window(guard, 1, 5.0)  # constant: ln 2 ~ 0.69; bad beyond 1.39
    _window(guard, 2, 5.0)
    with pytest.raises(DivergenceError):
        _window(guard, 3, 5.0)


def test_patience_one_stops_at_the_first_bad_window():
    with pytest.raises(DivergenceError):
        _window(_guard(patience=1), 1, 5.0)


def test_a_good_window_resets_the_count_of_bad_ones():
    guard = _guard(patience=3)
    for clock, logloss in enumerate([5.0, 5.0, 0.6, 5.0, 5.0, 0.7, 5.0, 5.0], start=1):
        _window(guard, clock, logloss)
    with pytest.raises(DivergenceError):
        _window(guard, 9, 5.0)


def test_a_window_is_bad_beyond_twice_the_constant_and_half_a_nat_above_it():
    constant = math.log(2)
    guard = _guard(patience=1)
    _window(guard, 1, 2 * constant - 1e-6)  # within twice the constant (which is > constant + 0.5)
    with pytest.raises(DivergenceError):
        _window(_guard(patience=1), 1, 2 * constant + 1e-3)
    skewed = constant_logloss(0.01)  # ~0.056: here constant + 0.5 is the bound
    _window(_guard(patience=1), 1, skewed + 0.49, positive_rate=0.01)
    with pytest.raises(DivergenceError):
        _window(_guard(patience=1), 1, skewed + 0.51, positive_rate=0.01)


def test_nan_losses_count_as_bad():
    guard = _guard(patience=2)
    _window(guard, 1, math.nan)
    with pytest.raises(DivergenceError, match="logloss nan"):
        _window(guard, 2, math.nan)


def test_a_window_closes_once_it_holds_at_least_window_rows():
    guard = _guard(patience=1, window_rows=100)
    for clock in range(1, 10):  # 9 steps of 11 rows: 99 rows, not yet a window
        _window(guard, clock, 5.0, rows=11)
    with pytest.raises(DivergenceError, match="over the last 110 rows"):
        _window(guard, 10, 5.0, rows=11)  # 110 >= 100: closes and is checked


def test_a_window_of_exactly_window_rows_closes():
    with pytest.raises(DivergenceError, match="over the last 100 rows"):
        _window(_guard(patience=1, window_rows=100), 1, 5.0, rows=100)


def test_a_window_averages_its_steps_and_then_starts_afresh():
    guard = _guard(patience=1, window_rows=100)
    _window(guard, 1, 2.0, rows=50)  # with the next step: mean 1.0, within 2 ln 2
    _window(guard, 2, 0.0, rows=50)
    _window(guard, 3, 2.0, rows=50)  # the bad half of a new window, not yet closed
    with pytest.raises(DivergenceError, match="logloss 2 over the last 100 rows"):
        _window(guard, 4, 2.0, rows=50)


def test_the_message_names_the_group_clock_logloss_and_constant_and_large_feature_values():
    guard = _guard(group_id=3, learning_rate=0.25, patience=2)
    _window(guard, 40, 7.0, largest_value=2.5e6)
    with pytest.raises(DivergenceError) as caught:
        _window(guard, 41, 8.0, largest_value=3.0)
    message = str(caught.value)
    assert "group 3" in message and "clock 41" in message
    assert "logloss 8 " in message
    assert f"{math.log(2):.4f}" in message  # 0.6931: the constant prediction's
    assert "feature values reach 2.5e+06" in message  # the largest seen in any step
    assert "--lr 0.25" in message
    assert "\n" not in message


def test_with_small_feature_values_the_message_names_the_learning_rate_only():
    guard = _guard(group_id=0, learning_rate=3.0, patience=1)
    with pytest.raises(DivergenceError) as caught:
        _window(guard, 7, 9.0, largest_value=10.0)  # not beyond 10
    message = str(caught.value)
    assert "group 0" in message and "clock 7" in message and "logloss 9 " in message
    assert "feature values reach" not in message
    assert "learning rate may be too high" in message and "--lr 3 " in message


class _OneRankGroup:
    is_leader = True

    def ranks_where(self, flag: bool) -> list[int]:
        return [0] if flag else []


def _checks(**train) -> StepChecks:
    config = Config()
    for name, value in train.items():
        setattr(config.train, name, value)
    return StepChecks(config, group=_OneRankGroup(), group_id=3)


def test_a_non_finite_gradient_stops_naming_rank_step_and_causes_or_is_skipped_with_a_warning(caplog):
    assert _checks().finite(7, summed_finite=True, local_finite=True)
    with pytest.raises(NonFiniteError, match=r"group 3, step 7: NaN or Inf gradient from group rank\(s\) 0; "
                                             r"stopped: usually feature values of large magnitude"):
        _checks().finite(7, summed_finite=False, local_finite=False)
    with pytest.raises(NonFiniteError, match=r"in the sum over the group \(float32 overflow\)"):
        _checks().finite(7, summed_finite=False, local_finite=True)
    assert not _checks(on_nonfinite="skip").finite(8, summed_finite=False, local_finite=False)
    assert "group 3, step 8: NaN or Inf gradient from group rank(s) 0; step skipped" in caplog.text


def test_the_divergence_check_can_be_turned_off():
    off, on = _checks(stop_on_divergence=False), _checks()
    for clock in range(3):
        off.loss(clock, loss_sum=1e9, rows=30_000, positives=15_000, largest_value=1e6)
    with pytest.raises(DivergenceError):
        for clock in range(3):
            on.loss(clock, loss_sum=1e9, rows=30_000, positives=15_000, largest_value=1e6)
