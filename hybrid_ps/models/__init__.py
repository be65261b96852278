"""The models hybrid_ps trains: each is one file here and one entry in ``MODELS`` (see ``base.Model``)."""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from .base import Model
from .fm import FactorizationMachine
from .logistic import LogisticRegression
from .wide_deep import WideDeep

__all__ = ["MODELS", "Model", "build_model", "model_from_checkpoint"]

MODELS: dict[str, type[Model]] = {cls.kind: cls for cls in (LogisticRegression, FactorizationMachine, WideDeep)}
"""Model classes by ``kind`` (the config's ``model.name`` and the checkpoint's ``/model`` ``kind``)."""


def build_model(config: Any) -> Model:
    """The model ``config`` (a ``ModelConfig``) names, with its shape settings."""
    cls = MODELS[config.name]
    return cls.from_attrs({"embedding_dim": config.embedding_dim, "init_scale": config.init_scale,
                           "hidden": config.hidden})


def model_from_checkpoint(kind: str, attrs: dict[str, Any], where: str) -> Model:
    """The model a checkpoint records (``kind`` and its shape ``attrs``).

    Raises:
        CheckpointError: a kind this build does not know (the message names ``where``).
    """
    if kind not in MODELS:
        raise CheckpointError(f"{where}: model kind {kind!r} is not one of {', '.join(MODELS)}")
    return MODELS[kind].from_attrs(attrs)
