"""Typed job configuration: dataclass defaults < TOML file < ``--set section.key=value`` < flags.

Every field has a help text (shown by ``--help``) and a command-line flag; a
bad value raises ``ConfigError`` naming the field and quoting the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import math
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .net.curve import check_plaintext_host
from .net.sockets import resolve_bind_host
from .protocol.staleness import parse_staleness

__all__ = ["ClusterConfig", "DataConfig", "ModelConfig", "OptimizerConfig", "TrainConfig", "CommConfig", "Config",
           "build_parser", "load_config", "DATA_FORMATS"]


DATA_FORMATS = ("libsvm", "criteo", "auto")
"""The line formats of data files (``data.format``; ``evaluate --data-format``, ``predict --format``)."""


def _option(default: Any, help: str, flag: str | None = None, choices: Sequence[str] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices})


@dataclass
class ClusterConfig:
    """How the MPI world is split and how the PS tier behaves."""

    servers: int = _option(0, "PS shard ranks (0 = auto: world_size // 4, at least 1)", "--servers")
    groups: int = _option(0, "worker groups (0 = auto: workers // 3, at least 1)", "--groups")
    staleness: float = _option(
        2, "SSP bound: a group may run this many clocks ahead of the slowest (0 = BSP, inf = ASP)", "--staleness"
    )
    bind_host: str = _option("auto", "address shards bind to (auto = this node's resolved hostname)", "--bind-host")
    security: str = _option(
        "curve", "PS traffic: curve (encrypted; only this job's clients get in) or none (plain TCP, loopback only)",
        "--security", ("curve", "none"))
    ps_timeout: float = _option(600.0, "seconds a leader waits for a shard reply before failing", "--ps-timeout")
    group_timeout: float = _option(
        600.0, "seconds without a message from a group before shards stop waiting for it (0 = never); "
        "it rejoins if it speaks again", "--group-timeout")
    vnodes: int = _option(256, "virtual nodes per shard on the consistent-hash ring", "--vnodes")
    replication: int = _option(
        0, "shards holding each key range, primary first (0 = auto: 2 with 2 or more servers, else 1)",
        "--replication")
    failover_timeout: float = _option(
        10.0, "seconds a shard may leave heartbeats unanswered before leaders declare it dead and its "
        "backups take over", "--failover-timeout")
    shard_restarts: int = _option(
        3, "times a server rank (or hybrid_ps.serve) restarts its shard after it died; with replication the "
        "new shard is filled from the other replicas while training goes on; once none is left, a death retires "
        "the shard and its ranges are re-replicated on the others (0 = never restart)", "--shard-restarts")
    max_keys_per_message: int = _option(1 << 24, "largest key count a shard accepts in one message")
    ps_tier: str = _option(
        "", "tier file of a PS tier started with python -m hybrid_ps.serve: every rank of this job is a "
        "worker (empty = this job's last ranks are the servers)", "--ps-tier")
    first_group: int = _option(0, "with ps_tier: the tier's group slot of this job's first group", "--first-group")
    admit_after: int = _option(
        1, "feature admission: a key gets a row only once it was pushed this many times (1-255; until then its "
        "pushes are counted in a bounded sketch and it reads as the initial value; 1 = at its first push)",
        "--admit-after")
    admit_sketch_mb: float = _option(
        16.0, "feature admission: MiB per shard of counters for keys not admitted yet (one byte each)",
        "--admit-sketch-mb")
    evict_after: int = _option(
        0, "feature eviction: at full checkpoint cuts, drop rows not pushed for this many clocks (needs "
        "train.checkpoint_every; 0 = never)", "--evict-after")
    evict_below: float = _option(
        -1.0, "feature eviction: at full checkpoint cuts, also drop rows whose every value is within +-this "
        "(negative = never)", "--evict-below")


@dataclass
class DataConfig:
    """Where the training rows come from."""

    path: str = _option("", "data to train on: a file, a directory of part files or a glob, each plain or gzip, "
                        "bz2, xz or zstd compressed (empty = built-in synthetic data)", "--data")
    eval_path: str = _option("", "held-out data evaluated while training (every train.eval_every clocks and after "
                             "every epoch; same forms as data.path; empty = none)", "--eval-data")
    feature_scaling: str = _option(
        "maxabs", "divide each feature whose values go beyond [-1, 1] by its largest |value| in the training data "
        "(computed before training, kept in the checkpoint; none = use the values as they are)",
        "--feature-scaling", ("maxabs", "none"))
    format: str = _option("libsvm", "line format of the data files (auto: criteo for .tsv names and names with "
                          "'criteo' or 'day_', else libsvm)", "--format", DATA_FORMATS)
    rows: int = _option(200_000, "synthetic data: number of rows", "--rows")
    features: int = _option(100_000, "synthetic data: distinct hashed features", "--features")
    nnz_per_row: int = _option(20, "synthetic data: features per row", "--nnz-per-row")
    zipf_exponent: float = _option(1.1, "synthetic data: power-law exponent of feature frequency", "--zipf-exponent")
    seed: int = _option(0, "synthetic data: random seed (same data for any rank count)", "--seed")
    interactions: float = _option(
        0.0, "synthetic data: scale of hidden pairwise feature interactions in the labels (0 = a linear model; "
        "factorization machines can learn them, logistic regression cannot)", "--interactions")
    drift: float = _option(
        0.0, "synthetic data: feature ids the popularity ranking moves on per row (new ids keep arriving, old ones "
        "fade: an unbounded key stream; 0 = a fixed id space)", "--drift")
    preload: bool = _option(
        True, "read this rank's rows into memory once, before training (false = stream every pass)", "--preload")


@dataclass
class ModelConfig:
    """What is trained: the model kind and its shapes."""

    name: str = _option("logistic_regression", "model", "--model",
                        ("logistic_regression", "factorization_machine", "wide_deep"))
    embedding_dim: int = _option(8, "factorization machine, wide & deep: embedding size per feature",
                                 "--embedding-dim")
    init_scale: float = _option(0.01, "embeddings start uniform in [-init_scale, init_scale] (a fixed function of "
                                "the key)", "--init-scale")
    hidden: str = _option("32,16", "wide & deep: hidden layer sizes of the MLP on the pooled embeddings, comma "
                          "separated (its weights live on the PS in blocks of embedding_dim + 1 values)", "--hidden")
    dense_in_group: bool = _option(
        False, "wide & deep: keep the MLP on every member of a group, updated from the in-group allreduce; it meets "
        "the other groups' updates on the PS every dense_sync_every clocks", "--dense-in-group")
    dense_sync_every: int = _option(8, "clocks between a group's exchanges of its dense copy with the PS",
                                    "--dense-sync-every")


@dataclass
class OptimizerConfig:
    """The server-side update rule."""

    name: str = _option("adagrad", "server-side optimizer", "--optimizer", ("sgd", "adagrad", "ftrl"))
    learning_rate: float = _option(0.1, "learning rate (FTRL: alpha)", "--lr")
    l1: float = _option(0.0, "L1 regularisation (FTRL only)", "--l1")
    l2: float = _option(0.0, "L2 regularisation", "--l2")
    ftrl_beta: float = _option(1.0, "FTRL beta", "--ftrl-beta")


@dataclass
class TrainConfig:
    """The step loop, logging and outputs."""

    epochs: int = _option(2, "passes over the data", "--epochs")
    batch_size: int = _option(256, "rows per rank per step", "--batch-size")
    max_steps: int = _option(0, "stop after this many steps per group (0 = no limit)", "--max-steps")
    stop_on_divergence: bool = _option(
        True, "stop the job (exit 1, naming the likely cause) once the training logloss has run far above a "
        "constant prediction's for three windows of 20,000 rows", "--stop-on-divergence")
    on_nonfinite: str = _option(
        "stop", "a NaN/Inf gradient: stop (the job fails, naming group, ranks and step) or skip (that step, "
        "with a warning)", "--on-nonfinite", ("stop", "skip"))
    log_interval: float = _option(5.0, "seconds between progress lines", "--log-interval")
    output_dir: str = _option("runs/latest", "directory for metrics.jsonl and run outputs", "--output-dir")
    final_eval: bool = _option(True, "evaluate the final model on the training data after training", "--final-eval")
    eval_every: int = _option(0, "with data.eval_path: also evaluate it every N clocks (0 = after every epoch only)",
                              "--eval-every")
    early_stopping: int = _option(
        0, "stop once the validation logloss has not improved for K evaluations at eval_every cuts, keeping the "
        "best cut as checkpoint 'best' (0 = never; needs data.eval_path and eval_every)", "--early-stopping")
    checkpoint: bool = _option(
        True, "write HDF5 checkpoints (after training and every checkpoint_every clocks)", "--checkpoint")
    checkpoint_every: int = _option(0, "also checkpoint every N clocks (0 = only after training)", "--checkpoint-every")
    checkpoint_dir: str = _option("", "checkpoint root (empty = <output_dir>/checkpoints)", "--checkpoint-dir")
    checkpoint_delta: int = _option(
        0, "between two full checkpoints, write this many deltas: only the rows changed since the cut before "
        "(0 = every checkpoint full)", "--checkpoint-delta")
    checkpoint_snapshot: bool = _option(
        True, "each shard writes its checkpoint file from a forked snapshot while it serves and the groups train "
        "on (false = inside its loop, the groups waiting)", "--checkpoint-snapshot")
    keep: int = _option(3, "published checkpoints to keep (older ones are deleted)", "--keep")
    resume: str = _option("", "resume from a checkpoint: 'latest' (in the checkpoint root) or a path", "--resume")
    delay_group: int = _option(-1, "fault injection: group whose every step is slowed (-1 = none)", "--delay-group")
    delay_seconds: float = _option(0.0, "fault injection: extra seconds per step for delay_group", "--delay-seconds")
    delay_factor: float = _option(
        1.0, "fault injection: delay_group's steps take this many times as long", "--delay-factor")
    straggle_probability: float = _option(
        0.0, "fault injection: each step of every group is stretched by delay_factor with this probability "
        "(transient stragglers; delay_group is then ignored)", "--straggle-probability")
    prefetch: bool = _option(
        True, "at staleness >= 1, pull the next step's keys while computing this step (overlaps PS latency)",
        "--prefetch")


@dataclass
class CommConfig:
    """What leaders send to the PS tier: filters that hold small updates back (they go later), value encodings;
    a simulated network between leaders and shards."""

    filter_threshold: float = _option(
        0.0, "significantly-modified filter: push an entry only once its accumulated update reaches this "
        "(0 = off)", "--filter-threshold")
    filter_relative: bool = _option(
        False, "the threshold is relative to the entry's weight: push once |update| >= threshold * |weight|",
        "--filter-relative")
    kkt: bool = _option(
        False, "KKT filter (needs optimizer.l1 > 0): hold back updates of zero weights while they stay inside "
        "the L1 band", "--kkt")
    key_cache: bool = _option(
        False, "send a key list a shard has seen lately as a 16-byte reference (shards keep 2M keys per leader)",
        "--key-cache")
    compression: str = _option(
        "none", "lossless compression of key frames (zstd: deltas of the sorted keys, byte-shuffled)",
        "--compression", ("none", "zstd"))
    compress_values: bool = _option(False, "with compression: compress pushed values too", "--compress-values")
    value_encoding: str = _option(
        "float32", "pushed values on the wire (float16/bfloat16: half the bytes, float8 (e5m2): a quarter; "
        "the rounding error is carried over)", "--value-encoding", ("float32", "float16", "bfloat16", "float8"))
    net_latency_ms: float = _option(
        0.0, "simulated network (benchmarks, tests): one-way latency in ms added to every leader<->shard "
        "connection by a relay process next to each leader (0 with net_bandwidth_gbit 0 = off, direct TCP)",
        "--net-latency-ms")
    net_bandwidth_gbit: float = _option(
        0.0, "simulated network: Gbit/s of each leader's link, each way, shared by its connections to every "
        "shard (0 = unlimited)", "--net-bandwidth-gbit")


@dataclass
class Config:
    """The whole job configuration."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    comm: CommConfig = field(default_factory=CommConfig)

    def validate(self) -> Config:
        """Check every range; returns self.

        Raises:
            ConfigError: naming the first bad field and its value.
        """
        for name, ok, rule in self._ranges():
            if not ok:
                section, key = name.split(".")
                raise ConfigError(f"{name} must be {rule}, got {getattr(getattr(self, section), key)!r}")
        if not all(part.strip().isdigit() and int(part) >= 1 for part in self.model.hidden.split(",") if part.strip()):
            raise ConfigError(f"model.hidden must be comma-separated sizes >= 1, got {self.model.hidden!r}")
        if self.comm.kkt and self.optimizer.l1 <= 0:
            raise ConfigError("comm.kkt needs optimizer.l1 > 0 (the KKT filter works on the L1 band)")
        if self.optimizer.l1 > 0 and self.optimizer.name != "ftrl":
            raise ConfigError(f"optimizer.l1 needs optimizer.name = 'ftrl', got {self.optimizer.name!r}")
        for name, path in (("data.path", self.data.path), ("data.eval_path", self.data.eval_path)):
            if path and (problem := _data_problem(path)):
                raise ConfigError(f"{name}: {problem}")
        if self.train.early_stopping and not (self.data.eval_path and self.train.eval_every):
            raise ConfigError("train.early_stopping needs data.eval_path (--eval-data) and train.eval_every "
                              "(--eval-every): it counts the evaluations at those cuts")
        evicts = self.cluster.evict_after > 0 or self.cluster.evict_below >= 0
        if evicts and not (self.train.checkpoint and self.train.checkpoint_every):
            raise ConfigError("cluster.evict_after and cluster.evict_below evict at checkpoint cuts: they need "
                              "train.checkpoint and train.checkpoint_every (--checkpoint-every N)")
        if self.cluster.security == "none" and not self.cluster.ps_tier:
            check_plaintext_host(resolve_bind_host(self.cluster.bind_host))
        if self.cluster.ps_tier and not Path(self.cluster.ps_tier).is_file():
            raise ConfigError(f"cluster.ps_tier: no such tier file {self.cluster.ps_tier!r} "
                              "(python -m hybrid_ps.serve writes it once its shards are up)")
        return self

    def _ranges(self) -> list[tuple[str, bool, str]]:
        """``(field, within its range, the range)`` for every field with a range."""
        return [
            ("cluster.servers", self.cluster.servers >= 0, ">= 0"),
            ("cluster.groups", self.cluster.groups >= 0, ">= 0"),
            ("cluster.ps_timeout", self.cluster.ps_timeout > 0, "> 0"),
            ("cluster.group_timeout", self.cluster.group_timeout == 0 or self.cluster.group_timeout >= 2,
             "0 (never) or >= 2 (leaders send heartbeats every second while they wait)"),
            ("cluster.vnodes", self.cluster.vnodes >= 1, ">= 1"),
            ("cluster.replication", self.cluster.replication >= 0, ">= 0"),
            ("cluster.failover_timeout", self.cluster.failover_timeout > 0, "> 0"),
            ("cluster.shard_restarts", self.cluster.shard_restarts >= 0, ">= 0"),
            ("cluster.first_group", self.cluster.first_group >= 0, ">= 0"),
            ("cluster.max_keys_per_message", self.cluster.max_keys_per_message >= 1, ">= 1"),
            ("data.rows", self.data.rows >= 1, ">= 1"),
            ("data.features", self.data.features >= 1, ">= 1"),
            ("data.nnz_per_row", self.data.nnz_per_row >= 1, ">= 1"),
            ("data.zipf_exponent", self.data.zipf_exponent > 0, "> 0"),
            ("data.interactions", self.data.interactions >= 0, ">= 0"),
            ("data.drift", self.data.drift >= 0, ">= 0"),
            ("model.embedding_dim", self.model.embedding_dim >= 1, ">= 1"),
            ("model.init_scale", self.model.init_scale >= 0, ">= 0"),
            ("model.dense_sync_every", self.model.dense_sync_every >= 2, ">= 2"),
            ("optimizer.learning_rate", self.optimizer.learning_rate > 0, "> 0"),
            ("optimizer.learning_rate", self.optimizer.learning_rate < math.inf, "finite"),
            ("optimizer.l1", self.optimizer.l1 >= 0, ">= 0"),
            ("optimizer.l2", self.optimizer.l2 >= 0, ">= 0"),
            ("optimizer.ftrl_beta", self.optimizer.ftrl_beta >= 0, ">= 0"),
            ("train.epochs", self.train.epochs >= 1, ">= 1"),
            ("train.batch_size", self.train.batch_size >= 1, ">= 1"),
            ("train.max_steps", self.train.max_steps >= 0, ">= 0"),
            ("train.log_interval", self.train.log_interval > 0, "> 0"),
            ("train.delay_seconds", self.train.delay_seconds >= 0, ">= 0"),
            ("train.delay_factor", self.train.delay_factor >= 1, ">= 1"),
            ("train.straggle_probability", 0 <= self.train.straggle_probability <= 1, "in [0, 1]"),
            ("train.checkpoint_every", self.train.checkpoint_every >= 0, ">= 0"),
            ("train.checkpoint_delta", self.train.checkpoint_delta >= 0, ">= 0"),
            ("cluster.admit_after", 1 <= self.cluster.admit_after <= 255, "in [1, 255]"),
            ("cluster.admit_sketch_mb", 0.001 <= self.cluster.admit_sketch_mb <= 65536, "in [0.001, 65536]"),
            ("cluster.evict_after", self.cluster.evict_after >= 0, ">= 0"),
            ("cluster.evict_below", not math.isnan(self.cluster.evict_below), "a number"),
            ("train.keep", self.train.keep >= 1, ">= 1"),
            ("train.eval_every", self.train.eval_every >= 0, ">= 0"),
            ("train.early_stopping", self.train.early_stopping >= 0, ">= 0"),
            ("comm.filter_threshold", self.comm.filter_threshold >= 0, ">= 0"),
            ("comm.net_latency_ms", 0 <= self.comm.net_latency_ms < math.inf, "finite and >= 0"),
            ("comm.net_bandwidth_gbit", 0 <= self.comm.net_bandwidth_gbit < math.inf, "finite and >= 0"),
        ]

    @property
    def resume_path(self) -> str:
        """The checkpoint to resume from ('' = start fresh); 'latest' means the checkpoint root."""
        return self.checkpoint_root if self.train.resume == "latest" else self.train.resume

    @property
    def checkpoint_root(self) -> str:
        """Where checkpoints go: ``train.checkpoint_dir`` or ``<output_dir>/checkpoints``."""
        return self.train.checkpoint_dir or f"{self.train.output_dir}/checkpoints"

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (for logs, metrics and checkpoints)."""
        return dataclasses.asdict(self)

    def to_json_dict(self) -> dict[str, dict[str, Any]]:
        """``to_dict`` with every value JSON can hold (staleness as text: ``inf`` is not JSON)."""
        data = self.to_dict()
        data["cluster"]["staleness"] = str(self.cluster.staleness)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, Any]]) -> Config:
        """The validated Config of a nested dict such as ``to_json_dict`` gives.

        Raises:
            ConfigError: unknown setting or bad value (named).
        """
        config = cls()
        for section, table in data.items():
            for key, value in table.items():
                _assign(config, f"{section}.{key}", value, "configuration")
        return config.validate()


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _data_problem(path: str) -> str | None:
    """What is wrong with a data path at first sight (``None``: a file, a directory with files, or a glob some
    file matches; data/parts.py checks the rest when the data is read)."""
    found = Path(path)
    if glob.has_magic(path) and not found.exists():
        return None if glob.glob(path) else f"no such file or directory, and no file matches {path!r}"
    if not found.exists():
        return f"no such file or directory, and no file matches {path!r}"
    if found.is_dir() and not any(p.is_file() and not p.name.startswith((".", "_")) for p in found.iterdir()):
        return f"{path!r} is a directory without data files"
    return None


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in _SECTIONS}


def _convert(name: str, kind: type, value: Any) -> Any:
    """Convert a TOML or command-line value to the field's type, naming the field on failure."""
    try:
        if name == "cluster.staleness":
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError("expected a whole number >= 0 or 'inf'")
            return parse_staleness(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            try:
                return int(value)
            except (TypeError, ValueError, OverflowError):
                raise ValueError("expected a whole number") from None
        if kind is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError("expected a number") from None
            if math.isnan(number):
                raise ValueError("NaN is not a valid setting")
            return number
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: invalid value {value!r}: {e}") from None


def _field_types() -> dict[str, tuple[type, dataclasses.Field]]:
    result = {}
    for section, section_type in _section_types().items():
        hints = typing.get_type_hints(section_type)
        for f in dataclasses.fields(section_type):
            result[f"{section}.{f.name}"] = (hints[f.name], f)
    return result


def _assign(config: Config, name: str, value: Any, source: str) -> None:
    fields = _field_types()
    if name not in fields:
        raise ConfigError(f"{source}: unknown setting {name!r} (see --help for the list)")
    kind, f = fields[name]
    converted = _convert(name, kind, value)
    choices = f.metadata.get("choices")
    if choices and converted not in choices:
        raise ConfigError(f"{name}: {converted!r} is not one of {', '.join(choices)}")
    section, key = name.split(".")
    setattr(getattr(config, section), key, converted)


def _load_toml(config: Config, path: str) -> None:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: invalid TOML: not UTF-8 text (byte {e.object[e.start]:#04x})") from None
    for section, table in document.items():
        if section not in _SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section [{section}] (expected {', '.join(_SECTIONS)})")
        for key, value in table.items():
            try:
                _assign(config, f"{section}.{key}", value, path)
            except ConfigError as e:  # name the file too (unknown settings already do)
                raise ConfigError(str(e) if str(e).startswith(f"{path}:") else f"{path}: {e}") from None


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``hybrid_ps.train: error: ...``, exit 2), no usage dump."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog.removeprefix('python -m ')}: error: {message} (see --help)\n")


def build_parser(prog: str = "python -m hybrid_ps.train", description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with ``--config``, ``--set`` and one flag per setting."""
    parser = OneLineErrorParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", metavar="FILE",
                        help="TOML file with [cluster], [data], [optimizer], [train], [comm] tables")
    parser.add_argument(
        "--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
        help="override one setting, e.g. --set optimizer.l2=1e-4 (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", help="log debug messages and show tracebacks for errors")
    for section, section_type in _section_types().items():
        group = parser.add_argument_group(f"[{section}]", section_type.__doc__)
        for f in dataclasses.fields(section_type):
            flag = f.metadata.get("flag") or f"--{section}-{f.name.replace('_', '-')}"
            group.add_argument(
                flag, dest=f"{section}.{f.name}", metavar=f.name.upper(), default=None,
                help=f"{f.metadata['help']} [{section}.{f.name}] (default: {f.default!r})",
                choices=f.metadata.get("choices"),
            )
    return parser


def load_config(args: argparse.Namespace) -> Config:
    """Merge defaults, ``--config``, ``--set`` and flags into a validated Config.

    Raises:
        ConfigError: unreadable file, unknown setting or bad value (named).
    """
    config = Config()
    if args.config:
        _load_toml(config, args.config)
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        _assign(config, name.strip(), value.strip(), "--set")
    for name in _field_types():
        value = getattr(args, name, None)
        if value is not None:
            _assign(config, name, value, "command line")
    return config.validate()
