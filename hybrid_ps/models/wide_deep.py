"""Wide & deep: a sparse linear part and per-feature embeddings on the PS, and an MLP on the pooled embeddings.

``margin = bias + sum_i w_i x_i + mlp(sum_i v_i x_i)`` (Cheng et al., 2016, with the
row's embeddings sum-pooled). A feature's row on the PS is ``[w_i, v_i]`` (width
``1 + k``). The MLP's weights are one flat vector cut into blocks of ``width``
values, each block a PS key just below ``BIAS_KEY``: the blocks spread over every
shard by the hash ring, and every batch pulls and pushes them like any other key
(the same SSP bound). Embeddings start uniform in ``±init_scale``, MLP weights
Glorot-uniform, biases at zero, all fixed functions of the key (``Model.initial_values``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..data.batch import Batch
from . import _kernels
from .base import BIAS_KEY, Model, PreparedBatch, hashed_uniform, logistic_loss
from .kernel_inputs import csr_arrays, float_rows

__all__ = ["WideDeep", "parse_hidden"]

_EMBEDDING_SALT = 0x57DE_0001
_DENSE_SALT = 0x57DE_0002


def parse_hidden(text: str | Any) -> tuple[int, ...]:
    """``"32,16"`` -> ``(32, 16)``; empty means no hidden layer (a linear map of the pooled embedding).

    Raises:
        ValueError: a size that is not a positive integer.
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    sizes = tuple(int(p) for p in parts)
    if any(size < 1 for size in sizes):
        raise ValueError(f"hidden layer sizes must be >= 1, got {text!r}")
    return sizes


class WideDeep(Model):
    """Wide & deep over sparse rows; the MLP's weights live on the PS in blocks of ``width`` values."""

    kind = "wide_deep"

    def __init__(self, embedding_dim: int = 8, hidden: tuple[int, ...] = (32, 16), init_scale: float = 0.01) -> None:
        self.embedding_dim = embedding_dim
        self.hidden = tuple(hidden)
        self.init_scale = init_scale
        self.width = 1 + embedding_dim
        sizes = [embedding_dim, *self.hidden, 1]
        self.layers = list(zip(sizes[:-1], sizes[1:], strict=True))  # (fan_in, fan_out) per layer
        self.num_dense = sum(i * o + o for i, o in self.layers)
        blocks = -(-self.num_dense // self.width)
        self._dense_keys = (BIAS_KEY - np.uint64(blocks) + np.arange(blocks, dtype=np.uint64))  # just below the bias
        self._dense_start = self._glorot_blocks()

    def model_keys(self) -> np.ndarray:
        return np.concatenate([self._dense_keys, [BIAS_KEY]]).astype(np.uint64)

    def dense_keys(self) -> np.ndarray:
        return self._dense_keys

    def attrs(self) -> dict[str, Any]:
        return {"embedding_dim": self.embedding_dim, "hidden": ",".join(map(str, self.hidden)),
                "init_scale": self.init_scale}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> WideDeep:
        return cls(int(attrs.get("embedding_dim", 8)), parse_hidden(attrs.get("hidden", "32,16")),
                   float(attrs.get("init_scale", 0.01)))

    def initial_values(self, keys: np.ndarray) -> np.ndarray:
        start = np.empty((keys.size, self.width))
        start[:, 0] = 0.0
        _kernels.fill_hashed_uniform(np.ascontiguousarray(keys, dtype=np.uint64), _EMBEDDING_SALT, self.init_scale,
                                     start[:, 1:])
        dense = (keys >= self._dense_keys[0]) & (keys != BIAS_KEY)
        start[dense] = self._dense_start[(keys[dense] - self._dense_keys[0]).astype(np.int64)]
        start[keys == BIAS_KEY] = 0.0
        return start

    def loss_and_gradient(self, batch: Batch | PreparedBatch, keys: np.ndarray,
                          stored: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        prepared = self.prepared(batch)
        n_rows, k = prepared.batch.num_rows, self.embedding_dim
        csr = csr_arrays(prepared, keys)
        table, start = float_rows(stored, (keys.size, self.width)), self.initial_values(keys)
        dense_at = np.searchsorted(keys, self._dense_keys)
        dense = table[dense_at].astype(np.float64) + start[dense_at]
        weights = self._unflatten(dense.reshape(-1)[: self.num_dense])
        bias_at = keys.size - 1

        wide, pooled = np.empty(n_rows), np.empty((n_rows, k))  # the compiled FM pass without its pairwise term
        _kernels.pool_rows(csr.indptr, csr.positions, csr.values, table, initial=start, bias_index=bias_at,
                           linear_out=wide, pooled_out=pooled)
        activations, deep = self._forward(pooled, weights)
        loss, residual, probability = logistic_loss(wide + deep, csr.labels)

        grad = np.zeros((keys.size, self.width))
        dense_grads, d_pooled = self._backward(activations, weights, residual)
        _kernels.scatter_rows(csr.indptr, csr.positions, csr.values, residual, np.ascontiguousarray(d_pooled),
                              bias_index=bias_at, grad_out=grad)
        flat = np.zeros(self._dense_keys.size * self.width)
        flat[: self.num_dense] = np.concatenate([g.reshape(-1) for pair in dense_grads for g in pair])
        grad[dense_at] += flat.reshape(-1, self.width)
        return loss, grad, probability

    # -- the MLP ---------------------------------------------------------------------------------------------------

    def _forward(self, pooled: np.ndarray, weights: list) -> tuple[list[np.ndarray], np.ndarray]:
        """Activations of every layer's input (ReLU between layers) and the MLP's output per row."""
        activations = [pooled]
        out = pooled
        for index, (w, b) in enumerate(weights):
            out = out @ w + b
            if index < len(weights) - 1:
                out = np.maximum(out, 0.0)
                activations.append(out)
        return activations, out[:, 0]

    def _backward(self, activations: list, weights: list, residual: np.ndarray) -> tuple[list, np.ndarray]:
        """Gradients ``[(dW, db), ...]`` of every layer, and of the pooled embedding."""
        delta = residual[:, None]
        grads = []
        for index in range(len(weights) - 1, -1, -1):
            w, _ = weights[index]
            grads.append((activations[index].T @ delta, delta.sum(axis=0)))
            delta = delta @ w.T
            if index > 0:
                delta = delta * (activations[index] > 0)
        return grads[::-1], delta

    def _unflatten(self, flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The flat dense vector as ``[(W [fan_in, fan_out], b [fan_out]), ...]`` (views)."""
        weights, at = [], 0
        for fan_in, fan_out in self.layers:
            w = flat[at : at + fan_in * fan_out].reshape(fan_in, fan_out)
            at += fan_in * fan_out
            weights.append((w, flat[at : at + fan_out]))
            at += fan_out
        return weights

    def _glorot_blocks(self) -> np.ndarray:
        """The MLP's starting weights (Glorot-uniform, zero biases) as ``[blocks, width]``, fixed by the shapes."""
        noise = hashed_uniform(self._dense_keys, self.width, _DENSE_SALT).reshape(-1)
        flat = np.zeros(self._dense_keys.size * self.width)
        at = 0
        for fan_in, fan_out in self.layers:
            count = fan_in * fan_out
            flat[at : at + count] = noise[at : at + count] * math.sqrt(6.0 / (fan_in + fan_out))
            at += count + fan_out
        return flat.reshape(-1, self.width)
