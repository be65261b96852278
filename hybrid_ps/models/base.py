"""What a model is to the runtime: one keyed table on the PS, and a forward/backward pass over a batch.

Every model keeps its parameters in one PS table of ``width`` float32 values per
key: a feature's weight and embedding side by side, the bias under ``BIAS_KEY``,
dense tensors cut into blocks of ``width`` values under reserved keys
(``model_keys``). The runtime pulls the rows of a batch's keys, calls
``loss_and_gradient`` and pushes the summed gradient rows; it knows nothing else
about the model. A new model is one file in this package plus a line in
``hybrid_ps.models.MODELS``.

A model whose parameters must not start at zero (embeddings) adds a deterministic
per-key offset (``initial_values``) to what the PS holds: the PS stores the
difference from that starting point, unseen keys are pulled as zeros, and
evaluation adds the same offset back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..data._key_sets import positions_in_sorted, unique_inverse
from ..data.batch import Batch
from . import _kernels

__all__ = ["BIAS_KEY", "Model", "PreparedBatch", "sigmoid", "logistic_loss", "hashed_uniform"]

BIAS_KEY = np.uint64(np.iinfo(np.uint64).max)
"""The bias row's key; feature keys must not use 2**64 - 1."""


def sigmoid(margin: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    return np.exp(-np.logaddexp(0.0, -margin))


def logistic_loss(margin: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Summed logloss of ``margin`` against 0/1 ``labels``, ``d loss / d margin`` per row, and probabilities."""
    labels = labels.astype(np.float64)
    loss = float(np.sum(np.logaddexp(0.0, margin) - labels * margin))
    probability = sigmoid(margin)
    return loss, probability - labels, probability


def hashed_uniform(keys: np.ndarray, columns: int, salt: int) -> np.ndarray:
    """``[len(keys), columns]`` float64 uniform in [-1, 1), a fixed function of (key, column, salt)."""
    out = np.empty((keys.size, columns), dtype=np.float64)
    _kernels.fill_hashed_uniform(np.ascontiguousarray(keys, dtype=np.uint64).reshape(-1), salt & 0xFFFFFFFFFFFFFFFF,
                                 1.0, out)
    return out


@dataclass(frozen=True)
class PreparedBatch:
    """A batch with its key set worked out once (a compiled hash-unique), for the exchange and the gradient.

    Attributes:
        batch: the rows.
        keys: sorted unique keys the rows touch, then the model's own keys (bias, dense blocks;
            all above every feature key, so the whole array is sorted).
        inverse: int32 (int64 for huge batches) ``[nnz]``, the index in ``keys`` of each of ``batch.keys``.
    """

    batch: Batch
    keys: np.ndarray
    inverse: np.ndarray

    @property
    def row_ids(self) -> np.ndarray:
        """int32 (or int64) ``[nnz]``, the row of each nonzero (worked out on demand: the kernels read ``indptr``)."""
        return self.batch.row_ids.astype(self.inverse.dtype)

    def positions_in(self, keys: np.ndarray) -> np.ndarray:
        """The index in ``keys`` (sorted, covering ``self.keys``) of each nonzero."""
        if keys.size == self.keys.size:  # the same set: a single-rank group, or members with equal keys
            return self.inverse
        return positions_in_sorted(keys, self.keys)[self.inverse]


class Model(ABC):
    """A binary classifier over sparse rows whose parameters live in one PS table of ``width`` columns."""

    kind: ClassVar[str]
    """The name in configs and checkpoints (``/model`` attribute ``kind``)."""
    width: int
    """float32 values per key on the PS."""

    def model_keys(self) -> np.ndarray:
        """Sorted keys every batch needs besides its features (the bias; dense blocks), all above feature keys."""
        return np.array([BIAS_KEY], dtype=np.uint64)

    def dense_keys(self) -> np.ndarray:
        """The ``model_keys`` holding dense tensors (which ``model.dense_in_group`` keeps on every member)."""
        return np.zeros(0, dtype=np.uint64)

    def prepare(self, batch: Batch) -> PreparedBatch:
        """The batch's sorted key set (features, then ``model_keys``) and each nonzero's place in it."""
        unique, inverse = unique_inverse(np.ascontiguousarray(batch.keys, dtype=np.uint64))
        keys = np.concatenate([unique, self.model_keys()])
        return PreparedBatch(batch, keys, inverse)

    def prepared(self, batch: Batch | PreparedBatch) -> PreparedBatch:
        """``batch`` prepared (unchanged if it already is)."""
        return batch if isinstance(batch, PreparedBatch) else self.prepare(batch)

    def initial_values(self, keys: np.ndarray) -> np.ndarray | None:
        """The per-key starting point added to the PS's rows (``[len(keys), width]``), or ``None`` for zeros."""
        return None

    def parameters(self, keys: np.ndarray, stored: np.ndarray) -> np.ndarray:
        """The model's parameters for ``keys``: the PS rows plus ``initial_values`` (float64 ``[n, width]``)."""
        rows = np.asarray(stored, dtype=np.float64).reshape(keys.size, self.width)
        start = self.initial_values(keys)
        return rows if start is None else rows + start

    @abstractmethod
    def loss_and_gradient(self, batch: Batch | PreparedBatch, keys: np.ndarray,
                          stored: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Forward and backward pass over ``batch``.

        Args:
            batch: the rows (prepared or not).
            keys: sorted keys covering the batch's ``prepare(...).keys``.
            stored: the PS rows for ``keys`` (``[len(keys), width]``; see ``parameters``).

        Returns:
            ``(loss_sum, grad [len(keys), width] float64, probabilities [rows])``: the summed
            logloss and its gradient with respect to the stored rows.
        """

    def attrs(self) -> dict[str, Any]:
        """The shape settings recorded with a checkpoint (rebuild with ``from_attrs``)."""
        return {}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Model:
        """The model a checkpoint's ``attrs()`` describe."""
        return cls()
