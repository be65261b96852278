"""Every TOML config shipped in jobs/ loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_ps.config import build_parser, load_config

CONFIGS = sorted((Path(__file__).parents[2] / "jobs").glob("**/*.toml"))


def test_there_are_example_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_loads(path):
    config = load_config(build_parser().parse_args(["--config", str(path)]))
    assert config.train.epochs >= 1
