"""The update rules (SGD, AdaGrad, FTRL-Proximal): their settings, state arrays and compiled arithmetic.

The arithmetic itself is compiled (``_key_table.pyx``): a shard's push applies it
row by row inside the key table (``KeyTable.push``), and ``Optimizer.apply``
runs the same kernel over dense arrays (the rows a group keeps itself). It is
float32 throughout, in the operation order of the numpy references in
``tests/unit/test_key_table.py``, with which it agrees bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ._key_table import UpdateRule, apply_rows

if TYPE_CHECKING:
    from ..config import OptimizerConfig

__all__ = ["Optimizer", "SGD", "AdaGrad", "FTRL", "make_optimizer", "optimizer_from_config"]


class Optimizer(ABC):
    """An update rule with named per-key state arrays (all start at zero)."""

    name: str = ""
    state_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float, l1: float = 0.0, l2: float = 0.0) -> None:
        if not learning_rate > 0:
            raise ConfigError(f"optimizer.learning_rate must be > 0, got {learning_rate}")
        if l1 < 0 or l2 < 0:
            raise ConfigError(f"optimizer.l1 and optimizer.l2 must be >= 0, got {l1}, {l2}")
        self.learning_rate = learning_rate
        self.l1 = l1
        self.l2 = l2

    @property
    @abstractmethod
    def rule(self) -> UpdateRule:
        """The rule as the compiled kernels take it."""

    def apply(self, weights: np.ndarray, grads: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """Update ``weights`` and ``state`` (``[n, width]`` float32 arrays) in place from ``grads``."""
        width = weights.shape[1]
        rows = np.concatenate([weights, *(state[name] for name in self.state_names)], axis=1).astype(np.float32)
        apply_rows(rows, np.ascontiguousarray(grads, dtype=np.float32).reshape(-1, width), self.rule, width)
        weights[...] = rows[:, :width]
        for i, name in enumerate(self.state_names):
            state[name][...] = rows[:, width * (i + 1) : width * (i + 2)]

    def hyperparameters(self) -> dict[str, float]:
        """The numbers that define the rule (recorded in checkpoints and logs)."""
        return {"learning_rate": self.learning_rate, "l1": self.l1, "l2": self.l2}


class SGD(Optimizer):
    """Plain SGD with L2: ``w -= lr * (g + l2 * w)``."""

    name = "sgd"

    @property
    def rule(self) -> UpdateRule:
        return UpdateRule("sgd", self.learning_rate, l2=self.l2)


class AdaGrad(Optimizer):
    """AdaGrad with L2: ``acc += g^2; w -= lr * g / sqrt(acc + eps)``."""

    name = "adagrad"
    state_names = ("accumulator",)

    def __init__(self, learning_rate: float, l1: float = 0.0, l2: float = 0.0, eps: float = 1e-6):
        super().__init__(learning_rate, l1, l2)
        self.eps = eps

    @property
    def rule(self) -> UpdateRule:
        return UpdateRule("adagrad", self.learning_rate, l2=self.l2, eps=self.eps)

    def hyperparameters(self):
        return {**super().hyperparameters(), "eps": self.eps}


class FTRL(Optimizer):
    """FTRL-Proximal (McMahan et al., KDD 2013) with L1 and L2.

    State ``z`` and ``n`` per key; ``learning_rate`` is the paper's alpha.
    """

    name = "ftrl"
    state_names = ("z", "n")

    def __init__(self, learning_rate: float, l1: float = 0.0, l2: float = 0.0, beta: float = 1.0):
        super().__init__(learning_rate, l1, l2)
        if beta < 0:
            raise ConfigError(f"optimizer.ftrl_beta must be >= 0, got {beta}")
        self.beta = beta

    @property
    def rule(self) -> UpdateRule:
        return UpdateRule("ftrl", self.learning_rate, l1=self.l1, l2=self.l2, beta=self.beta)

    def hyperparameters(self):
        return {**super().hyperparameters(), "beta": self.beta}


def optimizer_from_config(settings: OptimizerConfig) -> Optimizer:
    """The optimizer a job's ``[optimizer]`` settings describe (what shards, and groups keeping rows, apply)."""
    return make_optimizer(settings.name, settings.learning_rate, settings.l1, settings.l2, settings.ftrl_beta)


def make_optimizer(
    name: str, learning_rate: float, l1: float = 0.0, l2: float = 0.0, ftrl_beta: float = 1.0
) -> Optimizer:
    """Build an optimizer by name ("sgd", "adagrad" or "ftrl").

    Raises:
        ConfigError: unknown name, bad hyper-parameters, or L1 without FTRL.
    """
    if name == "ftrl":
        return FTRL(learning_rate, l1, l2, ftrl_beta)
    if name in ("sgd", "adagrad"):
        if l1 > 0:
            raise ConfigError(f"optimizer.l1 needs optimizer.name = 'ftrl', got name = {name!r}")
        return SGD(learning_rate, l1, l2) if name == "sgd" else AdaGrad(learning_rate, l1, l2)
    raise ConfigError(f"optimizer.name must be one of sgd, adagrad, ftrl; got {name!r}")
