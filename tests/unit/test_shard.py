"""Shard storage: unseen keys, push/pull, growth."""

from __future__ import annotations

import numpy as np

from hybrid_ps.server.optimizers import make_optimizer
from hybrid_ps.server.shard import Shard


def test_unseen_keys_pull_as_zeros_and_are_not_inserted():
    shard = Shard(3, make_optimizer("sgd", 1.0))
    np.testing.assert_array_equal(shard.pull(np.array([5, 7], np.uint64)), np.zeros((2, 3)))
    assert len(shard) == 0


def test_push_then_pull_with_partial_overlap_and_growth():
    shard = Shard(2, make_optimizer("adagrad", 0.5), capacity=4)
    reference_w: dict[int, np.ndarray] = {}
    reference_acc: dict[int, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for _ in range(20):
        keys = np.unique(rng.integers(0, 300, 60).astype(np.uint64))
        grads = rng.normal(size=(keys.size, 2)).astype(np.float32)
        shard.push(keys, grads)
        for key, g in zip(keys.tolist(), grads):
            acc = reference_acc.setdefault(key, np.zeros(2, np.float32))
            w = reference_w.setdefault(key, np.zeros(2, np.float32))
            acc += g * g
            w -= 0.5 * g / np.sqrt(acc + 1e-6)
    keys = np.arange(0, 320, dtype=np.uint64)
    expected = np.array([reference_w.get(k, np.zeros(2)) for k in keys.tolist()])
    np.testing.assert_allclose(shard.pull(keys), expected, rtol=1e-5, atol=1e-6)
    assert len(shard) == len(reference_w) and shard.values.shape[0] >= len(shard)
    slots = shard.index.lookup(np.array(sorted(reference_acc), np.uint64))
    np.testing.assert_allclose(shard.state["accumulator"][slots], [reference_acc[k] for k in sorted(reference_acc)],
                               rtol=1e-5)
