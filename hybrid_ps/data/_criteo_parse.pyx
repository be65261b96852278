# cython: boundscheck=False, wraparound=False, cdivision=True
"""The compiled Criteo TSV chunk parser: whole lines -> labels, per-row counts, keys and values, in one pass.

It takes exactly what ``hybrid_ps.data.criteo.parse_slow`` (the Python reference) takes, with bit-identical
results, and declines (``None``) anything else: the Python parser then finds and words the error.

A line (``\\n``-terminated; one ``\\r`` before the ``\\n`` is dropped; an empty line is skipped) has 40 fields
separated by tabs: the label ``0`` or ``1``, 13 integer columns (empty, or ``-?digits`` within int64) and 26
categorical columns (empty, or any bytes). Column ``c`` (1-13 integers, 14-39 categories) gives the key
``mix64(h ^ c * 0x9E3779B97F4A7C15)`` with ``h`` = 0 for an integer column and the FNV-1a hash of the bytes for
a category (2**64 - 1, the model's bias key, becomes 2**64 - 2); an integer ``x`` has the value
``sign(x) * log(1 + |x|)``, a category the value 1.
"""

from libc.stdint cimport int64_t, uint64_t

import numpy as np

cimport numpy as cnp

cnp.import_array()

__all__ = ["parse_chunk"]

cdef extern from *:
    """
    #include <stdint.h>
    #include <math.h>
    #define HPS_FIELDS 40
    #define HPS_INTEGER_COLUMNS 13
    static inline uint64_t hps_mix64(uint64_t x) {
        uint64_t z = x + 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    static inline uint64_t hps_column_key(uint64_t hash, uint64_t column) {
        uint64_t key = hps_mix64(hash ^ (column * 0x9E3779B97F4A7C15ULL));
        return key == UINT64_MAX ? UINT64_MAX - 1 : key;
    }
    /* Parse lines of text[:size] (the last byte a newline); -1 if any line is not taken. */
    static int64_t hps_parse_criteo(const unsigned char *text, int64_t size, float *labels, int64_t *counts,
                                    uint64_t *keys, float *values, int64_t *nnz_out) {
        int64_t rows = 0, nnz = 0;
        const unsigned char *p = text, *end = text + size;
        while (p < end) {
            const unsigned char *line_end = p;
            while (*line_end != '\\n') line_end++;
            const unsigned char *stop = line_end;
            if (stop > p && stop[-1] == '\\r') stop--;
            if (stop == p) { p = line_end + 1; continue; }
            int64_t row_nnz = 0;
            int field = 0;
            const unsigned char *f = p;
            while (1) {
                const unsigned char *g = f;
                while (g < stop && *g != '\\t') g++;
                int64_t length = g - f;
                if (field == 0) {
                    if (length != 1 || (f[0] != '0' && f[0] != '1')) return -1;
                    labels[rows] = f[0] == '1' ? 1.0f : 0.0f;
                } else if (field <= HPS_INTEGER_COLUMNS) {
                    if (length) {
                        const unsigned char *d = f;
                        int negative = *d == '-';
                        d += negative;
                        if (d == g || g - d > 18) return -1;  /* 18 digits always fit an int64 */
                        int64_t x = 0;
                        for (; d < g; d++) {
                            if (*d < '0' || *d > '9') return -1;
                            x = x * 10 + (*d - '0');
                        }
                        double magnitude = log1p((double) x);
                        keys[nnz + row_nnz] = hps_column_key(0, (uint64_t) field);
                        values[nnz + row_nnz] = (float) (negative ? -magnitude : magnitude);
                        row_nnz++;
                    }
                } else if (field < HPS_FIELDS) {
                    if (length) {
                        uint64_t hash = 0xcbf29ce484222325ULL;
                        for (const unsigned char *d = f; d < g; d++) hash = (hash ^ *d) * 0x100000001b3ULL;
                        keys[nnz + row_nnz] = hps_column_key(hash, (uint64_t) field);
                        values[nnz + row_nnz] = 1.0f;
                        row_nnz++;
                    }
                } else {
                    return -1;  /* a 41st field */
                }
                field++;
                if (g == stop) break;
                f = g + 1;
            }
            if (field != HPS_FIELDS) return -1;
            counts[rows++] = row_nnz;
            nnz += row_nnz;
            p = line_end + 1;
        }
        *nnz_out = nnz;
        return rows;
    }
    /* Newlines and tabs in text[:size] (a row has at most as many keys as tabs). */
    static void hps_count_newlines_and_tabs(const unsigned char *text, int64_t size, int64_t *newlines,
                                            int64_t *tabs) {
        int64_t lines = 0, separators = 0;
        for (int64_t i = 0; i < size; i++) {
            lines += text[i] == '\\n';
            separators += text[i] == '\\t';
        }
        *newlines = lines;
        *tabs = separators;
    }
    """
    int64_t hps_parse_criteo(const unsigned char *text, int64_t size, float *labels, int64_t *counts,
                             uint64_t *keys, float *values, int64_t *nnz_out) nogil
    void hps_count_newlines_and_tabs(const unsigned char *text, int64_t size, int64_t *newlines,
                                     int64_t *tabs) nogil


FIELDS = 40
"""Fields of a line: the label, 13 integer columns, 26 categorical columns."""


def parse_chunk(const unsigned char[::1] text):
    """Parse whole Criteo lines; ``None`` if any line is not one this parser takes exactly as the reference does.

    Args:
        text: whole lines (bytes or a contiguous byte buffer); ``None`` unless the last byte is a newline.

    Returns:
        ``(labels, counts, keys, values)`` as the libsvm parser returns them, or ``None``.
    """
    cdef int64_t size = text.shape[0], newlines = 0, tabs = 0, rows = 0, nnz = 0
    if size and text[size - 1] != 10:
        return None
    cdef const unsigned char *data = &text[0] if size else NULL
    if size:
        with nogil:
            hps_count_newlines_and_tabs(data, size, &newlines, &tabs)
    cdef cnp.ndarray labels = np.empty(newlines, np.float32)
    cdef cnp.ndarray counts = np.empty(newlines, np.int64)
    cdef cnp.ndarray keys = np.empty(tabs, np.uint64)
    cdef cnp.ndarray values = np.empty(tabs, np.float32)
    cdef float *label_data = <float *> cnp.PyArray_DATA(labels)
    cdef int64_t *count_data = <int64_t *> cnp.PyArray_DATA(counts)
    cdef uint64_t *key_data = <uint64_t *> cnp.PyArray_DATA(keys)
    cdef float *value_data = <float *> cnp.PyArray_DATA(values)
    if size:
        with nogil:
            rows = hps_parse_criteo(data, size, label_data, count_data, key_data, value_data, &nnz)
    if rows < 0:
        return None
    return labels[:rows], counts[:rows], keys[:nnz], values[:nnz]
