"""hybrid_ps.worker.group_rows: dense rows a group keeps on every member, synchronised with the PS now and then."""

from __future__ import annotations

import numpy as np

from hybrid_ps.protocol.wire import FINAL_CLOCK
from hybrid_ps.tables.optimizers import make_optimizer
from hybrid_ps.worker.group_rows import GroupRows

KEPT = np.array([100, 101, 102], dtype=np.uint64)


def _rows(sync_every: int = 4) -> GroupRows:
    return GroupRows(KEPT, 2, make_optimizer("adagrad", 0.5), sync_every)


def test_the_kept_rows_are_pulled_first_then_only_on_sync_clocks():
    rows = _rows(4)
    union = np.array([3, 7, 100, 101, 102, 2**64 - 1], dtype=np.uint64)
    assert np.array_equal(rows.pull_keys(union, 5), union), "the first pull anchors the copy, whatever the clock"
    assert np.array_equal(rows.pull_keys(union, 6), [3, 7, 2**64 - 1])
    assert np.array_equal(rows.pull_keys(union, 8), union)
    assert np.array_equal(rows.pull_keys(union, FINAL_CLOCK), union)
    assert [c for c in range(12) if rows.due(c)] == [2, 6, 10], "pushed two clocks before each sync pull"


def test_merged_inserts_the_copy_or_adopts_the_pulled_rows():
    rows = _rows()
    rows.values[:] = [[1, 1], [2, 2], [3, 3]]
    keys = np.array([3, 7, 2**64 - 1], dtype=np.uint64)
    values = np.array([[0.1, 0.1], [0.2, 0.2], [0.9, 0.9]], dtype=np.float32)
    full_keys, full_values = rows.merged(keys, values)
    assert full_keys.tolist() == [3, 7, 100, 101, 102, 2**64 - 1]
    assert full_values[:, 0].tolist() == [np.float32(0.1), np.float32(0.2), 1, 2, 3, np.float32(0.9)]
    pulled = np.array([[5, 5], [6, 6], [7, 7]], dtype=np.float32)
    rows.merged(full_keys, np.concatenate([values[:2], pulled, values[2:]]))
    assert rows.values.tolist() == pulled.tolist(), "a sync pull replaces the copy"


def test_members_stay_identical_and_the_leader_pushes_every_gradient_once():
    leader, member = _rows(), _rows()
    rng = np.random.default_rng(0)
    gradients = [rng.normal(size=(3, 2)) for _ in range(5)]
    for g in gradients:
        leader.apply(g, leader=True)
        member.apply(g, leader=False)
    assert np.array_equal(leader.values, member.values) and np.abs(leader.values).sum() > 0
    keys, summed = leader.drain()
    assert keys.tolist() == KEPT.tolist()
    np.testing.assert_allclose(summed, np.sum(gradients, axis=0), rtol=1e-6)
    assert not leader.drain()[1].any() and not member.unpushed.any()
