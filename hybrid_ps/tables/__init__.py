"""Keyed tables of float32 rows and their update rules, compiled: used by PS shards and by group leaders."""

from ._count_sketch import CountSketch
from ._key_table import EMPTY_KEY, KeyTable, UpdateRule, apply_rows

__all__ = ["CountSketch", "EMPTY_KEY", "KeyTable", "UpdateRule", "apply_rows"]
