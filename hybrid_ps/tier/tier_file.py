"""A PS tier of its own: the tier file that ``hybrid_ps.serve`` writes and worker jobs read to join it.

The file (JSON, written atomically, readable by its owner only) holds the
shards' endpoints by shard id, the number of group slots, the tier's settings
and the control endpoint of ``hybrid_ps.serve`` (``hybrid_ps.tierctl`` adds
and removes shards through it). Worker jobs started with ``--ps-tier FILE``
adopt the settings that must agree between shards and leaders (staleness,
replication, ring, checkpoints). A ``TierView`` is the part that changes when
shards join or leave: endpoints and replication.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from ..config import Config
from ..errors import ConfigError
from ..net.curve import JobKeys

__all__ = ["TierView", "TierInfo", "write_tier_file", "read_tier_file", "adopt_tier_settings"]

_SHARED_SETTINGS = ("cluster.staleness", "cluster.replication", "cluster.vnodes", "cluster.max_keys_per_message",
                    "train.checkpoint", "model.name", "model.embedding_dim", "model.init_scale", "model.hidden")


@dataclass(frozen=True)
class TierView:
    """The tier's shards: endpoint by shard id, and the replication factor."""

    endpoints: dict[int, str]
    replication: int

    @property
    def shard_ids(self) -> list[int]:
        """The shard ids, ascending."""
        return sorted(self.endpoints)

    def to_bytes(self) -> bytes:
        """UTF-8 JSON (the frame of VIEW and RESHARD messages)."""
        return json.dumps({"endpoints": {str(k): v for k, v in self.endpoints.items()},
                           "replication": self.replication}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> TierView:
        """Parse ``to_bytes``' output.

        Raises:
            ValueError: not such a document.
        """
        try:
            data = json.loads(bytes(raw).decode())
            view = cls({int(k): str(v) for k, v in data["endpoints"].items()}, int(data["replication"]))
        except (UnicodeDecodeError, KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a tier view: {e}") from None
        if not view.endpoints or view.replication < 1:
            raise ValueError("a tier view needs shards and a replication >= 1")
        return view


@dataclass
class TierInfo:
    """What a worker job needs to join a tier."""

    endpoints: dict[int, str]
    num_groups: int
    config: dict[str, dict[str, Any]]  # the tier's settings (Config.to_json_dict)
    checkpoint_root: str  # absolute: where the shards write, and leaders publish
    control: str = ""  # hybrid_ps.serve's control endpoint (hybrid_ps.tierctl)
    curve_keys: JobKeys | None = None  # the tier's CURVE keys (None: plain TCP on loopback)


def write_tier_file(path: str | Path, tier: TierInfo) -> None:
    """Write ``tier`` to ``path`` atomically (temporary file, fsync, rename), mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**tier.__dict__, "endpoints": {str(k): v for k, v in tier.endpoints.items()},
                "keys": tier.curve_keys.to_dict() if tier.curve_keys else None}  # "keys" in the file, as before
    del document["curve_keys"]
    with atomic_write(path, permissions=0o600) as handle:  # it holds the tier's CURVE keys
        json.dump({"kind": "hybrid_ps tier", **document}, handle, indent=1)


def read_tier_file(path: str | Path) -> TierInfo:
    """Read a tier file.

    Raises:
        ConfigError: unreadable, not JSON, or missing a field (the message names the file).
    """
    try:
        data = json.loads(Path(path).read_text())
        if data.get("kind") != "hybrid_ps tier":
            raise ValueError(f"kind is {data.get('kind')!r}, not 'hybrid_ps tier'")
        tier = TierInfo({int(k): str(v) for k, v in data["endpoints"].items()}, int(data["num_groups"]),
                        dict(data["config"]), str(data["checkpoint_root"]), str(data.get("control", "")),
                        JobKeys.from_dict(data["keys"]) if data.get("keys") else None)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the tier file: {e.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as e:
        raise ConfigError(f"{path}: not a hybrid_ps tier file: {e}") from None
    if not tier.endpoints or tier.num_groups < 1:
        raise ConfigError(f"{path}: a tier file needs endpoints and group slots")
    return tier


def adopt_tier_settings(config: Config, tier: TierInfo) -> None:
    """Make a worker job's settings agree with the tier's where shards and leaders must agree."""
    tier_config = Config.from_dict(tier.config)
    for name in _SHARED_SETTINGS:
        section, key = name.split(".")
        setattr(getattr(config, section), key, getattr(getattr(tier_config, section), key))
    config.cluster.servers = len(tier.endpoints)
    config.train.checkpoint_dir = tier.checkpoint_root
