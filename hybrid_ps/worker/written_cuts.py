"""Which shards have written their file of each checkpoint cut a group asked for (``CUT_WRITTEN``).

A shard acknowledges a CHECKPOINT once it took its snapshot of the cut, so the
group trains on while the file is written; a cut may be published only once every
shard that took part has written its file, and not if one failed or died meanwhile.
"""

from __future__ import annotations

__all__ = ["WrittenCuts"]


class WrittenCuts:
    """What each shard told of its files, and which shards each cut waits for."""

    def __init__(self) -> None:
        self._told: dict[int, dict[int, str | None]] = {}  # cut -> shard -> None (written) or why it was not
        self._expected: dict[int, set[int]] = {}  # cut -> the shards that took part
        self._lost: dict[int, str] = {}  # cut -> why it cannot be published (a shard died before writing)

    def expect(self, cut: int, shards: list[int]) -> None:
        """``shards`` took their snapshots of ``cut``: it is complete once each wrote its file."""
        self._expected[cut] = set(shards)

    def told(self, shard: int, cut: int, error: str | None) -> None:
        """``shard`` says its file of ``cut`` is written (``error``: it could not be)."""
        self._told.setdefault(cut, {})[shard] = error

    def shard_died(self, shard: int) -> None:
        """``shard`` is dead: each cut still waiting for its file cannot be published."""
        for cut, shards in self._expected.items():
            if shard in shards and shard not in self._told.get(cut, {}):
                self._lost.setdefault(cut, f"shard {shard} died before its file of the cut was written")

    def state(self, cut: int) -> str | bool | None:
        """``True`` once every file of ``cut`` is written; why not (text) if one cannot be; ``None`` meanwhile."""
        told = self._told.get(cut, {})
        errors = [error for error in told.values() if error is not None]
        if errors or cut in self._lost:
            return errors[0] if errors else self._lost[cut]
        return True if self._expected.get(cut, {-1}) <= set(told) else None
