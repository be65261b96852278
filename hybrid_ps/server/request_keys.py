"""A request's keys as a shard reads them: from the frame or a kept key list, and checked to be its own."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import KeyListMissError, WireError
from ..placement.replicas import Placement
from ..protocol import wire
from ..protocol.keycache import MISS, KeyListCache, parse_reference, signature

__all__ = ["RequestKeys"]


class RequestKeys:
    """Reads and checks the keys of PULL and PUSH requests; keeps the key lists connections ask it to keep.

    Args:
        shard_id: this shard.
        width: values per key this shard holds.
        max_keys: the largest key count one message may carry.
        num_groups: group slots (bounds how many connections' key lists are kept).
        placement: the ring as this shard routes by now (it changes with evictions and reshards).
    """

    def __init__(self, *, shard_id: int, width: int, max_keys: int, num_groups: int,
                 placement: Callable[[], Placement]) -> None:
        self.shard_id = shard_id
        self.width = width
        self.max_keys = max_keys
        self.num_groups = num_groups
        self._placement = placement
        self._key_lists: dict[bytes, KeyListCache] = {}  # per connection: the key lists it asked us to keep

    def checked(self, identity: bytes, frame: memoryview, header: wire.Header, primary: bool) -> np.ndarray:
        """The request's keys (sent, or a kept list's), if this shard holds them all (pulls: as acting primary).

        Raises:
            KeyListMissError: the request referenced a list not kept here (the client sends the keys again).
            WireError: the keys or the width do not fit this shard.
        """
        if header.width != self.width:
            raise WireError(f"width {header.width}, this shard holds width {self.width}")
        keys = self._keys_of(identity, frame, header)
        stray = self._placement().first_stray(keys, self.shard_id, primary) if keys.size else None
        if stray is not None:
            raise WireError(stray[1])
        return keys

    def forget(self, identity: bytes) -> None:
        """The connection left (BYE): drop its key lists."""
        self._key_lists.pop(identity, None)

    def _keys_of(self, identity: bytes, frame: memoryview, header: wire.Header) -> np.ndarray:
        """The keys frame, or the kept list it references; kept for later if the request asks."""
        if header.flags & wire.FLAG_KEYS_BY_REF:
            try:
                sig, count, subset = parse_reference(frame)
            except ValueError as e:
                raise WireError(str(e)) from None
            cache = self._cache(identity, create=False)
            hit, keys = cache.recall(sig, count) if cache else (False, None)
            if not hit or keys is None:
                raise KeyListMissError(f"{MISS}: signature {sig:#x} of {count} keys")
            keys = keys if subset is None else keys[subset]
            if keys.size != header.num_keys:
                raise WireError(f"the referenced key list selects {keys.size} keys, the header says {header.num_keys}")
            return keys
        keys = wire.keys_from_frame(frame, header.num_keys, self.max_keys,
                                    compressed=bool(header.flags & wire.FLAG_COMPRESSED_KEYS))
        if header.flags & wire.FLAG_KEEP_KEYS:
            cache = self._cache(identity, create=True)
            assert cache is not None
            cache.remember(signature(keys), keys.size, keys.copy())
        return keys

    def _cache(self, identity: bytes, create: bool) -> KeyListCache | None:
        """The key lists kept for a connection (made most recently used), or a new cache (``create``).

        Connections that went away without BYE (a crashed leader, a restarted group) leave
        their caches behind: beyond two per group slot, the least recently used is dropped
        (its client, if alive, gets "key list not cached" and sends its keys again).
        """
        cache = self._key_lists.pop(identity, None)
        if cache is None and create:
            while len(self._key_lists) >= max(2 * self.num_groups, 4):
                del self._key_lists[next(iter(self._key_lists))]  # dicts keep insertion order: the oldest use
            cache = KeyListCache()
        if cache is not None:
            self._key_lists[identity] = cache
        return cache
