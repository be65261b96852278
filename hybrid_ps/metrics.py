"""Training metrics: logloss, AUC, accuracy, progress lines and the metrics JSONL file."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["logloss", "auc", "accuracy", "StreamingAUC", "auc_from_histograms", "MetricsWriter", "RateMeter"]

log = logging.getLogger(__name__)


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-12) -> float:
    """Mean binary cross-entropy."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties share their average rank)."""
    y = np.asarray(labels) > 0.5
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(order.size, dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Share of rows where ``p > 0.5`` matches the label."""
    return float(np.mean((np.asarray(probabilities) > 0.5) == (np.asarray(labels) > 0.5)))


class StreamingAUC:
    """AUC over a stream of batches in constant memory: per-class histograms of the probability.

    Scores falling in one of ``bins`` equal-width bins count as ties; with the
    default 2**20 bins the result differs from the exact AUC by ~1e-6.
    """

    def __init__(self, bins: int = 1 << 20) -> None:
        self.bins = bins
        self._positive = np.zeros(bins, dtype=np.int64)
        self._negative = np.zeros(bins, dtype=np.int64)

    def add(self, labels: np.ndarray, probabilities: np.ndarray) -> None:
        """Count one batch."""
        index = np.minimum((np.asarray(probabilities) * self.bins).astype(np.int64), self.bins - 1)
        positive = np.asarray(labels) > 0.5
        self._positive += np.bincount(index[positive], minlength=self.bins)
        self._negative += np.bincount(index[~positive], minlength=self.bins)

    def value(self) -> float:
        """The AUC so far (NaN while one class is missing)."""
        return auc_from_histograms(self._positive, self._negative)


def auc_from_histograms(positive: np.ndarray, negative: np.ndarray) -> float:
    """The AUC of per-class counts of scores in equal-width bins (ties within a bin count half); NaN while a
    class is missing."""
    positives, negatives = float(positive.sum()), float(negative.sum())
    if positives == 0 or negatives == 0:
        return math.nan
    negatives_below = np.cumsum(negative) - negative
    wins = np.sum(positive * (negatives_below + 0.5 * negative))
    return float(wins / (positives * negatives))


class RateMeter:
    """Accumulates samples and loss between progress reports."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._mark = self.started
        self.samples = 0
        self.loss_sum = 0.0
        self._window_samples = 0
        self._window_loss = 0.0

    def add(self, samples: int, loss_sum: float) -> None:
        """Record one step's rows and summed loss."""
        self.samples += samples
        self.loss_sum += loss_sum
        self._window_samples += samples
        self._window_loss += loss_sum

    def window(self) -> tuple[float, float]:
        """``(samples/s, mean logloss)`` since the last call, then start a new window."""
        now = time.monotonic()
        rate = self._window_samples / max(now - self._mark, 1e-9)
        loss = self._window_loss / max(self._window_samples, 1)
        self._mark, self._window_samples, self._window_loss = now, 0, 0.0
        return rate, loss

    @property
    def elapsed(self) -> float:
        """Seconds since the meter started."""
        return time.monotonic() - self.started


class MetricsWriter:
    """Appends one JSON object a line to ``path`` (the run's metrics JSONL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # kept open across write() calls until close() / __exit__ (one record a line, flushed each time)
        self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, kind: str, **fields: Any) -> None:
        """Write a record ``{"kind": kind, "time": ..., **fields}`` and flush it."""
        record = _finite({"kind": kind, "time": round(time.time(), 3), **fields})
        self._file.write(json.dumps(record, default=_jsonable, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finite(value: Any) -> Any:
    """NaN and infinities become null (they are not JSON)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
