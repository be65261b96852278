"""hybrid_ps.worker.filters: residual store, significantly-modified and KKT filters, encodings with error feedback."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ps.protocol import wire
from hybrid_ps.worker.filters import PushFilter, ResidualStore


def _keys(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_residual_store_takes_zeros_for_unknown_keys_and_drains_sorted():
    store = ResidualStore(width=2, capacity=2)
    assert store.take(_keys(5, 9)).tolist() == [[0, 0], [0, 0]]
    store.put(_keys(9, 5, 7), np.array([[1, 2], [3, 4], [0, 0]], np.float32))  # grows past its capacity
    assert store.take(_keys(5, 8, 9)).tolist() == [[3, 4], [0, 0], [1, 2]]
    keys, values = store.drain()
    assert keys.tolist() == [5, 9] and values.tolist() == [[3, 4], [1, 2]]
    assert store.total().tolist() == [0, 0] and store.drain()[0].size == 0


def test_without_settings_pushes_pass_through_untouched():
    push = PushFilter(width=1)
    keys, grads = _keys(1, 2), np.array([[1e-9], [2.0]], np.float32)
    sent_keys, sent = push.apply(keys, grads, np.zeros((2, 1), np.float32))
    assert sent_keys is keys and np.shares_memory(sent, grads) and not push.active and push.flush()[0].size == 0
    assert push.stats.bytes_in == push.stats.bytes_out == 2 * 12


def test_small_updates_wait_until_they_add_up():
    push = PushFilter(width=1, threshold=0.1)
    weights = np.zeros((1, 1), np.float32)
    assert push.apply(_keys(4), np.array([[0.06]], np.float32), weights)[0].size == 0
    keys, values = push.apply(_keys(4), np.array([[0.06]], np.float32), weights)
    assert keys.tolist() == [4] and values[0, 0] == pytest.approx(0.12)
    assert push.residual.total()[0] == 0


def test_the_relative_threshold_compares_with_the_weight():
    push = PushFilter(width=1, threshold=0.1, relative=True)
    weights = np.array([[10.0], [0.5]], np.float32)
    keys, _ = push.apply(_keys(1, 2), np.array([[0.5], [0.5]], np.float32), weights)
    assert keys.tolist() == [2]  # 0.5 < 0.1 * 10, but >= 0.1 * 0.5


def test_kkt_holds_back_zero_weights_inside_the_l1_band():
    push = PushFilter(width=1, kkt_l1=0.5)
    weights = np.array([[0.0], [0.0], [0.2]], np.float32)
    keys, _ = push.apply(_keys(1, 2, 3), np.array([[0.3], [0.7], [0.01]], np.float32), weights)
    assert keys.tolist() == [2, 3]  # key 1: w = 0 and |g| <= l1; key 3: w != 0
    keys, values = push.apply(_keys(1), np.array([[0.3]], np.float32), weights[:1])
    assert keys.tolist() == [1] and values[0, 0] == pytest.approx(0.6)  # accumulated past the band


@pytest.mark.parametrize("settings", [
    dict(threshold=0.05), dict(threshold=0.5, relative=True), dict(kkt_l1=0.1), dict(encoding="float16"),
    dict(encoding="bfloat16"), dict(encoding="float8"), dict(threshold=0.05, kkt_l1=0.1, encoding="bfloat16"),
], ids=str)
def test_nothing_is_lost_gradients_in_equal_values_pushed_plus_what_is_owed(settings):
    rng = np.random.default_rng(0)
    push = PushFilter(width=2, **settings)
    universe = 300
    given = np.zeros((universe, 2))
    pushed = np.zeros((universe, 2))
    for _ in range(200):
        keys = np.sort(rng.choice(universe, 40, replace=False)).astype(np.uint64)
        grads = (rng.standard_normal((40, 2)) * rng.choice([0.001, 0.1, 3.0], (40, 1))).astype(np.float32)
        weights = (rng.standard_normal((40, 2)) * (rng.random((40, 1)) < 0.5)).astype(np.float32)
        given[keys.astype(int)] += grads
        sent_keys, encoded = push.apply(keys, grads, weights)
        assert encoded.dtype == wire.ENCODINGS[settings.get("encoding", "float32")]
        pushed[sent_keys.astype(int)] += wire.decode_values(encoded)
    owed_keys, owed = push.residual.drain()
    np.testing.assert_allclose(pushed[owed_keys.astype(int)] + owed, given[owed_keys.astype(int)], atol=1e-4)
    untouched = np.setdiff1d(np.arange(universe), owed_keys.astype(int))
    np.testing.assert_allclose(pushed[untouched], given[untouched], atol=1e-4)
    assert push.stats.bytes_out < push.stats.bytes_in


def test_flush_sends_everything_owed_exactly():
    push = PushFilter(width=1, threshold=10.0)
    push.apply(_keys(1, 3), np.array([[-0.5], [0.25]], np.float32), np.zeros((2, 1), np.float32))
    keys, values = push.flush()
    assert keys.tolist() == [1, 3] and values.tolist() == [[-0.5], [0.25]] and values.dtype == np.float32
    assert push.flush()[0].size == 0
