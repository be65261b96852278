"""hybrid_ps.server.shard: zeros for unseen keys, push/pull against a numpy reference, growth, export/load."""

from __future__ import annotations

import numpy as np
import pytest

from hybrid_ps.errors import NonFiniteError
from hybrid_ps.server.shard import Shard
from hybrid_ps.tables.optimizers import make_optimizer

UNIVERSE = np.unique(np.random.default_rng(0).integers(0, 2**64 - 1, 600, dtype=np.uint64, endpoint=True))


class DenseReference:
    """The same update rules over a dense float64 table indexed by position in ``UNIVERSE``."""

    def __init__(self, name: str, width: int, lr: float, l1: float = 0.0, l2: float = 0.0, beta: float = 1.0,
                 eps: float = 1e-6) -> None:
        self.name, self.lr, self.l1, self.l2, self.beta, self.eps = name, lr, l1, l2, beta, eps
        shape = (UNIVERSE.size, width)
        self.w, self.acc, self.z, self.n = (np.zeros(shape) for _ in range(4))

    def push(self, keys: np.ndarray, grads: np.ndarray) -> None:
        rows = np.searchsorted(UNIVERSE, keys)
        g = grads.astype(np.float64)
        w = self.w[rows]
        if self.name == "sgd":
            self.w[rows] = w - self.lr * (g + self.l2 * w)
        elif self.name == "adagrad":
            g = g + self.l2 * w
            self.acc[rows] += g * g
            self.w[rows] = w - self.lr * g / np.sqrt(self.acc[rows] + self.eps)
        else:
            n = self.n[rows]
            sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / self.lr
            z = self.z[rows] + g - sigma * w
            n = n + g * g
            self.z[rows], self.n[rows] = z, n
            new = -(z - np.sign(z) * self.l1) / ((self.beta + np.sqrt(n)) / self.lr + self.l2)
            self.w[rows] = np.where(np.abs(z) <= self.l1, 0.0, new)

    def pull(self, keys: np.ndarray) -> np.ndarray:
        return self.w[np.searchsorted(UNIVERSE, keys)]

    def state(self, keys: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.searchsorted(UNIVERSE, keys)
        return {"sgd": {}, "adagrad": {"accumulator": self.acc[rows]},
                "ftrl": {"z": self.z[rows], "n": self.n[rows]}}[self.name]


def _random_subset(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.permutation(UNIVERSE)[:size]  # unique, in no particular order


OPTIMIZERS = [("sgd", {"l2": 0.01}), ("adagrad", {"l2": 0.01}), ("ftrl", {"l1": 0.05, "l2": 0.1})]


# -- unseen keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 4])
def test_unseen_keys_pull_as_zeros_and_are_not_inserted(width):
    shard = Shard(width, make_optimizer("sgd", 1.0))
    pulled = shard.pull(UNIVERSE[:50])
    assert pulled.shape == (50, width) and pulled.dtype == np.float32
    assert np.all(pulled == 0)
    assert len(shard) == 0


def test_pull_of_no_keys():
    shard = Shard(3, make_optimizer("sgd", 1.0))
    shard.push(UNIVERSE[:5], np.ones((5, 3), np.float32))
    empty = shard.pull(np.zeros(0, np.uint64))
    assert empty.shape == (0, 3) and empty.dtype == np.float32


# -- push then pull --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, hyper", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
@pytest.mark.parametrize("width", [1, 3])
def test_push_then_pull_equals_a_numpy_reference(name, hyper, width):
    rng = np.random.default_rng(1)
    shard = Shard(width, make_optimizer(name, 0.3, **hyper), capacity=8)
    reference = DenseReference(name, width, 0.3, **hyper)
    seen: set[int] = set()
    for _ in range(25):
        keys = _random_subset(rng, int(rng.integers(1, 120)))
        grads = rng.normal(size=(keys.size, width)).astype(np.float32)
        shard.push(keys, grads)
        reference.push(keys, grads)
        seen.update(keys.tolist())
        probe = _random_subset(rng, 200)
        np.testing.assert_allclose(shard.pull(probe), reference.pull(probe), rtol=1e-5, atol=1e-6)
    assert len(shard) == len(seen)
    np.testing.assert_allclose(shard.pull(UNIVERSE), reference.pull(UNIVERSE), rtol=1e-5, atol=1e-6)
    keys, values, state = shard.export()
    assert set(keys.tolist()) == seen and keys.size == len(seen)
    np.testing.assert_allclose(values, reference.pull(keys), rtol=1e-5, atol=1e-6)
    expected_state = reference.state(keys)
    assert set(state) == set(expected_state)
    for key in state:
        np.testing.assert_allclose(state[key], expected_state[key], rtol=1e-5, atol=1e-6)


def test_a_pushed_key_is_inserted_even_with_a_zero_gradient():
    shard = Shard(1, make_optimizer("sgd", 1.0))
    shard.push(UNIVERSE[:3], np.zeros((3, 1), np.float32))
    assert len(shard) == 3
    np.testing.assert_array_equal(shard.pull(UNIVERSE[:3]), np.zeros((3, 1)))


def test_push_accepts_float64_gradients():
    shard = Shard(2, make_optimizer("sgd", 0.5))
    shard.push(UNIVERSE[:2], np.array([[1.0, 2.0], [3.0, 4.0]], np.float64))
    np.testing.assert_array_equal(shard.pull(UNIVERSE[:2]), [[-0.5, -1.0], [-1.5, -2.0]])
    assert shard.export()[1].dtype == np.float32


def test_pull_returns_a_copy():
    shard = Shard(1, make_optimizer("sgd", 1.0))
    shard.push(UNIVERSE[:4], np.ones((4, 1), np.float32))
    pulled = shard.pull(UNIVERSE[:4])
    pulled[:] = 99.0
    partly = shard.pull(UNIVERSE[:6])  # the other branch: some keys unseen
    partly[:] = 99.0
    np.testing.assert_array_equal(shard.pull(UNIVERSE[:4]), -np.ones((4, 1)))


def test_partial_overlap_of_seen_and_unseen_keys():
    shard = Shard(2, make_optimizer("sgd", 1.0))
    seen = UNIVERSE[::3]
    grads = np.random.default_rng(2).normal(size=(seen.size, 2)).astype(np.float32)
    shard.push(seen, grads)
    probe = np.random.default_rng(3).permutation(UNIVERSE)
    pulled = shard.pull(probe)
    expected = np.zeros((probe.size, 2), np.float32)
    was_seen = np.isin(probe, seen)
    expected[was_seen] = -grads[np.searchsorted(seen, probe[was_seen])]
    np.testing.assert_array_equal(pulled, expected)
    assert 0 < was_seen.sum() < probe.size
    # pushing a mix of seen and unseen keys inserts only the unseen ones and updates both
    mixed = np.concatenate([seen[:5], UNIVERSE[1:16:3]])
    shard.push(mixed, np.ones((mixed.size, 2), np.float32))
    assert len(shard) == seen.size + 5
    np.testing.assert_array_equal(shard.pull(seen[:5]), -grads[:5] - 1)
    np.testing.assert_array_equal(shard.pull(UNIVERSE[1:16:3]), -np.ones((5, 2)))


# -- growth ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, hyper", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_growth_past_capacity_keeps_values_and_optimizer_state(name, hyper):
    rng = np.random.default_rng(4)
    shard = Shard(2, make_optimizer(name, 0.2, **hyper), capacity=4)
    reference = DenseReference(name, 2, 0.2, **hyper)
    first = UNIVERSE[:3]
    for _ in range(3):  # build up optimizer state on the first keys
        grads = rng.normal(size=(3, 2)).astype(np.float32)
        shard.push(first, grads)
        reference.push(first, grads)
    before = shard.pull(first)
    capacities = {shard.table.nbytes}
    for start in range(3, UNIVERSE.size, 50):  # grow from 4 rows to > 600 in several steps
        keys = UNIVERSE[start : start + 50]
        grads = rng.normal(size=(keys.size, 2)).astype(np.float32)
        shard.push(keys, grads)
        reference.push(keys, grads)
        capacities.add(shard.table.nbytes)
        np.testing.assert_array_equal(shard.pull(first), before)  # untouched by growth
    assert len(capacities) >= 4 and len(shard) == UNIVERSE.size
    # the first keys' state survived every reallocation: further pushes continue from it
    grads = rng.normal(size=(3, 2)).astype(np.float32)
    shard.push(first, grads)
    reference.push(first, grads)
    np.testing.assert_allclose(shard.pull(UNIVERSE), reference.pull(UNIVERSE), rtol=1e-5, atol=1e-6)
    keys, _, state = shard.export()
    for key, expected in reference.state(keys).items():
        np.testing.assert_allclose(state[key], expected, rtol=1e-5, atol=1e-6)


def test_one_push_much_larger_than_capacity():
    shard = Shard(1, make_optimizer("sgd", 1.0), capacity=2)
    shard.push(UNIVERSE, np.arange(UNIVERSE.size, dtype=np.float32).reshape(-1, 1))
    assert len(shard) == UNIVERSE.size
    np.testing.assert_array_equal(shard.pull(UNIVERSE)[:, 0], -np.arange(UNIVERSE.size))


# -- export and load -------------------------------------------------------------------------------


def test_export_holds_every_key_once_in_a_stable_order_that_retain_follows():
    shard = Shard(1, make_optimizer("adagrad", 0.1))
    order = np.random.default_rng(5).permutation(UNIVERSE[:20])
    shard.push(order[:10], np.ones((10, 1), np.float32))
    shard.push(order[10:], np.ones((10, 1), np.float32))
    keys, values, state = shard.export()
    np.testing.assert_array_equal(np.sort(keys), np.sort(order))
    np.testing.assert_array_equal(shard.export()[0], keys)
    assert values.shape == (20, 1) and state["accumulator"].shape == (20, 1)
    shard.retain(np.arange(20) % 2 == 0)
    np.testing.assert_array_equal(np.sort(shard.export()[0]), np.sort(keys[::2]))


@pytest.mark.parametrize("name, hyper", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_load_restores_values_and_state(name, hyper):
    rng = np.random.default_rng(6)
    original = Shard(2, make_optimizer(name, 0.2, **hyper), capacity=4)
    for _ in range(4):
        keys = _random_subset(rng, 40)
        original.push(keys, rng.normal(size=(40, 2)).astype(np.float32))
    keys, values, state = (np.copy(a) if isinstance(a, np.ndarray) else {k: v.copy() for k, v in a.items()}
                           for a in original.export())
    restored = Shard(2, make_optimizer(name, 0.2, **hyper), capacity=4)
    restored.load(keys, values, state)
    assert len(restored) == len(original)
    np.testing.assert_array_equal(restored.pull(UNIVERSE), original.pull(UNIVERSE))
    grads = rng.normal(size=(keys.size, 2)).astype(np.float32)
    original.push(keys, grads)
    restored.push(keys, grads)
    np.testing.assert_array_equal(restored.pull(UNIVERSE), original.pull(UNIVERSE))


@pytest.mark.parametrize("name", ["sgd", "adagrad", "ftrl"])
def test_an_update_that_overflows_float32_is_refused_and_changes_nothing(name):
    shard = Shard(1, make_optimizer(name, 1.0))
    keys = np.array([3, 8, 20], dtype=np.uint64)
    shard.push(keys, np.full((3, 1), 0.5, np.float32))
    before_values, before_state = shard.pull(keys), _state_of(shard, keys)
    huge = np.array([[0.1], [3e38], [0.1]], np.float32)
    for _ in range(3):  # SGD overflows on the second, AdaGrad and FTRL on the first (g * g)
        try:
            shard.push(keys, huge)
        except NonFiniteError as e:
            assert "update of 1 of 3 keys overflows float32" in str(e)
            break
        before_values, before_state = shard.pull(keys), _state_of(shard, keys)
    else:
        pytest.fail("no push was refused")
    assert np.array_equal(shard.pull(keys), before_values)
    for name_, array in _state_of(shard, keys).items():
        assert np.array_equal(array, before_state[name_])
    assert np.isfinite(shard.export()[1]).all()


def _state_of(shard: Shard, keys: np.ndarray) -> dict[str, np.ndarray]:
    held, _, state = shard.export()
    at = np.argsort(held)[np.searchsorted(np.sort(held), keys)]
    return {name: array[at] for name, array in state.items()}
