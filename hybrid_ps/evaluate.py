"""``python -m hybrid_ps.evaluate CKPT --data FILE [--format json]``: metrics of a checkpointed model.

One process, no MPI. ``CKPT`` is a ``ckpt-<clock>`` directory, its
``model.h5``, or a checkpoint root (its ``latest`` is used). ``--data
synthetic`` regenerates the synthetic dataset the checkpoint was trained on.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys

from .checkpoint import checkpoint_info
from .cli import plain_logging, run_main
from .config import DATA_FORMATS, OneLineErrorParser
from .errors import DataError, HybridPSError

__all__ = ["main"]

log = logging.getLogger("hybrid_ps.evaluate")


def _print(result: dict, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()},
                         indent=2, default=str))
        return
    for key, value in result.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.6f}"
        print(f"{key:<16} {value}")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, evaluate or describe the checkpoint, print; returns the exit code."""
    parser = OneLineErrorParser(prog="python -m hybrid_ps.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="ckpt-<clock> directory, its model.h5, or a checkpoint root")
    parser.add_argument("--data", help="data to evaluate on (a file, a directory of parts or a glob, plain or "
                        "compressed), or 'synthetic'")
    parser.add_argument("--data-format", choices=DATA_FORMATS,
                        help="line format of the data (default: the format the model was trained on)")
    parser.add_argument("--info", action="store_true", help="print what the checkpoint holds instead")
    parser.add_argument("--format", default="text", help="output format: text or json (the data's format is "
                        "--data-format)")
    parser.add_argument("--batch-rows", type=int, default=65536, help="rows read at a time (memory bound)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if not args.info and not args.data:
        parser.error("give --data FILE (or --data synthetic), or --info")
    if args.format not in ("text", "json"):
        hint = f"; for the data's format use --data-format {args.format}" if args.format in DATA_FORMATS else ""
        parser.error(f"--format is the output format, text or json, not {args.format!r}{hint}")
    if args.batch_rows < 1:
        parser.error(f"--batch-rows must be >= 1, got {args.batch_rows}")
    return run_main(lambda: _evaluate(args), prog="hybrid_ps.evaluate", errors={HybridPSError: 1}, debug=args.debug,
                    logs=plain_logging, traceback="raise")


def _evaluate(args: argparse.Namespace) -> int:
    """Evaluate or describe the checkpoint and print the result; returns 0."""
    if args.info:
        result = checkpoint_info(args.checkpoint)
    else:
        from .models.evaluation import data_batches, evaluate_model

        result = evaluate_model(args.checkpoint, data_batches(args.data, args.checkpoint, args.batch_rows,
                                                                        args.data_format))
        if not result["rows"]:
            raise DataError(f"{args.data}: no data rows (only blank lines and comments)")
    _print(result, args.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
