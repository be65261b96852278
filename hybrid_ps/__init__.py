"""hybrid_ps: MPI worker groups in front of a ZeroMQ parameter-server tier with bounded staleness."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models.predictor import TrainedModel

__version__ = "0.1.0"
__all__ = ["load_model", "__version__"]


def load_model(path: str) -> TrainedModel:
    """A checkpoint's model, to score rows: ``load_model(path).predict_proba(X)`` (see ``models.predictor``).

    ``path`` is a ``ckpt-<clock>`` directory, its ``model.h5``, or a checkpoint root (its latest).
    """
    from .models.predictor import load_model as load

    return load(path)
