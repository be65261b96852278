"""The compiled key table: uint64 key -> one float32 row (values, then optimizer state), by open addressing.

Layout. The table is cut into 64 parts by the top bits of the key's hash, so a
part grows on its own and the memory peak of a growth is one part, not the
whole table. A part is one array of slots; a slot is the 8-byte key followed by
the key's row (``columns`` float32: ``width`` values, then each state array's
``width`` values), so one random memory access finds a key and its row. A part
is probed linearly from ``fastrange(hash, size)``; key 0 marks an empty slot,
and the key 0 itself lives in a side row.

Batches. Every batch operation hashes its keys a chunk at a time, then probes
them in order while prefetching the slot of the key ``_AHEAD`` places later, so
the memory latencies of a chunk overlap instead of adding up.

Push. ``push`` is one pass of lookup-or-insert and the optimizer over each row,
in float32 with the exact operation order of the numpy reference in the tests.
It first keeps a copy of every row it touches; if any updated value is not
finite (float32 overflow), every row is put back and the push is refused whole.
"""

from libc.math cimport fabsf, isfinite, sqrtf
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset

import numpy as np

cimport numpy as cnp

from hybrid_ps.tables._native cimport hps_fastrange, hps_mix64, hps_prefetch_read, hps_prefetch_write

cnp.import_array()

__all__ = ["KeyTable", "UpdateRule", "apply_rows", "EMPTY_KEY"]

EMPTY_KEY = 0
"""The key that marks an empty slot; it is stored in a side row, so every uint64 is a valid key."""

DEF _PART_BITS = 6
DEF _PARTS = 64
DEF _AHEAD = 16            # keys between a slot's prefetch and its probe
DEF _CHUNK = 4096          # keys hashed per round (the hashes stay in L1/L2)
DEF _MIN_PART_SLOTS = 8

cdef extern from *:
    """
    #define HPS_TABLE_SALT 0xD6E8FEB86659FD93ULL  /* decorrelates from the hash ring, which hashes the same keys */
    """
    const uint64_t _SALT "HPS_TABLE_SALT"

cdef enum Kind:
    KIND_SGD = 1
    KIND_ADAGRAD = 2
    KIND_FTRL = 3

_KINDS = {"sgd": KIND_SGD, "adagrad": KIND_ADAGRAD, "ftrl": KIND_FTRL}
_STATES = {"sgd": 0, "adagrad": 1, "ftrl": 2}


cdef struct Rule:
    int kind
    float lr, l1, l2, eps, beta


cdef extern from *:
    """
    #include <sys/mman.h>
    #include <stdlib.h>
    #define HPS_HUGE (2u << 20)
    /* Zeroed memory for n bytes; big blocks come from mmap, aligned to and advised for 2 MiB pages
       (a random access per key then rarely misses the TLB). *mapped is what hps_free needs. */
    static void *hps_alloc_zeroed(size_t n, size_t *mapped) {
        if (n < HPS_HUGE / 64) { *mapped = 0; return calloc(n ? n : 1, 1); }
        size_t keep = (n + HPS_HUGE - 1) & ~(size_t)(HPS_HUGE - 1);
        size_t length = keep + HPS_HUGE;
        char *base = (char *)mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) return NULL;
        char *aligned = (char *)(((uintptr_t)base + HPS_HUGE - 1) & ~(uintptr_t)(HPS_HUGE - 1));
        size_t head = (size_t)(aligned - base);
        if (head) munmap(base, head);
        if (length - head - keep) munmap(aligned + keep, length - head - keep);
        madvise(aligned, keep, MADV_HUGEPAGE);
        *mapped = keep;
        return aligned;
    }
    static void hps_free(void *p, size_t mapped) {
        if (p == NULL) return;
        if (mapped) munmap(p, mapped); else free(p);
    }
    """
    void *hps_alloc_zeroed(size_t n, size_t *mapped) nogil
    void hps_free(void *p, size_t mapped) nogil


cdef struct Part:
    char *slots
    size_t mapped   # bytes mmap-ed for slots (0: malloc-ed)
    int64_t size    # slots
    int64_t count   # keys held
    int64_t limit   # keys held before the part grows


cdef class UpdateRule:
    """An optimizer's arithmetic for the compiled kernels (float32 hyper-parameters).

    Args:
        kind: "sgd", "adagrad" or "ftrl".
        learning_rate, l1, l2, eps, beta: as in ``hybrid_ps.tables.optimizers``.
    """

    cdef Rule rule
    cdef readonly int states

    def __init__(self, str kind, double learning_rate, double l1=0.0, double l2=0.0, double eps=1e-6,
                 double beta=1.0):
        if kind not in _KINDS:
            raise ValueError(f"unknown optimizer kind {kind!r}")
        self.rule.kind = _KINDS[kind]
        self.states = _STATES[kind]
        self.rule.lr, self.rule.l1, self.rule.l2 = learning_rate, l1, l2
        self.rule.eps, self.rule.beta = eps, beta


cdef inline bint _update(const Rule rule, float *row, const float *grad, int width) noexcept nogil:
    """Apply ``rule`` to one row (values, then state) in place; whether every new number is finite."""
    cdef int j
    cdef float w, g, acc, z, n, n_new, sigma, shrunk, denominator, sign
    cdef bint finite = True
    cdef float *state1 = row + width
    cdef float *state2 = row + 2 * width
    if rule.kind == KIND_SGD:  # w -= lr * (g + l2 * w)
        for j in range(width):
            w = row[j]
            w = w - rule.lr * (grad[j] + rule.l2 * w)
            row[j] = w
            finite &= isfinite(w)
    elif rule.kind == KIND_ADAGRAD:  # g += l2 * w; acc += g * g; w -= lr * g / sqrt(acc + eps)
        for j in range(width):
            w = row[j]
            g = grad[j] + rule.l2 * w
            acc = state1[j] + g * g
            state1[j] = acc
            w = w - rule.lr * g / sqrtf(acc + rule.eps)
            row[j] = w
            finite &= isfinite(w) & isfinite(acc)
    else:  # FTRL-Proximal, McMahan et al. (KDD 2013); state z, n
        for j in range(width):
            w = row[j]
            g = grad[j]
            z = state1[j]
            n = state2[j]
            n_new = n + g * g
            sigma = (sqrtf(n_new) - sqrtf(n)) / rule.lr
            z = z + (g - sigma * w)
            sign = (z > 0) - (z < 0)
            shrunk = z - sign * rule.l1
            denominator = (rule.beta + sqrtf(n_new)) / rule.lr + rule.l2
            w = 0.0 if fabsf(z) <= rule.l1 else -shrunk / denominator
            row[j] = w
            state1[j] = z
            state2[j] = n_new
            finite &= isfinite(w) & isfinite(z) & isfinite(n_new)
    return finite


def apply_rows(float[:, ::1] rows, const float[:, ::1] grads, UpdateRule rule, int width):
    """Apply ``rule`` to dense ``rows`` (``[n, width * (1 + states)]``) with ``grads`` (``[n, width]``) in place.

    Returns:
        How many rows came out with a NaN or an infinity (they are updated all the same).
    """
    if rows.shape[0] != grads.shape[0] or grads.shape[1] != width or rows.shape[1] != width * (1 + rule.states):
        raise ValueError(f"rows {rows.shape[0]}x{rows.shape[1]} and gradient {grads.shape[0]}x{grads.shape[1]} "
                         f"do not fit width {width} with {rule.states} state arrays")
    cdef Py_ssize_t i
    cdef int64_t bad = 0
    with nogil:
        for i in range(rows.shape[0]):
            bad += not _update(rule.rule, &rows[i, 0], &grads[i, 0], width)
    return bad


cdef class KeyTable:
    """uint64 keys, each with one row of ``columns`` float32 (zeros when inserted).

    Args:
        width: values per key (a pull returns the first ``width`` columns).
        columns: float32 per row: ``width`` values, then the optimizer's state (``width`` each).
        capacity: keys to make room for at once.
        max_load: fill ratio of a part that makes it grow (0.1 - 0.95).
    """

    cdef Part parts[_PARTS]
    cdef readonly int width
    cdef readonly int columns
    cdef readonly double max_load
    cdef int64_t slot_bytes
    cdef float *zero_row      # the row of key 0 (the key that marks empty slots)
    cdef bint has_zero
    cdef uint64_t hashes[_CHUNK]
    cdef char **touched       # push: the slot of every key, to undo a refused push
    cdef float *saved         # push: every touched row before the update
    cdef int64_t undo_capacity

    def __cinit__(self, int width, int columns, int64_t capacity=1024, double max_load=0.8):
        if width < 1 or columns < width:
            raise ValueError(f"width must be >= 1 and columns >= width, got {width}, {columns}")
        if not 0.1 <= max_load <= 0.95:
            raise ValueError(f"max_load must be in [0.1, 0.95], got {max_load}")
        self.width, self.columns, self.max_load = width, columns, max_load
        self.slot_bytes = 8 + 4 * columns
        self.zero_row = <float *> calloc(columns, 4)
        if self.zero_row == NULL:
            raise MemoryError()
        cdef int p
        for p in range(_PARTS):
            self.parts[p].slots = NULL
            self.parts[p].mapped = 0
            self.parts[p].size = self.parts[p].count = self.parts[p].limit = 0
        for p in range(_PARTS):
            self._resize(p, self._slots_for(capacity // _PARTS + 1))

    def __dealloc__(self):
        cdef int p
        for p in range(_PARTS):
            hps_free(self.parts[p].slots, self.parts[p].mapped)
        free(self.zero_row)
        free(self.touched)
        free(self.saved)

    def __len__(self):
        return self._count()

    cdef int64_t _count(self) noexcept nogil:
        cdef int64_t total = self.has_zero
        cdef int p
        for p in range(_PARTS):
            total += self.parts[p].count
        return total

    @property
    def nbytes(self):
        """Bytes the table's slots take (the memory it holds, less a few KiB)."""
        cdef int64_t total = self.columns * 4
        cdef int p
        for p in range(_PARTS):
            total += self.parts[p].size * self.slot_bytes
        return total

    # -- slots -------------------------------------------------------------------------------------

    cdef int64_t _slots_for(self, int64_t keys) noexcept nogil:
        cdef int64_t size = <int64_t> (keys / self.max_load) + 1
        return size if size > _MIN_PART_SLOTS else _MIN_PART_SLOTS

    cdef int _resize(self, int p, int64_t size) except -1 nogil:
        """Give part ``p`` ``size`` slots, moving its keys into them (the old slots are freed first thing after)."""
        cdef Part *part = &self.parts[p]
        cdef size_t mapped
        cdef char *fresh = <char *> hps_alloc_zeroed(size * self.slot_bytes, &mapped)
        if fresh == NULL:
            with gil:
                raise MemoryError(f"key table: cannot allocate {size * self.slot_bytes} bytes")
        cdef char *old = part.slots
        cdef size_t old_mapped = part.mapped
        cdef int64_t old_size = part.size, i, position
        cdef uint64_t key
        cdef char *source
        cdef char *target
        for i in range(old_size):
            source = old + i * self.slot_bytes
            memcpy(&key, source, 8)
            if key == 0:
                continue
            position = hps_fastrange(hps_mix64(key ^ _SALT) << _PART_BITS, size)
            target = fresh + position * self.slot_bytes
            while (<uint64_t *> target)[0] != 0:
                position += 1
                target += self.slot_bytes
                if position == size:
                    position = 0
                    target = fresh
            memcpy(target, source, self.slot_bytes)
        hps_free(old, old_mapped)
        part.slots = fresh
        part.mapped = mapped
        part.size = size
        part.limit = <int64_t> (size * self.max_load)
        if part.limit >= size:
            part.limit = size - 1
        return 0

    cdef int _reserve(self, const uint64_t *keys, int64_t n) except -1 nogil:
        """Grow every part that could not take its share of ``keys`` if all were new (at least 1.5x)."""
        cdef int64_t incoming[_PARTS]
        cdef int64_t i, needed, grown
        cdef int p
        memset(incoming, 0, sizeof(incoming))
        for i in range(n):
            incoming[hps_mix64(keys[i] ^ _SALT) >> (64 - _PART_BITS)] += 1
        for p in range(_PARTS):
            needed = self.parts[p].count + incoming[p]
            if needed > self.parts[p].limit:
                grown = self._slots_for(needed)
                if grown < self.parts[p].size + self.parts[p].size // 2:
                    grown = self.parts[p].size + self.parts[p].size // 2
                self._resize(p, grown)
        return 0

    cdef inline char *_home(self, uint64_t h) noexcept nogil:
        cdef Part *part = &self.parts[h >> (64 - _PART_BITS)]
        return part.slots + <int64_t> hps_fastrange(h << _PART_BITS, part.size) * self.slot_bytes

    cdef inline void _prefetch(self, uint64_t h) noexcept nogil:
        cdef char *slot = self._home(h)
        hps_prefetch_write(slot)
        hps_prefetch_write(slot + self.slot_bytes - 1)

    cdef inline float *_find(self, uint64_t key, uint64_t h) noexcept nogil:
        """The row of ``key``, or NULL."""
        if key == 0:
            return self.zero_row if self.has_zero else NULL
        cdef Part *part = &self.parts[h >> (64 - _PART_BITS)]
        cdef int64_t position = hps_fastrange(h << _PART_BITS, part.size)
        cdef char *slot = part.slots + position * self.slot_bytes
        cdef uint64_t held
        while True:
            memcpy(&held, slot, 8)
            if held == key:
                return <float *> (slot + 8)
            if held == 0:
                return NULL
            position += 1
            slot += self.slot_bytes
            if position == part.size:
                position = 0
                slot = part.slots

    cdef inline float *_find_or_insert(self, uint64_t key, uint64_t h) noexcept nogil:
        """The row of ``key``, inserted as zeros if absent (the part must have room: ``_reserve``)."""
        if key == 0:
            if not self.has_zero:
                self.has_zero = True
                memset(self.zero_row, 0, self.columns * 4)
            return self.zero_row
        cdef Part *part = &self.parts[h >> (64 - _PART_BITS)]
        cdef int64_t position = hps_fastrange(h << _PART_BITS, part.size)
        cdef char *slot = part.slots + position * self.slot_bytes
        cdef uint64_t held
        while True:
            memcpy(&held, slot, 8)
            if held == key:
                return <float *> (slot + 8)
            if held == 0:
                memcpy(slot, &key, 8)
                memset(slot + 8, 0, self.columns * 4)
                part.count += 1
                return <float *> (slot + 8)
            position += 1
            slot += self.slot_bytes
            if position == part.size:
                position = 0
                slot = part.slots

    cdef inline int64_t _hash_chunk(self, const uint64_t *keys, int64_t start, int64_t n) noexcept nogil:
        """Hash ``keys[start:start + _CHUNK]`` (clipped to ``n``) into ``self.hashes`` and prefetch the slots
        of the first ``_AHEAD``; returns the chunk's end."""
        cdef int64_t stop = start + _CHUNK if start + _CHUNK < n else n
        cdef int64_t i
        for i in range(start, stop):
            self.hashes[i - start] = hps_mix64(keys[i] ^ _SALT)
        for i in range(min(_AHEAD, stop - start)):
            self._prefetch(self.hashes[i])
        return stop

    # -- batch operations --------------------------------------------------------------------------

    def pull(self, const uint64_t[::1] keys, int columns=0):
        """The first ``columns`` (default ``width``) of each key's row, zeros for absent keys: a new float32 array."""
        if columns <= 0:
            columns = self.width
        if columns > self.columns:
            raise ValueError(f"columns {columns} > the table's {self.columns}")
        cdef int64_t n = keys.shape[0]
        out = np.empty((n, columns), dtype=np.float32)
        cdef float[:, ::1] target = out
        if n:
            with nogil:
                self._pull(&keys[0], n, &target[0, 0], columns)
        return out

    cdef void _pull(self, const uint64_t *keys, int64_t n, float *out, int columns) noexcept nogil:
        cdef int64_t start = 0, stop, i, k
        cdef float *row
        while start < n:
            stop = self._hash_chunk(keys, start, n)
            for i in range(start, stop):
                k = i - start + _AHEAD
                if k < stop - start:
                    self._prefetch(self.hashes[k])
                row = self._find(keys[i], self.hashes[i - start])
                if row != NULL:
                    memcpy(out + i * columns, row, columns * 4)
                else:
                    memset(out + i * columns, 0, columns * 4)
            start = stop

    def contains(self, const uint64_t[::1] keys):
        """Whether each key is held (a new bool array)."""
        cdef int64_t n = keys.shape[0], start = 0, stop, i, k
        out = np.empty(n, dtype=np.bool_)
        cdef unsigned char[::1] found = out.view(np.uint8)
        with nogil:
            while start < n:
                stop = self._hash_chunk(&keys[0], start, n)
                for i in range(start, stop):
                    k = i - start + _AHEAD
                    if k < stop - start:
                        self._prefetch(self.hashes[k])
                    found[i] = self._find(keys[i], self.hashes[i - start]) != NULL
                start = stop
        return out

    def assign(self, const uint64_t[::1] keys, const float[:, ::1] rows):
        """Set the whole row of each key (inserting absent keys); later duplicates win."""
        cdef int64_t n = keys.shape[0], start = 0, stop, i, k
        if rows.shape[0] != n or (n and rows.shape[1] != self.columns):
            raise ValueError(f"assign: {n} keys but rows of shape {rows.shape[0]}x{rows.shape[1]}, "
                             f"the table has {self.columns} columns")
        if n == 0:
            return
        with nogil:
            while start < n:
                stop = start + _CHUNK if start + _CHUNK < n else n
                self._reserve(&keys[start], stop - start)
                self._hash_chunk(&keys[0], start, n)
                for i in range(start, stop):
                    k = i - start + _AHEAD
                    if k < stop - start:
                        self._prefetch(self.hashes[k])
                    memcpy(self._find_or_insert(keys[i], self.hashes[i - start]), &rows[i, 0], self.columns * 4)
                start = stop

    def push(self, const uint64_t[::1] keys, const float[:, ::1] grads, UpdateRule rule):
        """Lookup-or-insert each (unique) key and apply ``rule`` to its row with its gradient row.

        Returns:
            0, or how many rows the update would have made non-finite: then nothing was
            changed (keys it inserted stay, with zero rows, as they read before).
        """
        cdef int64_t n = keys.shape[0]
        if grads.shape[0] != n or (n and grads.shape[1] != self.width):
            raise ValueError(f"push: {n} keys but gradient of shape {grads.shape[0]}x{grads.shape[1]}, "
                             f"width {self.width}")
        if self.columns != self.width * (1 + rule.states):
            raise ValueError(f"push: a table of {self.columns} columns cannot hold {rule.states} state arrays "
                             f"of width {self.width}")
        if n == 0:
            return 0
        self._undo_room(n)
        cdef int64_t bad
        with nogil:
            bad = self._push(&keys[0], &grads[0, 0], n, rule.rule)
        return bad

    cdef int _undo_room(self, int64_t n) except -1:
        if n <= self.undo_capacity:
            return 0
        cdef char **touched = <char **> realloc(self.touched, n * sizeof(char *))
        if touched == NULL:
            raise MemoryError()
        self.touched = touched
        cdef float *saved = <float *> realloc(self.saved, n * self.columns * 4)
        if saved == NULL:
            raise MemoryError()
        self.saved = saved
        self.undo_capacity = n
        return 0

    cdef int64_t _push(self, const uint64_t *keys, const float *grads, int64_t n, Rule rule) except -1 nogil:
        self._reserve(keys, n)  # every part has room for the whole batch: no slot moves below
        cdef int64_t start = 0, stop, i, k, bad = 0
        cdef int64_t row_bytes = self.columns * 4
        cdef float *row
        while start < n:
            stop = self._hash_chunk(keys, start, n)
            for i in range(start, stop):
                k = i - start + _AHEAD
                if k < stop - start:
                    self._prefetch(self.hashes[k])
                row = self._find_or_insert(keys[i], self.hashes[i - start])
                self.touched[i] = <char *> row
                memcpy(self.saved + i * self.columns, row, row_bytes)
                bad += not _update(rule, row, grads + i * self.width, self.width)
            start = stop
        if bad:
            for i in range(n - 1, -1, -1):  # backwards: a repeated key ends as it began
                memcpy(self.touched[i], self.saved + i * self.columns, row_bytes)
        return bad

    # -- the whole table ---------------------------------------------------------------------------

    def export(self):
        """``(keys, rows)``: every held key (uint64 ``[n]``) and its row (float32 ``[n, columns]``), new arrays.

        The order is the table's (the key 0 first, then part by part); ``retain`` takes a mask over it.
        """
        cdef int64_t n = self._count()
        keys_out = np.empty(n, dtype=np.uint64)
        rows_out = np.empty((n, self.columns), dtype=np.float32)
        cdef uint64_t[::1] keys = keys_out
        cdef float[:, ::1] rows = rows_out
        cdef int64_t at = 0, i
        cdef int p
        cdef char *slot
        cdef uint64_t key
        with nogil:
            if self.has_zero:
                keys[0] = 0
                memcpy(&rows[0, 0], self.zero_row, self.columns * 4)
                at = 1
            for p in range(_PARTS):
                slot = self.parts[p].slots
                for i in range(self.parts[p].size):
                    memcpy(&key, slot, 8)
                    if key != 0:
                        keys[at] = key
                        memcpy(&rows[at, 0], slot + 8, self.columns * 4)
                        at += 1
                    slot += self.slot_bytes
        return keys_out, rows_out

    def retain(self, keep_mask):
        """Keep only the keys where ``keep`` (a mask over ``export``'s order) is true; rebuilt part by part."""
        cdef int64_t n = self._count()
        cdef const unsigned char[::1] keep = np.ascontiguousarray(keep_mask, dtype=np.bool_).view(np.uint8)
        if keep.shape[0] != n:
            raise ValueError(f"retain: a mask of {keep.shape[0]} for {n} keys")
        cdef int64_t at = 0, i, kept, position
        cdef int p
        cdef char *slot
        cdef char *fresh
        cdef char *target
        cdef uint64_t key
        cdef int64_t size
        cdef size_t mapped
        with nogil:
            if self.has_zero:
                self.has_zero = keep[0]
                at = 1
            for p in range(_PARTS):
                kept = 0
                for i in range(self.parts[p].count):
                    kept += keep[at + i]
                if kept == self.parts[p].count:
                    at += kept
                    continue
                size = self._slots_for(kept)
                fresh = <char *> hps_alloc_zeroed(size * self.slot_bytes, &mapped)
                if fresh == NULL:
                    with gil:
                        raise MemoryError()
                slot = self.parts[p].slots
                for i in range(self.parts[p].size):
                    memcpy(&key, slot, 8)
                    if key != 0:
                        if keep[at]:
                            position = hps_fastrange(hps_mix64(key ^ _SALT) << _PART_BITS, size)
                            target = fresh + position * self.slot_bytes
                            while (<uint64_t *> target)[0] != 0:
                                position += 1
                                target += self.slot_bytes
                                if position == size:
                                    position = 0
                                    target = fresh
                            memcpy(target, slot, self.slot_bytes)
                        at += 1
                    slot += self.slot_bytes
                hps_free(self.parts[p].slots, self.parts[p].mapped)
                self.parts[p].slots = fresh
                self.parts[p].mapped = mapped
                self.parts[p].size = size
                self.parts[p].count = kept
                self.parts[p].limit = min(<int64_t> (size * self.max_load), size - 1)

    def clear(self):
        """Drop every key (and give back the memory)."""
        cdef int p
        self.has_zero = False
        for p in range(_PARTS):
            hps_free(self.parts[p].slots, self.parts[p].mapped)
            self.parts[p].slots = NULL
            self.parts[p].mapped = 0
            self.parts[p].size = self.parts[p].count = 0
            self._resize(p, _MIN_PART_SLOTS)
