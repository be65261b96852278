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
from . import _kernels
from .base import BIAS_KEY, Model, PreparedBatch
from .kernel_inputs import bias_index, csr_arrays, float_rows

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
    rows = prepared.batch
    return _kernels.merged_values(np.ascontiguousarray(rows.indptr, dtype=np.int64), prepared.inverse,
                                  np.ascontiguousarray(rows.values, dtype=np.float32), prepared.keys.size)


class FactorizationMachine(Model):
    """Second-order factorization machine over sparse rows, one compiled pass per row (float64 arithmetic).

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
        return FactorizedBatch(plain.batch, plain.keys, plain.inverse, merged_values(plain))

    def initial_values(self, keys: np.ndarray) -> np.ndarray | None:
        """Column 0 zero, columns ``1..k`` ``init_scale * hashed_uniform`` (zero for the bias row); ``None`` if 0."""
        if self.init_scale == 0.0:
            return None
        keys = np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1)
        start = np.empty((keys.size, self.width), dtype=np.float64)
        start[:, 0] = 0.0
        _kernels.fill_hashed_uniform(keys, _EMBEDDING_SALT, self.init_scale, start[:, 1:])
        start[keys == BIAS_KEY] = 0.0
        return start

    def margins(self, batch: Batch | PreparedBatch, keys: np.ndarray, stored: np.ndarray) -> np.ndarray:
        """Per-row margins of ``batch`` given the PS rows ``stored`` for ``keys`` (float64 ``[rows]``)."""
        prepared = self.prepared(batch)
        csr = csr_arrays(prepared, keys)
        margin = np.empty(prepared.batch.num_rows)
        _kernels.fm_margins(csr.indptr, csr.positions, csr.values, float_rows(stored, (keys.size, self.width)),
                            initial=self.initial_values(keys), merged=_merged(prepared),
                            bias_index=bias_index(keys), margins_out=margin)
        return margin

    def loss_and_gradient(self, batch: Batch | PreparedBatch, keys: np.ndarray,
                          stored: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        prepared = self.prepared(batch)
        csr = csr_arrays(prepared, keys)
        grad = np.zeros((keys.size, self.width))
        probability = np.empty(prepared.batch.num_rows)
        loss = _kernels.fm_loss_and_gradient(
            csr.indptr, csr.positions, csr.values, csr.labels, float_rows(stored, (keys.size, self.width)),
            initial=self.initial_values(keys), merged=_merged(prepared), bias_index=bias_index(keys),
            grad_out=grad, probabilities_out=probability)
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
