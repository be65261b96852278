"""Evaluate a checkpointed model on a data stream, one process, no MPI, constant memory."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from ..checkpoint import checkpoint_info
from ..data.batch import Batch
from ..errors import CheckpointError, ConfigError
from ..metrics import StreamingAUC
from .predictor import load_model

__all__ = ["evaluate_model", "data_batches", "trained_format"]


def evaluate_model(checkpoint_path: str, batches: Iterable[Batch]) -> dict[str, Any]:
    """Logloss, AUC, accuracy and row count of a checkpoint's model over ``batches``.

    Raises:
        CheckpointError: unreadable checkpoint or a model kind this build cannot evaluate.
    """
    model = load_model(checkpoint_path)
    rows = correct = unseen = 0
    loss_sum = 0.0
    area = StreamingAUC()
    for batch in batches:
        scores = model.score(batch)
        rows += batch.num_rows
        loss_sum += scores.loss_sum
        unseen += scores.unseen_keys
        correct += int(np.sum((scores.probability > 0.5) == (batch.labels > 0.5)))
        area.add(batch.labels, scores.probability)
    return {
        "checkpoint": model.path,
        "clock": model.clock,
        "model": model.kind,
        "model_keys": model.num_keys,
        "rows": rows,
        "logloss": loss_sum / rows if rows else float("nan"),
        "auc": area.value(),
        "accuracy": correct / rows if rows else float("nan"),
        "unseen_keys": unseen,  # distinct keys per batch that training never saw (they weigh zero), summed
    }


def data_batches(data: str, checkpoint: str, batch_rows: int, data_format: str | None = None) -> Iterator[Batch]:
    """The rows to score a checkpoint on, ``batch_rows`` at a time: the files of ``data`` (in ``data_format``,
    by default the one the model was trained on), or with ``data = "synthetic"`` the synthetic rows it was
    trained on.

    Raises:
        ConfigError, CheckpointError: ``synthetic`` for a model not trained on synthetic data, or a record
            without the synthetic settings.
        DataError: unreadable data.
    """
    if data == "synthetic":
        from ..data.synthetic import SyntheticShard, SyntheticSpec

        recorded = checkpoint_info(checkpoint)["data"]
        if recorded.get("source") != "synthetic":
            raise ConfigError(f"--data synthetic: {checkpoint} was trained on {recorded.get('source')!r}")
        try:
            spec = SyntheticSpec.from_record(recorded, origin=checkpoint)
        except CheckpointError as e:  # a field is missing
            raise CheckpointError(f"--data synthetic: {e}; give --data FILE") from None
        return SyntheticShard(spec).batches(batch_rows)
    from ..data.reader import DataShard

    return DataShard(data, format=data_format or trained_format(checkpoint)).batches(batch_rows)


def trained_format(checkpoint: str) -> str:
    """The line format the checkpoint's model was trained on (libsvm if it does not say)."""
    return str(checkpoint_info(checkpoint).get("data", {}).get("format", "libsvm"))
