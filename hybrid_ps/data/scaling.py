"""Feature scaling by the largest magnitude: each key whose values go beyond 1 is divided by the largest
``|value|`` it takes in the training data, so raw counts and prices (up to 10^6 and more) train as well as
the same columns scaled to [-1, 1].

A linear model's update to a weight moves the margin by the update times the
feature's value; with values of 10^6 the default learning rate overshoots by as
much and the loss runs off (see ``worker/divergence.py``). Dividing by the largest
magnitude makes every feature's values at most 1, as Vowpal Wabbit's normalized
updates do online. The table is computed once, before training, over every worker
rank's rows (keys whose values all lie within [-1, 1], such as one-hot features, are
left out, so it stays small), and is kept in the checkpoint: evaluation, prediction
and a resumed run divide by the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from .batch import Batch

__all__ = ["FeatureScales", "scaled"]

MAX_KEYS_PER_RANK = 1 << 16
"""Keys one rank contributes (those of the largest magnitudes); beyond, keys keep their raw values."""
MAX_KEYS = 1 << 18
"""Keys the job's table holds at most (the largest magnitudes)."""


class FeatureScales:
    """Sorted keys and the divisor of each one's values.

    Args:
        keys: sorted unique uint64 keys.
        scales: float32 divisors (> 1) of the same length.
    """

    def __init__(self, keys: np.ndarray, scales: np.ndarray) -> None:
        self.keys = np.ascontiguousarray(keys, dtype=np.uint64)
        self.scales = np.ascontiguousarray(scales, dtype=np.float32)

    def __len__(self) -> int:
        return int(self.keys.size)

    @classmethod
    def empty(cls) -> FeatureScales:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.float32))

    @classmethod
    def of(cls, batches: Iterable[Batch], limit: int = MAX_KEYS_PER_RANK) -> FeatureScales:
        """The largest ``|value|`` of every key with a value beyond [-1, 1] in ``batches`` (at most ``limit``
        keys: those of the largest magnitudes)."""
        keys, magnitudes = [], []
        for batch in batches:
            large = np.abs(batch.values) > 1
            if large.any():
                keys.append(batch.keys[large])
                magnitudes.append(np.abs(batch.values[large]))
        if not keys:
            return cls.empty()
        return _largest_per_key(np.concatenate(keys), np.concatenate(magnitudes), limit)

    @classmethod
    def merged(cls, tables: Sequence[FeatureScales], limit: int = MAX_KEYS) -> FeatureScales:
        """One table from many (each key's largest divisor; at most ``limit`` keys)."""
        tables = [t for t in tables if len(t)]
        if not tables:
            return cls.empty()
        return _largest_per_key(np.concatenate([t.keys for t in tables]),
                                np.concatenate([t.scales for t in tables]), limit)

    def apply(self, batch: Batch) -> Batch:
        """``batch`` with the values of the table's keys divided by their scales (the others as they are)."""
        if not len(self) or not batch.values.size:
            return batch
        position = np.minimum(np.searchsorted(self.keys, batch.keys), self.keys.size - 1)
        hit = self.keys[position] == batch.keys
        if not hit.any():
            return batch
        values = batch.values.copy()
        values[hit] /= self.scales[position[hit]]
        return Batch(labels=batch.labels, indptr=batch.indptr, keys=batch.keys, values=values)


def _largest_per_key(keys: np.ndarray, magnitudes: np.ndarray, limit: int) -> FeatureScales:
    order = np.lexsort((-magnitudes, keys))  # by key, the largest first
    keys, magnitudes = keys[order], magnitudes[order]
    first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    keys, magnitudes = keys[first], magnitudes[first]
    if keys.size > limit:
        kept = np.sort(np.argsort(-magnitudes, kind="stable")[:limit])
        keys, magnitudes = keys[kept], magnitudes[kept]
    return FeatureScales(keys, magnitudes)


def scaled(source: Callable[[], Iterable[Batch]], scales: FeatureScales,
           preload: bool) -> Callable[[], Iterable[Batch]]:
    """A batch source whose batches are scaled (preloaded batches once, here; streamed ones as they come)."""
    if not len(scales):
        return source
    if preload:
        held = [scales.apply(batch) for batch in source()]
        return lambda: iter(held)

    def batches() -> Iterator[Batch]:
        return (scales.apply(batch) for batch in source())

    return batches
