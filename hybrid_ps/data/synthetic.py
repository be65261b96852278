"""The built-in dataset: Criteo-like rows of hashed feature ids with power-law frequency.

Feature index ``i`` in ``[0, features)`` appears with probability proportional
to ``(i + 1) ** -zipf_exponent``; on the wire it is the hashed key
``feature_key(i)``. Each feature has a hidden true weight derived from a hash
of ``(i, seed)``, and a row's label is drawn from the logistic model with
those weights, so a learner has something real to find. Rows come in fixed
blocks of ``BLOCK_ROWS`` seeded by ``(seed, block)``: the dataset is the same
whatever the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import ConfigError
from ..partition import mix64
from .batch import Batch

__all__ = ["BLOCK_ROWS", "SyntheticSpec", "SyntheticShard", "feature_key", "true_weight", "generate_all"]

BLOCK_ROWS = 4096
_WEIGHT_SALT = np.uint64(0x5851F42D4C957F2D)


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of the synthetic dataset."""

    rows: int = 200_000
    features: int = 100_000
    nnz_per_row: int = 20
    zipf_exponent: float = 1.1
    weight_scale: float = 1.0
    bias: float = -1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, ok, rule in (
            ("rows", self.rows >= 1, ">= 1"),
            ("features", self.features >= 1, ">= 1"),
            ("nnz_per_row", self.nnz_per_row >= 1, ">= 1"),
            ("zipf_exponent", self.zipf_exponent > 0, "> 0"),
            ("weight_scale", self.weight_scale >= 0, ">= 0"),
            ("seed", self.seed >= 0, ">= 0"),
        ):
            if not ok:
                raise ConfigError(f"data.{name} must be {rule}, got {getattr(self, name)!r}")


def feature_key(index: np.ndarray, seed: int = 0) -> np.ndarray:
    """The hashed uint64 key of feature ``index`` (never the reserved bias key 2**64-1)."""
    key = mix64(np.asarray(index, dtype=np.uint64) ^ mix64(np.array([seed], dtype=np.uint64)))
    return np.minimum(key, np.uint64(np.iinfo(np.uint64).max - 1))


def true_weight(index: np.ndarray, spec: SyntheticSpec) -> np.ndarray:
    """Hidden weight of feature ``index``: uniform in ``[-weight_scale, weight_scale]``."""
    bits = mix64(np.asarray(index, dtype=np.uint64) ^ _WEIGHT_SALT ^ np.uint64(spec.seed))
    unit = (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return (2.0 * unit - 1.0) * spec.weight_scale


class SyntheticShard:
    """This rank's contiguous share of the synthetic rows (generated block by block).

    Args:
        spec: the dataset.
        rank: this rank among the data readers.
        num_ranks: how many ranks split the data.
    """

    def __init__(self, spec: SyntheticSpec, rank: int = 0, num_ranks: int = 1) -> None:
        if not 0 <= rank < num_ranks:
            raise ConfigError(f"rank {rank} out of range for {num_ranks} data ranks")
        self.spec = spec
        self.start_row = spec.rows * rank // num_ranks
        self.stop_row = spec.rows * (rank + 1) // num_ranks
        weights = np.arange(1, spec.features + 1, dtype=np.float64) ** -spec.zipf_exponent
        self._cdf = np.cumsum(weights / weights.sum())

    @property
    def num_rows(self) -> int:
        """Rows this shard yields per pass."""
        return self.stop_row - self.start_row

    def _block(self, block: int) -> Batch:
        spec = self.spec
        rows = min(BLOCK_ROWS, spec.rows - block * BLOCK_ROWS)
        rng = np.random.default_rng([spec.seed, block])
        index = np.searchsorted(self._cdf, rng.random(rows * spec.nnz_per_row), side="right")
        index = np.minimum(index, spec.features - 1)
        margin = true_weight(index, spec).reshape(rows, spec.nnz_per_row).sum(axis=1) + spec.bias
        labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-margin))).astype(np.float32)
        return Batch(
            labels=labels,
            indptr=np.arange(rows + 1, dtype=np.int64) * spec.nnz_per_row,
            keys=feature_key(index, spec.seed),
            values=np.ones(index.size, dtype=np.float32),
        )

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """One pass over this shard in batches of ``batch_size`` rows (the last may be short)."""
        if batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {batch_size}")
        pending: list[Batch] = []
        held = 0
        for block in range(self.start_row // BLOCK_ROWS, -(-self.stop_row // BLOCK_ROWS)):
            first = block * BLOCK_ROWS
            rows = self._block(block)
            rows = _rows(rows, max(self.start_row - first, 0), min(self.stop_row - first, rows.num_rows))
            pending.append(rows)
            held += rows.num_rows
            if held >= batch_size:
                joined = Batch.concat(pending)
                cut = held - held % batch_size
                for start in range(0, cut, batch_size):
                    yield _rows(joined, start, start + batch_size)
                pending = [_rows(joined, cut, held)] if cut < held else []
                held -= cut
        if held:
            yield Batch.concat(pending)


def _rows(batch: Batch, start: int, stop: int) -> Batch:
    """Rows ``start:stop`` of a batch as a new batch."""
    lo, hi = batch.indptr[start], batch.indptr[stop]
    return Batch(
        labels=batch.labels[start:stop],
        indptr=batch.indptr[start : stop + 1] - lo,
        keys=batch.keys[lo:hi],
        values=batch.values[lo:hi],
    )


def generate_all(spec: SyntheticSpec) -> Batch:
    """The whole dataset as one batch (for tests and single-process references)."""
    return Batch.concat(list(SyntheticShard(spec).batches(spec.rows)))
