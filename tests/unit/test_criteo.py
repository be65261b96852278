"""hybrid_ps.data.criteo and _criteo_parse: Criteo TSV lines (a label, 13 integer columns, 26 categories).

What is tested: the compiled ``parse_chunk`` against ``parse_slow``, the Python reference, on lines Hypothesis
writes (labels, integers from empty to 19 digits, hex and arbitrary categories, ``\\r``, blank lines, wrong
field counts): it gives the reference's rows bit for bit or declines with ``None``, and on realistic lines it
never declines; the key and value rules (one key per integer column, one per column and category, the log
value, no key for an empty field, never the bias key 2**64 - 1); the reference's errors (``BadLine`` with the
0-based line and a message naming the column); and ``DataShard(format="criteo")`` on a gzip file.
"""

from __future__ import annotations

import gzip
import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_ps.data import criteo
from hybrid_ps.data._criteo_parse import parse_chunk
from hybrid_ps.data.batch import Batch
from hybrid_ps.data.criteo import FIELDS, INTEGER_COLUMNS, column_key, parse_criteo, parse_slow
from hybrid_ps.data.reader import DataShard
from hybrid_ps.data.rows import BadLine, Rows, as_batch
from hybrid_ps.errors import DataError

_SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))

INT64_MAX = 2**63 - 1
BIAS_KEY = 2**64 - 1
CATEGORIES = FIELDS - 1 - INTEGER_COLUMNS


def _assert_identical(got, want: Rows) -> None:
    """Every array bit for bit (float32 compared as their bits), dtypes included."""
    labels, counts, keys, values = got
    assert labels.dtype == np.float32 and values.dtype == np.float32
    assert counts.dtype == np.int64 and keys.dtype == np.uint64
    np.testing.assert_array_equal(labels.view(np.uint32), want.labels.view(np.uint32))
    np.testing.assert_array_equal(counts, want.counts)
    np.testing.assert_array_equal(keys, want.keys)
    np.testing.assert_array_equal(values.view(np.uint32), want.values.view(np.uint32))
    assert want.labels.dtype == np.float32 and want.values.dtype == np.float32
    assert want.counts.dtype == np.int64 and want.keys.dtype == np.uint64


def _sometimes(good, bad, percent: int):
    """``bad`` in about ``percent`` % of the draws, else ``good``."""
    return st.integers(0, 99).flatmap(lambda k: bad if k < percent else good)


def _ascii(strategy):
    return strategy.map(lambda n: str(n).encode())


good_integers = st.one_of(
    st.just(b""),
    _ascii(st.integers(-(10**6), 10**12)),
    _ascii(st.integers(10**17, INT64_MAX)),  # 18 and 19 digits, up to the int64 limit
    _ascii(st.integers(-INT64_MAX, -(10**17))),
    st.sampled_from([b"0", b"-0", b"007", b"-007", b"000000000000000000001", b"9223372036854775807",
                     b"-9223372036854775807", b"999999999999999999", b"1000000000000000000"]),
)
bad_integers = st.sampled_from([b"-", b"+5", b"1.5", b"abc", b"1e3", b" 1", b"1 ", b"0x1f", b"9223372036854775808",
                                b"-9223372036854775808", b"18446744073709551616", b"\xd9\xa1", b"--1", b"1-",
                                b"\r", b"5\r"])
hex_categories = st.integers(0, 2**32 - 1).map(lambda x: b"%08x" % x)
any_categories = st.binary(max_size=12).map(lambda b: b.replace(b"\t", b"").replace(b"\n", b""))
categories = st.one_of(st.just(b""), hex_categories, any_categories)
realistic_integers = st.one_of(st.just(b""), _ascii(st.integers(-(10**6), 10**12)))
realistic_categories = st.one_of(st.just(b""), hex_categories)
labels = _sometimes(st.sampled_from([b"0", b"1"]),
                    st.sampled_from([b"2", b"", b"01", b"-1", b"1.0", b" 1", b"1\r", b"\r", b"x"]), 2)


def _random_integer(rng: random.Random, realistic: bool) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        return b""
    if realistic or roll < 0.97:
        return str(rng.randrange(-(10**6), 10**12 + 1) if rng.random() < 0.3 else rng.randrange(-2, 1000)).encode()
    if roll < 0.99:  # 18 and 19 digits, either sign, up to the int64 limit
        return str(rng.choice([1, -1]) * rng.randrange(10**17, INT64_MAX + 1)).encode()
    return rng.choice([b"0", b"-0", b"007", b"9223372036854775807", b"-9223372036854775807", b"999999999999999999"])


def _random_category(rng: random.Random, realistic: bool) -> bytes:
    roll = rng.random()
    if roll < 0.2:
        return b""
    if realistic or roll < 0.8:
        return b"%08x" % rng.getrandbits(32)
    return rng.randbytes(rng.randrange(1, 12)).replace(b"\t", b"").replace(b"\n", b"")


@st.composite
def lines(draw, realistic: bool = False) -> bytes:
    """One line without its newline: a label, 13 integers and 26 categories (sometimes a field more or less).

    The fields come from a seeded generator (cheap: a whole line for one draw); Hypothesis then overwrites a
    few of them with values of its own (bad ones too, unless ``realistic``), so that it can shrink a failure
    to the field that causes it.
    """
    if draw(st.integers(0, 99)) < 4:
        return draw(st.sampled_from([b"", b"\r"]))  # a blank line
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    fields = [rng.choice([b"0", b"1"])]
    fields += [_random_integer(rng, realistic) for _ in range(INTEGER_COLUMNS)]
    fields += [_random_category(rng, realistic) for _ in range(CATEGORIES)]
    integers = realistic_integers if realistic else _sometimes(good_integers, bad_integers, 4)
    strings = realistic_categories if realistic else categories
    for _ in range(draw(st.integers(0, 3))):
        column = draw(st.integers(0, FIELDS - 1))
        if column == 0:
            fields[0] = draw(st.sampled_from([b"0", b"1"]) if realistic else labels)
        else:
            fields[column] = draw(integers if column <= INTEGER_COLUMNS else strings)
    if not realistic and draw(st.integers(0, 99)) < 2:
        if draw(st.booleans()):
            fields.pop(draw(st.integers(1, len(fields) - 1)))
        else:
            fields.insert(draw(st.integers(1, len(fields))), draw(categories))
    return b"\t".join(fields) + draw(st.sampled_from([b"", b"", b"\r"]))


def _text(many_lines: list[bytes]) -> bytes:
    return b"\n".join(many_lines) + b"\n"


@_SETTINGS
@given(st.lists(lines(), min_size=0, max_size=8).map(_text))
def test_compiled_parser_equals_the_reference_or_declines(text):
    fast = parse_chunk(text)
    try:
        slow = parse_slow(text)
    except BadLine:
        assert fast is None  # it must not take what the reference refuses
        return
    if fast is not None:
        _assert_identical(fast, slow)
    assert not (slow.keys == BIAS_KEY).any()
    _assert_identical(parse_criteo(text), slow)  # the public parser: fast, or the reference behind it


@_SETTINGS
@given(st.lists(lines(realistic=True), min_size=1, max_size=20).map(_text))
def test_compiled_parser_takes_realistic_lines(text):
    fast = parse_chunk(text)
    assert fast is not None
    _assert_identical(fast, parse_slow(text))
    assert not (fast[2] == BIAS_KEY).any()


def test_compiled_parser_takes_a_buffer_and_declines_text_without_final_newline():
    line = b"\t".join([b"1"] + [b"3"] * INTEGER_COLUMNS + [b"68fd1e64"] * CATEGORIES)
    assert parse_chunk(line) is None
    assert parse_chunk(line + b"\n" + line) is None
    _assert_identical(parse_chunk(memoryview(b"xx" + line + b"\n")[2:]), parse_slow(line + b"\n"))
    _assert_identical(parse_chunk(bytearray(line + b"\n")), parse_slow(line + b"\n"))
    empty = parse_chunk(b"")
    assert empty is not None and all(a.size == 0 for a in empty)
    assert [a.size for a in parse_chunk(b"\n\r\n\n")] == [0, 0, 0, 0]


def test_compiled_parser_agrees_on_many_random_lines_of_criteo_shape():
    """A large deterministic sample in addition to Hypothesis: Kaggle-like field densities."""
    rng = random.Random(0)
    out = []
    for _ in range(3000):
        fields = [rng.choice([b"0", b"0", b"0", b"1"])]
        fields += [b"" if rng.random() < 0.3 else str(int(rng.expovariate(1 / 50)) - 2).encode()
                   for _ in range(INTEGER_COLUMNS)]
        fields += [b"" if rng.random() < 0.2 else b"%08x" % rng.getrandbits(32) for _ in range(CATEGORIES)]
        out.append(b"\t".join(fields))
    text = _text(out)
    fast = parse_chunk(text)
    assert fast is not None and fast[0].size == 3000
    _assert_identical(fast, parse_slow(text))


# keys and values


def _line(integers: dict[int, bytes] | None = None, cats: dict[int, bytes] | None = None, label=b"1") -> bytes:
    """A line with integer column ``Ij`` and categorical column ``Cj`` (both 1-based) as given, others empty."""
    integers, cats = integers or {}, cats or {}
    fields = [label] + [integers.get(j, b"") for j in range(1, INTEGER_COLUMNS + 1)]
    fields += [cats.get(j, b"") for j in range(1, CATEGORIES + 1)]
    return b"\t".join(fields) + b"\n"


def _both(text: bytes) -> Rows:
    """The rows of ``text`` by both parsers, checked identical (the compiled one must take it)."""
    slow = parse_slow(text)
    fast = parse_chunk(text)
    assert fast is not None
    _assert_identical(fast, slow)
    return slow


def test_integer_columns_give_one_key_per_column_and_the_log_value():
    numbers = [0, 1, -1, 2, 10, -10, 999, 10**6, -(10**6), 10**12, 123456789012345678, -5, 7]
    rows = _both(_line({j: str(x).encode() for j, x in enumerate(numbers, start=1)}))
    assert rows.counts.tolist() == [INTEGER_COLUMNS]
    assert rows.keys.tolist() == [column_key(j) for j in range(1, INTEGER_COLUMNS + 1)]
    want = np.array([math.copysign(math.log1p(abs(x)), x) if x else 0.0 for x in numbers], dtype=np.float32)
    np.testing.assert_array_equal(rows.values.view(np.uint32), want.view(np.uint32))
    assert rows.values[3] == np.float32(math.log(3)) and rows.values[5] == np.float32(-math.log(11))


def test_the_key_of_an_integer_column_does_not_depend_on_its_value():
    rows = _both(_line({4: b"5"}) + _line({4: b"70000"}) + _line({4: b"-3"}))
    assert len(set(rows.keys.tolist())) == 1 and rows.keys[0] == column_key(4)
    assert len(set(column_key(j) for j in range(1, INTEGER_COLUMNS + 1))) == INTEGER_COLUMNS


def test_categories_give_one_key_per_column_and_value_with_value_one():
    cats = {j: b"%08x" % (0x68FD1E64 + j) for j in range(1, CATEGORIES + 1)}
    rows = _both(_line({}, cats, label=b"0"))
    assert rows.labels.tolist() == [0.0] and rows.counts.tolist() == [CATEGORIES]
    assert rows.keys.tolist() == [column_key(INTEGER_COLUMNS + j, cats[j]) for j in range(1, CATEGORIES + 1)]
    assert rows.values.tolist() == [1.0] * CATEGORIES


def test_the_same_hex_string_in_two_columns_gives_two_keys():
    rows = _both(_line({}, {1: b"68fd1e64", 2: b"68fd1e64"}) + _line({}, {1: b"68fd1e64"}))
    first, second, again = rows.keys.tolist()
    assert first != second
    assert first == again == column_key(14, b"68fd1e64") and second == column_key(15, b"68fd1e64")
    assert column_key(14, b"68fd1e64") != column_key(14, b"68fd1e65")
    assert column_key(14) != column_key(14, b"")  # an integer column's key is not that of an empty category


def test_empty_fields_give_no_key():
    rows = _both(_line() + _line({}, {26: b"x"}) + _line({13: b"0"}) + _line(label=b"0"))
    assert rows.labels.tolist() == [1, 1, 1, 0]
    assert rows.counts.tolist() == [0, 1, 1, 0]
    assert rows.keys.tolist() == [column_key(39, b"x"), column_key(13)]
    assert rows.values.tolist() == [1.0, 0.0]


def test_crlf_and_blank_lines():
    line = _line({1: b"3"}, {1: b"a"})
    rows = _both(b"\n\r\n" + line[:-1] + b"\r\n" + b"\n" + line)
    assert rows.counts.tolist() == [2, 2]
    # only one \r is dropped: a second one belongs to the last category
    rows = _both(_line({}, {26: b"z\r"})[:-1] + b"\r\n")
    assert rows.keys.tolist() == [column_key(39, b"z\r")]


def test_the_hashes_are_fnv1a_and_splitmix64():
    # Published test vectors: FNV-1a 64 of b"" and b"a"; the first splitmix64 output from seed 0.
    assert criteo._fnv1a64(b"") == 0xCBF29CE484222325
    assert criteo._fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert criteo._mix64(0) == 0xE220A8397B1DCDAF
    assert column_key(0) == 0xE220A8397B1DCDAF


def test_the_bias_key_is_never_a_feature_key(monkeypatch):
    monkeypatch.setattr(criteo, "_mix64", lambda x: BIAS_KEY)
    assert column_key(3) == BIAS_KEY - 1
    assert column_key(20, b"68fd1e64") == BIAS_KEY - 1


# errors


def _with_bad_line(bad: bytes) -> bytes:
    """A good line, a blank line, then ``bad`` (line 2, 0-based), then a good line."""
    good = _line({1: b"1"}, {1: b"68fd1e64"})
    return good + b"\n" + bad + b"\n" + good


def _fields(changes: dict[int, bytes], count: int = FIELDS) -> bytes:
    fields = [b"1"] + [b"1"] * INTEGER_COLUMNS + [b"ab"] * CATEGORIES
    for index, value in changes.items():
        fields[index] = value
    while len(fields) > count:
        fields.pop()
    while len(fields) < count:
        fields.append(b"cd")
    return b"\t".join(fields)


BAD = [
    (_fields({}, 39), "expected 40 tab-separated fields (a label, 13 integers, 26 categories), got 39"),
    (_fields({}, 41), "expected 40 tab-separated fields (a label, 13 integers, 26 categories), got 41"),
    (b"1", "expected 40 tab-separated fields (a label, 13 integers, 26 categories), got 1"),
    (_fields({0: b"2"}), "label must be 0 or 1"),
    (_fields({0: b""}), "label must be 0 or 1"),
    (_fields({0: b"1.0"}), "label must be 0 or 1"),
    (_fields({3: b"1.5"}), "column I3 must be an integer (int64) or empty"),
    (_fields({3: b"abc"}), "column I3 must be an integer (int64) or empty"),
    (_fields({1: b"9223372036854775808"}), "column I1 must be an integer (int64) or empty"),
    (_fields({13: b"-9223372036854775808"}), "column I13 must be an integer (int64) or empty"),
    (_fields({7: b"+7"}), "column I7 must be an integer (int64) or empty"),
    (_fields({7: b"-"}), "column I7 must be an integer (int64) or empty"),
    (_fields({7: b"\xd9\xa1"}), "column I7 must be an integer (int64) or empty"),  # an Arabic-Indic digit
]


@pytest.mark.parametrize("bad,what", BAD)
def test_the_reference_names_the_bad_line_and_column(bad, what):
    text = _with_bad_line(bad)
    with pytest.raises(BadLine) as info:
        parse_slow(text)
    assert info.value.line == 2
    assert info.value.what == what
    assert parse_chunk(text) is None


def test_the_error_quotes_the_field():
    with pytest.raises(BadLine) as info:
        parse_slow(_with_bad_line(_fields({3: b"1.5"})))
    assert info.value.excerpt == b"1.5"
    with pytest.raises(BadLine) as info:
        parse_slow(_with_bad_line(_fields({0: b"2"})))
    assert info.value.excerpt == b"2"


def test_the_int64_limits_are_integers():
    rows = parse_criteo(_line({1: b"9223372036854775807", 2: b"-9223372036854775807", 3: b"999999999999999999"}))
    biggest = np.float32(math.log1p(2.0**63))
    assert rows.values.tolist() == [biggest, -biggest, np.float32(math.log1p(999999999999999999))]
    assert rows.keys.tolist() == [column_key(1), column_key(2), column_key(3)]
    _both(_line({3: b"999999999999999999", 4: b"-999999999999999999"}))  # 18 digits: the compiled parser's own


def test_nineteen_digit_integers_go_through_the_reference():
    text = _line({5: b"1234567890123456789"})
    assert parse_chunk(text) is None  # the compiled parser leaves 19 digits to the reference
    rows = parse_criteo(text)
    assert rows.keys.tolist() == [column_key(5)]
    assert rows.values[0] == np.float32(math.log1p(1234567890123456789))


# reading files


def _criteo_text(num_rows: int, seed: int) -> bytes:
    rng = random.Random(seed)
    out = []
    for i in range(num_rows):
        if i % 37 == 5:
            out.append(b"")
        ints = {j: str(rng.randrange(-2, 5000)).encode() for j in range(1, INTEGER_COLUMNS + 1) if rng.random() < 0.7}
        cats = {j: b"%08x" % rng.getrandbits(32) for j in range(1, CATEGORIES + 1) if rng.random() < 0.8}
        line = _line(ints, cats, label=rng.choice([b"0", b"1"]))
        out.append(line[:-1] + (b"\r" if i % 11 == 0 else b""))
    return _text(out)


def _assert_batch_is(batch, rows: Rows) -> None:
    want = as_batch(rows)
    np.testing.assert_array_equal(batch.labels, want.labels)
    np.testing.assert_array_equal(batch.indptr, want.indptr)
    np.testing.assert_array_equal(batch.keys, want.keys)
    np.testing.assert_array_equal(batch.values.view(np.uint32), want.values.view(np.uint32))


@pytest.mark.parametrize("chunk_bytes", [64, 4 << 20])
def test_a_data_shard_of_a_gzip_tsv_equals_the_reference(tmp_path, chunk_bytes):
    text = _criteo_text(300, seed=1)
    path = tmp_path / "train.tsv.gz"
    path.write_bytes(gzip.compress(text))
    want = parse_slow(text)
    assert want.labels.size == 300
    for format in ("criteo", "auto"):
        _assert_batch_is(DataShard(path, format=format, chunk_bytes=chunk_bytes).read_all(), want)
    for rank in range(3):  # one compressed file, three ranks: rows rank, rank + 3, ...
        got = DataShard(path, rank, 3, format="criteo", chunk_bytes=chunk_bytes).read_all()
        picked = as_batch(want)
        np.testing.assert_array_equal(got.labels, picked.labels[rank::3])
        np.testing.assert_array_equal(np.diff(got.indptr), np.diff(picked.indptr)[rank::3])
        lo, hi = picked.indptr[rank::3], picked.indptr[rank + 1 :: 3]
        want_keys = np.concatenate([picked.keys[a:b] for a, b in zip(lo, hi, strict=False)])
        np.testing.assert_array_equal(got.keys, want_keys)


def test_a_plain_tsv_in_byte_ranges_equals_the_reference(tmp_path):
    text = _criteo_text(200, seed=2)
    path = tmp_path / "day_0"
    path.write_bytes(text)
    want = parse_slow(text)
    for num_ranks in (1, 2, 5):
        shards = [DataShard(path, r, num_ranks, format="auto", chunk_bytes=64).read_all() for r in range(num_ranks)]
        _assert_batch_is(Batch.concat(shards), want)


def test_a_bad_criteo_line_in_a_gzip_file_names_the_file_line_and_column(tmp_path):
    good = _criteo_text(60, seed=3)
    text = good + _fields({3: b"1.5"}) + b"\n" + good
    bad_line = good.count(b"\n") + 1
    path = tmp_path / "day_1.gz"
    path.write_bytes(gzip.compress(text))
    for chunk_bytes in (64, 4 << 20):
        with pytest.raises(DataError) as info:
            DataShard(path, format="auto", chunk_bytes=chunk_bytes).read_all()
        assert str(info.value) == f"{path}:{bad_line}: column I3 must be an integer (int64) or empty: '1.5'"
