"""Config: precedence, validation naming the field, --help."""

from __future__ import annotations

import dataclasses
import math

import pytest

from hybrid_ps.config import Config, build_parser, load_config
from hybrid_ps.errors import ConfigError


def _load(*argv: str) -> Config:
    return load_config(build_parser().parse_args(list(argv)))


def test_defaults_validate():
    config = _load()
    assert config.optimizer.name == "adagrad" and config.cluster.staleness == 2


def test_precedence_toml_then_set_then_flags(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[data]\nrows = 10\nfeatures = 7\n[cluster]\nstaleness = "inf"\n[train]\nfinal_eval = false\n')
    config = _load("--config", str(path), "--set", "data.rows=20", "--set", "data.seed=4", "--rows", "30")
    assert (config.data.rows, config.data.features, config.data.seed) == (30, 7, 4)
    assert config.cluster.staleness == math.inf and config.train.final_eval is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rows", "-5"], "data.rows must be >= 1, got -5"),
        (["--batch-size", "0"], "train.batch_size must be >= 1, got 0"),
        (["--lr", "0"], "optimizer.learning_rate must be > 0"),
        (["--l1", "0.1"], "optimizer.l1 needs optimizer.name = 'ftrl'"),
        (["--rows", "ten"], "data.rows: invalid value 'ten'"),
        (["--rows", "1.5"], "data.rows: invalid value '1.5'"),
        (["--staleness", "-1"], "cluster.staleness: invalid value '-1'"),
        (["--final-eval", "maybe"], "train.final_eval: invalid value 'maybe'"),
        (["--set", "data.rowz=1"], "--set: unknown setting 'data.rowz'"),
        (["--set", "rows"], "expected SECTION.KEY=VALUE"),
        (["--data", "/no/such/file.svm"], "data.path: no such file"),
        (["--set", "optimizer.name=adam"], "optimizer.name: 'adam' is not one of sgd, adagrad, ftrl"),
    ],
)
def test_errors_name_the_field(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _load(*argv)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[cluster\n", "invalid TOML"),
        ("[clusters]\nservers = 1\n", "unknown section [clusters]"),
        ("[cluster]\nserverz = 1\n", "unknown setting 'cluster.serverz'"),
        ('[data]\nrows = "many"\n', "data.rows: invalid value 'many'"),
        ("[train]\nepochs = true\n", "train.epochs: invalid value True"),
    ],
)
def test_bad_toml_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        _load("--config", str(path))
    assert message in str(error.value)
    if "invalid value" not in message:
        assert str(path) in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        _load("--config", str(tmp_path / "nope.toml"))


def test_help_explains_every_setting():
    text = build_parser().format_help()
    for section in dataclasses.fields(Config):
        for field in dataclasses.fields(getattr(Config(), section.name)):
            assert f"[{section.name}.{field.name}]" in text
