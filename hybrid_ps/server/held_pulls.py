"""Pulls the SSP rule holds back: kept per connection within a bound, answered once their clock is ready."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import WireError
from ..protocol import wire

__all__ = ["HeldPull", "HeldPulls"]

MAX_HELD_PULLS = 64  # pulls one connection may have held back (a leader has one or two) ...
MAX_HELD_KEYS = 4  # ... holding at most this many messages' worth of keys (max_keys each)


@dataclass
class HeldPull:
    identity: bytes
    header: wire.Header
    keys: np.ndarray


class HeldPulls:
    """The pulls held back, in arrival order.

    Args:
        max_keys: the largest key count of one message (bounds the keys one connection may pin).
    """

    def __init__(self, *, max_keys: int) -> None:
        self.max_keys = max_keys
        self._pulls: list[HeldPull] = []

    def __len__(self) -> int:
        return len(self._pulls)

    def hold(self, identity: bytes, header: wire.Header, keys: np.ndarray) -> None:
        """Keep a pull until its clock is ready.

        Raises:
            WireError: the connection holds as many pulls or keys as it may already.
        """
        held = [pull.keys.size for pull in self._pulls if pull.identity == identity]
        if len(held) >= MAX_HELD_PULLS or sum(held) + keys.size > MAX_HELD_KEYS * self.max_keys:
            raise WireError(f"{len(held)} pulls ({sum(held)} keys) of this connection are held back already "
                            f"(the SSP rule): at most {MAX_HELD_PULLS}, with {MAX_HELD_KEYS} * "
                            f"{self.max_keys} keys")
        self._pulls.append(HeldPull(identity, header, keys))

    def release(self, ready: Callable[[int], bool]) -> list[HeldPull]:
        """The held pulls whose clock is ``ready`` now, in arrival order; the others stay held."""
        released: list[HeldPull] = []
        waiting: list[HeldPull] = []
        for pull in self._pulls:
            (released if ready(pull.header.clock) else waiting).append(pull)
        self._pulls = waiting
        return released
