"""SyntheticSpec's named contracts: from the [data] settings, to a checkpoint's record and back."""

from __future__ import annotations

import pytest

from hybrid_ps.config import DataConfig
from hybrid_ps.data.synthetic import SyntheticSpec
from hybrid_ps.errors import CheckpointError, ConfigError


def test_settings_to_record_and_back():
    config = DataConfig(rows=500, features=70, nnz_per_row=5, zipf_exponent=1.3, seed=9, interactions=0.5, drift=0.25)
    spec = SyntheticSpec.from_config(config)
    record = spec.to_record()
    assert record == {"rows": 500, "features": 70, "nnz_per_row": 5, "zipf_exponent": 1.3, "seed": 9,
                      "interactions": 0.5, "drift": 0.25}  # the keys checkpoints have always recorded, in their order
    assert list(record) == ["rows", "features", "nnz_per_row", "zipf_exponent", "seed", "interactions", "drift"]
    assert SyntheticSpec.from_record({"source": "synthetic", "batch_size": 8, **record}) == spec


def test_a_record_from_before_interactions_and_drift_means_none():
    record = {"rows": 10, "features": 5, "nnz_per_row": 2, "zipf_exponent": 1.1, "seed": 0}
    assert SyntheticSpec.from_record(record).interactions == 0.0 and SyntheticSpec.from_record(record).drift == 0.0


def test_a_missing_field_is_named():
    with pytest.raises(CheckpointError, match=r"^runs/ckpt does not record the synthetic data's features, seed$"):
        SyntheticSpec.from_record({"rows": 10, "nnz_per_row": 2, "zipf_exponent": 1.1}, origin="runs/ckpt")


def test_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="data.rows must be > 0"):
        SyntheticSpec.from_config(DataConfig(rows=0))


def test_a_key_space_past_int64_goes_through_an_hdf5_record(tmp_path):
    """HDF5 stores 2**64 - 2 as uint64: the spec read back is the same."""
    import h5py

    spec = SyntheticSpec(rows=10, features=2**64 - 2, nnz_per_row=2)
    with h5py.File(tmp_path / "record.h5", "w") as f:
        f.attrs.update(spec.to_record())
    with h5py.File(tmp_path / "record.h5") as f:
        record = dict(f.attrs)
    assert SyntheticSpec.from_record(record) == spec and type(SyntheticSpec.from_record(record).features) is int
