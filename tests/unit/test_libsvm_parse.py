"""hybrid_ps.data._libsvm_parse: the compiled chunk parser against the Python line parser, the reference.

Hypothesis writes libsvm text, good and bad: labels, indices and values spelled in many ways (signs, leading
zeros, exponents, long mantissas, 19- and 20-digit indices, the float32 limits), every separator
``bytes.split()`` knows, comments, ``qid:`` words, blank lines, rows without features and malformed words.
For each text the compiled parser must give exactly the reference's rows (every array bit for bit, dtypes
included) or, when the reference refuses the text, ``None``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_ps.data._libsvm_parse import parse_chunk
from hybrid_ps.data.libsvm import parse_slow as _parse_slow
from hybrid_ps.data.rows import BadLine as _BadLine

_SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))

_DIGITS = "0123456789"
_BAD_NUMBERS = ["", ".", "+", "-", "e5", "1e", "1e+", "1.5.", "1..2", "--1", "+-1", "1_0", "1_000.5", "0x10",
                "0x1p3", "1d5", "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "infinity", "1e5x", "1:2",
                "\u0661", "\uff11", "1\x00", "1\x1c", "\x1c1", "\udcff"]  # \udcff: the byte 0xff
_SEPARATORS = [" ", "\t", "  ", " \t ", "\x0b", "\x0c", "\r"]


def _sometimes(good: st.SearchStrategy[str], bad: st.SearchStrategy[str], percent: int) -> st.SearchStrategy[str]:
    """``bad`` in about ``percent`` % of the draws, else ``good`` (so that most texts still parse)."""
    return st.integers(0, 99).flatmap(lambda k: bad if k < percent else good)


@st.composite
def decimals(draw) -> str:
    """A decimal in the syntax ``float()`` takes: ``[+-](digits[.[digits]]|.digits)[(e|E)[+-]digits]``."""
    sign = draw(st.sampled_from(["", "", "+", "-"]))
    whole = draw(st.text(_DIGITS, max_size=24))
    fraction = draw(st.none() | st.text(_DIGITS, max_size=24))
    if not whole and not fraction:
        whole = draw(st.text(_DIGITS, min_size=1, max_size=3))
    text = sign + whole + ("" if fraction is None else "." + fraction)
    if draw(st.booleans()):
        exponent = draw(st.integers(-30, 10) if draw(st.integers(0, 9)) else st.integers(-400, 400))
        zeros = "0" * draw(st.integers(0, 3))
        exponent_sign = "-" if exponent < 0 else draw(st.sampled_from(["", "+"]))
        text += draw(st.sampled_from("eE")) + exponent_sign + zeros + str(abs(exponent))
    return text


@st.composite
def formatted_floats(draw) -> str:
    """A float64 or float32 value as Python formats it (repr, %e, %f, %g at some precision)."""
    value = draw(_sometimes(st.floats(width=32, allow_nan=False, allow_infinity=False) | st.floats(-4e38, 4e38),
                            st.floats(allow_nan=False, allow_infinity=False), 10))
    style = draw(st.sampled_from(["r", "e", "E", "g", "f"]))
    if style == "r":
        return repr(value)
    if style == "f" and abs(value) > 1e30:
        style = "e"
    return f"{value:.{draw(st.integers(0, 20))}{style}}"


_SPECIAL_VALUES = ["1", "0", "-0", "+0", "0.5", "0.25", "3.5e-2", "-1.25e-3", "+.5", "5.", "00.5000", "1e-5",
                   "3E+2", "3.4028234663852886e38", "-3.4028234663852886e38", "3.4028235e38", "3.40282347e38",
                   "340282346638528859811704183484516925440", "3.4028234663852887e38", "1e39", "1e-38", "1e-45",
                   "1.4e-45", "7e-46", "1e-310", "4.9e-324", "2.4703282292062328e-324", "1e-400", "0e999999",
                   "0.1234567890123456789", "0.5488135039273248", "9007199254740993", "9007199254740992.5",
                   "123456789012345678901", "1" + "0" * 30 + "e-30", "0." + "0" * 40 + "1e40", "1e22", "1e23",
                   "9007199254740991e22", "9007199254740993e-22", "0.3", "2.2250738585072011e-308",
                   "1.00000000000000011102230246251565404236316680908203125"]
good_values = st.one_of(decimals(), formatted_floats(), st.sampled_from(_SPECIAL_VALUES))
values = _sometimes(good_values, st.sampled_from(_BAD_NUMBERS), 2)

_LABELS = ["0", "1", "-1", "+1", "1.0", "-1.0", "0.0", "+0", "-0", "-0.0", "01", "001.000", "1e0", "10e-1",
           "0.1e1", "1.", ".1e1", "0e5", "-0e-5", "1.0000000000000000000001", "0.99999999999999999999",
           "1" + "0" * 25 + "e-25", "2", "0.5", "-2", "x", "1:1", "qid:1"]
labels = _sometimes(st.sampled_from(["0", "1", "-1", "+1"]),
                    _sometimes(st.sampled_from(_LABELS), st.sampled_from(_BAD_NUMBERS) | decimals(), 30), 20)

_SPECIAL_INDICES = ["0", "00", "0005", "7", "123456", "9007199254740993", "9999999999999999999",
                    "10000000000000000000", str(2**64 - 2), str(2**64 - 1), str(2**64), "0" * 25 + "1",
                    "0" * 30 + str(2**64 - 2), "0" * 30 + str(2**64 - 1), "99999999999999999999",
                    "999999999999999999999", "18446744073709551606", "-1", "+3", "1.5", "9e2", "a", "", "1_0",
                    "\u0663", "qid", "Qid", "qid2"]
good_indices = st.one_of(st.integers(0, 2**64 - 2).map(str), st.integers(0, 10**7).map(str),
                         st.integers(0, 99).map(lambda i: "0" * (i % 7) + str(i)))
indices = _sometimes(good_indices, st.sampled_from(_SPECIAL_INDICES) | st.integers(0, 2**64 + 10).map(str), 5)


@st.composite
def words(draw) -> str:
    """A word after the label: ``index:value`` mostly, sometimes ``qid:...`` or something malformed."""
    kind = draw(st.integers(0, 39))
    if kind == 0:
        return "qid:" + draw(st.sampled_from(["7", "", "x", "1:2", "-3", "\udcff"]))
    if kind == 1:
        return draw(st.sampled_from(["5", "oops", ":", "::", "1:", ":1", "1:1:2", "qid", "#", "1:1#c"]))
    return f"{draw(indices)}:{draw(values)}"


@st.composite
def lines(draw) -> str:
    """A line without its newline: blank, a comment, or a row with optional comment and odd spacing."""
    kind = draw(st.integers(0, 12))
    if kind == 0:
        return draw(st.sampled_from(["", " ", "\r", "\t \x0b", "# a comment", " # 1 1:1", "#"]))
    separators = st.sampled_from(_SEPARATORS)
    row = draw(labels)
    for word in draw(st.lists(words(), max_size=8)):
        row += draw(separators) + word
    lead = draw(st.sampled_from(["", "", " ", "\t"]))
    tail = draw(st.sampled_from(["", "", " ", "\r", " \r", "\t", " # comment 2:2", "#x", "# \udcff"]))
    return lead + row + tail


texts = st.lists(lines(), min_size=1, max_size=8).map(
    lambda rows: ("\n".join(rows) + "\n").encode("utf-8", "surrogateescape"))


_PADDING = b"\n" * 16  # blank lines: the numbers before them are read 8 bytes at a time, not byte by byte


def _check(text: bytes) -> bool:
    """Assert the compiled parser agrees with the reference on ``text``, as it is and followed by blank lines.

    Returns:
        Whether the reference accepted the text.
    """
    try:
        want = _parse_slow(text)
    except _BadLine:
        assert parse_chunk(text) is None and parse_chunk(text + _PADDING) is None, text
        return False
    for parsed in (parse_chunk(text), parse_chunk(text + _PADDING)):
        assert parsed is not None, text
        for got, expected in zip(parsed, want):
            assert got.dtype == expected.dtype and got.shape == expected.shape, text
            assert got.tobytes() == expected.tobytes(), (text, got, expected)  # bit for bit: -0.0, subnormals
    return True


@_SETTINGS
@given(text=texts)
def test_agrees_with_the_reference_or_declines(text):
    _check(text)


@settings(_SETTINGS, max_examples=150)
@given(rows=st.lists(st.tuples(st.sampled_from(["0", "1", "-1", "+1"]),
                               st.lists(st.tuples(good_indices, good_values),
                                        max_size=6)), min_size=1, max_size=6),
       separator=st.sampled_from(_SEPARATORS))
def test_valid_rows_are_parsed_exactly(rows, separator):
    """Rows of valid labels and numbers (the reference may still refuse a value out of float32's range)."""
    text = "\n".join(separator.join([label] + [f"{i}:{v}" for i, v in row]) for label, row in rows) + "\n"
    _check(text.encode())


@_SETTINGS
@given(number=st.one_of(decimals(), formatted_floats(), st.sampled_from(_SPECIAL_VALUES)))
def test_numbers_round_as_float_does(number):
    assert _check(f"1 0:{number}\n".encode()) == (abs(float(number)) <= float(np.finfo(np.float32).max))


@_SETTINGS
@given(index=st.integers(0, 2**64 + 10), zeros=st.integers(0, 30))
def test_indices_up_to_two_to_the_64_minus_2(index, zeros):
    accepted = _check(f"0 {'0' * zeros}{index}:1\n".encode())
    assert accepted == (index <= 2**64 - 2)


@pytest.mark.parametrize("text", [
    b"", b"\n", b"1\n", b"1 \n\n\n", b"# only\n", b"1 2:3 # 4:x\n", b"1\tqid:2\t3:4\r\n", b"1 0:-0\n",
    b"1 " + b" ".join(b"%d:%d.5" % (i, i) for i in range(3000)) + b"\n",
])
def test_edge_cases(text):
    _check(text)


@pytest.mark.parametrize("text", [b"1 1:1", b"1 1:1\n0 2:2", b"1 1:1\r"])
def test_text_without_a_final_newline_is_declined(text):
    assert parse_chunk(text) is None


def test_takes_any_contiguous_byte_buffer():
    text = b"junk\n1 3:0.5 7:2\n0 9:1e-3\n"
    view = memoryview(text)[5:]
    want = _parse_slow(bytes(view))
    for got, expected in zip(parse_chunk(view), want):
        np.testing.assert_array_equal(got, expected)
    for got, expected in zip(parse_chunk(bytearray(view)), want):
        np.testing.assert_array_equal(got, expected)
