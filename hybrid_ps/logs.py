"""Logging setup: one line per record, prefixed with the rank's role, e.g. ``[worker 0/2]``."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]


def configure_logging(label: str, debug: bool = False) -> None:
    """Send log records to stderr as ``HH:MM:SS [label] message``.

    Args:
        label: the rank's role, e.g. ``server 1`` or ``worker 0/2``.
        debug: log DEBUG records too.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [{label}] %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
