"""The built-in dataset: Criteo-like rows of hashed feature ids with power-law frequency.

Feature index ``i`` in ``[0, features)`` appears with probability proportional
to ``(i + 1) ** -zipf_exponent``; on the wire it is the hashed key
``feature_key(i, seed)``. Each feature has a hidden true weight derived from a
hash of its key (so of ``(i, seed)``), and a row's label is drawn from the
logistic model with those weights plus ``bias``, so a learner has something
real to find. All values are 1.0 (one-hot hashed categories); a feature may
repeat inside a row.

With ``interactions > 0`` each feature also has a hidden latent vector
``u_i`` (``LATENT_RANK`` values, a hash of its key, ``E|u_i|^2 = 1``) and a
row's true logit adds ``interactions * sum_{i<j} <u_i, u_j> x_i x_j`` over its
pairs of distinct features (a repeated feature is one feature with value 2, as
the models see it): a rank-``LATENT_RANK`` factorization machine of the row,
which logistic regression cannot fit. Only the labels change; the keys are
drawn exactly as without it.

With ``drift > 0`` the ranking moves on as the rows go: row ``r`` draws index
``i + floor(r * drift)`` for the rank ``i`` it samples, so new ids keep taking the
head and old ones fade into the tail (an unbounded key stream, as click logs are).

Rows come in fixed blocks of ``BLOCK_ROWS``, block ``b`` drawn from
``np.random.default_rng([seed, b])``: the dataset is the same whatever the
number of ranks, and a rank generates only the blocks its rows fall in.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..placement.ring import mix64
from .batch import Batch, rebatch

if TYPE_CHECKING:
    from ..config import DataConfig

__all__ = [
    "BLOCK_ROWS",
    "MAX_FEATURES",
    "EXACT_FEATURES",
    "SyntheticSpec",
    "SyntheticShard",
    "mix64",
    "feature_key",
    "true_weight",
    "true_logit",
    "true_latent",
    "LATENT_RANK",
    "generate_all",
]

BLOCK_ROWS = 4096
"""Rows per generator block; block ``b`` is seeded by ``(seed, b)``."""

LATENT_RANK = 4
"""Size of each feature's hidden latent vector (``interactions > 0``)."""

_WEIGHT_SALT = np.uint64(0x5851F42D4C957F2D)
_LATENT_SALT = np.uint64(0x14057B7EF767814F)
_MAX_FEATURE_KEY = np.uint64(2**64 - 2)  # 2**64 - 1 is the model's bias key
MAX_FEATURES = 2**64 - 2
"""The largest ``features``: as many ids as there are feature keys."""
_MAX_MARGIN = 500.0  # |margin| above this saturates the sigmoid anyway; keeps exp() finite
_RECORDED = ("rows", "features", "nnz_per_row", "zipf_exponent", "seed", "interactions", "drift")  # [data], kept
_OPTIONAL = {"interactions": 0.0, "drift": 0.0}  # in a checkpoint's record: absent from those of earlier versions


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of the synthetic dataset.

    Attributes:
        rows: rows in the whole dataset (all ranks together).
        features: distinct feature indices ``[0, features)``.
        nnz_per_row: features drawn per row (with repetition).
        zipf_exponent: ``a`` in ``p(i) ∝ (i + 1) ** -a``.
        weight_scale: true weights are uniform in ``[-weight_scale, weight_scale]``.
        bias: the true model's intercept.
        seed: selects the keys, the true weights and the rows.
        interactions: scale of the hidden pairwise term ``sum_{i<j} <u_i, u_j>`` in the true logit
            (0: a purely linear model, the rows of earlier versions bit for bit).
        drift: feature ids the ranking moves on per row (0: a fixed id space, the rows of earlier versions).

    Raises:
        ConfigError: a field is out of range; the message names it as ``data.<field>``.
    """

    rows: int = 200_000
    features: int = 100_000
    nnz_per_row: int = 20
    zipf_exponent: float = 1.1
    weight_scale: float = 1.0
    bias: float = -1.0
    seed: int = 0
    interactions: float = 0.0
    drift: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rows", "features", "nnz_per_row", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ConfigError(f"data.{name} must be an integer, got {value!r}")
        for name in ("zipf_exponent", "weight_scale", "bias", "interactions", "drift"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
                raise ConfigError(f"data.{name} must be a finite number, got {value!r}")
        for name, ok, rule in (
            ("rows", self.rows > 0, "> 0"),
            ("features", 0 < self.features <= MAX_FEATURES, "> 0 and <= 2**64 - 2"),
            ("nnz_per_row", self.nnz_per_row > 0, "> 0"),
            ("zipf_exponent", self.zipf_exponent > 0, "> 0"),
            ("weight_scale", self.weight_scale >= 0, ">= 0"),
            ("interactions", self.interactions >= 0, ">= 0"),
            ("drift", self.drift == 0 or self.drift > 0 and self.features + self.rows * self.drift <= MAX_FEATURES,
             ">= 0, with features + rows * drift <= 2**64 - 2"),
            ("seed", 0 <= self.seed < 2**63, ">= 0 and < 2**63"),
        ):
            if not ok:
                raise ConfigError(f"data.{name} must be {rule}, got {getattr(self, name)!r}")

    @classmethod
    def from_config(cls, config: DataConfig) -> SyntheticSpec:
        """The dataset the ``[data]`` settings describe (the others keep their defaults).

        Raises:
            ConfigError: a setting is out of range.
        """
        return cls(**{name: getattr(config, name) for name in _RECORDED})

    def to_record(self) -> dict[str, Any]:
        """What a checkpoint records of the dataset (its ``data`` group): the ``[data]`` settings, by name."""
        return {name: getattr(self, name) for name in _RECORDED}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], *, origin: str = "the record") -> SyntheticSpec:
        """The dataset a checkpoint's record (``to_record``'s output; other keys are ignored) describes.

        Args:
            record: the checkpoint's ``data`` attributes.
            origin: names the record in the error, e.g. the checkpoint's path.

        Raises:
            CheckpointError: a field is missing (``interactions`` may be: records before it mean 0).
            ConfigError: a field is out of range.
        """
        missing = [name for name in _RECORDED if name not in record and name not in _OPTIONAL]
        if missing:
            raise CheckpointError(f"{origin} does not record the synthetic data's {', '.join(missing)}")
        values = {name: record.get(name, _OPTIONAL.get(name)) for name in _RECORDED}
        return cls(**{name: int(v) if isinstance(v, np.integer) else v for name, v in values.items()})  # HDF5: uint64


def feature_key(index: np.ndarray, seed: int = 0) -> np.ndarray:
    """The hashed uint64 key of feature ``index`` (the id sent over the wire).

    Distinct indices get distinct keys (``mix64`` is a bijection), except that
    the reserved bias key ``2**64 - 1`` is never produced.

    Args:
        index: feature indices (any integer array).
        seed: the dataset seed.

    Returns:
        uint64 keys, same shape as ``index``.
    """
    key = mix64(np.asarray(index, dtype=np.uint64) ^ mix64(np.array([seed], dtype=np.uint64)))
    return np.minimum(key, _MAX_FEATURE_KEY)


def _key_weight(keys: np.ndarray, weight_scale: float) -> np.ndarray:
    """Hidden weight of each hashed key: uniform in ``[-weight_scale, weight_scale]``."""
    bits = mix64(np.asarray(keys, dtype=np.uint64) ^ _WEIGHT_SALT)
    unit = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return (2.0 * unit - 1.0) * weight_scale


def _key_latent(keys: np.ndarray) -> np.ndarray:
    """Hidden latent vector of each hashed key: ``[n, LATENT_RANK]`` uniform in ``[-sqrt(3/R), sqrt(3/R))``."""
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    # uint64 (numpy's stubs infer float64 for this mix of uint64 scalar and array operands)
    grid: np.ndarray = keys[:, None] * np.uint64(LATENT_RANK) + np.arange(LATENT_RANK, dtype=np.uint64)
    bits = mix64(grid ^ _LATENT_SALT)
    unit = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return (2.0 * unit - 1.0) * math.sqrt(3.0 / LATENT_RANK)  # variance 1/R per column: E|u|^2 = 1


def true_latent(index: np.ndarray, spec: SyntheticSpec) -> np.ndarray:
    """Hidden latent vectors ``u`` of feature ``index`` (float64 ``[n, LATENT_RANK]``; used if ``interactions > 0``)."""
    return _key_latent(feature_key(np.asarray(index).reshape(-1), spec.seed))


def _pairwise(keys: np.ndarray, values: np.ndarray, row_ids: np.ndarray, num_rows: int,
              order: np.ndarray | None = None) -> np.ndarray:
    """``sum_{i<j} <u_i, u_j> x_i x_j`` per row over its distinct features (repeated keys' values add up).

    Computed per nonzero as ``0.5 * (|sum_n u_n x_n|^2 - sum_n |u_n|^2 x_n X_n)``, ``X_n`` the
    summed value of nonzero ``n``'s key in its row. ``order``: a permutation of the nonzeros that puts
    a row's copies of a key side by side (worked out here if not given).
    """
    row_ids = row_ids.astype(np.int64, copy=False)
    x = values.astype(np.float64)
    latent = _key_latent(keys)
    if order is None:
        order = np.lexsort((keys, row_ids))
    new = np.ones(order.size, dtype=bool)
    new[1:] = (keys[order[1:]] != keys[order[:-1]]) | (row_ids[order[1:]] != row_ids[order[:-1]])
    group = np.cumsum(new) - 1
    merged = np.empty_like(x)
    merged[order] = np.bincount(group, weights=x[order])[group]
    flat = (row_ids[:, None] * LATENT_RANK + np.arange(LATENT_RANK)).reshape(-1)
    sums: np.ndarray = np.bincount(flat, weights=(latent * x[:, None]).reshape(-1), minlength=num_rows * LATENT_RANK)
    sums = sums.astype(np.float64, copy=False).reshape(num_rows, LATENT_RANK)
    squares = np.bincount(row_ids, weights=np.einsum("nf,nf->n", latent, latent) * x * merged, minlength=num_rows)
    return 0.5 * (np.einsum("rf,rf->r", sums, sums) - squares)


def true_weight(index: np.ndarray, spec: SyntheticSpec) -> np.ndarray:
    """Hidden true weight of feature ``index``.

    Args:
        index: feature indices in ``[0, spec.features)``.
        spec: the dataset.

    Returns:
        float64 weights, uniform in ``[-weight_scale, weight_scale]`` over features.
    """
    return _key_weight(feature_key(index, spec.seed), spec.weight_scale)


def true_logit(batch: Batch, spec: SyntheticSpec) -> np.ndarray:
    """The true model's margin ``bias + sum_j w*(key_j) * value_j`` (``+ interactions * _pairwise``) per row.

    Args:
        batch: rows generated from ``spec``.
        spec: the dataset.

    Returns:
        float64 ``[batch.num_rows]``; ``P(label = 1) = sigmoid(margin)``.
    """
    weighted = _key_weight(batch.keys, spec.weight_scale) * batch.values
    margin = np.bincount(batch.row_ids, weights=weighted, minlength=batch.num_rows) + spec.bias
    if spec.interactions > 0:
        margin += spec.interactions * _pairwise(batch.keys, batch.values, batch.row_ids, batch.num_rows)
    return margin


class _ZipfSampler:
    """Inverse-CDF sampling of ``p(i) ∝ (i + 1) ** -a`` over a table of the CDF, accelerated by a guide table.

    The result is exactly ``np.searchsorted(cdf, u, side="right")``. A guide
    table over ``G`` (a power of two) equal-width buckets of ``[0, 1)`` answers
    every ``u`` whose bucket holds no CDF step directly; the rest (the light
    tail, ~15-20% of draws) finish with a vectorised binary search bounded by
    their bucket, a few steps instead of ``log2(features)``.
    """

    def __init__(self, features: int, exponent: float) -> None:
        weights = np.arange(1, features + 1, dtype=np.float64) ** -exponent
        cdf = np.cumsum(weights)
        self.mass = float(cdf[-1])  # the sum of the weights (before normalising)
        cdf /= cdf[-1]
        cdf[-1] = 1.0  # every u < 1 lands on a feature
        self._cdf = cdf
        self._last = features - 1
        # A power of two keeps u * G and g / G exact; past 2**20 buckets a bigger table only misses cache.
        self._buckets = 1 << min(max(features - 1, 1).bit_length(), 20)
        edges = np.arange(self._buckets + 1, dtype=np.float64) / self._buckets
        guide = np.searchsorted(cdf, edges, side="right").astype(np.int32)
        self._guide = guide  # bucket g holds the answers guide[g] ..= guide[g + 1]
        self._sure = np.where(guide[:-1] == guide[1:], guide[:-1], -1).astype(np.int32)

    def __call__(self, uniform: np.ndarray) -> np.ndarray:
        """Feature indices (int64) for uniforms in ``[0, 1)``."""
        bucket = (uniform * self._buckets).astype(np.intp)
        index = self._sure[bucket].astype(np.int64)
        unsure = np.flatnonzero(index < 0)
        if unsure.size:
            lo = self._guide[bucket[unsure]].astype(np.int64)
            hi = self._guide[bucket[unsure] + 1].astype(np.int64)
            u = uniform[unsure]
            while True:  # invariant: the answer (first cdf entry > u) lies in [lo, hi]
                active = lo < hi
                if not active.any():
                    break
                mid = (lo + hi) >> 1
                right = self._cdf[np.minimum(mid, self._last)] <= u
                lo = np.where(active & right, mid + 1, lo)
                hi = np.where(active & ~right, mid, hi)
            index[unsure] = lo
        return np.minimum(index, self._last, out=index)


EXACT_FEATURES = 1 << 22
"""Up to this many features the sampler keeps the whole CDF (32 MB); above, its head only (``_PowerLawSampler``)."""

_HEAD_FEATURES = 1 << 20


class _PowerLawSampler:
    """``p(i) ∝ (i + 1) ** -a`` over any number of features (up to ``2**64 - 2``) in memory that does not grow
    with it: the first ``head`` features by their exact CDF (``_ZipfSampler``), the rest by the analytic
    inverse of the tail's CDF.

    The tail's weight ``sum_{t=head+1}^{n} t**-a`` is the integral of ``t**-a`` over ``[head + 0.5, n + 0.5]``
    (the midpoint rule, relative error ``a (a + 1) / (24 t**2)``, below 1e-13 past a million), so a draw
    inverts ``x**(1 - a)`` (``log x`` at ``a = 1``) and rounds to the nearest ``t``. Above ``2**53`` the
    float64 draws reach only every ``2**(e - 52)``-th id near ``2**e``: the shape holds, not every id.

    Args:
        features: distinct feature indices ``[0, features)``.
        exponent: ``a``.
        head: features sampled exactly (all of them if ``features <= EXACT_FEATURES``: the data is then
            today's bit for bit).
    """

    def __init__(self, features: int, exponent: float, head: int | None = None) -> None:
        if head is None:
            head = features if features <= EXACT_FEATURES else _HEAD_FEATURES
        head = min(head, features)
        self.features, self.exponent = features, exponent
        self._head = _ZipfSampler(head, exponent)
        self._low, self._high = head + 0.5, float(features) + 0.5
        tail = self._tail_mass()
        self.head_share = self._head.mass / (self._head.mass + tail)  # P(index < head)
        self._head_size = head

    def _tail_mass(self) -> float:
        if self._high <= self._low:
            return 0.0
        if abs(1.0 - self.exponent) < 1e-9:
            return math.log(self._high / self._low)
        power = 1.0 - self.exponent
        return (self._high**power - self._low**power) / power

    def __call__(self, uniform: np.ndarray) -> np.ndarray:
        """Feature indices for uniforms in ``[0, 1)``: int64 up to ``2**63``, uint64 above."""
        if self._head_size == self.features:
            return self._head(uniform)
        in_head = uniform < self.head_share
        index = np.empty(uniform.shape, dtype=np.uint64)
        index[in_head] = self._head(uniform[in_head] / self.head_share)
        index[~in_head] = self._tail((uniform[~in_head] - self.head_share) / (1.0 - self.head_share))
        return index if self.features > 2**63 else index.astype(np.int64)

    def _tail(self, v: np.ndarray) -> np.ndarray:
        """Indices ``t - 1`` of the tail's ``t`` in ``[head + 1, features]`` for uniforms in ``[0, 1)``."""
        if abs(1.0 - self.exponent) < 1e-9:
            x = self._low * np.exp(v * math.log(self._high / self._low))
        else:
            power = 1.0 - self.exponent
            low, high = self._low**power, self._high**power
            x = (low + v * (high - low)) ** (1.0 / power)
        t = np.clip(np.floor(x + 0.5), self._head_size + 1, np.nextafter(2.0**64, 0))
        return np.minimum(t.astype(np.uint64) - np.uint64(1), np.uint64(self.features - 1))


class SyntheticShard:
    """This rank's contiguous share of the synthetic rows, generated lazily block by block.

    Rank ``r`` of ``R`` owns rows ``[rows * r // R, rows * (r + 1) // R)``, so
    shards differ by at most one row; it generates only the blocks those rows
    fall in (a block cut by a shard boundary is generated by both neighbours
    and each keeps its part). Concatenating all shards in rank order gives
    ``generate_all(spec)`` for every ``R``.

    Args:
        spec: the dataset.
        rank: this rank among the data readers.
        num_ranks: how many ranks split the data.

    Raises:
        ConfigError: ``rank`` is not in ``[0, num_ranks)``.
    """

    def __init__(self, spec: SyntheticSpec, rank: int = 0, num_ranks: int = 1) -> None:
        if not 0 <= rank < num_ranks:
            raise ConfigError(f"rank {rank} out of range for {num_ranks} data ranks")
        self.spec = spec
        self.rank = rank
        self.num_ranks = num_ranks
        self.start_row = spec.rows * rank // num_ranks
        self.stop_row = spec.rows * (rank + 1) // num_ranks
        self._sample = _PowerLawSampler(spec.features, spec.zipf_exponent)

    def __repr__(self) -> str:
        return f"SyntheticShard({self.spec!r}, rank={self.rank}, num_ranks={self.num_ranks})"

    @property
    def num_rows(self) -> int:
        """Rows this shard yields per pass."""
        return self.stop_row - self.start_row

    def true_logit(self, batch: Batch) -> np.ndarray:
        """The true model's margin for each row of ``batch`` (see ``true_logit``)."""
        return true_logit(batch, self.spec)

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels (float32 ``[n]``) and keys (uint64 ``[n * nnz_per_row]``) of one block."""
        spec = self.spec
        rows = min(BLOCK_ROWS, spec.rows - block * BLOCK_ROWS)
        rng = np.random.default_rng([spec.seed, block])
        index = self._sample(rng.random(rows * spec.nnz_per_row))
        if spec.drift > 0:
            moved = np.floor((block * BLOCK_ROWS + np.arange(rows)) * spec.drift).astype(np.uint64)
            index = index.astype(np.uint64) + np.repeat(moved, spec.nnz_per_row)
        keys = feature_key(index, spec.seed)
        margin = _key_weight(keys, spec.weight_scale).reshape(rows, spec.nnz_per_row).sum(axis=1)
        margin += spec.bias
        if spec.interactions > 0:
            nnz = spec.nnz_per_row
            row_ids = np.repeat(np.arange(rows, dtype=np.int64), nnz)
            order = (np.argsort(keys.reshape(rows, nnz), axis=1) + np.arange(0, rows * nnz, nnz)[:, None]).reshape(-1)
            margin += spec.interactions * _pairwise(keys, np.ones(keys.size, np.float32), row_ids, rows, order)
        np.clip(margin, -_MAX_MARGIN, _MAX_MARGIN, out=margin)
        labels = (rng.random(rows) * (1.0 + np.exp(-margin)) < 1.0).astype(np.float32)
        return labels, keys

    def _blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This shard's rows as (labels, keys) pieces, one generator block at a time."""
        nnz = self.spec.nnz_per_row
        if self.num_rows == 0:
            return
        for block in range(self.start_row // BLOCK_ROWS, (self.stop_row - 1) // BLOCK_ROWS + 1):
            first = block * BLOCK_ROWS
            labels, keys = self._block(block)
            lo = max(self.start_row - first, 0)
            hi = min(self.stop_row - first, labels.size)
            yield labels[lo:hi], keys[lo * nnz : hi * nnz]

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """One pass over this shard.

        Args:
            batch_size: rows per batch.

        Yields:
            Batches of exactly ``batch_size`` rows, the last one possibly shorter.

        Raises:
            ConfigError: ``batch_size`` is not positive.
        """
        if batch_size < 1:
            raise ConfigError(f"train.batch_size must be > 0, got {batch_size!r}")
        nnz = self.spec.nnz_per_row
        return rebatch((_rows(labels, keys, nnz) for labels, keys in self._blocks()), batch_size)


def _rows(labels: np.ndarray, keys: np.ndarray, nnz: int) -> Batch:
    """A batch of rows with ``nnz`` keys each, all values 1.0."""
    return Batch(
        labels=labels,
        indptr=np.arange(labels.size + 1, dtype=np.int64) * nnz,
        keys=keys,
        values=np.ones(keys.size, dtype=np.float32),
    )


def generate_all(spec: SyntheticSpec) -> Batch:
    """The whole dataset as one batch (for tests, evaluation and single-process references).

    Args:
        spec: the dataset.

    Returns:
        All ``spec.rows`` rows in order.
    """
    nnz = spec.nnz_per_row
    labels = np.empty(spec.rows, dtype=np.float32)
    keys = np.empty(spec.rows * nnz, dtype=np.uint64)
    row = 0
    for block_labels, block_keys in SyntheticShard(spec)._blocks():
        labels[row : row + block_labels.size] = block_labels
        keys[row * nnz : (row + block_labels.size) * nnz] = block_keys
        row += block_labels.size
    return _rows(labels, keys, nnz)
