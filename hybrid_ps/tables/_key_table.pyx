"""The compiled key table: uint64 key -> one float32 row (values, then optimizer state), by open addressing.

Layout. The table is cut into 16 parts by the top bits of the key's hash, so a
part grows on its own (by 1.5x once large) and the memory peak of a growth is
one part's new buckets, not a second table. A part is an array of buckets of 4
slots, probed bucket by bucket from ``fastrange(hash, buckets)`` up to a load
of 0.8: a bucket holds its 4 keys, then their 4 payloads, so a lookup reads one
or two cache lines and compares 4 keys. Key 0 marks an empty slot (the key 0
itself lives in a side row). Narrow rows (up to 32 bytes: width 1 and 2 with
any optimizer) are the payload, so one random memory access finds a key and
its row. Wider rows live in blocks of ``_BLOCK_ROWS`` rows that never move, and
the payload is the row's index: an extra access, but the buckets stay small
and no row is copied when the table grows. Large blocks of memory come from
``mmap``, advised for 2 MiB pages (a random access then rarely misses the TLB).

Batches. Every batch operation works a chunk of ``_CHUNK`` keys at a time:
hash them all, locate them (inserting if asked) while prefetching the bucket of
the key ``_AHEAD`` places later, so the memory latencies overlap instead of
adding up; then apply the operation to the located rows, which are in cache.

Push. ``push`` is one pass of lookup-or-insert and the optimizer over each row,
in float32 with the exact operation order of the numpy reference in the tests.
It keeps a copy of every row it touches; if any updated value is not finite
(float32 overflow), every row is put back and the push is refused whole.

Stamps and removal. A ``stamped`` table keeps one more column per row, a uint32
stamp a push writes (the clock of the push: when the row was last updated), so
``stale`` finds the rows not updated since a clock; ``remove`` takes keys out
(feature eviction). A part that lost keys is rehashed into fresh buckets (slots
are never emptied in place: an empty slot ends a probe), and a wide row's place
in its block goes on a free list for the next insertion.
"""

from libc.math cimport fabsf, isfinite, sqrtf
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset

import numpy as np

cimport numpy as cnp

from hybrid_ps.tables._native cimport hps_ctz, hps_fastrange, hps_mix64, hps_prefetch_write

cnp.import_array()

__all__ = ["KeyTable", "UpdateRule", "apply_rows", "EMPTY_KEY"]

EMPTY_KEY = 0
"""The key that marks an empty slot; it is kept in a side row, so every uint64 is a valid key."""

DEF _PART_BITS = 4
DEF _PARTS = 16
DEF _SLOTS = 4               # slots per bucket
DEF _AHEAD = 16              # keys between a bucket's prefetch and its probe
DEF _CHUNK = 256             # keys located per round (their rows stay in cache for the operation)
DEF _MIN_BUCKETS = 2
DEF _STEADY_BUCKETS = 32768  # a part this large grows by 1.5x, a smaller one by 2x
DEF _INLINE_ROW_BYTES = 32   # rows up to this size live inside the bucket
DEF _BLOCK_BITS = 14         # wider rows: blocks of 2**14 rows
DEF _BLOCK_ROWS = 16384

cdef extern from *:
    """
    #include <sys/mman.h>
    #include <stdint.h>
    #include <stdlib.h>
    #define HPS_TABLE_SALT 0xD6E8FEB86659FD93ULL  /* decorrelates from the hash ring, which hashes the same keys */
    #define HPS_HUGE ((size_t)2 << 20)
    /* n zeroed bytes; from 256 KiB on from mmap, the start aligned to 2 MiB and advised for huge pages.
       *mapped is what hps_free needs (0: calloc-ed). */
    static void *hps_alloc_zeroed(size_t n, size_t *mapped) {
        if (n < ((size_t)256 << 10)) { *mapped = 0; return calloc(n ? n : 1, 1); }
        size_t keep = (n + 4095) & ~(size_t)4095;
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
    const uint64_t _SALT "HPS_TABLE_SALT"
    void *hps_alloc_zeroed(size_t n, size_t *mapped) nogil
    void hps_free(void *p, size_t mapped) nogil

cdef enum Kind:
    KIND_SGD = 1
    KIND_ADAGRAD = 2
    KIND_FTRL = 3

_KINDS = {"sgd": KIND_SGD, "adagrad": KIND_ADAGRAD, "ftrl": KIND_FTRL}
_STATES = {"sgd": 0, "adagrad": 1, "ftrl": 2}


cdef struct Rule:
    int kind
    float lr, l1, l2, eps, beta


cdef struct Part:
    char *buckets
    size_t mapped   # bytes mmap-ed for the buckets (0: calloc-ed)
    int64_t size    # buckets
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


cdef inline void _copy(float *target, const float *source, int64_t count) noexcept nogil:
    """``count`` floats, copied in a loop the compiler unrolls (a row is a few floats: no call to memcpy)."""
    cdef int64_t j
    for j in range(count):
        target[j] = source[j]


cdef inline void _zero(float *target, int64_t count) noexcept nogil:
    cdef int64_t j
    for j in range(count):
        target[j] = 0


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
        stamped: the last of the ``columns`` is the stamp (uint32 bits) ``push`` writes.
    """

    cdef Part parts[_PARTS]
    cdef readonly int width
    cdef readonly int columns
    cdef readonly double max_load
    cdef readonly bint stamped  # the last column holds the uint32 stamp of the row's last push
    cdef int64_t row_bytes
    cdef int64_t payload_bytes  # per slot: the row itself (inline) or its index
    cdef int64_t bucket_bytes
    cdef bint inline_rows
    cdef char **blocks          # wide rows: blocks of _BLOCK_ROWS rows
    cdef size_t *block_mapped
    cdef int64_t num_blocks
    cdef int64_t next_row       # wide rows: rows handed out
    cdef int64_t *free_rows     # wide rows: rows of removed keys, handed out again first
    cdef int64_t free_count
    cdef int64_t free_capacity
    cdef float *zero_row        # the row of key 0 (the key that marks empty slots)
    cdef bint has_zero
    cdef uint64_t hashes[_CHUNK]
    cdef float *located[_CHUNK]
    cdef char **touched         # push: the row of every key, to undo a refused push
    cdef float *saved           # push: every touched row before the update
    cdef int64_t undo_capacity

    def __cinit__(self, int width, int columns, int64_t capacity=1024, double max_load=0.8, bint stamped=False):
        if width < 1 or columns < width + stamped:
            raise ValueError(f"width must be >= 1 and columns >= width (+1 stamped), got {width}, {columns}")
        if not 0.1 <= max_load <= 0.95:
            raise ValueError(f"max_load must be in [0.1, 0.95], got {max_load}")
        self.width, self.columns, self.max_load, self.stamped = width, columns, max_load, stamped
        self.row_bytes = 4 * columns
        self.inline_rows = self.row_bytes <= _INLINE_ROW_BYTES
        self.payload_bytes = self.row_bytes if self.inline_rows else 8
        self.bucket_bytes = _SLOTS * (8 + self.payload_bytes)
        self.zero_row = <float *> calloc(columns, 4)
        if self.zero_row == NULL:
            raise MemoryError()
        cdef int p
        for p in range(_PARTS):
            self.parts[p].buckets = NULL
            self.parts[p].mapped = 0
            self.parts[p].size = self.parts[p].count = self.parts[p].limit = 0
        for p in range(_PARTS):
            self._resize(p, self._buckets_for(capacity // _PARTS + 1))

    def __dealloc__(self):
        cdef int p
        for p in range(_PARTS):
            hps_free(self.parts[p].buckets, self.parts[p].mapped)
        self._free_blocks()
        free(self.zero_row)
        free(self.free_rows)
        free(self.touched)
        free(self.saved)

    cdef void _free_blocks(self) noexcept nogil:
        cdef int64_t b
        for b in range(self.num_blocks):
            hps_free(self.blocks[b], self.block_mapped[b])
        free(self.blocks)
        free(self.block_mapped)
        self.blocks, self.block_mapped = NULL, NULL
        self.num_blocks = self.next_row = self.free_count = 0

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
        """Bytes the table holds for its buckets and rows."""
        cdef int64_t total = self.row_bytes + self.num_blocks * _BLOCK_ROWS * self.row_bytes
        cdef int p
        for p in range(_PARTS):
            total += self.parts[p].size * self.bucket_bytes
        return total

    # -- memory ------------------------------------------------------------------------------------

    cdef int64_t _buckets_for(self, int64_t keys) noexcept nogil:
        cdef int64_t size = <int64_t> (keys / (self.max_load * _SLOTS)) + 1
        return size if size > _MIN_BUCKETS else _MIN_BUCKETS

    cdef inline char *_payload(self, char *bucket, int slot) noexcept nogil:
        return bucket + _SLOTS * 8 + slot * self.payload_bytes

    cdef inline float *_row(self, char *bucket, int slot) noexcept nogil:
        """The row of the key in ``slot`` of ``bucket``."""
        cdef char *payload = self._payload(bucket, slot)
        if self.inline_rows:
            return <float *> payload
        cdef int64_t index
        memcpy(&index, payload, 8)
        return <float *> (self.blocks[index >> _BLOCK_BITS] + (index & (_BLOCK_ROWS - 1)) * self.row_bytes)

    cdef int _resize(self, int p, int64_t size) except -1 nogil:
        """Give part ``p`` ``size`` buckets and move its keys into them (the old ones are freed right after).

        The keys move a chunk at a time: every target bucket is prefetched before any is written.
        """
        cdef Part *part = &self.parts[p]
        cdef size_t mapped
        cdef char *fresh = <char *> hps_alloc_zeroed(size * self.bucket_bytes, &mapped)
        if fresh == NULL:
            with gil:
                raise MemoryError(f"key table: cannot allocate {size * self.bucket_bytes} bytes")
        cdef int64_t bucket = 0, count, k
        cdef int slot
        cdef uint64_t key
        cdef char *source
        cdef char *sources[_CHUNK]
        cdef int source_slots[_CHUNK]
        while bucket < part.size:
            count = 0
            while bucket < part.size and count <= _CHUNK - _SLOTS:
                source = part.buckets + bucket * self.bucket_bytes
                for slot in range(_SLOTS):
                    key = (<uint64_t *> source)[slot]
                    if key != 0:
                        sources[count], source_slots[count] = source, slot
                        self.hashes[count] = hps_mix64(key ^ _SALT)
                        hps_prefetch_write(fresh + <int64_t> hps_fastrange(self.hashes[count] << _PART_BITS, size)
                                           * self.bucket_bytes)
                        count += 1
                bucket += 1
            for k in range(count):
                self._place(fresh, size, self.hashes[k], sources[k], source_slots[k])
        hps_free(part.buckets, part.mapped)
        part.buckets, part.mapped, part.size = fresh, mapped, size
        part.limit = <int64_t> (size * _SLOTS * self.max_load)
        if part.limit >= size * _SLOTS:
            part.limit = size * _SLOTS - 1
        return 0

    cdef inline void _place(self, char *buckets, int64_t size, uint64_t h, char *source,
                            int source_slot) noexcept nogil:
        """Copy key and payload of ``source_slot`` of bucket ``source`` into the first empty slot of
        ``buckets`` (``size`` buckets, one empty slot at least), probing from hash ``h``'s home bucket."""
        cdef int64_t position = hps_fastrange(h << _PART_BITS, size)
        cdef char *bucket = buckets + position * self.bucket_bytes
        cdef int slot
        while True:
            for slot in range(_SLOTS):
                if (<uint64_t *> bucket)[slot] == 0:
                    (<uint64_t *> bucket)[slot] = (<uint64_t *> source)[source_slot]
                    memcpy(self._payload(bucket, slot), self._payload(source, source_slot), self.payload_bytes)
                    return
            position += 1
            bucket += self.bucket_bytes
            if position == size:
                position = 0
                bucket = buckets

    cdef int _reserve(self, const uint64_t *keys, int64_t n) except -1 nogil:
        """Make room for ``keys`` as if every one were new: grow parts, add row blocks.

        A part grows to what it needs, and at least 2x while small, 1.5x from ``_STEADY_BUCKETS`` on
        (the fill factor then stays within 0.53 - 0.8).
        """
        cdef int64_t incoming[_PARTS]
        cdef int64_t i, grown
        cdef int p
        memset(incoming, 0, sizeof(incoming))
        for i in range(n):
            incoming[hps_mix64(keys[i] ^ _SALT) >> (64 - _PART_BITS)] += 1
        for p in range(_PARTS):
            if self.parts[p].count + incoming[p] > self.parts[p].limit:
                grown = self.parts[p].size * 2
                if self.parts[p].size >= _STEADY_BUCKETS:
                    grown = self.parts[p].size + self.parts[p].size // 2
                if grown < self._buckets_for(self.parts[p].count + incoming[p]):
                    grown = self._buckets_for(self.parts[p].count + incoming[p])
                self._resize(p, grown)
        if not self.inline_rows:
            self._add_blocks(self.next_row + (n - self.free_count if n > self.free_count else 0))
        return 0

    cdef int _add_blocks(self, int64_t rows) except -1 nogil:
        """Wide rows: have blocks for at least ``rows`` rows."""
        cdef int64_t wanted = (rows + _BLOCK_ROWS - 1) >> _BLOCK_BITS
        if wanted <= self.num_blocks:
            return 0
        cdef char **blocks = <char **> realloc(self.blocks, wanted * sizeof(char *))
        if blocks == NULL:
            with gil:
                raise MemoryError()
        self.blocks = blocks
        cdef size_t *mapped = <size_t *> realloc(self.block_mapped, wanted * sizeof(size_t))
        if mapped == NULL:
            with gil:
                raise MemoryError()
        self.block_mapped = mapped
        while self.num_blocks < wanted:
            self.blocks[self.num_blocks] = <char *> hps_alloc_zeroed(_BLOCK_ROWS * self.row_bytes,
                                                                      &self.block_mapped[self.num_blocks])
            if self.blocks[self.num_blocks] == NULL:
                with gil:
                    raise MemoryError(f"key table: cannot allocate {_BLOCK_ROWS * self.row_bytes} bytes")
            self.num_blocks += 1
        return 0

    # -- lookups -----------------------------------------------------------------------------------

    cdef inline void _prefetch(self, uint64_t h) noexcept nogil:
        cdef Part *part = &self.parts[h >> (64 - _PART_BITS)]
        cdef char *bucket = part.buckets + <int64_t> hps_fastrange(h << _PART_BITS, part.size) * self.bucket_bytes
        hps_prefetch_write(bucket)
        if self.bucket_bytes > 64:
            hps_prefetch_write(bucket + self.bucket_bytes - 1)

    cdef inline float *_find(self, uint64_t key, uint64_t h, bint insert) noexcept nogil:
        """The row of ``key``; if absent NULL, or with ``insert`` a new zero row (``_reserve`` made room).

        A bucket's 4 keys are compared at once into bit masks (which slot holds the key, which are
        empty): no branch on the slot, which would be mispredicted every other key. Slots fill in
        probe order and are never emptied, so a bucket with an empty slot ends the search.
        """
        cdef Part *part
        cdef int64_t position, index
        cdef char *bucket
        cdef const uint64_t *keys
        cdef unsigned int match, empty
        cdef int slot
        cdef float *row
        if key == 0:
            if insert and not self.has_zero:
                self.has_zero = True
                memset(self.zero_row, 0, self.row_bytes)
            return self.zero_row if self.has_zero else NULL
        part = &self.parts[h >> (64 - _PART_BITS)]
        position = hps_fastrange(h << _PART_BITS, part.size)
        bucket = part.buckets + position * self.bucket_bytes
        while True:
            keys = <const uint64_t *> bucket
            match = ((<unsigned int> (keys[0] == key)) | (<unsigned int> (keys[1] == key)) << 1
                     | (<unsigned int> (keys[2] == key)) << 2 | (<unsigned int> (keys[3] == key)) << 3)
            if match:
                return self._row(bucket, hps_ctz(match))
            empty = ((<unsigned int> (keys[0] == 0)) | (<unsigned int> (keys[1] == 0)) << 1
                     | (<unsigned int> (keys[2] == 0)) << 2 | (<unsigned int> (keys[3] == 0)) << 3)
            if empty:
                break
            position += 1
            bucket += self.bucket_bytes
            if position == part.size:
                position = 0
                bucket = part.buckets
        if not insert:
            return NULL
        slot = hps_ctz(empty)
        (<uint64_t *> bucket)[slot] = key
        part.count += 1
        if not self.inline_rows:
            if self.free_count:
                self.free_count -= 1
                index = self.free_rows[self.free_count]
            else:
                index = self.next_row
                self.next_row += 1
            memcpy(self._payload(bucket, slot), &index, 8)
        row = self._row(bucket, slot)
        _zero(row, self.columns)
        return row

    cdef int64_t _locate(self, const uint64_t *keys, int64_t start, int64_t n, bint insert) noexcept nogil:
        """Find the rows of ``keys[start:start + _CHUNK]`` (clipped to ``n``) into ``self.located``.

        Hashes the chunk first, then probes in order, prefetching ``_AHEAD`` keys ahead (and, for wide
        rows, each row as its bucket is read). Returns the chunk's end.
        """
        cdef int64_t stop = start + _CHUNK if start + _CHUNK < n else n
        cdef int64_t count = stop - start, i
        for i in range(count):
            self.hashes[i] = hps_mix64(keys[start + i] ^ _SALT)
        for i in range(_AHEAD if _AHEAD < count else count):
            self._prefetch(self.hashes[i])
        for i in range(count):
            if i + _AHEAD < count:
                self._prefetch(self.hashes[i + _AHEAD])
            self.located[i] = self._find(keys[start + i], self.hashes[i], insert)
            if not self.inline_rows and self.located[i] != NULL:
                hps_prefetch_write(self.located[i])
                hps_prefetch_write(<char *> self.located[i] + self.row_bytes - 1)
        return stop

    # -- batch operations --------------------------------------------------------------------------

    def pull(self, const uint64_t[::1] keys, int columns=0):
        """The first ``columns`` (default ``width``) of each key's row, zeros for absent keys: a new float32 array."""
        if columns <= 0:
            columns = self.width
        if columns > self.columns:
            raise ValueError(f"columns {columns} > the table's {self.columns}")
        cdef int64_t n = keys.shape[0], start = 0, stop, i
        out = np.empty((n, columns), dtype=np.float32)
        if n == 0:
            return out
        cdef float[:, ::1] target = out
        with nogil:
            while start < n:
                stop = self._locate(&keys[0], start, n, False)
                for i in range(start, stop):
                    if self.located[i - start] != NULL:
                        _copy(&target[i, 0], self.located[i - start], columns)
                    else:
                        _zero(&target[i, 0], columns)
                start = stop
        return out

    def contains(self, const uint64_t[::1] keys):
        """Whether each key is held (a new bool array)."""
        cdef int64_t n = keys.shape[0], start = 0, stop, i
        out = np.empty(n, dtype=np.bool_)
        if n == 0:
            return out
        cdef unsigned char[::1] found = out.view(np.uint8)
        with nogil:
            while start < n:
                stop = self._locate(&keys[0], start, n, False)
                for i in range(start, stop):
                    found[i] = self.located[i - start] != NULL
                start = stop
        return out

    def assign(self, const uint64_t[::1] keys, const float[:, ::1] rows):
        """Set the whole row of each key (inserting absent keys); later duplicates win."""
        cdef int64_t n = keys.shape[0], start = 0, stop, i
        if rows.shape[0] != n or (n and rows.shape[1] != self.columns):
            raise ValueError(f"assign: {n} keys but rows of shape {rows.shape[0]}x{rows.shape[1]}, "
                             f"the table has {self.columns} columns")
        if n == 0:
            return
        with nogil:
            self._reserve(&keys[0], n)
            while start < n:
                stop = self._locate(&keys[0], start, n, True)
                for i in range(start, stop):
                    memcpy(self.located[i - start], &rows[i, 0], self.row_bytes)
                start = stop

    def push(self, const uint64_t[::1] keys, const float[:, ::1] grads, UpdateRule rule, uint32_t stamp=0):
        """Lookup-or-insert each (unique) key and apply ``rule`` to its row with its gradient row (and, in a
        ``stamped`` table, set its stamp to ``stamp``).

        Returns:
            0, or how many rows the update would have made non-finite: then nothing was
            changed (keys it inserted stay, with zero rows, as they read before).
        """
        cdef int64_t n = keys.shape[0]
        if grads.shape[0] != n or (n and grads.shape[1] != self.width):
            raise ValueError(f"push: {n} keys but gradient of shape {grads.shape[0]}x{grads.shape[1]}, "
                             f"width {self.width}")
        if self.columns != self.width * (1 + rule.states) + self.stamped:
            raise ValueError(f"push: a table of {self.columns} columns cannot hold {rule.states} state arrays "
                             f"of width {self.width}" + (" and a stamp" if self.stamped else ""))
        if n == 0:
            return 0
        self._undo_room(n)
        cdef int64_t bad
        with nogil:
            bad = self._push(&keys[0], &grads[0, 0], n, rule.rule, stamp)
        return bad

    cdef int _undo_room(self, int64_t n) except -1:
        if n <= self.undo_capacity:
            return 0
        cdef char **touched = <char **> realloc(self.touched, n * sizeof(char *))
        if touched == NULL:
            raise MemoryError()
        self.touched = touched
        cdef float *saved = <float *> realloc(self.saved, n * self.row_bytes)
        if saved == NULL:
            raise MemoryError()
        self.saved = saved
        self.undo_capacity = n
        return 0

    cdef int64_t _push(self, const uint64_t *keys, const float *grads, int64_t n, Rule rule,
                       uint32_t stamp) except -1 nogil:
        self._reserve(keys, n)  # room for the whole batch first: no bucket or row moves below
        cdef int64_t start = 0, stop, i, bad = 0
        cdef float *row
        while start < n:
            stop = self._locate(keys, start, n, True)
            for i in range(start, stop):
                row = self.located[i - start]
                self.touched[i] = <char *> row
                _copy(self.saved + i * self.columns, row, self.columns)
                bad += not _update(rule, row, grads + i * self.width, self.width)
                if self.stamped:
                    memcpy(row + self.columns - 1, &stamp, 4)
            start = stop
        if bad:
            for i in range(n - 1, -1, -1):  # backwards: a repeated key ends as it began
                memcpy(self.touched[i], self.saved + i * self.columns, self.row_bytes)
        return bad

    # -- the whole table ---------------------------------------------------------------------------

    def export(self):
        """``(keys, rows)``: every held key (uint64 ``[n]``) and its row (float32 ``[n, columns]``), new arrays.

        The order is the table's (the key 0 first, then part by part); ``retain`` takes a mask over it.
        """
        cdef int64_t n = self._count()
        keys_out = np.empty(n, dtype=np.uint64)
        rows_out = np.empty((n, self.columns), dtype=np.float32)
        if n == 0:
            return keys_out, rows_out
        cdef uint64_t[::1] keys = keys_out
        cdef float[:, ::1] rows = rows_out
        with nogil:
            self._collect(&keys[0], <char *> &rows[0, 0])
        return keys_out, rows_out

    def keys(self):
        """Every held key (a new uint64 array), in ``export``'s order, without copying a row."""
        cdef int64_t n = self._count()
        keys_out = np.empty(n, dtype=np.uint64)
        if n == 0:
            return keys_out
        cdef uint64_t[::1] keys = keys_out
        with nogil:
            self._collect(&keys[0], NULL)
        return keys_out

    cdef void _collect(self, uint64_t *keys, char *rows) noexcept nogil:
        """Every held key into ``keys`` (room for all), in the table's order, and its row into ``rows`` (``NULL``:
        the keys only)."""
        cdef int64_t at = 0, b
        cdef int p, slot
        cdef char *bucket
        if self.has_zero:
            keys[0] = 0
            if rows != NULL:
                memcpy(rows, self.zero_row, self.row_bytes)
            at = 1
        for p in range(_PARTS):
            for b in range(self.parts[p].size):
                bucket = self.parts[p].buckets + b * self.bucket_bytes
                for slot in range(_SLOTS):
                    if (<uint64_t *> bucket)[slot] != 0:
                        keys[at] = (<uint64_t *> bucket)[slot]
                        if rows != NULL:
                            memcpy(rows + at * self.row_bytes, self._row(bucket, slot), self.row_bytes)
                        at += 1

    def retain(self, keep_mask):
        """Keep only the keys where ``keep_mask`` (over ``export``'s order) is true."""
        cdef int64_t n = self._count()
        cdef const unsigned char[::1] keep = np.ascontiguousarray(keep_mask, dtype=np.bool_).view(np.uint8)
        if keep.shape[0] != n:
            raise ValueError(f"retain: a mask of {keep.shape[0]} for {n} keys")
        if not self.inline_rows:  # rows of dropped keys would stay in their blocks: rebuild from the kept ones
            keys, rows = self.export()
            kept = np.ascontiguousarray(keep_mask, dtype=np.bool_)
            self.clear()
            self.assign(np.ascontiguousarray(keys[kept]), np.ascontiguousarray(rows[kept]))
            return
        cdef int64_t at = 0, i, b, kept_count, size
        cdef int p, slot
        cdef char *bucket
        cdef char *fresh
        cdef size_t mapped
        with nogil:
            if self.has_zero:
                self.has_zero = keep[0]
                at = 1
            for p in range(_PARTS):  # part by part: the memory peak is one part
                kept_count = 0
                for i in range(self.parts[p].count):
                    kept_count += keep[at + i]
                if kept_count == self.parts[p].count:
                    at += kept_count
                    continue
                size = self._buckets_for(kept_count)
                fresh = <char *> hps_alloc_zeroed(size * self.bucket_bytes, &mapped)
                if fresh == NULL:
                    with gil:
                        raise MemoryError()
                for b in range(self.parts[p].size):
                    bucket = self.parts[p].buckets + b * self.bucket_bytes
                    for slot in range(_SLOTS):
                        if (<uint64_t *> bucket)[slot] != 0:
                            if keep[at]:
                                self._place(fresh, size, hps_mix64((<uint64_t *> bucket)[slot] ^ _SALT), bucket,
                                            slot)
                            at += 1
                hps_free(self.parts[p].buckets, self.parts[p].mapped)
                self.parts[p].buckets, self.parts[p].mapped, self.parts[p].size = fresh, mapped, size
                self.parts[p].count = kept_count
                self.parts[p].limit = min(<int64_t> (size * _SLOTS * self.max_load), size * _SLOTS - 1)

    # -- eviction ----------------------------------------------------------------------------------

    cdef inline bint _is_stale(self, const float *row, uint32_t before, float below) noexcept nogil:
        cdef uint32_t stamp
        cdef int j
        if self.stamped:
            memcpy(&stamp, row + self.columns - 1, 4)
            if stamp < before:
                return True
        if below < 0:
            return False
        for j in range(self.width):
            if fabsf(row[j]) > below:
                return False
        return True

    def stale(self, uint32_t before, double below=-1.0):
        """The keys whose stamp is below ``before`` (not pushed since; a ``stamped`` table), or, with ``below >=
        0``, whose every value is within ``±below``: what an eviction takes out (a new uint64 array, in
        ``export``'s order)."""
        if before and not self.stamped:
            raise ValueError("stale: this table keeps no stamps")
        cdef float limit = below
        cdef int64_t count = 0, at = 0, b
        cdef int p, slot, run
        cdef char *bucket
        cdef uint64_t[::1] keys
        out = np.empty(0, dtype=np.uint64)
        for run in range(2):  # count, then fill
            if run:
                out = np.empty(count, dtype=np.uint64)
                if count == 0:
                    return out
                keys = out
            with nogil:
                if self.has_zero and self._is_stale(self.zero_row, before, limit):
                    if run:
                        keys[at] = 0
                    at += 1
                for p in range(_PARTS):
                    for b in range(self.parts[p].size):
                        bucket = self.parts[p].buckets + b * self.bucket_bytes
                        for slot in range(_SLOTS):
                            if (<uint64_t *> bucket)[slot] != 0 and self._is_stale(self._row(bucket, slot), before,
                                                                                   limit):
                                if run:
                                    keys[at] = (<uint64_t *> bucket)[slot]
                                at += 1
            count, at = at, 0
        return out

    def remove(self, const uint64_t[::1] keys):
        """Take ``keys`` out (absent ones, and repeats, are skipped); returns how many were held.

        Every part that lost keys is rehashed into fresh buckets (no longer than it needs: a table that evicts
        gives memory back), so a lookup's probe never stops short at an emptied slot.
        """
        cdef int64_t n = keys.shape[0], i, removed = 0, index, size, fit
        cdef int64_t *grown
        if n == 0:
            return 0
        cdef char **buckets = <char **> calloc(n, sizeof(char *))
        cdef int *slots = <int *> calloc(n, sizeof(int))
        if buckets == NULL or slots == NULL:
            free(buckets)
            free(slots)
            raise MemoryError()
        if not self.inline_rows and self.free_count + n > self.free_capacity:
            grown = <int64_t *> realloc(self.free_rows, (self.free_count + n) * sizeof(int64_t))
            if grown == NULL:
                free(buckets)
                free(slots)
                raise MemoryError()
            self.free_rows, self.free_capacity = grown, self.free_count + n
        cdef bint dirty[_PARTS]
        cdef int p
        cdef Part *part
        with nogil:
            memset(dirty, 0, sizeof(dirty))
            for i in range(n):  # every slot first: emptying one would end the probes of keys behind it
                self._find_slot(keys[i], &buckets[i], &slots[i])
            for i in range(n):
                if keys[i] == 0:
                    if self.has_zero:
                        self.has_zero = False
                        removed += 1
                    continue
                if buckets[i] == NULL or (<uint64_t *> buckets[i])[slots[i]] == 0:
                    continue  # absent, or listed twice
                if not self.inline_rows:
                    memcpy(&index, self._payload(buckets[i], slots[i]), 8)
                    self.free_rows[self.free_count] = index
                    self.free_count += 1
                (<uint64_t *> buckets[i])[slots[i]] = 0
                p = hps_mix64(keys[i] ^ _SALT) >> (64 - _PART_BITS)
                self.parts[p].count -= 1
                dirty[p] = True
                removed += 1
            for p in range(_PARTS):
                if dirty[p]:
                    part = &self.parts[p]
                    size, fit = part.size, self._buckets_for(part.count + part.count // 2)
                    self._resize(p, fit if fit < size else size)
        free(buckets)
        free(slots)
        return removed

    cdef void _find_slot(self, uint64_t key, char **bucket_out, int *slot_out) noexcept nogil:
        """Where ``key`` is (its bucket and slot), or a NULL bucket (absent, or the key 0: its side row)."""
        bucket_out[0] = NULL
        if key == 0:
            return
        cdef uint64_t h = hps_mix64(key ^ _SALT)
        cdef Part *part = &self.parts[h >> (64 - _PART_BITS)]
        cdef int64_t position = hps_fastrange(h << _PART_BITS, part.size)
        cdef char *bucket = part.buckets + position * self.bucket_bytes
        cdef int slot
        cdef bint empty
        while True:
            empty = False
            for slot in range(_SLOTS):
                if (<uint64_t *> bucket)[slot] == key:
                    bucket_out[0], slot_out[0] = bucket, slot
                    return
                empty |= (<uint64_t *> bucket)[slot] == 0
            if empty:
                return
            position += 1
            bucket += self.bucket_bytes
            if position == part.size:
                position = 0
                bucket = part.buckets

    def clear(self):
        """Drop every key (and give back the memory)."""
        cdef int p
        self.has_zero = False
        self._free_blocks()
        for p in range(_PARTS):
            hps_free(self.parts[p].buckets, self.parts[p].mapped)
            self.parts[p].buckets = NULL
            self.parts[p].mapped = 0
            self.parts[p].size = self.parts[p].count = 0
            self._resize(p, _MIN_BUCKETS)
