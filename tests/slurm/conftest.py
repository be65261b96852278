"""A private one-node Slurm cluster for the tests in this folder (marker ``slurm``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from local_cluster import LocalSlurm, SlurmUnavailable  # noqa: E402


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running cluster; fails (in CI, HYBRID_PS_REQUIRE_SLURM=1) or skips when none can be started."""
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (SlurmUnavailable, OSError) as e:
        if os.environ.get("HYBRID_PS_REQUIRE_SLURM"):
            pytest.fail(f"could not start a local Slurm cluster: {e}")
        pytest.skip(f"no local Slurm cluster ({e}); CI installs Slurm and requires these tests")
    yield cluster
    cluster.stop()
