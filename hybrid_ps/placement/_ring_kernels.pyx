"""Compiled kernels of the consistent-hash ring: each key's ring point, and a request's keys grouped by shard.

``points_of`` hashes a key (splitmix64, as ``partition.mix64``) and reads its
ring point from a table of 2**16 equal arcs; a key in an arc holding a ring
point takes a binary search over the points (~0.4% of keys with 512 points).
``group_by_owner`` is a stable counting sort of the keys by the shard(s) that
own their points: one pass to count, one to place, for any number of shards
and replicas (numpy needed one pass per shard).
"""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free

import numpy as np

cimport numpy as cnp

from hybrid_ps.tables._native cimport hps_mix64

cnp.import_array()

__all__ = ["points_of", "group_by_owner", "first_outside"]

DEF _BUCKET_SHIFT = 48  # 64 - the 16 bits of the arc table


def points_of(const uint64_t[::1] keys, const int32_t[::1] arc_points, const uint64_t[::1] points):
    """The ring point (int32 index into ``points``) of each key.

    Args:
        keys: the keys.
        arc_points: per arc of the ring (2**16), its only point, or -1 if a ring point lies inside it.
        points: the ring's points, sorted.
    """
    cdef int64_t n = keys.shape[0], size = points.shape[0], i, low, high, middle
    cdef uint64_t h
    cdef int32_t point
    out = np.empty(n, dtype=np.int32)
    cdef int32_t[::1] result = out
    with nogil:
        for i in range(n):
            h = hps_mix64(keys[i])
            point = arc_points[h >> _BUCKET_SHIFT]
            if point < 0:  # the arc holds a ring point: the first point >= h, wrapping to point 0
                low, high = 0, size
                while low < high:
                    middle = (low + high) >> 1
                    if points[middle] < h:
                        low = middle + 1
                    else:
                        high = middle
                point = <int32_t> (low if low < size else 0)
            result[i] = point
    return out


def group_by_owner(const int32_t[::1] points, const int32_t[:, ::1] owners, int num_slots):
    """Key positions grouped by the slots (shard indices) owning their points, ascending inside each group.

    Args:
        points: each key's ring point.
        owners: per point, the slots it goes to (``-1``: none), e.g. its acting primary or its live replicas.
        num_slots: how many slots there are.

    Returns:
        ``(positions, bounds)``: the keys of slot ``s`` are ``positions[bounds[s]:bounds[s + 1]]``.
    """
    cdef int64_t n = points.shape[0], i, total, entries
    cdef int replicas = owners.shape[1], r, slot
    entries = n * replicas
    slots_of = np.empty(entries, dtype=np.int32)  # the slot of each (key, replica), -1 for none
    cdef int32_t[::1] slot_of = slots_of
    counts = np.zeros(num_slots + 1, dtype=np.int64)
    cdef int64_t[::1] bounds = counts
    cdef int64_t *cursor = <int64_t *> calloc(4 * (num_slots + 1), sizeof(int64_t))  # 4 banks: no store chain
    if cursor == NULL:
        raise MemoryError()
    cdef const int32_t *table = &owners[0, 0]
    cdef int64_t[::1] positions
    try:
        with nogil:
            for i in range(n):
                for r in range(replicas):
                    slot = table[<int64_t> points[i] * replicas + r]
                    slot_of[i * replicas + r] = slot
                    cursor[(i & 3) * (num_slots + 1) + slot + 1] += 1
            for slot in range(num_slots):
                bounds[slot + 1] = (bounds[slot] + cursor[slot + 1] + cursor[num_slots + 1 + slot + 1]
                                    + cursor[2 * (num_slots + 1) + slot + 1] + cursor[3 * (num_slots + 1) + slot + 1])
            for slot in range(num_slots):
                cursor[slot] = bounds[slot]
        total = bounds[num_slots]
        out = np.empty(total, dtype=np.int64)
        positions = out
        if total:
            with nogil:
                _fill(&slot_of[0], n, replicas, cursor, &positions[0])
    finally:
        free(cursor)
    return out, counts


cdef void _fill(const int32_t *slot_of, int64_t n, int replicas, int64_t *cursor, int64_t *positions) noexcept nogil:
    """Place each key's position at its slots' cursors (a stable counting sort's second pass)."""
    cdef int64_t i
    cdef int r, slot
    for i in range(n):
        for r in range(replicas):
            slot = slot_of[i * replicas + r]
            if slot >= 0:
                positions[cursor[slot]] = i
                cursor[slot] += 1


def first_outside(const int32_t[::1] points, const unsigned char[::1] allowed):
    """The position of the first key whose point is not ``allowed`` (a uint8 view of a bool array), or -1."""
    cdef int64_t n = points.shape[0], i, found = -1
    with nogil:
        for i in range(n):
            if not allowed[points[i]]:
                found = i
                break
    return found
