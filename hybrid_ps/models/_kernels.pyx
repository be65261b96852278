"""The models' compiled row loops: forward and backward passes over a CSR batch, one row at a time.

Inputs. A batch is ``indptr`` (int64 ``[rows + 1]``) and, per nonzero, its key's
``positions`` (int32 or int64 index into the key set) and ``values`` (float32);
``labels`` are float32. A key's parameters are a row of ``width`` values
(``stored``: float32 as pulled from the PS, or float64) plus, optionally, a float64
offset of the same shape (``initial``: the model's starting point, see
``Model.initial_values``). ``bias_index`` is the row whose column 0 is the bias,
or -1 for none.

Arithmetic. Everything is computed in double. A row's pass gathers its
parameters once (``stored + initial``), forms the margin, the logloss
``log(1 + exp(m)) - y m`` and ``p = sigmoid(m)`` (one ``exp`` and one ``log1p``,
stable for any finite margin), and adds ``(p - y) * d margin / d params`` into
``grad_out``, which the caller zeroes (keys no row touches keep their zeros). The
parameters of the nonzero ``_AHEAD`` places on are prefetched, so the random
reads of the key rows overlap.

Factorization machine. ``margin = bias + sum_n w_n x_n + 0.5 * sum_f (S_f^2 - Q_f)``
with ``S_f = sum_n v_nf x_n`` and the self term ``Q_f = sum_n v_nf^2 x_n X_n``, ``X_n``
the summed value of nonzero ``n``'s key within its row (``merged``; ``x_n`` when
no key repeats in a row), so a row with a repeated key scores as the merged row.
Wide & deep's embedding part is the same pass without the pairwise term
(``pool_rows``) and its transpose (``scatter_rows``).

Checks. Shapes are checked before the loop; a position outside the key set or an
``indptr`` that is not a non-decreasing cover of the nonzeros raises ``ValueError``
(the outputs are then partly written).
"""

from libc.math cimport exp, fabs, log1p
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import numpy as np

cimport numpy as cnp

from hybrid_ps.tables._native cimport hps_mix64, hps_prefetch_read, hps_prefetch_write

cnp.import_array()

__all__ = ["logistic_loss_and_gradient", "logistic_margins", "fm_loss_and_gradient", "fm_margins", "pool_rows",
           "scatter_rows", "merged_values", "fill_hashed_uniform"]

ctypedef fused index_t:
    int32_t
    int64_t

ctypedef fused real_t:
    float
    double

cdef extern from *:
    """
    #include <string.h>
    /* Loops over a key row's columns. restrict rules out aliasing, so gcc vectorises them; where a sum runs over
       nonzeros, each column keeps its own (no reassociation). hps_pair: two doubles in one SSE2 register (gcc's
       vector extension: lane by lane the same IEEE operations as scalar code). */
    typedef double hps_pair __attribute__((vector_size(16)));
    static inline hps_pair hps_load(const double *p) { hps_pair v; memcpy(&v, p, sizeof v); return v; }
    static inline void hps_store(double *p, hps_pair v) { memcpy(p, &v, sizeof v); }

    /* out[c] = row[c] (+ offset[c]) in double, for c < width */
    static inline void hps_gather_float(Py_ssize_t width, const float *restrict row, const double *restrict offset,
                                        double *restrict out) {
        if (offset == NULL) for (Py_ssize_t c = 0; c < width; c++) out[c] = row[c];
        else for (Py_ssize_t c = 0; c < width; c++) out[c] = (double)row[c] + offset[c];
    }
    static inline void hps_gather_double(Py_ssize_t width, const double *restrict row,
                                         const double *restrict offset, double *restrict out) {
        if (offset == NULL) for (Py_ssize_t c = 0; c < width; c++) out[c] = row[c];
        else for (Py_ssize_t c = 0; c < width; c++) out[c] = row[c] + offset[c];
    }

    /* Over a row's count nonzeros (parameters gathered [count][1 + k], w first; values x; merged X, or NULL for
       X = x): sums[f] = sum_n v_nf x_n and squares[f] = sum_n (v_nf x_n)(v_nf X_n), in nonzero order, four
       columns at a time so that the sums stay in registers. */
    static void hps_fm_sums(Py_ssize_t count, Py_ssize_t k, const double *restrict gathered,
                            const float *restrict x, const double *restrict merged, double *restrict sums,
                            double *restrict squares) {
        const Py_ssize_t width = k + 1;
        Py_ssize_t f = 0;
        for (; f + 4 <= k; f += 4) {
            hps_pair s0 = {0.0, 0.0}, s1 = s0, q0 = s0, q1 = s0;
            for (Py_ssize_t n = 0; n < count; n++) {
                const double *v = gathered + n * width + 1 + f;
                const double value = x[n], big = merged == NULL ? value : merged[n];
                const hps_pair v0 = hps_load(v), v1 = hps_load(v + 2);
                const hps_pair vx0 = v0 * value, vx1 = v1 * value;
                s0 += vx0;
                s1 += vx1;
                q0 += vx0 * (v0 * big);
                q1 += vx1 * (v1 * big);
            }
            hps_store(sums + f, s0);
            hps_store(sums + f + 2, s1);
            hps_store(squares + f, q0);
            hps_store(squares + f + 2, q1);
        }
        for (; f < k; f++) {
            double s = 0.0, q = 0.0;
            for (Py_ssize_t n = 0; n < count; n++) {
                const double value = x[n], big = merged == NULL ? value : merged[n];
                const double v = gathered[n * width + 1 + f], vx = v * value;
                s += vx;
                q += vx * (v * big);
            }
            sums[f] = s;
            squares[f] = q;
        }
    }

    /* grad[f] += scaled * (sums[f] - v[f] * big) for f < k, four columns at a time */
    static inline void hps_fm_scatter(Py_ssize_t k, double scaled, double big, const double *restrict v,
                                      const double *restrict sums, double *restrict grad) {
        Py_ssize_t f = 0;
        for (; f + 4 <= k; f += 4) {
            hps_store(grad + f, hps_load(grad + f) + scaled * (hps_load(sums + f) - hps_load(v + f) * big));
            hps_store(grad + f + 2,
                      hps_load(grad + f + 2) + scaled * (hps_load(sums + f + 2) - hps_load(v + f + 2) * big));
        }
        for (; f < k; f++) grad[f] += scaled * (sums[f] - v[f] * big);
    }

    /* y[f] += a * x[f] for f < k */
    static inline void hps_axpy(Py_ssize_t k, double a, const double *restrict x, double *restrict y) {
        for (Py_ssize_t f = 0; f < k; f++) y[f] += a * x[f];
    }
    """
    void hps_gather_float(Py_ssize_t width, const float *row, const double *offset, double *out) nogil
    void hps_gather_double(Py_ssize_t width, const double *row, const double *offset, double *out) nogil
    void hps_fm_sums(Py_ssize_t count, Py_ssize_t k, const double *gathered, const float *x, const double *merged,
                     double *sums, double *squares) nogil
    void hps_fm_scatter(Py_ssize_t k, double scaled, double big, const double *v, const double *sums,
                        double *grad) nogil
    void hps_axpy(Py_ssize_t k, double a, const double *x, double *y) nogil


DEF _AHEAD = 16  # nonzeros between the prefetch of a key's parameters and their use
DEF _UNIT = 2.0 / 9007199254740992.0  # 2 / 2**53: 53 random bits onto [0, 2)

cdef enum Failure:
    BAD_POSITION = -1
    BAD_INDPTR = -2


cdef struct Csr:
    const int64_t *indptr   # rows + 1 offsets; nonzero n of the batch is at n - indptr[0]
    const float *values
    const double *merged    # NULL: no key repeats inside a row (X_n = x_n)
    Py_ssize_t rows
    Py_ssize_t nnz
    Py_ssize_t keys         # size of the key set the positions index


cdef struct Rows:
    const double *initial   # NULL: no offset
    Py_ssize_t width
    Py_ssize_t bias         # -1: no bias


# -- one row ------------------------------------------------------------------------------------------------------


cdef inline int _span(const Csr *csr, Py_ssize_t row, Py_ssize_t *start, Py_ssize_t *stop) noexcept nogil:
    """Row ``row``'s nonzeros ``[start, stop)``; BAD_INDPTR if they do not lie in ``[0, nnz)`` in order."""
    start[0] = csr.indptr[row] - csr.indptr[0]
    stop[0] = csr.indptr[row + 1] - csr.indptr[0]
    if start[0] > stop[0] or stop[0] > csr.nnz:
        return BAD_INDPTR
    return 0


cdef inline double _logloss(double margin, double label, double *probability) noexcept nogil:
    """``log(1 + exp(margin)) - label * margin``, and ``sigmoid(margin)`` into ``probability``, stably."""
    cdef double e = exp(-fabs(margin))  # in (0, 1]: nothing overflows
    if margin > 0:
        probability[0] = 1.0 / (1.0 + e)
        return margin + log1p(e) - label * margin
    probability[0] = e / (1.0 + e)
    return log1p(e) - label * margin


cdef inline double _bias_weight(const real_t *stored, const Rows *rows) noexcept nogil:
    if rows.bias < 0:
        return 0.0
    cdef Py_ssize_t at = rows.bias * rows.width
    if rows.initial == NULL:
        return stored[at]
    return <double> stored[at] + rows.initial[at]


cdef inline void _prefetch_parameters(const real_t *stored, const Rows *rows, Py_ssize_t key) noexcept nogil:
    """Start loading ``key``'s stored row and offset (a prefetch never faults, even for a bad ``key``)."""
    cdef Py_ssize_t at = key * rows.width
    hps_prefetch_read(stored + at)
    hps_prefetch_read(stored + at + rows.width - 1)
    if rows.initial != NULL:
        hps_prefetch_read(rows.initial + at)
        hps_prefetch_read(rows.initial + at + rows.width - 1)


cdef inline int _gather_row(const Csr *csr, const index_t *positions, const real_t *stored, const Rows *rows,
                            Py_ssize_t start, Py_ssize_t stop, double *gathered, double *grad,
                            double *linear) noexcept nogil:
    """The parameters (``stored + initial``) of nonzeros ``[start, stop)`` into ``gathered`` (``width`` each) and
    ``sum w x`` into ``linear``; prefetches further parameters and, unless ``grad`` is NULL, the gradient rows."""
    cdef Py_ssize_t n, width = rows.width
    cdef uint64_t position
    cdef double total = 0.0
    cdef double *v
    cdef const double *offset
    for n in range(start, stop):
        if n + _AHEAD < csr.nnz:
            _prefetch_parameters(stored, rows, positions[n + _AHEAD])
        position = <uint64_t> positions[n]
        if position >= <uint64_t> csr.keys:
            return BAD_POSITION
        if grad != NULL:  # written once the row's residual is known
            hps_prefetch_write(grad + position * width)
            hps_prefetch_write(grad + position * width + width - 1)
        v = gathered + (n - start) * width
        offset = rows.initial
        if offset != NULL:
            offset += position * width
        if real_t is float:
            hps_gather_float(width, stored + position * width, offset, v)
        else:
            hps_gather_double(width, stored + position * width, offset, v)
        total += v[0] * csr.values[n]
    linear[0] = total
    return 0


# -- checks (before any loop) -------------------------------------------------------------------------------------


cdef Csr _csr(const int64_t[::1] indptr, Py_ssize_t positions, const float[::1] values, Py_ssize_t rows,
              Py_ssize_t keys) except *:
    """The batch as the loops read it, after checking that its arrays agree."""
    if indptr.shape[0] != rows + 1:
        raise ValueError(f"indptr has {indptr.shape[0]} offsets for {rows} rows")
    if positions != values.shape[0]:
        raise ValueError(f"{positions} positions for {values.shape[0]} values")
    if indptr[rows] - indptr[0] != positions:
        raise ValueError(f"indptr spans {indptr[rows] - indptr[0]} nonzeros, the batch has {positions}")
    cdef Csr csr
    csr.indptr = &indptr[0]
    csr.values = &values[0]  # never read when there are no nonzeros
    csr.merged = NULL
    csr.rows, csr.nnz, csr.keys = rows, positions, keys
    return csr


cdef Rows _rows(Py_ssize_t keys, Py_ssize_t width, const double[:, ::1] initial, Py_ssize_t bias_index) except *:
    """The key rows as the loops read them, after checking ``initial``'s shape and ``bias_index``."""
    if width < 1:
        raise ValueError("key rows of width 0")
    if initial is not None and (initial.shape[0] != keys or initial.shape[1] != width):
        raise ValueError(f"initial of shape {initial.shape[0]}x{initial.shape[1]} for {keys}x{width} rows")
    if not -1 <= bias_index < keys:
        raise ValueError(f"bias_index {bias_index} outside [-1, {keys})")
    cdef Rows rows
    rows.initial = NULL
    if initial is not None:
        rows.initial = &initial[0, 0]
    rows.width, rows.bias = width, bias_index
    return rows


cdef int _check_shape(str name, Py_ssize_t rows, Py_ssize_t columns, Py_ssize_t want_rows,
                      Py_ssize_t want_columns) except -1:
    if rows != want_rows or columns != want_columns:
        raise ValueError(f"{name} of shape {rows}x{columns}, {want_rows}x{want_columns} expected")
    return 0


cdef int _raise(int failure) except -1:
    if failure == BAD_POSITION:
        raise ValueError("a nonzero's position lies outside the key set")
    if failure == BAD_INDPTR:
        raise ValueError("indptr is not a non-decreasing cover of the nonzeros")
    return 0


cdef double *_scratch(const int64_t[::1] indptr, Py_ssize_t width, Py_ssize_t extra) except NULL:
    """Room for ``extra`` doubles, then for the longest row's parameters (``width`` each); ``free`` it."""
    cdef Py_ssize_t row, longest = 0
    for row in range(indptr.shape[0] - 1):
        longest = max(longest, indptr[row + 1] - indptr[row])
    cdef double *scratch = <double *> malloc((extra + width * longest + 1) * sizeof(double))
    if scratch == NULL:
        raise MemoryError()
    return scratch


# -- logistic regression --------------------------------------------------------------------------------------------


cdef int _logistic(const Csr *csr, const index_t *positions, const float *labels, const real_t *weights,
                   Py_ssize_t bias, double *grad, double *out, double *loss) noexcept nogil:
    """The LR pass: margins into ``out`` (``grad`` NULL), or probabilities, ``grad`` and ``loss``."""
    cdef const float *values = csr.values  # locals: the stores into grad cannot move them
    cdef uint64_t keys = csr.keys
    cdef Py_ssize_t row, n, start, stop
    cdef double margin, residual, probability, bias_weight = 0.0, bias_grad = 0.0, total = 0.0
    if bias >= 0:
        bias_weight = weights[bias]
    for row in range(csr.rows):
        if _span(csr, row, &start, &stop):
            return BAD_INDPTR
        margin = 0.0
        for n in range(start, stop):
            if <uint64_t> positions[n] >= keys:
                return BAD_POSITION
            margin += <double> weights[positions[n]] * values[n]
        margin += bias_weight
        if grad == NULL:
            out[row] = margin
            continue
        total += _logloss(margin, labels[row], &probability)
        out[row] = probability
        residual = probability - labels[row]
        for n in range(start, stop):
            grad[positions[n]] += residual * values[n]
        bias_grad += residual
    if grad != NULL:
        if bias >= 0:
            grad[bias] += bias_grad
        loss[0] = total
    return 0


def logistic_loss_and_gradient(const int64_t[::1] indptr not None, const index_t[::1] positions not None,
                               const float[::1] values not None, const float[::1] labels not None,
                               const real_t[::1] weights not None, *, Py_ssize_t bias_index,
                               double[::1] grad_out not None, double[::1] probabilities_out not None):
    """Logistic regression's summed logloss; its gradient (added to ``grad_out``) and the probabilities.

    Args:
        weights: one per key (``[keys]``); ``bias_index``: the bias's, or -1.
        grad_out: float64 ``[keys]``, zeroed by the caller.
        probabilities_out: float64 ``[rows]``.
    """
    cdef Py_ssize_t keys = weights.shape[0]
    cdef Csr csr = _csr(indptr, positions.shape[0], values, labels.shape[0], keys)
    _rows(keys, 1, None, bias_index)
    _check_shape("grad_out", grad_out.shape[0], 1, keys, 1)
    _check_shape("probabilities_out", probabilities_out.shape[0], 1, csr.rows, 1)
    cdef double loss = 0.0
    cdef int failure
    with nogil:
        failure = _logistic(&csr, &positions[0], &labels[0], &weights[0], bias_index, &grad_out[0],
                            &probabilities_out[0], &loss)
    _raise(failure)
    return loss


def logistic_margins(const int64_t[::1] indptr not None, const index_t[::1] positions not None,
                     const float[::1] values not None, const real_t[::1] weights not None, *, Py_ssize_t bias_index,
                     double[::1] margins_out not None):
    """Logistic regression's margin of every row into ``margins_out`` (float64 ``[rows]``)."""
    cdef Csr csr = _csr(indptr, positions.shape[0], values, margins_out.shape[0], weights.shape[0])
    _rows(weights.shape[0], 1, None, bias_index)
    cdef int failure
    with nogil:
        failure = _logistic(&csr, &positions[0], NULL, &weights[0], bias_index, NULL, &margins_out[0], NULL)
    _raise(failure)


# -- factorization machine ------------------------------------------------------------------------------------------


cdef int _fm(const Csr *csr, const index_t *positions, const float *labels, const real_t *stored, const Rows *rows,
             double *grad, double *out, double *loss, double *scratch) noexcept nogil:
    """The FM pass: margins into ``out`` (``grad`` NULL), or probabilities, ``grad`` and ``loss``.

    ``scratch``: ``2 * k`` doubles, then room for the longest row's parameters.
    """
    cdef Py_ssize_t width = rows.width, k = rows.width - 1, f, row, n, start, stop
    cdef double *sums = scratch                 # S_f
    cdef double *squares = scratch + k          # Q_f
    cdef double *gathered = scratch + 2 * k     # the row's parameters, nonzero by nonzero
    cdef const float *values = csr.values  # locals: the stores into grad cannot move them
    cdef const double *row_merged          # the row's merged values, or NULL
    cdef double *v
    cdef double *g
    cdef double x, big, linear, pairs, margin, probability, residual, scaled
    cdef double bias_weight = _bias_weight(stored, rows), bias_grad = 0.0, total = 0.0
    for row in range(csr.rows):
        if _span(csr, row, &start, &stop):
            return BAD_INDPTR
        if _gather_row(csr, positions, stored, rows, start, stop, gathered, grad, &linear):
            return BAD_POSITION
        row_merged = csr.merged
        if row_merged != NULL:
            row_merged += start
        hps_fm_sums(stop - start, k, gathered, values + start, row_merged, sums, squares)
        pairs = 0.0
        for f in range(k):
            pairs += sums[f] * sums[f] - squares[f]
        margin = linear + 0.5 * pairs + bias_weight
        if grad == NULL:
            out[row] = margin
            continue
        total += _logloss(margin, labels[row], &probability)
        out[row] = probability
        residual = probability - labels[row]
        for n in range(start, stop):  # d margin / d w = x_n, d margin / d v_f = x_n (S_f - v_f X_n)
            v = gathered + (n - start) * width
            g = grad + positions[n] * width
            x = values[n]
            big = x if row_merged == NULL else row_merged[n - start]
            scaled = residual * x
            g[0] += scaled
            hps_fm_scatter(k, scaled, big, v + 1, sums, g + 1)
        bias_grad += residual
    if grad != NULL:
        if rows.bias >= 0:
            grad[rows.bias * width] += bias_grad
        loss[0] = total
    return 0


cdef double _fm_run(const int64_t[::1] indptr, const index_t[::1] positions, const float[::1] values,
                    const double[::1] merged, const float[::1] labels, const real_t[:, ::1] stored,
                    const double[:, ::1] initial, Py_ssize_t bias_index, double[:, ::1] grad_out,
                    double[::1] out) except? -1:
    """Checks, scratch and the GIL-free FM pass of both entry points (``labels``, ``grad_out`` None: margins)."""
    cdef Py_ssize_t keys = stored.shape[0], width = stored.shape[1]
    cdef Csr csr = _csr(indptr, positions.shape[0], values, out.shape[0], keys)
    cdef Rows rows = _rows(keys, width, initial, bias_index)
    if merged is not None:
        _check_shape("merged", merged.shape[0], 1, csr.nnz, 1)
        csr.merged = &merged[0]
    if grad_out is not None:
        _check_shape("grad_out", grad_out.shape[0], grad_out.shape[1], keys, width)
    cdef const float *label = NULL
    if labels is not None:
        label = &labels[0]
    cdef double *grad = NULL if grad_out is None else &grad_out[0, 0]
    cdef double *scratch = _scratch(indptr, width, 2 * (width - 1))
    cdef double loss = 0.0
    cdef int failure
    with nogil:
        failure = _fm(&csr, &positions[0], label, &stored[0, 0], &rows, grad, &out[0], &loss, scratch)
        free(scratch)
    _raise(failure)
    return loss


def fm_loss_and_gradient(const int64_t[::1] indptr not None, const index_t[::1] positions not None,
                         const float[::1] values not None, const float[::1] labels not None,
                         const real_t[:, ::1] stored not None, *, const double[:, ::1] initial,
                         const double[::1] merged, Py_ssize_t bias_index, double[:, ::1] grad_out not None,
                         double[::1] probabilities_out not None):
    """The factorization machine's summed logloss; its gradient (added to ``grad_out``) and the probabilities.

    Args:
        stored: ``[keys, 1 + k]`` rows ``[w, v_1 .. v_k]``; ``initial`` (float64, same shape) is added, or None.
        merged: float64 ``[nnz]``, each nonzero's summed value of its key within its row, or None when no
            key repeats inside a row.
        bias_index: the row whose column 0 is the bias, or -1.
        grad_out: float64 ``[keys, 1 + k]``, zeroed by the caller.
        probabilities_out: float64 ``[rows]``.
    """
    _check_shape("labels", labels.shape[0], 1, probabilities_out.shape[0], 1)
    return _fm_run(indptr, positions, values, merged, labels, stored, initial, bias_index, grad_out,
                   probabilities_out)


def fm_margins(const int64_t[::1] indptr not None, const index_t[::1] positions not None,
               const float[::1] values not None, const real_t[:, ::1] stored not None, *,
               const double[:, ::1] initial, const double[::1] merged, Py_ssize_t bias_index,
               double[::1] margins_out not None):
    """The factorization machine's margin of every row into ``margins_out`` (see ``fm_loss_and_gradient``)."""
    cdef const float[::1] no_labels = None
    cdef double[:, ::1] no_grad = None
    _fm_run(indptr, positions, values, merged, no_labels, stored, initial, bias_index, no_grad, margins_out)


# -- sum-pooled embeddings (wide & deep) ----------------------------------------------------------------------------


cdef int _pool(const Csr *csr, const index_t *positions, const real_t *stored, const Rows *rows, double *linear,
               double *pooled, double *scratch) noexcept nogil:
    """``bias + sum w x`` and ``S`` of every row (``scratch``: ``k`` doubles, then the longest row's parameters)."""
    cdef Py_ssize_t k = rows.width - 1, row, start, stop
    cdef double total, bias_weight = _bias_weight(stored, rows)
    for row in range(csr.rows):
        if _span(csr, row, &start, &stop):
            return BAD_INDPTR
        if _gather_row(csr, positions, stored, rows, start, stop, scratch + k, NULL, &total):
            return BAD_POSITION
        hps_fm_sums(stop - start, k, scratch + k, csr.values + start, NULL, pooled + row * k, scratch)
        linear[row] = total + bias_weight
    return 0


def pool_rows(const int64_t[::1] indptr not None, const index_t[::1] positions not None,
              const float[::1] values not None, const real_t[:, ::1] stored not None, *,
              const double[:, ::1] initial, Py_ssize_t bias_index, double[::1] linear_out not None,
              double[:, ::1] pooled_out not None):
    """Per row, ``bias + sum_n w_n x_n`` into ``linear_out`` and ``sum_n v_n x_n`` into ``pooled_out`` (``[rows, k]``).

    ``stored``, ``initial`` and ``bias_index`` as in ``fm_loss_and_gradient``.
    """
    cdef Py_ssize_t keys = stored.shape[0], width = stored.shape[1]
    cdef Csr csr = _csr(indptr, positions.shape[0], values, linear_out.shape[0], keys)
    cdef Rows rows = _rows(keys, width, initial, bias_index)
    _check_shape("pooled_out", pooled_out.shape[0], pooled_out.shape[1], csr.rows, width - 1)
    cdef double *scratch = _scratch(indptr, width, width - 1)
    cdef int failure
    with nogil:
        failure = _pool(&csr, &positions[0], &stored[0, 0], &rows, &linear_out[0], &pooled_out[0, 0], scratch)
        free(scratch)
    _raise(failure)


cdef int _scatter(const Csr *csr, const index_t *positions, const double *residual, const double *pooled_grad,
                  Py_ssize_t width, Py_ssize_t bias, double *grad) noexcept nogil:
    cdef Py_ssize_t k = width - 1, row, n, start, stop
    cdef uint64_t position
    cdef double x, bias_grad = 0.0
    cdef double *g
    for row in range(csr.rows):
        if _span(csr, row, &start, &stop):
            return BAD_INDPTR
        for n in range(start, stop):
            position = <uint64_t> positions[n]
            if position >= <uint64_t> csr.keys:
                return BAD_POSITION
            x = csr.values[n]
            g = grad + position * width
            g[0] += residual[row] * x
            hps_axpy(k, x, pooled_grad + row * k, g + 1)
        bias_grad += residual[row]
    if bias >= 0:
        grad[bias * width] += bias_grad
    return 0


def scatter_rows(const int64_t[::1] indptr not None, const index_t[::1] positions not None,
                 const float[::1] values not None, const double[::1] residual not None,
                 const double[:, ::1] pooled_grad not None, *, Py_ssize_t bias_index,
                 double[:, ::1] grad_out not None):
    """``pool_rows``' backward pass: ``residual[row] * x_n`` into column 0 of each nonzero's key row,
    ``pooled_grad[row] * x_n`` into its columns ``1..k``, and the summed residual into ``grad_out[bias_index, 0]``."""
    cdef Py_ssize_t keys = grad_out.shape[0], width = grad_out.shape[1]
    cdef Csr csr = _csr(indptr, positions.shape[0], values, residual.shape[0], keys)
    _rows(keys, width, None, bias_index)
    _check_shape("pooled_grad", pooled_grad.shape[0], pooled_grad.shape[1], csr.rows, width - 1)
    cdef int failure
    with nogil:
        failure = _scatter(&csr, &positions[0], &residual[0], &pooled_grad[0, 0], width, bias_index,
                           &grad_out[0, 0])
    _raise(failure)


# -- per batch and per key ------------------------------------------------------------------------------------------


def merged_values(const int64_t[::1] indptr not None, const index_t[::1] positions not None,
                  const float[::1] values not None, Py_ssize_t keys):
    """Per nonzero, the float64 sum of the values its key has in its row; None if no key repeats in a row.

    Sums run in nonzero order (as ``np.bincount``'s). ``keys``: the size of the key set.
    """
    if indptr.shape[0] < 1:
        raise ValueError("indptr is empty")
    cdef Py_ssize_t rows = indptr.shape[0] - 1
    cdef Csr csr = _csr(indptr, positions.shape[0], values, rows, keys)
    if csr.nnz < 2:
        return None
    out = np.empty(csr.nnz, dtype=np.float64)
    cdef double[::1] merged = out
    cdef int64_t *last_row = <int64_t *> malloc((keys + 1) * sizeof(int64_t))  # the last row each key was seen in
    cdef double *sums = <double *> malloc((keys + 1) * sizeof(double))
    if last_row == NULL or sums == NULL:
        free(last_row)
        free(sums)
        raise MemoryError()
    cdef int failure = 0
    cdef bint repeats = False, row_repeats
    cdef Py_ssize_t row, n, start, stop
    cdef uint64_t position
    with nogil:
        memset(last_row, 0xFF, keys * sizeof(int64_t))  # -1: no row yet
        for row in range(rows):
            failure = _span(&csr, row, &start, &stop)
            if failure:
                break
            row_repeats = False
            for n in range(start, stop):
                position = <uint64_t> positions[n]
                if position >= <uint64_t> keys:
                    failure = BAD_POSITION
                    break
                if last_row[position] == row:
                    sums[position] += csr.values[n]
                    row_repeats = True
                else:
                    last_row[position] = row
                    sums[position] = csr.values[n]
            if failure:
                break
            for n in range(start, stop):
                merged[n] = sums[positions[n]] if row_repeats else csr.values[n]
            repeats |= row_repeats
        free(last_row)
        free(sums)
    _raise(failure)
    return out if repeats else None


def fill_hashed_uniform(const uint64_t[::1] keys not None, uint64_t salt, double scale, double[:, :] out not None):
    """Set ``out[i, c]`` (``[len(keys), columns]``, any strides) to ``scale * u``, ``u`` uniform in [-1, 1) and a
    fixed function of (``keys[i]``, ``c``, ``salt``): ``u = (mix64(mix64(key ^ salt) + c) >> 11) * 2**-52 - 1``
    (uint64 arithmetic wraps)."""
    if out.shape[0] != keys.shape[0]:
        raise ValueError(f"out has {out.shape[0]} rows for {keys.shape[0]} keys")
    cdef Py_ssize_t i, c
    cdef uint64_t per_key
    with nogil:
        for i in range(keys.shape[0]):
            per_key = hps_mix64(keys[i] ^ salt)  # distinct keys stay distinct
            for c in range(out.shape[1]):  # below 2**53: exact as int64, then as double
                out[i, c] = scale * (<double> <int64_t> (hps_mix64(per_key + <uint64_t> c) >> 11) * _UNIT - 1.0)
