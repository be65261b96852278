"""Server optimizers against scalar textbook references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid_ps.errors import ConfigError
from hybrid_ps.server.optimizers import make_optimizer

RNG = np.random.default_rng(3)
GRADS = RNG.normal(size=(6, 50, 2)).astype(np.float32)  # six successive pushes to 50 keys of width 2


def _run(name: str, **hyper) -> tuple[np.ndarray, dict]:
    optimizer = make_optimizer(name, **hyper)
    weights = np.zeros((50, 2), np.float32)
    state = {n: np.zeros_like(weights) for n in optimizer.state_names}
    for g in GRADS:
        optimizer.apply(weights, g, state)
    return weights, state


def _scalar(update) -> np.ndarray:
    out = np.zeros((50, 2))
    for i in range(50):
        for j in range(2):
            out[i, j] = update([float(g[i, j]) for g in GRADS])
    return out


def test_sgd():
    lr, l2 = 0.1, 0.01

    def reference(gs):
        w = 0.0
        for g in gs:
            w -= lr * (g + l2 * w)
        return w

    weights, _ = _run("sgd", learning_rate=lr, l2=l2)
    np.testing.assert_allclose(weights, _scalar(reference), rtol=1e-5, atol=1e-6)


def test_adagrad():
    lr, l2, eps = 0.5, 0.01, 1e-6

    def reference(gs):
        w, acc = 0.0, 0.0
        for g in gs:
            g = g + l2 * w
            acc += g * g
            w -= lr * g / math.sqrt(acc + eps)
        return w

    weights, state = _run("adagrad", learning_rate=lr, l2=l2)
    np.testing.assert_allclose(weights, _scalar(reference), rtol=1e-5, atol=1e-6)
    assert np.all(state["accumulator"] > 0)


@pytest.mark.parametrize("l1", [0.0, 0.5])
def test_ftrl_proximal(l1):
    alpha, beta, l2 = 0.2, 1.0, 0.1

    def reference(gs):  # McMahan et al. 2013, algorithm 1, per coordinate
        z = n = w = 0.0
        for g in gs:
            sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / alpha
            z += g - sigma * w
            n += g * g
            w = 0.0 if abs(z) <= l1 else -(z - math.copysign(l1, z)) / ((beta + math.sqrt(n)) / alpha + l2)
        return w

    weights, _ = _run("ftrl", learning_rate=alpha, l1=l1, l2=l2, ftrl_beta=beta)
    np.testing.assert_allclose(weights, _scalar(reference), rtol=1e-5, atol=1e-6)
    if l1:
        assert np.mean(weights == 0) > 0.1  # L1 makes weights exactly zero


@pytest.mark.parametrize(
    "args, message",
    [
        (("adam", 0.1), "optimizer.name must be one of"),
        (("sgd", 0.1, 0.5), "optimizer.l1 needs optimizer.name = 'ftrl'"),
        (("adagrad", 0.0), "optimizer.learning_rate must be > 0"),
        (("ftrl", 0.1, -1.0), "optimizer.l1 and optimizer.l2 must be >= 0"),
        (("ftrl", 0.1, 0.0, 0.0, -1.0), "optimizer.ftrl_beta"),
    ],
)
def test_bad_hyperparameters(args, message):
    with pytest.raises(ConfigError, match=message):
        make_optimizer(*args)
