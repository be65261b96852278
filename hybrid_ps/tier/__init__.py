"""A separate, long-lived PS tier: the tier file jobs join it through, and the settings they adopt from it."""

from .tier_file import (
    TierInfo,
    TierView,
    adopt_tier_settings,
    read_tier_file,
    write_tier_file,
)

__all__ = ["TierView", "TierInfo", "write_tier_file", "read_tier_file", "adopt_tier_settings"]
