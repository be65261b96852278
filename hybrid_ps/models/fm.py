"""Factorization machine (Rendle, ICDM 2010): a weight and a ``k``-dim embedding per feature key.

``margin = bias + sum_i w_i x_i + 0.5 * sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]`` over a
row's features. A key's PS row is ``[w_i, v_i1 .. v_ik]``; the bias is column 0 of ``BIAS_KEY``'s
row (its other columns are unused and get zero gradient).

A key repeated inside a row means one feature whose values add up (see ``Batch``), as for
logistic regression: the row scores exactly as the merged row. The sums over ``i`` run over
nonzeros; only the self term ``v_if^2 x_i^2`` needs the merged value ``X_i`` and becomes, per
nonzero, ``v_if^2 x_n X_i`` (``prepare`` works ``X`` out once per batch, and only when a key repeats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.batch import Batch
from ..errors import ConfigError
from .base import BIAS_KEY, Model, PreparedBatch, hashed_uniform, logistic_loss

__all__ = ["FactorizationMachine", "FactorizedBatch", "merged_values"]

_EMBEDDING_SALT = 0x2545F4914F6CDD1D
"""Salt of ``hashed_uniform`` for the embeddings' starting point (fixed: checkpoints depend on it)."""


@dataclass(frozen=True)
class FactorizedBatch(PreparedBatch):
    """A ``PreparedBatch`` that also knows each nonzero's merged value.

    Attributes:
        merged: float64 ``[nnz]``, the summed value of each nonzero's key within its row, or ``None``
            when no key repeats inside a row (then it is just ``batch.values``).
    """

    merged: np.ndarray | None


def merged_values(prepared: PreparedBatch) -> np.ndarray | None:
    """Per nonzero, the sum of the values its key has in its row; ``None`` if no key repeats in a row."""
    if prepared.inverse.size < 2:
        return None
    pair = prepared.row_ids.astype(np.int64) * np.int64(prepared.keys.size) + prepared.inverse
    unique, group = np.unique(pair, return_inverse=True)
    if unique.size == pair.size:
        return None
    group = group.reshape(-1)
    values = prepared.batch.values.astype(np.float64)
    return np.bincount(group, weights=values, minlength=unique.size)[group]


class FactorizationMachine(Model):
    """Second-order factorization machine over sparse rows, vectorised over a CSR batch.

    Args:
        embedding_dim: ``k``, the size of a feature's embedding (the PS row is ``1 + k`` wide).
        init_scale: embeddings start uniform in ``[-init_scale, init_scale)``, a fixed function of
            (key, column); weights and the bias start at zero.

    Raises:
        ConfigError: ``embedding_dim < 1`` or ``init_scale`` negative or not finite.
    """

    kind = "factorization_machine"

    def __init__(self, embedding_dim: int = 8, init_scale: float = 0.01) -> None:
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, (int, np.integer)) or embedding_dim < 1:
            raise ConfigError(f"model.embedding_dim must be an integer >= 1, got {embedding_dim!r}")
        number = isinstance(init_scale, (int, float, np.number)) and not isinstance(init_scale, bool)
        if not (number and math.isfinite(init_scale) and init_scale >= 0):
            raise ConfigError(f"model.init_scale must be a finite number >= 0, got {init_scale!r}")
        self.embedding_dim = int(embedding_dim)
        self.init_scale = float(init_scale)
        self.width = 1 + self.embedding_dim

    def __repr__(self) -> str:
        return f"FactorizationMachine(embedding_dim={self.embedding_dim}, init_scale={self.init_scale})"

    def prepare(self, batch: Batch) -> FactorizedBatch:
        """``Model.prepare`` plus the merged value of repeated keys (see ``FactorizedBatch``)."""
        plain = super().prepare(batch)
        return FactorizedBatch(plain.batch, plain.keys, plain.inverse, plain.row_ids, merged_values(plain))

    def initial_values(self, keys: np.ndarray) -> np.ndarray | None:
        """Column 0 zero, columns ``1..k`` ``init_scale * hashed_uniform`` (zero for the bias row); ``None`` if 0."""
        if self.init_scale == 0.0:
            return None
        keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
        start = np.zeros((keys.size, self.width), dtype=np.float64)
        start[:, 1:] = hashed_uniform(keys, self.embedding_dim, _EMBEDDING_SALT)
        start[:, 1:] *= self.init_scale
        start[keys == BIAS_KEY] = 0.0
        return start

    def _forward(self, prepared: PreparedBatch, keys: np.ndarray,
                 params: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Margins ``[rows]``, each nonzero's position in ``keys``, ``v_i X_i`` ``[nnz, k]``, ``S`` ``[rows, k]``.

        ``X_i`` is the nonzero's merged value (its own value unless its key repeats in the row).
        """
        rows = prepared.batch
        k = self.embedding_dim
        position = prepared.positions_in(keys)
        x = rows.values.astype(np.float64)
        gathered = params[position]  # [nnz, 1 + k]
        # Per nonzero: [w_i x_n, v_i1 x_n .. v_ik x_n, sum_f v_if^2 x_n X_i], then one segmented sum per row.
        terms = np.empty((x.size, k + 2), dtype=np.float64)
        np.multiply(gathered, x[:, None], out=terms[:, : k + 1])
        vx = terms[:, 1 : k + 1]
        merged = _merged(prepared)
        if merged is None:  # X_i = x_n
            np.einsum("nf,nf->n", vx, vx, out=terms[:, k + 1])
        else:  # summed over a key's nonzeros in a row: v^2 X^2
            np.einsum("nf,nf->n", vx, gathered[:, 1:], out=terms[:, k + 1])
            terms[:, k + 1] *= merged
        per_row = np.zeros((rows.num_rows, k + 2), dtype=np.float64)
        starts = rows.indptr[:-1] - rows.indptr[0]
        nonempty = np.flatnonzero(rows.indptr[1:] > rows.indptr[:-1])
        if nonempty.size:  # rows are contiguous: a segment runs from one non-empty row's start to the next
            per_row[nonempty] = np.add.reduceat(terms, starts[nonempty], axis=0)
        sums = per_row[:, 1 : k + 1]
        margin = per_row[:, 0] + 0.5 * (np.einsum("rf,rf->r", sums, sums) - per_row[:, k + 1])
        if keys.size and keys[-1] == BIAS_KEY:
            margin += params[-1, 0]
        self_term = vx if merged is None else gathered[:, 1:] * merged[:, None]
        return margin, position, self_term, sums

    def margins(self, batch: Batch | PreparedBatch, keys: np.ndarray, stored: np.ndarray) -> np.ndarray:
        """Per-row margins of ``batch`` given the PS rows ``stored`` for ``keys`` (float64 ``[rows]``)."""
        prepared = self.prepared(batch)
        return self._forward(prepared, keys, self.parameters(keys, stored))[0]

    def loss_and_gradient(self, batch: Batch | PreparedBatch, keys: np.ndarray,
                          stored: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        prepared = self.prepared(batch)
        rows = prepared.batch
        params = self.parameters(keys, stored)
        margin, position, self_term, sums = self._forward(prepared, keys, params)
        loss, residual, probability = logistic_loss(margin, rows.labels)
        # Per nonzero n of key i: d margin / d w_i += x_n; d margin / d v_if += x_n (S_f - v_if X_i).
        scale = residual[prepared.row_ids] * rows.values.astype(np.float64)  # r * x_i, [nnz]
        per_nonzero = np.empty((scale.size, self.width), dtype=np.float64)
        per_nonzero[:, 0] = scale
        np.subtract(sums[prepared.row_ids], self_term, out=per_nonzero[:, 1:])
        per_nonzero[:, 1:] *= scale[:, None]
        # Scatter-add all columns at once: flat index position * width + column.
        flat = (position.astype(np.int64)[:, None] * self.width + np.arange(self.width, dtype=np.int64)).reshape(-1)
        grad = np.bincount(flat, weights=per_nonzero.reshape(-1), minlength=keys.size * self.width)
        grad = grad.astype(np.float64, copy=False).reshape(keys.size, self.width)
        if keys.size and keys[-1] == BIAS_KEY:
            grad[-1, 0] += residual.sum()
        return loss, grad, probability

    def attrs(self) -> dict[str, Any]:
        return {"embedding_dim": self.embedding_dim, "init_scale": self.init_scale}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> FactorizationMachine:
        """The model with ``attrs``' ``embedding_dim`` and ``init_scale`` (defaults if absent; others ignored)."""
        return cls(embedding_dim=attrs.get("embedding_dim", 8), init_scale=attrs.get("init_scale", 0.01))


def _merged(prepared: PreparedBatch) -> np.ndarray | None:
    """The merged values of ``prepared`` (worked out now if ``prepared`` came from another model)."""
    return prepared.merged if isinstance(prepared, FactorizedBatch) else merged_values(prepared)
