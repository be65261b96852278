"""``python -m hybrid_ps.predict CKPT --data PATH --output FILE``: one probability per input row.

One process, no MPI, constant memory in the data: rows are read ``--batch-rows`` at a
time, in input order (part files in name order), and each row's probability of label 1
is written on a line of its own (``-``: standard output). The file appears whole or not
at all: it is written beside its final name and renamed when complete.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING

from .atomic import atomic_write
from .cli import plain_logging, run_main
from .config import DATA_FORMATS, OneLineErrorParser
from .errors import ConfigError, HybridPSError

if TYPE_CHECKING:
    from .data.batch import Batch
    from .models.predictor import TrainedModel

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the predictions; returns the exit code."""
    parser = OneLineErrorParser(prog="python -m hybrid_ps.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="ckpt-<clock> directory, its model.h5, or a checkpoint root")
    parser.add_argument("--data", required=True, help="rows to score: a file, a directory of parts or a glob, plain "
                        "or compressed, or 'synthetic' (the synthetic rows the model was trained on)")
    parser.add_argument("--format", "--data-format", dest="data_format", choices=DATA_FORMATS,
                        help="line format of the data (default: the format the model was trained on)")
    parser.add_argument("--output", required=True, help="file to write, one probability a line ('-': stdout)")
    parser.add_argument("--batch-rows", type=int, default=65536, help="rows read at a time (memory bound)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.batch_rows < 1:
        parser.error(f"--batch-rows must be >= 1, got {args.batch_rows}")
    return run_main(lambda: _predict(args), prog="hybrid_ps.predict", errors={HybridPSError: 1}, debug=args.debug,
                    logs=plain_logging, traceback="raise")


def _predict(args: argparse.Namespace) -> int:
    from .models.evaluation import data_batches
    from .models.predictor import load_model

    model = load_model(args.checkpoint)
    batches = data_batches(args.data, args.checkpoint, args.batch_rows, args.data_format)
    if args.output == "-":
        _write(model, batches, sys.stdout)
        return 0
    try:
        with atomic_write(args.output) as out:
            _write(model, batches, out)
    except OSError as e:  # the data's errors are DataError; this is the output's
        raise ConfigError(f"--output {args.output}: cannot write: {e.strerror or e}") from None
    return 0


def _write(model: TrainedModel, batches: Iterable[Batch], out: IO[str]) -> None:
    for batch in batches:
        probability = model.score(batch).probability
        if probability.size:
            out.write("\n".join(map(repr, probability.tolist())))
            out.write("\n")


if __name__ == "__main__":
    sys.exit(main())
