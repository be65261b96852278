"""The compiled libsvm chunk parser: whole lines of bytes -> labels, per-row counts, keys and values, in one pass.

It accepts exactly what ``hybrid_ps.data.libsvm._parse_slow`` (the Python reference) accepts, with bit-identical
results, and declines (``None``) anything else: the Python parser then finds and words the error.

Lines. A line ends at ``\\n``; ``#`` starts a comment to the end of the line; words are separated by the bytes
``bytes.split()`` splits on (space, ``\\t \\v \\f \\r``); a line without words is skipped. A row is a label
word, then ``index:value`` words; a ``qid:...`` word is skipped. Indices are ASCII digit strings (leading zeros
allowed) up to ``2**64 - 2``.

Numbers (labels and values). Only decimals ``[+-](digits[.[digits]]|.digits)[(e|E)[+-]digits]`` are taken; that is
all ``float()`` accepts that the reference keeps (it refuses ``_``, and no infinity or NaN is a valid label or
value). A decimal whose integer mantissa is at most 2**53 and whose power of ten is at most 22 is converted by one
exact multiply or divide in double (Clinger's fast path, correctly rounded as one IEEE operation); any other by
the C library's ``strtod`` (glibc's is correctly rounded, as ``float()`` is), after the syntax was checked here,
so hex floats, ``inf`` and ``nan`` never reach it. A value is rounded to float64, then to float32, as the
reference's ``np.array(floats, np.float32)`` does; labels must be -1, 0 or 1 and values at most float32's
largest finite number in magnitude.
"""

from libc.math cimport fabs
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport strtod
from libc.string cimport memchr

import numpy as np

cimport numpy as cnp

cnp.import_array()

__all__ = ["parse_chunk"]

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* 10**k for k <= 22: every one is exact in float64 (5**22 < 2**53) */
    static const double hps_exact_pow10[23] = {
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
        1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    #define HPS_EXACT_MANTISSA (1ULL << 53)      /* integers up to here are exact in float64 */
    #define HPS_EXPONENT_CAP 1000000             /* exponent digits past this only saturate (strtod decides) */
    #define HPS_FLOAT32_MAX 3.4028234663852886e38
    #define HPS_MAX_INDEX 0xFFFFFFFFFFFFFFFEULL  /* 2**64 - 1 is the model's bias key */
    /* How many newlines and colons text[:size] holds (bytes counted 255 at a time, which compilers vectorise). */
    static void hps_count_newlines_and_colons(const unsigned char *text, int64_t size, int64_t *newlines,
                                              int64_t *colons) {
        int64_t lines = 0, pairs = 0;
        for (int64_t start = 0; start < size; start += 255) {
            int64_t block = size - start < 255 ? size - start : 255;
            unsigned char block_lines = 0, block_pairs = 0;
            for (int64_t i = 0; i < block; i++) {
                block_lines += text[start + i] == 10;
                block_pairs += text[start + i] == 58;
            }
            lines += block_lines;
            pairs += block_pairs;
        }
        *newlines = lines;
        *colons = pairs;
    }
    /* *index = *index * 10 + digit; 0 if that overflows a uint64 */
    static inline int hps_append_digit(uint64_t *index, unsigned digit) {
        return !__builtin_mul_overflow(*index, 10u, index) && !__builtin_add_overflow(*index, digit, index);
    }
    static const uint64_t hps_pow10_int[9] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};
    /* The ASCII digits at p, which end before stop: *value = *value * 10**count + their integer (modulo 2**64);
       returns where they end. Eight bytes at a time where eight are left (SWAR, as in simdjson: the digits
       are counted by a mask, converted by three multiplies), then byte by byte. */
    static inline const unsigned char *hps_read_digits(const unsigned char *p, const unsigned char *stop,
                                                       uint64_t *value) {
        uint64_t v = *value;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        while (stop - p >= 8) {
            uint64_t word, not_digit, digits;
            int count;
            memcpy(&word, p, 8);
            /* a byte is a digit if its high nibble is 3, and still 3 after adding 6 */
            not_digit = ((word & 0xF0F0F0F0F0F0F0F0ULL) ^ 0x3030303030303030ULL)
                        | (((word + 0x0606060606060606ULL) & 0xF0F0F0F0F0F0F0F0ULL) ^ 0x3030303030303030ULL);
            count = not_digit ? __builtin_ctzll(not_digit) >> 3 : 8;
            if (count) {
                /* the count digits, first one most significant, moved up to the top bytes (zeros below) */
                digits = (word - 0x3030303030303030ULL) << (8 * (8 - count));
                digits = digits * 10 + (digits >> 8);
                digits = (((digits & 0x000000FF000000FFULL) * 0x000F424000000064ULL)
                          + (((digits >> 16) & 0x000000FF000000FFULL) * 0x0000271000000001ULL)) >> 32;
                v = v * hps_pow10_int[count] + digits;
            }
            p += count;
            if (count < 8) {
                *value = v;
                return p;
            }
        }
    #endif
        while ((unsigned char)(*p - '0') < 10) {
            v = v * 10 + (unsigned)(*p - '0');
            p++;
        }
        *value = v;
        return p;
    }
    """
    const double *_EXACT_POW10 "hps_exact_pow10"
    const uint64_t _EXACT_MANTISSA "HPS_EXACT_MANTISSA"
    const int64_t _EXPONENT_CAP "HPS_EXPONENT_CAP"
    const double _FLOAT32_MAX "HPS_FLOAT32_MAX"
    const uint64_t _MAX_INDEX "HPS_MAX_INDEX"
    bint _append_digit "hps_append_digit"(uint64_t *index, unsigned digit) nogil
    const unsigned char *_read_digits "hps_read_digits"(const unsigned char *p, const unsigned char *stop,
                                                        uint64_t *value) nogil
    void _count_newlines_and_colons "hps_count_newlines_and_colons"(const unsigned char *text, int64_t size,
                                                                   int64_t *newlines, int64_t *colons) nogil


cdef inline bint _is_digit(unsigned char c) noexcept nogil:
    """An ASCII digit (what ``bytes.isdigit()`` takes)."""
    return <unsigned char> (c - 48) < 10


cdef inline bint _is_space(unsigned char c) noexcept nogil:
    """What ``bytes.split()`` splits on: space, ``\\t \\n \\v \\f \\r``."""
    return c == 32 or <unsigned char> (c - 9) < 5


cdef inline bint _is_blank(unsigned char c) noexcept nogil:
    """A separator inside a line (a space byte other than the newline)."""
    return c == 32 or (<unsigned char> (c - 9) < 5 and c != 10)


cdef inline bint _ends_word(unsigned char c) noexcept nogil:
    """Whether a word ends at the byte ``c``: a space byte or the start of a comment."""
    return _is_space(c) or c == 35


cdef inline const unsigned char *_index(const unsigned char *start, const unsigned char *stop,
                                        uint64_t *out) noexcept nogil:
    """The digit string at ``start`` as an integer, into ``out``.

    Returns:
        Where the digits end, or NULL if there is none or they spell more than a uint64 holds.
    """
    cdef const unsigned char *p = start
    cdef const unsigned char *end
    cdef uint64_t value = 0
    while p[0] == 48:  # leading zeros
        p += 1
    end = _read_digits(p, stop, &value)
    if end - p > 19:  # 19 digits always fit; 20 may not: add them up again, checking
        if end - p > 20:
            return NULL
        value = 0
        while p < end:
            if not _append_digit(&value, p[0] - 48):
                return NULL
            p += 1
    if end == start:
        return NULL
    out[0] = value
    return end


cdef inline const unsigned char *_decimal(const unsigned char *start, const unsigned char *stop,
                                          double *out) noexcept nogil:
    """The decimal at ``start`` rounded as ``float()`` rounds it, into ``out``.

    Returns:
        Where the decimal ends, or NULL if ``start`` does not begin with one.
    """
    cdef const unsigned char *p = start
    cdef const unsigned char *digits_start
    cdef bint negative = p[0] == 45
    cdef uint64_t mantissa = 0  # wraps if there are more than 19 digits (then strtod converts)
    cdef int64_t digits, fraction_digits = 0, exponent = 0
    cdef bint exponent_negative
    cdef double value
    cdef char *parsed_end
    if p[0] == 43 or p[0] == 45:
        p += 1
    digits_start = p
    while _is_digit(p[0]):
        mantissa = mantissa * 10 + (p[0] - 48)
        p += 1
    digits = p - digits_start
    if p[0] == 46:
        p += 1
        digits_start = p
        p = _read_digits(p, stop, &mantissa)
        fraction_digits = p - digits_start
        digits += fraction_digits
    if digits == 0:
        return NULL
    if p[0] == 101 or p[0] == 69:
        p += 1
        exponent_negative = p[0] == 45
        if p[0] == 43 or p[0] == 45:
            p += 1
        if not _is_digit(p[0]):
            return NULL
        while _is_digit(p[0]):
            if exponent < _EXPONENT_CAP:
                exponent = exponent * 10 + (p[0] - 48)
            p += 1
        if exponent_negative:
            exponent = -exponent
    exponent -= fraction_digits
    if digits > 19 or mantissa > _EXACT_MANTISSA or not -22 <= exponent <= 22:
        if mantissa == 0 and digits <= 19:  # zero whatever the exponent
            value = 0.0
        else:
            value = strtod(<const char *> start, &parsed_end)  # the sign included
            if <const unsigned char *> parsed_end != p:  # e.g. a locale whose decimal point is not "."
                return NULL
            out[0] = value
            return p
    else:  # one of the two powers is 10**0: a single correctly rounded operation, and no branch
        value = <double> mantissa * _EXACT_POW10[exponent if exponent > 0 else 0] / _EXACT_POW10[
            -exponent if exponent < 0 else 0]
    out[0] = -value if negative else value
    return p


cdef int64_t _parse(const unsigned char *text, int64_t size, float *labels, int64_t *counts, uint64_t *keys,
                    float *values, int64_t *nonzeros) noexcept nogil:
    """Parse ``text[:size]`` into the arrays (room for a row per newline, a nonzero per colon).

    ``text[size - 1]`` must be a newline: every scan stops at one, so none reads past the text.

    Returns:
        The number of rows (their nonzeros in ``nonzeros``), or -1 if a line is not one this parser takes.
    """
    cdef const unsigned char *p = text
    cdef const unsigned char *stop = text + size
    cdef const unsigned char *end
    cdef int64_t rows = 0, nnz = 0, row_start
    cdef double number
    cdef uint64_t index
    while p < stop:
        while _is_blank(p[0]):
            p += 1
        if p[0] == 10:
            p += 1
            continue
        if p[0] == 35:  # a comment: skip past the newline
            p = <const unsigned char *> memchr(p, 10, stop - p) + 1
            continue
        end = _decimal(p, stop, &number)
        if end == NULL or not _ends_word(end[0]):
            return -1
        if number == 1.0:
            labels[rows] = 1.0
        elif number == 0.0 or number == -1.0:
            labels[rows] = 0.0
        else:
            return -1
        p = end
        row_start = nnz
        while True:
            while _is_blank(p[0]):
                p += 1
            if p[0] == 10 or p[0] == 35:
                break
            if p[0] == 113 and p[1] == 105 and p[2] == 100 and p[3] == 58:  # "qid:...": skipped whole
                p += 4
                while not _ends_word(p[0]):
                    p += 1
                continue
            end = _index(p, stop, &index)
            if end == NULL or end[0] != 58 or index > _MAX_INDEX:
                return -1
            p = _decimal(end + 1, stop, &number)
            if p == NULL or not _ends_word(p[0]) or not fabs(number) <= _FLOAT32_MAX:
                return -1
            keys[nnz] = index
            values[nnz] = <float> number
            nnz += 1
        counts[rows] = nnz - row_start
        rows += 1
    nonzeros[0] = nnz
    return rows


def parse_chunk(const unsigned char[::1] text):
    """Parse whole libsvm lines; ``None`` if any line is not one this parser takes exactly as the reference does.

    Args:
        text: whole lines (bytes or a contiguous byte buffer); ``None`` unless the last byte is a newline, the
            byte that stops every scan inside the buffer.

    Returns:
        ``(labels, counts, keys, values)``: float32 0/1 per row, int64 nonzeros per row, uint64 keys and float32
        values per nonzero; or ``None``.
    """
    cdef int64_t size = text.shape[0], newlines = 0, colons = 0, rows = 0, nnz = 0
    if size and text[size - 1] != 10:
        return None
    cdef const unsigned char *data = &text[0] if size else NULL
    if size:
        with nogil:
            _count_newlines_and_colons(data, size, &newlines, &colons)
    cdef cnp.ndarray labels = np.empty(newlines, np.float32)
    cdef cnp.ndarray counts = np.empty(newlines, np.int64)
    cdef cnp.ndarray keys = np.empty(colons, np.uint64)
    cdef cnp.ndarray values = np.empty(colons, np.float32)
    cdef float *label_data = <float *> cnp.PyArray_DATA(labels)
    cdef int64_t *count_data = <int64_t *> cnp.PyArray_DATA(counts)
    cdef uint64_t *key_data = <uint64_t *> cnp.PyArray_DATA(keys)
    cdef float *value_data = <float *> cnp.PyArray_DATA(values)
    if size:
        with nogil:
            rows = _parse(data, size, label_data, count_data, key_data, value_data, &nnz)
    if rows < 0:
        return None
    return labels[:rows], counts[:rows], keys[:nnz], values[:nnz]
