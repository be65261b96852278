"""Evaluate a checkpointed model on a data stream, one process, no MPI, constant memory."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..checkpoint import SavedModel, load_model, resolve_checkpoint
from ..data.batch import Batch
from ..errors import CheckpointError
from ..metrics import StreamingAUC
from . import model_from_checkpoint

__all__ = ["evaluate_model"]


def _weights_for(model: SavedModel, keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Checkpoint values for sorted ``keys``; keys unseen in training weigh zero."""
    position = np.minimum(np.searchsorted(model.keys, keys), max(model.keys.size - 1, 0))
    found = model.keys[position] == keys if model.keys.size else np.zeros(keys.size, bool)
    weights = np.zeros((keys.size, model.values.shape[1]), dtype=np.float32)
    weights[found] = model.values[position[found]]
    return weights, int(keys.size - found.sum())


def evaluate_model(checkpoint_path: str, batches: Iterable[Batch]) -> dict[str, Any]:
    """Logloss, AUC, accuracy and row count of a checkpoint's model over ``batches``.

    Raises:
        CheckpointError: unreadable checkpoint or a model kind this build cannot evaluate.
    """
    model = load_model(checkpoint_path)
    scorer = model_from_checkpoint(model.kind, model.model_attrs, checkpoint_path)
    if model.values.shape[1] != scorer.width:
        raise CheckpointError(f"{checkpoint_path}: {model.kind} needs width {scorer.width}, "
                              f"checkpoint has {model.values.shape[1]}")
    rows = correct = 0
    loss_sum = 0.0
    unseen = 0
    area = StreamingAUC()
    for batch in batches:
        prepared = scorer.prepare(batch)  # one sort of the batch's keys serves the lookup and the loss
        weights, missing = _weights_for(model, prepared.keys)
        unseen += missing
        loss, _, probability = scorer.loss_and_gradient(prepared, prepared.keys, weights)
        rows += batch.num_rows
        loss_sum += loss
        correct += int(np.sum((probability > 0.5) == (batch.labels > 0.5)))
        area.add(batch.labels, probability)
    return {
        "checkpoint": str(resolve_checkpoint(checkpoint_path)),
        "clock": model.clock,
        "model": model.kind,
        "model_keys": int(model.keys.size),
        "rows": rows,
        "logloss": loss_sum / rows if rows else float("nan"),
        "auc": area.value(),
        "accuracy": correct / rows if rows else float("nan"),
        "unseen_keys": unseen,  # distinct keys per batch that training never saw (they weigh zero), summed
    }
