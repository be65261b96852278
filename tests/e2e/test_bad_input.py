"""Bad input, end to end: every malformed data file, config, flag or checkpoint stops the real command line
with ONE error line naming the file and line, the field or the path, a non-zero exit and no traceback
(a traceback only with ``--debug``).

Tables of cases, each run as a real subprocess, the cheapest way that still goes through the real CLI:
``python -m hybrid_ps.train`` alone (an MPI singleton) for what is refused before MPI is needed,
``mpiexec -n 2 python -m hybrid_ps.train`` (1 server, 1 worker) for what needs a layout, a checkpoint
to resume from or a worker reading data, and ``python -m hybrid_ps.evaluate`` (one process, no MPI)
for checkpoints and for every kind of bad data line.

Exit codes: train refuses bad settings, a layout that does not fit or a checkpoint it cannot resume
from before any work, with 2 (argparse's convention); a rank failing while the job runs ends it with
MPI_Abort, exit 1. Evaluate exits 1 on a bad file or checkpoint, 2 on a usage error.

Speed: the module fixture ``runs`` prepares every case's files and starts all the commands at once,
a few at a time in threads (most of a failing MPI job's time is its launcher and its 1 s abort grace);
each test then checks its own finished command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import pytest

from hybrid_ps import checkpoint
from mpi_launch.detect import (
    find_mpiexec,
    idle_friendly_environment,
    mpi_implementation,
)

pytestmark = pytest.mark.e2e

PARALLEL = 3  # commands running at once
ERROR_LINE = re.compile(r"^hybrid_ps\.(train|evaluate)(: rank \d+)?: error: ")
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \[(worker|server) [\d/]+\] ")  # the ranks' progress lines
MPI_ABORT_NOTE = re.compile(r"^Abort\(\d+\) on node \d+ .*MPI_Abort")  # MPICH's own note after MPI_Abort

GOOD_LINES = 100  # every bad data file starts with this many good lines: the error is found inside a real chunk
LINE = GOOD_LINES + 1  # the first bad line's number


def _reads_any_file() -> bool:
    """Whether this process reads a chmod 000 file (root does, unless its DAC capabilities are dropped)."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        probe = Path(directory) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
        except PermissionError:
            return False
        return True


READS_ANY_FILE = os.geteuid() == 0 and _reads_any_file()  # then the "unreadable" cases are skipped
SKIP_UNREADABLE = "this process reads a chmod 000 file (root)"


def _good_lines() -> bytes:
    return b"".join(b"%d %d:1 %d:0.5\n" % (i % 2, i, i + 1) for i in range(GOOD_LINES))


def _python(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m <module> ARGS`` in ``cwd`` (relative paths keep the expected messages short)."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def _mpi_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``mpiexec -n 2 python -m hybrid_ps.train ARGS`` in ``cwd``, as the e2e ``run_job`` fixture starts jobs."""
    mpiexec = find_mpiexec()
    env = {**os.environ, **idle_friendly_environment(mpi_implementation(mpiexec), 32)}
    command = [mpiexec, "-n", "2", sys.executable, "-m", "hybrid_ps.train", "--output-dir", "out",
               "--log-interval", "1", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=180, env=env, check=False)


def the_error_line(done: subprocess.CompletedProcess, exit_code: int, under_mpi: bool = False) -> str:
    """The one error line of a failed command; fails on another exit code, a traceback or more lines.

    Alone, stderr must be exactly that line. Under mpiexec the ranks' log lines (none of them about an
    error) and MPICH's note that MPI_Abort was called may surround it.
    """
    stderr = done.stderr
    assert done.returncode == exit_code, f"exit {done.returncode}, stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    if under_mpi:  # the launcher forwards every rank's stderr through one pipe: a log line may start mid-line
        stderr = re.sub(r"(?<=\S)(\d\d:\d\d:\d\d \[(?:worker|server) )", r"\n\1", stderr)
    lines = [line for line in stderr.splitlines() if line.strip() or not under_mpi]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    assert len(errors) == 1, f"expected one error line, got:\n{stderr}"
    others = [line for line in lines if line != errors[0]]
    if under_mpi:
        others = [line for line in others if not MPI_ABORT_NOTE.match(line)
                  and not (LOG_LINE.match(line) and not re.search(r"error|fail", line, re.IGNORECASE))]
    assert not others, f"more than the error line on stderr:\n{stderr}"
    print(errors[0])  # pytest -s shows every case's line
    return errors[0]


def _assert_message(line: str, expected: str) -> None:
    """``expected`` is the whole message, or its start when it ends with '...' (the rest is HDF5's or Python's)."""
    message = ERROR_LINE.sub("", line)
    if expected.endswith("..."):
        assert message.startswith(expected[:-3]), line
    else:
        assert message == expected, line


# == the tables ================================================================================================

BAD_LINES = [  # (lines after the good ones, the message after "bad.svm:")
    pytest.param(b"x 3:1\n", f"{LINE}: label must be 0/1 or -1/+1: 'x'", id="non-numeric label"),
    pytest.param(b"2 3:1\n", f"{LINE}: label must be 0/1 or -1/+1: '2'", id="label out of range"),
    pytest.param(b"1 3:1\n0 2:abc\n", f"{LINE + 1}: value is not a number: '2:abc'", id="bad idx:val token"),
    pytest.param(b"1 3:1 5\n", f"{LINE}: expected index:value: '5'", id="missing colon"),
    pytest.param(b"1 a:1\n", f"{LINE}: index must be an integer in [0, 2**64 - 2]: 'a:1'", id="non-numeric index"),
    pytest.param(b"1 -3:1\n", f"{LINE}: index must be an integer in [0, 2**64 - 2]: '-3:1'", id="negative index"),
    pytest.param(b"1 18446744073709551616:1\n",
                 f"{LINE}: index must be an integer in [0, 2**64 - 2]: '18446744073709551616:1'",
                 id="index beyond uint64"),
    pytest.param(b"1 18446744073709551615:1\n",
                 f"{LINE}: index must be an integer in [0, 2**64 - 2]: '18446744073709551615:1'",
                 id="index is the bias key"),
    pytest.param(b"1 3:nan\n", f"{LINE}: value is not a finite float32 number: '3:nan'", id="NaN value"),
    pytest.param(b"1 3:-inf\n", f"{LINE}: value is not a finite float32 number: '3:-inf'", id="Inf value"),
    pytest.param(b"1 3:1e39\n", f"{LINE}: value is not a finite float32 number: '3:1e39'", id="float32 overflow"),
    pytest.param(b"1 3:\xff\xfe\n", f"{LINE}: value is not a number: '3:\\xff\\xfe' (not UTF-8 text)",
                 id="non-UTF-8 value"),
    pytest.param(b"\xe91 3:1\n", f"{LINE}: label must be 0/1 or -1/+1: '\\xe91' (not UTF-8 text)",
                 id="non-UTF-8 label"),
]
# The same reader runs in every worker rank of a training job; these go through a whole mpiexec job too.
BAD_LINES_UNDER_TRAIN = [p for p in BAD_LINES
                         if p.id in ("non-numeric label", "index beyond uint64", "NaN value", "non-UTF-8 value")]

BAD_DATA_FILES = {  # kind: (what evaluate says, or None: not an error for it, what train says, train's exit code)
    "missing": ("{p}: no such file", "data.path: no such file or directory, and no file matches '{p}'", 2),
    "directory": ("{p}: a directory without data files", "data.path: '{p}' is a directory without data files", 2),
    "empty": ("{p}: file is empty", "{p}: file is empty", 1),
    "comments only": ("{p}: no data rows (only blank lines and comments)", None, None),
    "unreadable": ("{p}: cannot read: Permission denied", "{p}: cannot read: Permission denied", 1),
}

BAD_TOML = [
    pytest.param(b'[data]\nrows = 10\npath = "x\n', "bad.toml: invalid TOML: Illegal character '\\n' (at line 3...",
                 id="syntax error"),
    pytest.param(b"[data]\nrows = 10\n[data]\nrows = 11\n", "bad.toml: invalid TOML: Cannot declare ('data',) twice...",
                 id="table twice"),
    pytest.param(b"[data]\nrows = 10\n\xff = 1\n", "bad.toml:3: invalid TOML: not UTF-8 text (byte 0xff)",
                 id="not UTF-8"),
    pytest.param(b"[network]\nwidth = 2\n",
                 "bad.toml: unknown section [network] (expected cluster, data, model, optimizer, train, comm)",
                 id="unknown section"),
    pytest.param(b"rows = 10\n", "bad.toml: unknown section [rows] (expected cluster, data, model, optimizer, train, comm)",
                 id="key outside a section"),
    pytest.param(b"[data]\nrowz = 10\n", "bad.toml: unknown setting 'data.rowz' (see --help for the list)",
                 id="unknown key"),
    pytest.param(b'[data]\nrows = "ten"\n', "bad.toml: data.rows: invalid value 'ten': expected a whole number",
                 id="string for int"),
    pytest.param(b"[train]\nbatch_size = 1.5\n",
                 "bad.toml: train.batch_size: invalid value 1.5: expected a whole number", id="fraction for int"),
    pytest.param(b"[train]\nepochs = [1, 2]\n", "bad.toml: train.epochs: invalid value [1, 2]: expected a whole number",
                 id="list for int"),
    pytest.param(b"[data]\nrows = inf\n", "bad.toml: data.rows: invalid value inf: expected a whole number",
                 id="inf for int"),
    pytest.param(b'[optimizer]\nlearning_rate = "fast"\n',
                 "bad.toml: optimizer.learning_rate: invalid value 'fast': expected a number", id="string for float"),
    pytest.param(b"[train]\noutput_dir = 5\n", "bad.toml: train.output_dir: invalid value 5: expected a string",
                 id="int for string"),
    pytest.param(b'[data]\npreload = "maybe"\n',
                 "bad.toml: data.preload: invalid value 'maybe': expected true or false", id="string for bool"),
    pytest.param(b'[cluster]\nstaleness = "soon"\n',
                 "bad.toml: cluster.staleness: invalid value 'soon': staleness must be a whole number >= 0 or 'inf', "
                 "got 'soon'", id="bad staleness"),
    pytest.param(b'[optimizer]\nname = "adam"\n', "bad.toml: optimizer.name: 'adam' is not one of sgd, adagrad, ftrl",
                 id="unknown optimizer"),
    pytest.param(b'[comm]\nvalue_encoding = "int4"\n',
                 "bad.toml: comm.value_encoding: 'int4' is not one of float32, float16, bfloat16, float8",
                 id="bad value_encoding"),
    pytest.param(b"[data]\nrows = -1\n", "data.rows must be >= 1, got -1", id="out of range"),
    pytest.param(None, "bad.toml: config file not found", id="no such file"),
    pytest.param("directory", "bad.toml: cannot read config file: Is a directory", id="a directory"),
]

BAD_OPTIONS = [
    pytest.param(["--bogus", "1"], "unrecognized arguments: --bogus 1 (see --help)", id="unknown option"),
    pytest.param(["--optimizer", "adam"], "argument --optimizer: invalid choice: 'adam'...", id="unknown optimizer"),
    pytest.param(["--value-encoding", "int4"], "argument --value-encoding: invalid choice: 'int4'...",
                 id="bad value_encoding"),
    pytest.param(["--rows", "-1"], "data.rows must be >= 1, got -1", id="negative rows"),
    pytest.param(["--rows", "ten"], "data.rows: invalid value 'ten': expected a whole number", id="rows not a number"),
    pytest.param(["--batch-size", "0"], "train.batch_size must be >= 1, got 0", id="zero batch size"),
    pytest.param(["--epochs", "0"], "train.epochs must be >= 1, got 0", id="zero epochs"),
    pytest.param(["--staleness", "-1"],
                 "cluster.staleness: invalid value '-1': staleness must be a whole number >= 0 or 'inf', got -1.0",
                 id="negative staleness"),
    pytest.param(["--staleness", "1.5"],
                 "cluster.staleness: invalid value '1.5': staleness must be a whole number >= 0 or 'inf', got 1.5",
                 id="fractional staleness"),
    pytest.param(["--servers", "-1"], "cluster.servers must be >= 0, got -1", id="negative servers"),
    pytest.param(["--replication", "-1"], "cluster.replication must be >= 0, got -1", id="negative replication"),
    pytest.param(["--lr", "nan"], "optimizer.learning_rate: invalid value 'nan': NaN is not a valid setting",
                 id="NaN learning rate"),
    pytest.param(["--lr", "inf"], "optimizer.learning_rate must be finite, got inf", id="inf learning rate"),
    pytest.param(["--l1", "0.1"], "optimizer.l1 needs optimizer.name = 'ftrl', got 'adagrad'", id="l1 without ftrl"),
    pytest.param(["--kkt", "true"], "comm.kkt needs optimizer.l1 > 0 (the KKT filter works on the L1 band)",
                 id="kkt without l1"),
    pytest.param(["--straggle-probability", "2"], "train.straggle_probability must be in [0, 1], got 2.0",
                 id="probability above 1"),
    pytest.param(["--group-timeout", "1"], "cluster.group_timeout must be 0 (never) or >= 2 (leaders send heartbeats "
                 "every second while they wait), got 1.0", id="group timeout too short"),
    pytest.param(["--preload", "maybe"], "data.preload: invalid value 'maybe': expected true or false",
                 id="bad boolean"),
    pytest.param(["--set", "data.rows"], "--set 'data.rows': expected SECTION.KEY=VALUE", id="--set without ="),
    pytest.param(["--set", "data.rowz=1"], "--set: unknown setting 'data.rowz' (see --help for the list)",
                 id="--set unknown key"),
    pytest.param(["--set", "optimizer.name=adam"], "optimizer.name: 'adam' is not one of sgd, adagrad, ftrl",
                 id="--set unknown optimizer"),
    pytest.param(["--ps-tier", "tier.json"], "cluster.ps_tier: no such tier file 'tier.json' (python -m "
                 "hybrid_ps.serve writes it once its shards are up)", id="missing tier file"),
    pytest.param(["--rows", "100"], "hybrid_ps needs at least 2 MPI ranks (1 server + 1 worker), got 1; "
                 "run it as: mpiexec -n 8 python -m hybrid_ps.train", id="one rank"),
]

BAD_LAYOUTS = [  # under mpiexec -n 2
    pytest.param(["--replication", "2"], "cluster.replication = 2 needs at least as many servers; this job has 1 "
                 "(cluster.servers)", id="replication above servers"),
    pytest.param(["--servers", "2"], "cluster.servers = 2 leaves no worker ranks in a world of 2", id="no workers"),
]

HDF5_UNREADABLE = "not a readable HDF5 file (truncated or foreign): ..."
BAD_CHECKPOINTS_FOR_EVALUATE = [  # python -m hybrid_ps.evaluate NAME --data synthetic, in the `broken` directory
    pytest.param("no-such-dir", "no-such-dir: not a checkpoint: no such file or directory", id="path does not exist"),
    pytest.param("empty-dir", "empty-dir: not a checkpoint (no model.h5) and no 'latest' pointer", id="empty dir"),
    pytest.param("notes.txt", "notes.txt: not a checkpoint (no model.h5) and no 'latest' pointer", id="a text file"),
    pytest.param("text-model", f"text-model/model.h5: {HDF5_UNREADABLE}", id="model.h5 not HDF5"),
    pytest.param("truncated-model", f"truncated-model/model.h5: {HDF5_UNREADABLE}", id="model.h5 truncated"),
    pytest.param("truncated-shard", f"truncated-shard/shard-0.h5: {HDF5_UNREADABLE}", id="shard file truncated"),
    pytest.param("missing-shard", "missing-shard: shard file shard-0.h5 is missing", id="shard file missing"),
    pytest.param("foreign", "foreign/model.h5: not a hybrid_ps model file (attribute 'kind' is None)",
                 id="foreign HDF5"),
    pytest.param("format-99", "format-99/model.h5: checkpoint format 99, this hybrid_ps reads 1 and 2",
                 id="other format version"),
    pytest.param("dangling", "dangling/latest points to ckpt-99, which has no model.h5", id="latest dangling"),
    pytest.param("width-2", "width-2: logistic_regression needs width 1, checkpoint has 2", id="other width"),
    pytest.param("other-kind", "other-kind: model kind 'deep_crossing' is not one of logistic_regression, factorization_machine, wide_deep",
                 id="other model kind"),
    pytest.param("trained-on-a-file", "--data synthetic: trained-on-a-file was trained on 'train.svm'",
                 id="synthetic data for a file-trained model"),
    pytest.param("no-synthetic-shape", "--data synthetic: no-synthetic-shape does not record the synthetic data's "
                 "rows, features, nnz_per_row, zipf_exponent, seed; give --data FILE",
                 id="synthetic shape not recorded"),
]

EVALUATE_USAGE = [  # python -m hybrid_ps.evaluate CKPT ARGS
    pytest.param([], "give --data FILE (or --data synthetic), or --info (see --help)", id="no data"),
    pytest.param(["--data", "synthetic", "--batch-rows", "0"], "--batch-rows must be >= 1, got 0 (see --help)",
                 id="zero batch rows"),
    pytest.param(["--data", "synthetic", "--bogus"], "unrecognized arguments: --bogus (see --help)",
                 id="unknown option"),
]

BAD_RESUMES = [  # mpiexec -n 2 ... --resume PATH ARGS; PATH in `broken`, or @trained: the real one
    pytest.param("no-such-dir", [], "{root}/no-such-dir: not a checkpoint: no such file or directory",
                 id="path does not exist"),
    pytest.param("@none", ["--checkpoint-dir", "none"], "none: not a checkpoint: no such file or directory",
                 id="latest without a checkpoint"),
    pytest.param("text-model", [], f"{{root}}/text-model/model.h5: {HDF5_UNREADABLE}", id="model.h5 not HDF5"),
    pytest.param("truncated-model", [], f"{{root}}/truncated-model/model.h5: {HDF5_UNREADABLE}",
                 id="model.h5 truncated"),
    pytest.param("truncated-shard", [], f"{{root}}/truncated-shard/shard-0.h5: {HDF5_UNREADABLE}",
                 id="shard file truncated"),
    pytest.param("missing-shard", [], "{root}/missing-shard: shard file shard-0.h5 is missing",
                 id="shard file missing"),
    pytest.param("foreign", [], "{root}/foreign/model.h5: not a hybrid_ps model file (attribute 'kind' is None)",
                 id="foreign HDF5"),
    pytest.param("width-2", [], "{root}/width-2/ckpt-3/model.h5: holds a logistic_regression model with 2 value(s) "
                 "per key; this job trains logistic_regression with 1", id="other width"),
    pytest.param("@trained", ["--optimizer", "sgd"], "{trained}/shard-0.h5: trained with optimizer 'adagrad', "
                 "this job uses 'sgd' (optimizer.name)", id="other optimizer"),
    pytest.param("two-groups", [], "{root}/two-groups: written by 2 groups at different clocks [3, 5]; resume it "
                 "with cluster.groups = 2", id="other number of groups"),
]


# == preparing and starting every case at once =================================================================


class Runs:
    """Every case's command, started ahead in a few threads; ``result`` waits for one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pool = ThreadPoolExecutor(PARALLEL)
        self.started: dict[tuple[str, str], Future] = {}

    def case_dir(self, table: str, case: str) -> Path:
        path = self.root / table / re.sub(r"[^\w.-]+", "_", case)
        path.mkdir(parents=True)
        return path

    def start(self, table: str, case: str, run, *args: str, cwd: Path) -> None:
        self.started[table, case] = self.pool.submit(run, *args, cwd=cwd)

    def result(self, table: str, request: pytest.FixtureRequest) -> subprocess.CompletedProcess:
        return self.started[table, request.node.callspec.id].result()


def _data_file(directory: Path, kind: str, content: bytes = b"") -> str:
    """Make the data file of a case (``bad`` for lines, else a kind of BAD_DATA_FILES); returns its name."""
    name = "bad.svm"
    if kind == "bad":
        (directory / name).write_bytes(_good_lines() + content + b"1 7:1\n")
    elif kind == "empty":
        (directory / name).write_bytes(b"")
    elif kind == "comments only":
        (directory / name).write_bytes(b"# a header\n\n   \n# 1 2:3\n")
    elif kind == "directory":
        (directory / name).mkdir()
    elif kind == "unreadable":
        (directory / name).write_bytes(b"1 1:1\n")
        (directory / name).chmod(0)
    return name


def _hand_written(root: Path, width: int = 1, clock_table: tuple[int, ...] = (3,), data: dict | None = None) -> Path:
    """A checkpoint written with the checkpoint module (the only way to get another width or clock table)."""
    if data is None:
        data = {"source": "synthetic", "rows": 100, "features": 50, "nnz_per_row": 20, "zipf_exponent": 1.1, "seed": 0}
    n, groups = 5, len(clock_table)
    state = checkpoint.ShardState(
        shard_id=0, num_shards=1, clock=min(clock_table), keys=np.arange(n, dtype=np.uint64),
        values=np.ones((n, width), np.float32), state={"accumulator": np.ones((n, width), np.float32)},
        clock_table=np.array(clock_table, np.int64), finished=np.zeros(groups, bool), optimizer="adagrad",
        hyperparameters={"learning_rate": 0.1})
    checkpoint.write_shard_file(checkpoint.partial_dir(root, 3), state)
    return checkpoint.publish(root, 3, {"model": {"kind": "logistic_regression", "width": width}, "data": data})


def _break_checkpoints(root: Path, trained: Path) -> None:
    """Bad checkpoints under ``root``, each made from the real one ``trained`` (or by hand), by name."""
    root.mkdir()

    def copy(name: str) -> Path:
        return Path(shutil.copytree(trained, root / name))

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    (root / "empty-dir").mkdir()
    (root / "notes.txt").write_text("not a checkpoint\n")
    (root / "text-model").mkdir()
    (root / "text-model" / "model.h5").write_text("not HDF5 at all\n")
    truncate(copy("truncated-model") / "model.h5")
    truncate(copy("truncated-shard") / "shard-0.h5")
    (copy("missing-shard") / "shard-0.h5").unlink()
    (root / "foreign").mkdir()
    with h5py.File(root / "foreign" / "model.h5", "w") as f:
        f["x"] = [1]
    with h5py.File(copy("format-99") / "model.h5", "r+") as f:
        f.attrs["format_version"] = 99
    with h5py.File(copy("other-kind") / "model.h5", "r+") as f:
        f["model"].attrs["kind"] = "deep_crossing"
    with h5py.File(copy("trained-on-a-file") / "model.h5", "r+") as f:
        f["data"].attrs["source"] = "train.svm"
    (root / "dangling").mkdir()
    (root / "dangling" / "latest").write_text("ckpt-99\n")
    _hand_written(root / "width-2", width=2)
    _hand_written(root / "two-groups", clock_table=(3, 5))
    _hand_written(root / "no-synthetic-shape", data={"source": "synthetic"})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The checkpoint of a tiny real job (2 ranks: 1 server, 1 worker; 100 rows)."""
    directory = tmp_path_factory.mktemp("trained")
    done = _mpi_train("--rows", "100", "--features", "50", "--epochs", "1", "--batch-size", "16",
                      "--final-eval", "false", cwd=directory)
    assert done.returncode == 0, done.stderr[-3000:]
    return checkpoint.resolve_checkpoint(directory / "out" / "checkpoints")


@pytest.fixture(scope="module")
def broken(tmp_path_factory, trained) -> Path:
    root = tmp_path_factory.mktemp("checkpoints") / "broken"
    _break_checkpoints(root, trained)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained, broken):
    """Prepare every case's files and start every command (each test then waits for its own)."""
    runs = Runs(tmp_path_factory.mktemp("cases"))
    for p in BAD_LINES:
        cwd = runs.case_dir("line/evaluate", p.id)
        runs.start("line/evaluate", p.id, _python, "hybrid_ps.evaluate", str(trained), "--data",
                   _data_file(cwd, "bad", p.values[0]), cwd=cwd)
    for p in BAD_LINES_UNDER_TRAIN:
        cwd = runs.case_dir("line/train", p.id)
        runs.start("line/train", p.id, _mpi_train, "--data", _data_file(cwd, "bad", p.values[0]), cwd=cwd)
    for kind, (_, for_train, train_exit) in BAD_DATA_FILES.items():
        if kind == "unreadable" and READS_ANY_FILE:
            continue
        cwd = runs.case_dir("file/evaluate", kind)
        runs.start("file/evaluate", kind, _python, "hybrid_ps.evaluate", str(trained), "--data",
                   _data_file(cwd, kind), cwd=cwd)
        if for_train:
            cwd = runs.case_dir("file/train", kind)
            run = _python if train_exit == 2 else _mpi_train  # refused by the config check, or by the worker
            args = ("hybrid_ps.train",) if run is _python else ()
            runs.start("file/train", kind, run, *args, "--data", _data_file(cwd, kind), cwd=cwd)
    for p in BAD_TOML:
        cwd = runs.case_dir("toml", p.id)
        text = p.values[0]
        if text == "directory":
            (cwd / "bad.toml").mkdir()
        elif text is not None:
            (cwd / "bad.toml").write_bytes(text)
        runs.start("toml", p.id, _python, "hybrid_ps.train", "--config", "bad.toml", cwd=cwd)
    for p in BAD_OPTIONS:
        runs.start("option", p.id, _python, "hybrid_ps.train", *p.values[0], cwd=runs.case_dir("option", p.id))
    for p in BAD_LAYOUTS:
        runs.start("layout", p.id, _mpi_train, *p.values[0], cwd=runs.case_dir("layout", p.id))
    for p in BAD_CHECKPOINTS_FOR_EVALUATE:
        runs.start("checkpoint/evaluate", p.id, _python, "hybrid_ps.evaluate", p.values[0], "--data", "synthetic",
                   cwd=broken)
    for p in EVALUATE_USAGE:
        runs.start("usage/evaluate", p.id, _python, "hybrid_ps.evaluate", str(trained), *p.values[0], cwd=trained)
    for p in BAD_RESUMES:
        name, argv = p.values[:2]
        cwd = runs.case_dir("resume", p.id)
        resume = {"@trained": str(trained), "@none": "latest"}.get(name, str(broken / name))
        runs.start("resume", p.id, _mpi_train, "--rows", "100", "--resume", resume, *argv, cwd=cwd)
    yield runs
    runs.pool.shutdown(cancel_futures=True)


# == the tests =================================================================================================


@pytest.mark.parametrize("bad, expected", BAD_LINES)
def test_bad_data_line_names_file_and_line_in_evaluate(runs, request, bad, expected):
    done = runs.result("line/evaluate", request)
    _assert_message(the_error_line(done, 1), f"bad.svm:{expected}")


@pytest.mark.parametrize("bad, expected", BAD_LINES_UNDER_TRAIN)
def test_bad_data_line_ends_the_training_job(runs, request, bad, expected):
    done = runs.result("line/train", request)
    line = the_error_line(done, 1, under_mpi=True)
    assert line.startswith("hybrid_ps.train: rank 0: error: ")
    _assert_message(line, f"bad.svm:{expected}")


@pytest.mark.parametrize("kind", BAD_DATA_FILES)
def test_bad_data_file_in_evaluate(runs, request, kind):
    if kind == "unreadable" and READS_ANY_FILE:
        pytest.skip(SKIP_UNREADABLE)
    done = runs.result("file/evaluate", request)
    _assert_message(the_error_line(done, 1), BAD_DATA_FILES[kind][0].format(p="bad.svm"))


@pytest.mark.parametrize("kind", [kind for kind, (_, for_train, _) in BAD_DATA_FILES.items() if for_train])
def test_bad_data_file_in_train(runs, request, kind):
    if kind == "unreadable" and READS_ANY_FILE:
        pytest.skip(SKIP_UNREADABLE)
    _, expected, exit_code = BAD_DATA_FILES[kind]
    done = runs.result("file/train", request)
    _assert_message(the_error_line(done, exit_code, under_mpi=exit_code == 1), expected.format(p="bad.svm"))


@pytest.mark.parametrize("text, expected", BAD_TOML)
def test_bad_toml_names_the_file_and_line_or_field(runs, request, text, expected):
    _assert_message(the_error_line(runs.result("toml", request), 2), expected)


@pytest.mark.parametrize("argv, expected", BAD_OPTIONS)
def test_bad_option_names_the_field(runs, request, argv, expected):
    _assert_message(the_error_line(runs.result("option", request), 2), expected)


@pytest.mark.parametrize("argv, expected", BAD_LAYOUTS)
def test_layout_that_does_not_fit_the_world(runs, request, argv, expected):
    _assert_message(the_error_line(runs.result("layout", request), 2, under_mpi=True), expected)


@pytest.mark.parametrize("name, expected", BAD_CHECKPOINTS_FOR_EVALUATE)
def test_bad_checkpoint_in_evaluate(runs, request, name, expected):
    _assert_message(the_error_line(runs.result("checkpoint/evaluate", request), 1), expected)


@pytest.mark.parametrize("argv, expected", EVALUATE_USAGE)
def test_evaluate_usage_errors(runs, request, argv, expected):
    _assert_message(the_error_line(runs.result("usage/evaluate", request), 2), expected)


@pytest.mark.parametrize("name, argv, expected", BAD_RESUMES)
def test_bad_checkpoint_to_resume_from_is_refused_before_any_work(runs, request, broken, trained, name, argv,
                                                                   expected):
    done = runs.result("resume", request)
    _assert_message(the_error_line(done, 2, under_mpi=True), expected.format(root=broken, trained=trained))


def test_debug_shows_the_traceback(trained, tmp_path):
    (tmp_path / "bad.toml").write_bytes(b"[data]\nrows = -1\n")
    done = _python("hybrid_ps.train", "--config", "bad.toml", "--debug", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" in done.stderr
    assert done.stderr.splitlines()[-1] == "hybrid_ps.train: error: data.rows must be >= 1, got -1"

    _data_file(tmp_path, "bad", b"x 1:1\n")
    done = _python("hybrid_ps.evaluate", str(trained), "--data", "bad.svm", "--debug", cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" in done.stderr
    assert f"DataError: bad.svm:{LINE}: label must be 0/1 or -1/+1: 'x'" in done.stderr

    done = _mpi_train("--data", "bad.svm", "--debug", cwd=tmp_path)  # a rank failing mid-job
    assert done.returncode == 1 and "Traceback" in done.stderr
    assert f"DataError: bad.svm:{LINE}: label must be 0/1 or -1/+1: 'x'" in done.stderr
