"""hybrid_ps.tables.optimizers: SGD, AdaGrad and FTRL-Proximal against per-key scalar textbook references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid_ps.errors import ConfigError, HybridPSError
from hybrid_ps.tables.optimizers import FTRL, SGD, AdaGrad, Optimizer, make_optimizer

KEYS, WIDTH, STEPS = 40, 3, 8


def _gradients(seed: int, scale: float = 1.0) -> np.ndarray:
    """``STEPS`` successive pushes to ``KEYS`` keys of width ``WIDTH``; some entries exactly zero."""
    rng = np.random.default_rng(seed)
    grads = (rng.normal(size=(STEPS, KEYS, WIDTH)) * scale).astype(np.float32)
    grads[rng.random(grads.shape) < 0.1] = 0.0  # a key not touched by a push still gets a zero row
    return grads


def _run(optimizer: Optimizer, grads: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Apply every push in place to float32 arrays, the way the shard does."""
    weights = np.zeros((KEYS, WIDTH), np.float32)
    state = {name: np.zeros_like(weights) for name in optimizer.state_names}
    for g in grads:
        result = optimizer.apply(weights, g, state)
        assert result is None  # in place, nothing returned
        assert weights.dtype == np.float32 and all(a.dtype == np.float32 for a in state.values())
    return weights, state


def _per_key(reference, grads: np.ndarray) -> dict[str, np.ndarray]:
    """Run a scalar reference on every coordinate in float64; returns its final variables as arrays."""
    out: dict[str, np.ndarray] = {}
    for i in range(KEYS):
        for j in range(WIDTH):
            final = reference([float(g[i, j]) for g in grads])
            for name, value in final.items():
                out.setdefault(name, np.zeros((KEYS, WIDTH)))[i, j] = value
    return out


# -- scalar references, from the textbook formulas -------------------------------------------------


def _sgd_reference(lr: float, l2: float):
    def run(gs: list[float]) -> dict[str, float]:
        w = 0.0
        for g in gs:
            w = w - lr * (g + l2 * w)
        return {"w": w}

    return run


def _adagrad_reference(lr: float, l2: float, eps: float):
    """Duchi et al. 2011 diagonal AdaGrad on the L2-regularised gradient, eps inside the root (as documented)."""

    def run(gs: list[float]) -> dict[str, float]:
        w = acc = 0.0
        for g in gs:
            g = g + l2 * w
            acc += g * g
            w -= lr * g / math.sqrt(acc + eps)
        return {"w": w, "accumulator": acc}

    return run


def _ftrl_reference(alpha: float, beta: float, l1: float, l2: float):
    """FTRL-Proximal, McMahan et al., KDD 2013, Algorithm 1, one coordinate."""

    def run(gs: list[float]) -> dict[str, float]:
        z = n = w = 0.0
        for g in gs:
            sigma = (math.sqrt(n + g * g) - math.sqrt(n)) / alpha
            z += g - sigma * w
            n += g * g
            if abs(z) <= l1:
                w = 0.0
            else:
                w = -(z - math.copysign(l1, z)) / ((beta + math.sqrt(n)) / alpha + l2)
        return {"w": w, "z": z, "n": n}

    return run


# -- SGD -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lr, l2", [(0.1, 0.0), (0.05, 0.01), (1.0, 0.5)])
def test_sgd_matches_the_reference(lr, l2):
    grads = _gradients(1)
    optimizer = make_optimizer("sgd", lr, l2=l2)
    assert isinstance(optimizer, SGD) and optimizer.state_names == ()
    weights, state = _run(optimizer, grads)
    assert state == {}
    np.testing.assert_allclose(weights, _per_key(_sgd_reference(lr, l2), grads)["w"], rtol=1e-5, atol=1e-7)


def test_sgd_single_step_is_exact():
    optimizer = make_optimizer("sgd", 0.5)
    weights = np.array([[1.0, -2.0]], np.float32)
    optimizer.apply(weights, np.array([[2.0, 4.0]], np.float32), {})
    np.testing.assert_array_equal(weights, [[0.0, -4.0]])


# -- AdaGrad ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("lr, l2", [(0.5, 0.0), (0.1, 0.01), (1.0, 0.3)])
def test_adagrad_matches_the_reference(lr, l2):
    grads = _gradients(2)
    optimizer = make_optimizer("adagrad", lr, l2=l2)
    assert isinstance(optimizer, AdaGrad) and optimizer.state_names == ("accumulator",)
    weights, state = _run(optimizer, grads)
    expected = _per_key(_adagrad_reference(lr, l2, optimizer.eps), grads)
    np.testing.assert_allclose(weights, expected["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state["accumulator"], expected["accumulator"], rtol=1e-5, atol=1e-7)


def test_adagrad_first_step_has_size_lr_whatever_the_gradient_scale():
    optimizer = make_optimizer("adagrad", 0.25)
    for scale in (0.1, 1.0, 1e3):
        weights = np.zeros((1, 2), np.float32)
        state = {"accumulator": np.zeros((1, 2), np.float32)}
        optimizer.apply(weights, np.array([[scale, -scale]], np.float32), state)
        np.testing.assert_allclose(weights, [[-0.25, 0.25]], rtol=1e-3)


def test_adagrad_zero_gradient_on_a_fresh_key_keeps_it_at_zero():
    optimizer = make_optimizer("adagrad", 0.1)
    weights = np.zeros((2, 1), np.float32)
    state = {"accumulator": np.zeros((2, 1), np.float32)}
    optimizer.apply(weights, np.zeros((2, 1), np.float32), state)
    assert np.all(weights == 0) and np.all(np.isfinite(weights)) and np.all(state["accumulator"] == 0)


# -- FTRL-Proximal ---------------------------------------------------------------------------------


# beta = l2 = 0 divides 0 by 0 for fresh keys with a zero gradient (np.where then picks 0): a harmless warning
@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
@pytest.mark.parametrize(
    "alpha, beta, l1, l2",
    [(0.1, 1.0, 0.0, 0.0), (0.2, 1.0, 0.0, 0.1), (0.2, 1.0, 0.5, 0.1), (0.05, 0.5, 1.0, 1.0), (0.5, 0.0, 0.3, 0.0)],
)
def test_ftrl_matches_the_reference(alpha, beta, l1, l2):
    grads = _gradients(3)
    optimizer = make_optimizer("ftrl", alpha, l1=l1, l2=l2, ftrl_beta=beta)
    assert isinstance(optimizer, FTRL) and optimizer.state_names == ("z", "n")
    weights, state = _run(optimizer, grads)
    expected = _per_key(_ftrl_reference(alpha, beta, l1, l2), grads)
    if l1:
        # the data must not sit on the L1 threshold, where float32 rounding may legitimately flip a weight to 0
        assert np.min(np.abs(np.abs(expected["z"]) - l1)) > 1e-4
        assert 0.05 < np.mean(expected["w"] == 0) < 0.95  # L1 zeroes some weights, not all
        np.testing.assert_array_equal(weights == 0, expected["w"] == 0)  # exactly zero where the paper says so
    np.testing.assert_allclose(weights, expected["w"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state["z"], expected["z"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["n"], expected["n"], rtol=1e-5, atol=1e-7)


def test_ftrl_first_step_by_hand():
    alpha, beta, l1, l2 = 0.1, 1.0, 0.5, 0.2
    optimizer = make_optimizer("ftrl", alpha, l1=l1, l2=l2, ftrl_beta=beta)
    weights = np.zeros((1, 2), np.float32)
    state = {"z": np.zeros((1, 2), np.float32), "n": np.zeros((1, 2), np.float32)}
    optimizer.apply(weights, np.array([[2.0, 0.25]], np.float32), state)
    # z = g, n = g^2; w = -(z - l1 sign z) / ((beta + |g|) / alpha + l2) when |z| > l1, else 0
    np.testing.assert_allclose(state["z"], [[2.0, 0.25]])
    np.testing.assert_allclose(state["n"], [[4.0, 0.0625]])
    np.testing.assert_allclose(weights, [[-(2.0 - 0.5) / ((1.0 + 2.0) / 0.1 + 0.2), 0.0]], rtol=1e-6)


def test_ftrl_l1_gives_exact_zeros_for_small_gradients():
    optimizer = make_optimizer("ftrl", 0.1, l1=10.0)
    weights, _ = _run(optimizer, _gradients(4, scale=0.1))
    assert np.all(weights == 0.0)


@pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")
def test_ftrl_without_beta_and_l2_keeps_fresh_keys_at_an_exact_zero():
    optimizer = make_optimizer("ftrl", 0.1, l1=0.0, l2=0.0, ftrl_beta=0.0)
    weights = np.zeros((3, 1), np.float32)
    state = {"z": np.zeros((3, 1), np.float32), "n": np.zeros((3, 1), np.float32)}
    optimizer.apply(weights, np.array([[0.0], [1.0], [0.0]], np.float32), state)
    assert np.all(np.isfinite(weights)) and weights[0, 0] == 0 and weights[2, 0] == 0
    np.testing.assert_allclose(weights[1, 0], -1.0 / (1.0 / 0.1), rtol=1e-6)


def test_ftrl_zero_gradient_keeps_weights():
    optimizer = make_optimizer("ftrl", 0.1, l2=0.1)
    weights, state = _run(optimizer, _gradients(5))
    before = weights.copy()
    optimizer.apply(weights, np.zeros_like(weights), state)
    np.testing.assert_allclose(weights, before, rtol=1e-6, atol=1e-8)


# -- properties shared by all ----------------------------------------------------------------------


@pytest.mark.parametrize("name, extra", [("sgd", {}), ("adagrad", {}), ("ftrl", {"l1": 0.2})])
def test_rows_update_independently(name, extra):
    """Vectorised over keys: permuting the rows of a push permutes the result the same way."""
    grads = _gradients(6)
    permutation = np.random.default_rng(0).permutation(KEYS)
    weights, state = _run(make_optimizer(name, 0.1, **extra), grads)
    permuted_weights, permuted_state = _run(make_optimizer(name, 0.1, **extra), grads[:, permutation])
    np.testing.assert_array_equal(permuted_weights, weights[permutation])
    for key in state:
        np.testing.assert_array_equal(permuted_state[key], state[key][permutation])


@pytest.mark.parametrize("name", ["sgd", "adagrad", "ftrl"])
def test_state_arrays_are_updated_in_place(name):
    optimizer = make_optimizer(name, 0.1)
    weights = np.zeros((4, 2), np.float32)
    state = {key: np.zeros_like(weights) for key in optimizer.state_names}
    ids = {key: id(array) for key, array in state.items()}
    weights_id = id(weights)
    optimizer.apply(weights, np.ones((4, 2), np.float32), state)
    assert id(weights) == weights_id and {k: id(a) for k, a in state.items()} == ids
    assert np.all(weights < 0)  # a positive gradient moves every weight down
    for array in state.values():
        assert np.any(array != 0)


def test_hyperparameters():
    assert make_optimizer("sgd", 0.3, l2=0.1).hyperparameters() == {"learning_rate": 0.3, "l1": 0.0, "l2": 0.1}
    assert make_optimizer("adagrad", 0.3).hyperparameters() == {"learning_rate": 0.3, "l1": 0.0, "l2": 0.0,
                                                                  "eps": 1e-6}
    assert make_optimizer("ftrl", 0.3, 0.2, 0.1, 2.0).hyperparameters() == {
        "learning_rate": 0.3, "l1": 0.2, "l2": 0.1, "beta": 2.0}
    assert [make_optimizer(n, 0.1).name for n in ("sgd", "adagrad", "ftrl")] == ["sgd", "adagrad", "ftrl"]


# -- make_optimizer errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, field",
    [
        (("adam", 0.1), {}, "optimizer.name"),
        (("SGD", 0.1), {}, "optimizer.name"),
        (("", 0.1), {}, "optimizer.name"),
        (("sgd", 0.1), {"l1": 0.5}, "optimizer.l1"),
        (("adagrad", 0.1), {"l1": 1e-9}, "optimizer.l1"),
        (("sgd", 0.0), {}, "optimizer.learning_rate"),
        (("adagrad", -0.1), {}, "optimizer.learning_rate"),
        (("ftrl", 0.0), {}, "optimizer.learning_rate"),
        (("ftrl", float("nan")), {}, "optimizer.learning_rate"),
        (("ftrl", 0.1), {"l1": -1.0}, "optimizer.l1"),
        (("sgd", 0.1), {"l2": -0.5}, "optimizer.l2"),
        (("ftrl", 0.1), {"ftrl_beta": -1.0}, "optimizer.ftrl_beta"),
    ],
)
def test_make_optimizer_errors_name_the_field(args, kwargs, field):
    with pytest.raises(ConfigError) as error:
        make_optimizer(*args, **kwargs)
    assert field in str(error.value)
    assert isinstance(error.value, HybridPSError)


def test_error_messages_quote_the_bad_value():
    with pytest.raises(ConfigError, match="optimizer.name must be one of sgd, adagrad, ftrl; got 'adam'"):
        make_optimizer("adam", 0.1)
    with pytest.raises(ConfigError, match="optimizer.learning_rate must be > 0, got -2"):
        make_optimizer("sgd", -2)
    with pytest.raises(ConfigError, match="optimizer.l1 needs optimizer.name = 'ftrl', got name = 'sgd'"):
        make_optimizer("sgd", 0.1, 0.5)


def test_ftrl_accepts_l1_and_zero_beta():
    optimizer = make_optimizer("ftrl", 0.1, l1=1.0, l2=0.0, ftrl_beta=0.0)
    assert optimizer.l1 == 1.0 and optimizer.beta == 0.0
