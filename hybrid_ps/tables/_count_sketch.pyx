"""Approximate counts of keys in bounded memory: a counting Bloom filter of saturating uint8 counters.

A key maps to ``hashes`` counters (double hashing of one splitmix64 hash). Adding
a key raises only those of its counters that hold the minimum (the conservative
update of Estan & Varghese, SIGCOMM 2002), and its count is then that minimum:
never below the true count, above it only when every counter of the key is
shared with other keys (a false admission, for a shard's feature admission).
To keep that rate bounded on a stream that never ends, every counter is halved
once ``halve_every`` keys were added (TinyLFU's reset, Einziger et al. 2017):
the counts are of the recent stream, and old keys' counters make room.
"""

from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

import numpy as np

cimport numpy as cnp

from hybrid_ps.tables._native cimport hps_fastrange, hps_mix64

cnp.import_array()

__all__ = ["CountSketch"]

DEF _MAX_HASHES = 8
cdef uint64_t _SALT = 0x3C6EF372FE94F82BULL  # decorrelates from the key table and the ring, which hash the same keys


cdef class CountSketch:
    """Saturating counts (0 - 255) of uint64 keys in ``counters`` bytes.

    Args:
        counters: counters (bytes of memory), at least 64.
        hashes: counters per key (1 - 8).
        halve_every: keys added between two halvings of every counter (0: never).
    """

    cdef unsigned char *table
    cdef readonly int64_t counters
    cdef readonly int hashes
    cdef readonly int64_t halve_every
    cdef readonly int64_t added       # keys added since the last halving
    cdef readonly int64_t halvings

    def __cinit__(self, int64_t counters, int hashes=3, int64_t halve_every=0):
        if counters < 64:
            raise ValueError(f"a count sketch needs at least 64 counters, got {counters}")
        if not 1 <= hashes <= _MAX_HASHES:
            raise ValueError(f"hashes must be in [1, {_MAX_HASHES}], got {hashes}")
        if halve_every < 0:
            raise ValueError(f"halve_every must be >= 0, got {halve_every}")
        self.table = <unsigned char *> calloc(counters, 1)
        if self.table == NULL:
            raise MemoryError(f"count sketch: cannot allocate {counters} bytes")
        self.counters, self.hashes, self.halve_every = counters, hashes, halve_every

    def __dealloc__(self):
        free(self.table)

    @property
    def nbytes(self):
        """Bytes of counters."""
        return self.counters

    cdef inline unsigned char _lowest(self, uint64_t key, int64_t *slots) noexcept nogil:
        """The key's count: the lowest of its counters (their places into ``slots``, by double hashing)."""
        cdef uint64_t h = hps_mix64(key ^ _SALT)
        cdef uint64_t step = hps_mix64(h) | 1
        cdef unsigned char low = 255
        cdef int j
        for j in range(self.hashes):
            slots[j] = <int64_t> hps_fastrange(h, self.counters)
            h += step
            if self.table[slots[j]] < low:
                low = self.table[slots[j]]
        return low

    def add(self, const uint64_t[::1] keys):
        """Count each key once more (a key listed twice, twice); returns each key's count after its addition
        (a new uint8 array). The halving, when due, comes between two keys."""
        cdef int64_t n = keys.shape[0], i
        cdef int64_t slots[_MAX_HASHES]
        cdef int j
        cdef unsigned char low
        out = np.empty(n, dtype=np.uint8)
        cdef unsigned char[::1] counts = out
        with nogil:
            for i in range(n):
                low = self._lowest(keys[i], slots)
                if low < 255:  # the conservative update: raise only the counters at the minimum
                    for j in range(self.hashes):
                        if self.table[slots[j]] == low:
                            self.table[slots[j]] = low + 1
                    low += 1
                counts[i] = low
                self.added += 1
                if self.halve_every and self.added >= self.halve_every:
                    self._halve()
        return out

    def count(self, const uint64_t[::1] keys):
        """Each key's count, unchanged (a new uint8 array)."""
        cdef int64_t n = keys.shape[0], i
        cdef int64_t slots[_MAX_HASHES]
        out = np.empty(n, dtype=np.uint8)
        cdef unsigned char[::1] counts = out
        with nogil:
            for i in range(n):
                counts[i] = self._lowest(keys[i], slots)
        return out

    cdef void _halve(self) noexcept nogil:
        cdef int64_t i
        for i in range(self.counters):
            self.table[i] >>= 1
        self.added = 0
        self.halvings += 1

    def occupied(self):
        """The share of counters above zero (what makes a false admission likely: about this to the ``hashes``)."""
        cdef int64_t i, nonzero = 0
        with nogil:
            for i in range(self.counters):
                nonzero += self.table[i] != 0
        return <double> nonzero / self.counters

    def export(self):
        """The counters, as a new uint8 array (a checkpoint keeps them with ``added``)."""
        out = np.empty(self.counters, dtype=np.uint8)
        cdef unsigned char[::1] view = out
        memcpy(&view[0], self.table, self.counters)
        return out

    def load(self, const unsigned char[::1] counts, int64_t added=0):
        """Set the counters (``export``'s array, of this sketch's size) and the keys added since the last halving."""
        if counts.shape[0] != self.counters:
            raise ValueError(f"a count sketch of {self.counters} counters cannot load {counts.shape[0]}")
        memcpy(self.table, &counts[0], self.counters)
        self.added = added

    def clear(self):
        """Every count back to zero."""
        memset(self.table, 0, self.counters)
        self.added = 0
