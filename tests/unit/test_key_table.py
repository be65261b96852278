"""hybrid_ps.tables: the compiled key table and update rules against plain-numpy references.

The references are the numpy implementations the table replaced: a dict of
rows for the table, and the optimizers' vectorised float32 arithmetic in the
same operation order, so the compiled results must agree bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybrid_ps.tables import EMPTY_KEY, KeyTable, UpdateRule, apply_rows

EDGE_KEYS = [0, 1, EMPTY_KEY, 2**64 - 2, 2**64 - 1, 2**63]


# -- plain-numpy references -------------------------------------------------------------------------


def reference_update(kind: str, rows: np.ndarray, grads: np.ndarray, width: int, lr: float, l1: float = 0.0,
                     l2: float = 0.0, eps: float = 1e-6, beta: float = 1.0) -> None:
    """The optimizers as numpy computed them before they were compiled (float32, in place)."""
    weights = rows[:, :width]
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "sgd":
            weights -= lr * (grads + l2 * weights)
        elif kind == "adagrad":
            g = grads + l2 * weights
            acc = rows[:, width : 2 * width]
            acc += g * g
            weights -= lr * g / np.sqrt(acc + eps)
        else:
            z, n = rows[:, width : 2 * width], rows[:, 2 * width : 3 * width]
            n_new = n + grads * grads
            sigma = (np.sqrt(n_new) - np.sqrt(n)) / lr
            z += grads - sigma * weights
            n[...] = n_new
            shrunk = z - np.sign(z) * l1
            denominator = (beta + np.sqrt(n)) / lr + l2
            weights[...] = np.where(np.abs(z) <= l1, 0.0, -shrunk / denominator)


class DictTable:
    """A key -> row dict with the same operations."""

    def __init__(self, width: int, columns: int) -> None:
        self.width, self.columns, self.rows = width, columns, {}

    def pull(self, keys: np.ndarray) -> np.ndarray:
        zero = np.zeros(self.columns, np.float32)
        return np.array([self.rows.get(int(k), zero)[: self.width] for k in keys], np.float32).reshape(-1, self.width)

    def push(self, keys, grads, kind, **hyper) -> int:
        rows = np.array([self.rows.get(int(k), np.zeros(self.columns, np.float32)) for k in keys],
                        np.float32).reshape(-1, self.columns)
        reference_update(kind, rows, grads, self.width, **hyper)
        bad = int(np.count_nonzero(~np.isfinite(rows).all(axis=1)))
        for k in keys:
            self.rows.setdefault(int(k), np.zeros(self.columns, np.float32))  # inserted even when refused
        if not bad:
            for k, row in zip(keys, rows):
                self.rows[int(k)] = row
        return bad


STATES = {"sgd": 0, "adagrad": 1, "ftrl": 2}
HYPER = {"sgd": {"lr": 0.3, "l2": 0.01}, "adagrad": {"lr": 0.2, "l2": 0.01}, "ftrl": {"lr": 0.5, "l1": 0.05,
                                                                                       "l2": 0.1}}


def _rule(kind: str) -> UpdateRule:
    h = HYPER[kind]
    return UpdateRule(kind, h["lr"], l1=h.get("l1", 0.0), l2=h.get("l2", 0.0))


def _check_equal(table: KeyTable, reference: DictTable, probe: np.ndarray) -> None:
    np.testing.assert_array_equal(table.pull(probe), reference.pull(probe))
    keys, rows = table.export()
    assert len(table) == len(reference.rows) == keys.size == np.unique(keys).size
    expected = np.array([reference.rows[int(k)] for k in keys], np.float32).reshape(-1, table.columns)
    np.testing.assert_array_equal(rows, expected)


key_batches = st.lists(st.lists(st.one_of(st.sampled_from(EDGE_KEYS), st.integers(0, 2**64 - 1),
                                          st.integers(0, 300)), max_size=300, unique=True), min_size=1, max_size=8)


# -- the table against the dict -------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(batches=key_batches, kind=st.sampled_from(["sgd", "adagrad", "ftrl"]), width=st.sampled_from([1, 2, 16]),
       seed=st.integers(0, 2**32 - 1))
def test_pushes_and_pulls_equal_a_dict_of_rows_bit_for_bit(batches, kind, width, seed):
    rng = np.random.default_rng(seed)
    columns = width * (1 + STATES[kind])
    table, reference = KeyTable(width, columns, capacity=4), DictTable(width, columns)
    for batch in batches:
        keys = np.array(batch, dtype=np.uint64)
        grads = rng.normal(size=(keys.size, width)).astype(np.float32)
        assert table.push(keys, grads, _rule(kind)) == reference.push(keys, grads, kind, **HYPER[kind]) == 0
    probe = np.array(sorted({k for b in batches for k in b} | set(EDGE_KEYS)), dtype=np.uint64)
    _check_equal(table, reference, probe)


@pytest.mark.parametrize("width", [1, 16])
def test_growth_across_many_resizes_keeps_every_row(width):
    rng = np.random.default_rng(1)
    table, reference = KeyTable(width, 2 * width, capacity=1), DictTable(width, 2 * width)
    sizes = []
    for start in range(0, 60_000, 5_000):  # from 1 key of room to 60k: every part resizes several times
        keys = np.unique(rng.integers(0, 2**64 - 1, 5_000, dtype=np.uint64, endpoint=True))
        grads = rng.normal(size=(keys.size, width)).astype(np.float32)
        table.push(keys, grads, _rule("adagrad"))
        reference.push(keys, grads, "adagrad", **HYPER["adagrad"])
        sizes.append(table.nbytes)
    assert len(set(sizes)) >= 5
    _check_equal(table, reference, np.array(list(reference.rows)[:2000], dtype=np.uint64))


def test_an_empty_batch_and_an_empty_table():
    table = KeyTable(3, 6)
    none = np.zeros(0, np.uint64)
    assert table.pull(none).shape == (0, 3) and table.contains(none).shape == (0,)
    assert table.push(none, np.zeros((0, 3), np.float32), _rule("adagrad")) == 0
    keys, rows = table.export()
    assert keys.shape == (0,) and rows.shape == (0, 6) and len(table) == 0
    np.testing.assert_array_equal(table.pull(np.array([5, 0], np.uint64)), np.zeros((2, 3)))


@pytest.mark.parametrize("key", EDGE_KEYS)
def test_one_key_anywhere_in_the_key_space(key):
    table = KeyTable(1, 2)
    keys = np.array([key], np.uint64)
    assert not table.contains(keys)[0]
    table.push(keys, np.full((1, 1), 2.0, np.float32), _rule("adagrad"))
    assert table.contains(keys)[0] and len(table) == 1
    assert table.pull(keys)[0, 0] == pytest.approx(-0.2, rel=1e-6)
    assert table.export()[0].tolist() == [key]


def test_assign_sets_whole_rows_and_a_repeated_key_keeps_the_last():
    table = KeyTable(2, 4)
    keys = np.array([7, 0, 7, 2**64 - 1], np.uint64)
    rows = np.arange(16, dtype=np.float32).reshape(4, 4)
    table.assign(keys, rows)
    assert len(table) == 3
    np.testing.assert_array_equal(table.pull(np.array([7, 0, 2**64 - 1], np.uint64), columns=4), rows[[2, 1, 3]])


def test_retain_keeps_the_masked_keys_in_export_order():
    for width in (1, 16):  # inline rows and rows in blocks
        table = KeyTable(width, width)
        keys = np.concatenate([np.zeros(1, np.uint64), np.arange(1, 3000, dtype=np.uint64) * np.uint64(7919)])
        table.assign(keys, np.repeat(keys.astype(np.float32)[:, None], width, axis=1))
        held, _ = table.export()
        keep = (held % np.uint64(3)) == 0
        table.retain(keep)
        kept, rows = table.export()
        assert set(kept.tolist()) == set(held[keep].tolist())
        np.testing.assert_array_equal(rows[:, 0], kept.astype(np.float32))
        assert not table.contains(held[~keep]).any()


def test_clear_empties_the_table():
    table = KeyTable(1, 1)
    table.assign(np.arange(1000, dtype=np.uint64), np.ones((1000, 1), np.float32))
    table.clear()
    assert len(table) == 0 and not table.contains(np.arange(1000, dtype=np.uint64)).any()


# -- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sgd", "adagrad", "ftrl"])
@pytest.mark.parametrize("width", [1, 16])
def test_an_update_that_overflows_is_refused_whole_and_changes_nothing(kind, width):
    table = KeyTable(width, width * (1 + STATES[kind]))
    keys = np.array([3, 0, 2**64 - 2], np.uint64)
    table.push(keys, np.full((3, width), 0.5, np.float32), _rule(kind))
    before = table.export()
    huge = np.full((4, width), 0.1, np.float32)
    huge[2] = 3e38
    more = np.array([3, 0, 2**64 - 2, 99], np.uint64)  # 99 is new: it stays, with a zero row
    refused = 0
    for _ in range(6):  # SGD overflows after a few pushes, AdaGrad and FTRL on the first (g * g)
        refused = table.push(more, huge, _rule(kind))
        if refused:
            break
        before = table.export()
    assert refused == 1
    after = table.export()
    old = {int(k): r for k, r in zip(*before)}
    for key, row in zip(*after):
        np.testing.assert_array_equal(row, old.get(int(key), np.zeros_like(row)))


def test_non_finite_gradients_are_refused():
    table = KeyTable(1, 2)
    keys = np.array([1, 2], np.uint64)
    assert table.push(keys, np.array([[np.nan], [1.0]], np.float32), _rule("adagrad")) == 1
    np.testing.assert_array_equal(table.pull(keys), np.zeros((2, 1)))


def test_shapes_that_do_not_fit_are_refused():
    table = KeyTable(2, 4)
    with pytest.raises(ValueError, match="gradient"):
        table.push(np.array([1], np.uint64), np.zeros((1, 3), np.float32), _rule("adagrad"))
    with pytest.raises(ValueError, match="state arrays"):
        table.push(np.array([1], np.uint64), np.zeros((1, 2), np.float32), _rule("ftrl"))
    with pytest.raises(ValueError, match="columns"):
        table.assign(np.array([1], np.uint64), np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="mask"):
        table.retain(np.ones(3, bool))
    with pytest.raises(ValueError):
        KeyTable(0, 1)


# -- the update rules on dense rows -----------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(["sgd", "adagrad", "ftrl"]), width=st.sampled_from([1, 3, 16]),
       steps=st.integers(1, 6), seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_apply_rows_equals_the_numpy_arithmetic_bit_for_bit(kind, width, steps, seed, scale):
    rng = np.random.default_rng(seed)
    rows = np.zeros((20, width * (1 + STATES[kind])), np.float32)
    expected = rows.copy()
    for _ in range(steps):
        grads = (rng.normal(size=(20, width)) * scale).astype(np.float32)
        grads[rng.random(grads.shape) < 0.2] = 0.0
        assert apply_rows(rows, grads, _rule(kind), width) == 0
        reference_update(kind, expected, grads, width, **HYPER[kind])
    np.testing.assert_array_equal(rows, expected)


def test_ftrl_with_l1_drives_small_weights_to_exactly_zero():
    rows = np.zeros((3, 3), np.float32)
    grads = np.array([[0.01], [-0.02], [5.0]], np.float32)
    apply_rows(rows, grads, UpdateRule("ftrl", 0.5, l1=1.0), 1)
    assert rows[0, 0] == 0.0 and rows[1, 0] == 0.0 and rows[2, 0] != 0.0
    assert np.signbit(rows[:2, 0]).sum() == 0  # +0.0, as numpy's where(..., 0.0, ...)


# -- stamps, stale rows and removal (feature eviction) --------------------------------------------


@settings(max_examples=60, deadline=None)
@given(batches=key_batches, width=st.sampled_from([1, 2, 16]), seed=st.integers(0, 2**32 - 1),
       before=st.integers(0, 9), below=st.sampled_from([-1.0, 0.0, 0.3]))
def test_stamps_stale_and_remove_equal_a_dict_of_rows(batches, width, seed, before, below):
    """Pushes at clocks 0, 1, ... stamp their rows; ``stale`` is the dict's rows with an older stamp (or small
    values); removing them (and pushing again) leaves exactly the dict without them."""
    rng = np.random.default_rng(seed)
    columns = width * 2 + 1  # AdaGrad, and the stamp
    table, reference, stamps = KeyTable(width, columns, capacity=4, stamped=True), DictTable(width, columns - 1), {}
    for clock, batch in enumerate(batches):
        keys = np.array(batch, dtype=np.uint64)
        grads = rng.normal(size=(keys.size, width)).astype(np.float32)
        assert table.push(keys, grads, _rule("adagrad"), clock) == reference.push(keys, grads, "adagrad",
                                                                                  **HYPER["adagrad"]) == 0
        stamps.update(dict.fromkeys(batch, clock))
    expected = {k for k, row in reference.rows.items()
                if stamps[k] < before or (below >= 0 and np.all(np.abs(row[:width]) <= below))}
    stale = table.stale(before, below)
    assert sorted(stale.tolist()) == sorted(expected) and stale.size == len(expected)
    assert table.remove(np.concatenate([stale, stale[:3]])) == len(expected)  # a repeat is skipped
    for key in expected:
        del reference.rows[key]
    keys, rows = table.export()
    assert sorted(keys.tolist()) == sorted(reference.rows)
    for key, row in zip(keys.tolist(), rows, strict=True):
        assert row[:-1].tobytes() == reference.rows[key].tobytes()
        assert int(row[-1:].view(np.uint32)[0]) == stamps[key]
    again = np.array(sorted(expected), dtype=np.uint64)  # evicted keys come back as new rows (zeros, then a push)
    grads = np.ones((again.size, width), np.float32)
    assert table.push(again, grads, _rule("adagrad"), 99) == reference.push(again, grads, "adagrad",
                                                                          **HYPER["adagrad"]) == 0
    probe = np.array(sorted({k for b in batches for k in b} | set(EDGE_KEYS)), dtype=np.uint64)
    np.testing.assert_array_equal(table.pull(probe), reference.pull(probe))
    assert len(table) == len(reference.rows)


@pytest.mark.parametrize("width", [1, 16])
def test_removal_gives_memory_back_and_wide_rows_reuse_their_places(width):
    table = KeyTable(width, width + 1, stamped=True)
    keys = np.unique(np.random.default_rng(1).integers(1, 2**64 - 1, 300_000, dtype=np.uint64))
    rule = UpdateRule("sgd", 0.1)
    table.push(keys, np.ones((keys.size, width), np.float32), rule, 1)
    full = table.nbytes
    assert table.remove(keys[: keys.size * 9 // 10]) == keys.size * 9 // 10
    assert len(table) == keys.size - keys.size * 9 // 10
    if width == 1:  # rows live in the buckets: the parts shrink
        assert table.nbytes < full / 3
    else:  # rows live in blocks that never move: the freed places are handed out again before any new block
        table.push(keys[: keys.size // 2], np.ones((keys.size // 2, width), np.float32), rule, 2)
        assert table.nbytes <= full
    assert table.contains(keys[keys.size * 9 // 10 :]).all()


def test_stale_needs_a_stamped_table_and_push_checks_the_stamp_column():
    with pytest.raises(ValueError, match="keeps no stamps"):
        KeyTable(1, 1).stale(3)
    assert KeyTable(1, 1).stale(0, 0.0).size == 0
    with pytest.raises(ValueError, match="and a stamp"):
        KeyTable(1, 3, stamped=True).push(np.array([1], np.uint64), np.ones((1, 1), np.float32), _rule("sgd"))


def test_keys_are_exports_keys_without_the_rows():
    table = KeyTable(16, 32)
    keys = np.array([0, 5, 2**64 - 1, 77, 2**63], np.uint64)
    table.assign(keys, np.ones((keys.size, 32), np.float32))
    np.testing.assert_array_equal(table.keys(), table.export()[0])
    assert KeyTable(1, 1).keys().size == 0
