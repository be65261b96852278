"""hybrid_ps.protocol.keycache: signatures, reference frames and the least-recently-used key-list cache."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ps.protocol.keycache import (
    KeyListCache,
    parse_reference,
    reference_frame,
    signature,
)


def test_signatures_tell_lists_apart_and_repeat_for_the_same_list():
    keys = np.arange(1000, dtype=np.uint64) * 7
    assert signature(keys) == signature(keys.copy())
    assert signature(keys) != signature(keys[:-1]) != signature(keys + np.uint64(1))
    assert signature(np.zeros(0, dtype=np.uint64)) == 0


def test_a_reference_frame_round_trips_and_a_bad_one_is_refused():
    assert parse_reference(reference_frame(2**64 - 1, 12)) == (2**64 - 1, 12, None)
    subset = np.arange(13) % 3 == 0
    sig, count, mask = parse_reference(reference_frame(7, 13, subset))
    assert (sig, count) == (7, 13) and np.array_equal(mask, subset)
    with pytest.raises(ValueError, match="a key-list reference is at least 16 bytes, got 3"):
        parse_reference(b"abc")
    with pytest.raises(ValueError, match="a subset of 13 keys needs 2 mask bytes, got 1"):
        parse_reference(reference_frame(7, 13) + b"x")


def test_the_cache_evicts_the_least_recently_used_beyond_its_capacity():
    cache = KeyListCache(capacity=10)
    for sig in (1, 2, 3):
        cache.remember(sig, 4, np.full(4, sig, dtype=np.uint64))
    assert len(cache) == 2 and not cache.recall(1, 4)[0]  # 12 keys > 10: list 1 went
    assert cache.recall(2, 4)[0]  # 2 is now the most recent ...
    cache.remember(4, 4)
    assert cache.recall(2, 4)[0] and not cache.recall(3, 4)[0]  # ... so 3 went
    assert not cache.recall(2, 5)[0], "a count that differs is a miss"
    cache.remember(9, 11)
    assert not cache.recall(9, 11)[0], "a list larger than the whole cache is not kept"
    hit, keys = cache.recall(2, 4)
    assert hit and keys.tolist() == [2, 2, 2, 2]
