"""hybrid_ps.config: defaults, TOML < --set < flags precedence, typed conversion, validation naming the field, --help."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest

from hybrid_ps.config import Config, build_parser, load_config
from hybrid_ps.errors import ConfigError, HybridPSError


def _load(*argv: str) -> Config:
    return load_config(build_parser().parse_args(list(argv)))


def _toml(tmp_path, text: str, name: str = "job.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _all_fields() -> list[tuple[str, dataclasses.Field]]:
    config = Config()
    return [
        (f"{section.name}.{f.name}", f)
        for section in dataclasses.fields(Config)
        for f in dataclasses.fields(getattr(config, section.name))
    ]


# -- defaults --------------------------------------------------------------------------------------


def test_defaults_validate():
    config = Config()
    assert config.validate() is config
    loaded = _load()
    assert loaded.to_dict() == Config().to_dict()
    assert loaded.cluster.staleness == 2 and loaded.optimizer.name == "adagrad"
    assert loaded.data.path == "" and loaded.train.final_eval is True


def test_to_dict_and_derived_paths():
    config = _load("--output-dir", "runs/x")
    data = config.to_dict()
    assert set(data) == {"cluster", "data", "model", "optimizer", "train", "comm"}
    assert data["data"]["rows"] == 200_000
    assert config.checkpoint_root == "runs/x/checkpoints" and config.resume_path == ""
    config = _load("--checkpoint-dir", "/ckpt", "--resume", "latest")
    assert config.checkpoint_root == "/ckpt" and config.resume_path == "/ckpt"
    assert _load("--resume", "/a/ckpt-3").resume_path == "/a/ckpt-3"


# -- precedence ------------------------------------------------------------------------------------


def test_toml_overrides_defaults(tmp_path):
    path = _toml(tmp_path, '[data]\nrows = 10\nzipf_exponent = 2\n[optimizer]\nname = "ftrl"\nl1 = 0.5\n'
                           '[train]\nfinal_eval = false\n[cluster]\nbind_host = "10.0.0.1"\n')
    config = _load("--config", path)
    assert config.data.rows == 10 and isinstance(config.data.rows, int)
    assert config.data.zipf_exponent == 2.0 and isinstance(config.data.zipf_exponent, float)
    assert (config.optimizer.name, config.optimizer.l1) == ("ftrl", 0.5)
    assert config.train.final_eval is False and config.cluster.bind_host == "10.0.0.1"
    assert config.data.features == 100_000  # untouched fields keep their defaults


def test_set_overrides_toml_and_flags_override_set(tmp_path):
    path = _toml(tmp_path, "[data]\nrows = 10\nfeatures = 7\nseed = 1\n")
    assert _load("--config", path).data.rows == 10
    config = _load("--config", path, "--set", "data.rows=20", "--set", "data.seed=4")
    assert (config.data.rows, config.data.features, config.data.seed) == (20, 7, 4)
    config = _load("--config", path, "--set", "data.rows=20", "--rows", "30")
    assert (config.data.rows, config.data.features) == (30, 7)
    # the order on the command line does not matter: flags always win over --set
    config = _load("--rows", "30", "--set", "data.rows=20", "--config", path)
    assert config.data.rows == 30


def test_repeated_set_the_last_wins_and_spaces_are_stripped():
    config = _load("--set", "data.rows=5", "--set", " data.rows = 6 ")
    assert config.data.rows == 6


def test_every_field_can_be_set_by_its_flag():
    parser = build_parser()
    flags = {}
    for action in parser._actions:
        if action.dest and "." in action.dest:
            flags[action.dest] = action.option_strings[0]
    assert set(flags) == {name for name, _ in _all_fields()}
    assert flags["cluster.max_keys_per_message"] == "--cluster-max-keys-per-message"
    assert flags["optimizer.learning_rate"] == "--lr"
    config = _load("--cluster-max-keys-per-message", "1234", "--lr", "0.25", "--vnodes", "16",
                   "--optimizer", "sgd", "--final-eval", "no", "--staleness", "asp", "--data", "")
    assert config.cluster.max_keys_per_message == 1234 and config.optimizer.learning_rate == 0.25
    assert config.cluster.vnodes == 16 and config.optimizer.name == "sgd"
    assert config.train.final_eval is False and config.cluster.staleness == math.inf


# -- staleness -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "toml_value, expected", [('"inf"', math.inf), ("inf", math.inf), ('"asp"', math.inf), ('"bsp"', 0), ("0", 0),
                             ("5", 5), ("3.0", 3)]
)
def test_staleness_in_toml(tmp_path, toml_value, expected):
    config = _load("--config", _toml(tmp_path, f"[cluster]\nstaleness = {toml_value}\n"))
    assert config.cluster.staleness == expected


@pytest.mark.parametrize("value, expected", [("inf", math.inf), ("INF", math.inf), ("0", 0), ("7", 7)])
def test_staleness_flag(value, expected):
    assert _load("--staleness", value).cluster.staleness == expected
    assert _load("--set", f"cluster.staleness={value}").cluster.staleness == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "soon", "-inf"])
def test_bad_staleness_names_the_field(value):
    with pytest.raises(ConfigError, match=f"cluster.staleness: invalid value '{re.escape(value)}'"):
        _load(f"--staleness={value}")  # "=": argparse would take "-inf" for an option


# -- validation names the field --------------------------------------------------------------------

RANGE_CHECKS = [
    ("cluster.servers", "-1", ">= 0"),
    ("cluster.groups", "-2", ">= 0"),
    ("cluster.ps_timeout", "0", "> 0"),
    ("cluster.ps_timeout", "-1", "> 0"),
    ("cluster.vnodes", "0", ">= 1"),
    ("cluster.max_keys_per_message", "0", ">= 1"),
    ("data.rows", "0", ">= 1"),
    ("data.rows", "-5", ">= 1"),
    ("data.features", "0", ">= 1"),
    ("data.nnz_per_row", "0", ">= 1"),
    ("data.zipf_exponent", "0", "> 0"),
    ("optimizer.learning_rate", "0", "> 0"),
    ("optimizer.learning_rate", "-0.1", "> 0"),
    ("optimizer.l1", "-1", ">= 0"),
    ("optimizer.l2", "-1e-4", ">= 0"),
    ("optimizer.ftrl_beta", "-1", ">= 0"),
    ("train.epochs", "0", ">= 1"),
    ("train.batch_size", "0", ">= 1"),
    ("train.max_steps", "-1", ">= 0"),
    ("train.log_interval", "0", "> 0"),
    ("train.delay_seconds", "-0.5", ">= 0"),
    ("train.checkpoint_every", "-1", ">= 0"),
    ("train.keep", "0", ">= 1"),
    ("cluster.replication", "-1", ">= 0"),
    ("cluster.failover_timeout", "0", "> 0"),
]


@pytest.mark.parametrize("name, value, rule", RANGE_CHECKS, ids=[f"{n}={v}" for n, v, _ in RANGE_CHECKS])
def test_range_errors_name_the_field_and_quote_the_value(name, value, rule):
    with pytest.raises(ConfigError) as error:
        _load("--set", f"{name}={value}")
    message = str(error.value)
    assert message.startswith(f"{name} must be {rule}, got ")
    assert float(message.rsplit("got ", 1)[1]) == float(value)


@pytest.mark.parametrize("name, value", [("cluster.servers", "0"), ("train.max_steps", "0"), ("optimizer.l2", "0"),
                                         ("cluster.vnodes", "1"), ("train.keep", "1"), ("train.delay_seconds", "0")])
def test_boundary_values_are_accepted(name, value):
    config = _load("--set", f"{name}={value}")
    section, key = name.split(".")
    assert getattr(getattr(config, section), key) == float(value)  # taken as given, not clamped
    assert config.validate() is config


def test_every_range_check_is_reachable_from_validate():
    """Each check listed above fails on Config.validate() directly too (no parser involved)."""
    for name, value, rule in RANGE_CHECKS:
        config = Config()
        section, key = name.split(".")
        kind = type(getattr(getattr(config, section), key))
        setattr(getattr(config, section), key, kind(float(value)))
        with pytest.raises(ConfigError, match=f"^{re.escape(name)} must be {re.escape(rule)}"):
            config.validate()


def test_l1_needs_ftrl():
    with pytest.raises(ConfigError, match="optimizer.l1 needs optimizer.name = 'ftrl', got 'adagrad'"):
        _load("--l1", "0.1")
    assert _load("--l1", "0.1", "--optimizer", "ftrl").optimizer.l1 == 0.1


def test_data_path_must_name_a_file_a_directory_or_files_of_a_glob(tmp_path):
    for missing in ("/no/such/file.svm", str(tmp_path / "part-*.gz")):
        with pytest.raises(ConfigError, match=f"data.path: no such file or directory, and no file matches "
                                              f"'{re.escape(missing)}'"):
            _load("--data", missing)
    (tmp_path / "_SUCCESS").write_text("")
    with pytest.raises(ConfigError, match=f"data.path: '{re.escape(str(tmp_path))}' is a directory without data"):
        _load("--data", str(tmp_path))
    existing = tmp_path / "part-0.gz"
    existing.write_text("1 1:1\n")
    for found in (existing, tmp_path, tmp_path / "part-*.gz"):
        assert _load("--data", str(found)).data.path == str(found)


def test_optimizer_name_choices():
    with pytest.raises(ConfigError, match="optimizer.name: 'adam' is not one of sgd, adagrad, ftrl"):
        _load("--set", "optimizer.name=adam")
    with pytest.raises(SystemExit):  # argparse refuses the flag itself
        build_parser().parse_args(["--optimizer", "adam"])


# -- type errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rows", "ten"], "data.rows: invalid value 'ten'"),
        (["--rows", "1.5"], "data.rows: invalid value '1.5'"),
        (["--rows", ""], "data.rows: invalid value ''"),
        (["--set", "train.epochs=2.5"], "train.epochs: invalid value '2.5'"),
        (["--final-eval", "maybe"], "train.final_eval: invalid value 'maybe': expected true or false"),
        (["--set", "train.checkpoint=maybe"], "train.checkpoint: invalid value 'maybe'"),
        (["--lr", "fast"], "optimizer.learning_rate: invalid value 'fast'"),
        (["--lr", "nan"], "optimizer.learning_rate: invalid value 'nan': NaN is not a valid setting"),
        (["--set", "data.rowz=1"], "--set: unknown setting 'data.rowz'"),
        (["--set", "model.width=1"], "--set: unknown setting 'model.width'"),
        (["--set", "rows"], "--set 'rows': expected SECTION.KEY=VALUE"),
    ],
)
def test_command_line_errors_name_the_field(argv, message):
    with pytest.raises(ConfigError) as error:
        _load(*argv)
    assert message in str(error.value)


@pytest.mark.parametrize("value, expected", [("true", True), ("YES", True), ("on", True), ("1", True),
                                             ("false", False), ("No", False), ("off", False), ("0", False)])
def test_bool_spellings(value, expected):
    assert _load("--final-eval", value).train.final_eval is expected


@pytest.mark.parametrize(
    "text, message",
    [
        ('[data]\nrows = "many"\n', "data.rows: invalid value 'many'"),
        ("[data]\nrows = 1.5\n", "data.rows: invalid value 1.5: expected a whole number"),
        ("[train]\nepochs = true\n", "train.epochs: invalid value True: expected a whole number"),
        ('[train]\nfinal_eval = "maybe"\n', "train.final_eval: invalid value 'maybe'"),
        ("[train]\nfinal_eval = 2\n", "train.final_eval: invalid value 2"),
        ("[optimizer]\nlearning_rate = true\n", "optimizer.learning_rate: invalid value True: expected a number"),
        ("[optimizer]\nlearning_rate = nan\n", "optimizer.learning_rate: invalid value nan"),
        ("[cluster]\nbind_host = 5\n", "cluster.bind_host: invalid value 5: expected a string"),
        ("[optimizer]\nname = 1\n", "optimizer.name: invalid value 1: expected a string"),
        ("[cluster]\nstaleness = -1\n", "cluster.staleness: invalid value -1"),
        ("[cluster]\nstaleness = 0.5\n", "cluster.staleness: invalid value 0.5"),
        ("[data]\nrows = 0\n", "data.rows must be >= 1, got 0"),
    ],
)
def test_toml_type_errors_name_the_field(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        _load("--config", _toml(tmp_path, text))
    assert message in str(error.value)


def test_toml_whole_floats_are_accepted_for_ints(tmp_path):
    config = _load("--config", _toml(tmp_path, "[data]\nrows = 300.0\n[optimizer]\nlearning_rate = 1\n"))
    assert config.data.rows == 300 and isinstance(config.data.rows, int)
    assert config.optimizer.learning_rate == 1.0 and isinstance(config.optimizer.learning_rate, float)


# -- bad files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("[cluster\n", "invalid TOML"),
        ("rows = = 3\n", "invalid TOML"),
        ("[clusters]\nservers = 1\n", "unknown section [clusters]"),
        ("rows = 10\n", "unknown section [rows]"),
        ("[cluster]\nserverz = 1\n", "unknown setting 'cluster.serverz'"),
        ("[data]\nrows = 1\n[data.extra]\nx = 1\n", "unknown setting 'data.extra'"),
    ],
)
def test_bad_toml_files_name_the_file(tmp_path, text, message):
    path = _toml(tmp_path, text, "bad.toml")
    with pytest.raises(ConfigError) as error:
        _load("--config", path)
    assert message in str(error.value)
    assert path in str(error.value)


def test_unknown_section_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"expected cluster, data, model, optimizer, train, comm"):
        _load("--config", _toml(tmp_path, "[network]\nwidth = 1\n"))


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=f"{re.escape(missing)}: config file not found"):
        _load("--config", missing)


def test_unreadable_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        _load("--config", str(tmp_path))  # a directory


def test_config_errors_are_hybrid_ps_errors():
    assert issubclass(ConfigError, HybridPSError)


# -- --help ----------------------------------------------------------------------------------------


def test_help_mentions_every_field_with_its_flag_and_default():
    text = " ".join(build_parser().format_help().split())  # unwrap argparse's line breaks
    for section in ("[cluster]", "[data]", "[optimizer]", "[train]"):
        assert section in text
    for name, f in _all_fields():
        assert f"[{name}]" in text, name
        assert f"(default: {f.default!r})" in text, name
        flag = f.metadata.get("flag") or "--" + name.replace(".", "-").replace("_", "-")
        assert flag in text, name
        first_words = " ".join(f.metadata["help"].split()[:3])
        assert first_words in text, name
    for option in ("--config", "--set", "--debug"):
        assert option in text


def test_a_config_survives_its_json_form():
    config = _load("--staleness", "inf", "--replication", "2", "--lr", "0.5")
    again = Config.from_dict(json.loads(json.dumps(config.to_json_dict())))
    assert again == config and math.isinf(again.cluster.staleness)


def test_from_dict_names_a_bad_setting():
    with pytest.raises(ConfigError, match="unknown setting 'cluster.nope'"):
        Config.from_dict({"cluster": {"nope": 1}})


@pytest.mark.parametrize("value", ["0.5", "1.9", "-1"])
def test_a_group_timeout_shorter_than_the_heartbeats_is_refused(value):
    with pytest.raises(ConfigError, match=r"cluster.group_timeout must be 0 \(never\) or >= 2"):
        _load("--group-timeout", value)
    assert _load("--group-timeout", "0").cluster.group_timeout == 0


def test_a_missing_tier_file_is_named():
    with pytest.raises(ConfigError, match="cluster.ps_tier: no such tier file 'nope.json'"):
        _load("--ps-tier", "nope.json")


def test_kkt_needs_an_l1_band():
    with pytest.raises(ConfigError, match=r"comm.kkt needs optimizer.l1 > 0"):
        _load("--kkt", "true")
    config = _load("--kkt", "true", "--optimizer", "ftrl", "--l1", "0.01", "--value-encoding", "bfloat16")
    assert config.comm.kkt and config.comm.value_encoding == "bfloat16"


def test_plain_tcp_is_refused_off_loopback_and_curve_is_the_default():
    assert _load().cluster.security == "curve"
    assert _load("--security", "none", "--bind-host", "127.0.0.1").cluster.security == "none"
    with pytest.raises(ConfigError, match=r'cluster.security: "none" \(plain TCP\) is allowed on loopback only, '
                                          r"but shards bind 10.1.2.3"):
        _load("--security", "none", "--bind-host", "10.1.2.3")


def test_early_stopping_needs_held_out_data_and_an_evaluation_period(tmp_path):
    held_out = tmp_path / "test.svm"
    held_out.write_text("1 1:1\n")
    for args in ([], ["--eval-data", str(held_out)], ["--eval-every", "10"]):
        with pytest.raises(ConfigError, match="train.early_stopping needs data.eval_path"):
            _load("--early-stopping", "3", *args)
    config = _load("--early-stopping", "3", "--eval-data", str(held_out), "--eval-every", "10")
    assert (config.train.early_stopping, config.train.eval_every, config.data.eval_path) == (3, 10, str(held_out))
    with pytest.raises(ConfigError, match="data.eval_path: no such file or directory, and no file matches"):
        _load("--eval-data", str(tmp_path / "missing.svm"))
    with pytest.raises(ConfigError, match="train.eval_every must be >= 0, got -1"):
        _load("--eval-every", "-1")


def test_the_simulated_network_is_off_by_default_and_takes_finite_non_negative_settings():
    config = _load()
    assert (config.comm.net_latency_ms, config.comm.net_bandwidth_gbit) == (0.0, 0.0)
    config = _load("--net-latency-ms", "0.25", "--net-bandwidth-gbit", "10")
    assert (config.comm.net_latency_ms, config.comm.net_bandwidth_gbit) == (0.25, 10.0)
    with pytest.raises(ConfigError, match="comm.net_latency_ms must be finite and >= 0, got -1.0"):
        _load("--net-latency-ms", "-1")
    with pytest.raises(ConfigError, match="comm.net_bandwidth_gbit must be finite and >= 0, got inf"):
        _load("--net-bandwidth-gbit", "inf")
