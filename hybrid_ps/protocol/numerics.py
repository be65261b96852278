"""Numerical checks shared by workers and shards."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["all_finite"]


def all_finite(values: np.ndarray) -> bool:
    """Whether no value is NaN or +-Inf: one vectorised sum, no boolean temporary of the array's size.

    A NaN or an infinity makes the sum non-finite; a non-finite sum of finite
    values (overflow) is told apart by the exact elementwise check.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(np.add.reduce(values, axis=None))
    return math.isfinite(total) or bool(np.isfinite(values).all())
