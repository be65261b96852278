"""The runner every entry point's ``main`` shares: logging set up, user errors as one line, exit codes.

An entry point parses its arguments (usage errors exit 2 through argparse),
then hands the rest of its work to ``run_main``::

    return run_main(lambda: _evaluate(args), prog="hybrid_ps.evaluate", debug=args.debug,
                    logs=plain_logging, errors={HybridPSError: 1}, traceback="raise")

A user-facing error becomes ``<prog>: error: <message>`` on stderr and the
exit code ``errors`` gives its type; with ``debug`` the traceback is shown
as ``traceback`` says. Ctrl-C exits with ``EXIT_INTERRUPTED`` (128 + SIGINT).
"""

from __future__ import annotations

import logging
import sys
import traceback as tracebacks
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Literal

from .errors import HybridPSError

__all__ = ["EXIT_INTERRUPTED", "TracebackStyle", "plain_logging", "report", "run_main"]

EXIT_INTERRUPTED = 130
"""The exit code after Ctrl-C (KeyboardInterrupt), as shells report a process ended by SIGINT."""

TracebackStyle = Literal["print", "log", "raise"]
"""With ``debug``: ``print`` the traceback before the error line, ``log`` it (``<where> failed``, through the
logging setup) before the line, or ``raise`` the error (Python prints it and exits 1) instead of the line."""

_USER_ERRORS: Mapping[type[Exception], int] = MappingProxyType({HybridPSError: 1})


def plain_logging(debug: bool) -> None:
    """Log records as bare messages on stderr: warnings and up (everything with ``debug``)."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(message)s")


def report(prog: str, error: object, *, where: str = "") -> None:
    """Print the one error line ``<prog>: [<where>: ]error: <error>`` on stderr (flushed)."""
    prefix = f"{prog}: {where}: " if where else f"{prog}: "
    print(f"{prefix}error: {error}", file=sys.stderr, flush=True)


def run_main(
    body: Callable[[], int],
    *,
    prog: str,
    errors: Mapping[type[Exception], int] = _USER_ERRORS,
    debug: bool = False,
    logs: Callable[[bool], None] | None = None,
    where: str = "",
    traceback: TracebackStyle | None = "print",
) -> int:
    """Run ``body`` (the entry point's work, returning its exit code) and return the exit code.

    Args:
        body: what the entry point does once its arguments are parsed.
        prog: the error line's first word, e.g. ``hybrid_ps.train``.
        errors: the errors reported as one line, by type, each with its exit code (the first type
            the error is an instance of counts); any other exception propagates.
        debug: the ``--debug`` flag: passed to ``logs``, and shows tracebacks as ``traceback`` says.
        logs: sets up logging before ``body`` runs, given ``debug`` (None: leave it as it is).
        where: who failed, between ``prog`` and ``error:`` in the line (e.g. ``shard 3``).
        traceback: how ``debug`` shows a reported error's traceback (None: never).
    """
    if logs is not None:
        logs(debug)
    try:
        return body()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except tuple(errors) as error:
        if debug and traceback == "raise":
            raise
        if debug and traceback == "print":
            tracebacks.print_exception(error)
        elif debug and traceback == "log":
            logging.getLogger(prog).exception("%s failed", where or prog)
        report(prog, error, where=where)
        return next(code for kind, code in errors.items() if isinstance(error, kind))
