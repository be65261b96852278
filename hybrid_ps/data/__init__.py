"""Data sources: the libsvm reader (sharded by rank) and the synthetic default."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import DataConfig
    from .libsvm import LibsvmShard
    from .synthetic import SyntheticShard

__all__ = ["open_data_shard"]


def open_data_shard(config: "DataConfig", rank: int, num_ranks: int) -> "LibsvmShard | SyntheticShard":
    """This rank's share of the configured data: a libsvm file if ``path`` is set, else synthetic rows."""
    if config.path:
        from .libsvm import LibsvmShard

        return LibsvmShard(config.path, rank, num_ranks)
    from .synthetic import SyntheticShard, SyntheticSpec

    spec = SyntheticSpec(
        rows=config.rows, features=config.features, nnz_per_row=config.nnz_per_row,
        zipf_exponent=config.zipf_exponent, seed=config.seed,
    )
    return SyntheticShard(spec, rank, num_ranks)
