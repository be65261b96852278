"""A trained model read from a checkpoint, to score rows in one process without MPI: ``load_model(path)``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..checkpoint import SavedModel, load_saved_model, resolve_checkpoint
from ..data.batch import Batch
from ..data.scaling import FeatureScales
from ..errors import CheckpointError, ConfigError
from . import model_from_checkpoint
from .base import Model

__all__ = ["TrainedModel", "load_model", "Scores"]


class Scores:
    """A batch scored: each row's probability of label 1, the summed logloss against its labels, and how many
    of its distinct keys the model never saw in training (they weigh zero)."""

    def __init__(self, probability: np.ndarray, loss_sum: float, unseen_keys: int) -> None:
        self.probability = probability
        self.loss_sum = loss_sum
        self.unseen_keys = unseen_keys


class TrainedModel:
    """A checkpoint's model: its kind, the values of every key it holds, and the scorer of its kind.

    Build it with ``load_model``. ``predict_proba`` follows scikit-learn: ``X`` is a scipy
    sparse matrix (column ``j`` is the key ``j``, as in a libsvm file) or a ``Batch``.
    """

    def __init__(self, saved: SavedModel, scorer: Model, path: str) -> None:
        self.saved = saved
        self.scorer = scorer
        self.path = path
        self.scales = FeatureScales(saved.scale_keys, saved.scales)  # as training divided the feature values

    @property
    def kind(self) -> str:
        return self.saved.kind

    @property
    def clock(self) -> int:
        """The cut the checkpoint holds (steps every group had finished)."""
        return self.saved.clock

    @property
    def num_keys(self) -> int:
        return int(self.saved.keys.size)

    def score(self, batch: Batch) -> Scores:
        """Score ``batch`` (its labels give the logloss; for prediction they may be anything)."""
        prepared = self.scorer.prepare(self.scales.apply(batch))  # one key sort for the lookup and the loss
        weights, unseen = self._values_for(prepared.keys)
        loss, _, probability = self.scorer.loss_and_gradient(prepared, prepared.keys, weights)
        return Scores(np.asarray(probability, dtype=np.float64), float(loss), unseen)

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[n, 2]`` float64: each row's probability of label 0, then of label 1."""
        positive = self.score(batch_of(X)).probability
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X: Any) -> np.ndarray:
        """Each row's more likely label (0 or 1, int64)."""
        return (self.score(batch_of(X)).probability > 0.5).astype(np.int64)

    def _values_for(self, keys: np.ndarray) -> tuple[np.ndarray, int]:
        """Checkpoint values for sorted ``keys``; keys unseen in training weigh zero."""
        held = self.saved.keys
        position = np.minimum(np.searchsorted(held, keys), max(held.size - 1, 0))
        found = held[position] == keys if held.size else np.zeros(keys.size, bool)
        values = np.zeros((keys.size, self.saved.values.shape[1]), dtype=np.float32)
        values[found] = self.saved.values[position[found]]
        return values, int(keys.size - found.sum())


def load_model(path: str) -> TrainedModel:
    """The model of a checkpoint: a ``ckpt-<clock>`` directory, its ``model.h5``, or a checkpoint root (its latest).

    Raises:
        CheckpointError: unreadable checkpoint, or a model kind or width this build cannot score.
    """
    saved = load_saved_model(path)
    scorer = model_from_checkpoint(saved.kind, saved.model_attrs, str(path))
    if saved.values.shape[1] != scorer.width:
        raise CheckpointError(f"{path}: {saved.kind} needs width {scorer.width}, "
                              f"checkpoint has {saved.values.shape[1]}")
    return TrainedModel(saved, scorer, str(resolve_checkpoint(path)))


def batch_of(X: Any) -> Batch:
    """Rows to score as a ``Batch``: a ``Batch`` as it is; a scipy sparse matrix or a 2-D array by its nonzeros
    (column ``j`` is key ``j``; labels 0).

    Raises:
        ConfigError: anything else, or negative column indices.
    """
    if isinstance(X, Batch):
        return X
    try:
        import scipy.sparse as sp
    except ImportError as e:  # scipy comes with scikit-learn; Batch input needs neither
        raise ConfigError("predict_proba on a matrix needs scipy (pip install scipy), or pass a Batch") from e
    if not (sp.issparse(X) or (isinstance(X, np.ndarray) and X.ndim == 2)):
        raise ConfigError(f"predict_proba takes a scipy sparse matrix, a 2-D array or a Batch, got {type(X).__name__}")
    csr = sp.csr_matrix(X)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    return Batch(labels=np.zeros(csr.shape[0], dtype=np.float32), indptr=csr.indptr.astype(np.int64),
                 keys=csr.indices.astype(np.uint64), values=csr.data.astype(np.float32))
