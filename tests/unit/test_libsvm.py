"""hybrid_ps.data.libsvm and reader: the byte-range sharded libsvm reader, checked against scikit-learn."""

from __future__ import annotations

import random

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file, load_svmlight_file

from hybrid_ps.data.batch import Batch
from hybrid_ps.data._libsvm_parse import parse_chunk
from hybrid_ps.data.libsvm import parse_slow as _parse_slow
from hybrid_ps.data.reader import DataShard as LibsvmShard
from hybrid_ps.data.reader import read_data as read_libsvm
from hybrid_ps.data.rows import BadLine as _BadLine
from hybrid_ps.data.rows import Rows
from hybrid_ps.data.text_chunks import chunks_of
from hybrid_ps.errors import ConfigError, DataError


def _parse_fast(text: bytes):
    parsed = parse_chunk(text)
    return None if parsed is None else Rows(*parsed)


CHUNKS = [7, 64, 8 << 20]


def _assert_batches_equal(got: Batch, want: Batch) -> None:
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.keys, want.keys)
    np.testing.assert_array_equal(got.values, want.values)
    assert got.labels.dtype == np.float32 and got.indptr.dtype == np.int64
    assert got.keys.dtype == np.uint64 and got.values.dtype == np.float32


def _sklearn_batch(path) -> Batch:
    """The file as scikit-learn reads it, in Batch form (labels -1 -> 0)."""
    x, y = load_svmlight_file(str(path), zero_based=True)
    return Batch(
        labels=(y > 0).astype(np.float32),
        indptr=x.indptr.astype(np.int64),
        keys=x.indices.astype(np.uint64),
        values=x.data.astype(np.float32),
    )


def _read_sharded(path, num_ranks: int, chunk_bytes: int, batch_size: int = 5) -> Batch:
    parts = [
        b
        for rank in range(num_ranks)
        for b in LibsvmShard(path, rank, num_ranks, chunk_bytes=chunk_bytes).batches(batch_size)
    ]
    return Batch.concat(parts)


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    """A scikit-learn dump: float values (16 significant digits), -1/+1 labels, a header comment."""
    rng = np.random.default_rng(0)
    x = sp.random(120, 300, density=0.05, random_state=1, format="csr")
    x.data = rng.normal(size=x.data.size) * 10.0 ** rng.integers(-6, 6, size=x.data.size)
    y = rng.integers(0, 2, size=120) * 2 - 1
    path = tmp_path_factory.mktemp("dump") / "float.svm"
    dump_svmlight_file(x, y, str(path), zero_based=True, comment="made by scikit-learn")
    return path


@pytest.fixture(scope="module")
def onehot(tmp_path_factory):
    """One-hot rows with 0/1 labels and large integer indices (the CTR layout), some rows empty."""
    rng = np.random.default_rng(2)
    lines = []
    for _ in range(200):
        keys = np.unique(rng.integers(0, 2**31 - 1, size=rng.integers(0, 9)))  # sklearn: int32
        lines.append(" ".join([str(rng.integers(0, 2))] + [f"{k}:1" for k in keys]))
    path = tmp_path_factory.mktemp("onehot") / "onehot.svm"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("num_ranks", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("chunk_bytes", CHUNKS)
@pytest.mark.parametrize("which", ["dumped", "onehot"])
def test_shards_together_equal_sklearn(request, which, num_ranks, chunk_bytes):
    path = request.getfixturevalue(which)
    want = _sklearn_batch(path)
    _assert_batches_equal(_read_sharded(path, num_ranks, chunk_bytes), want)


def test_read_libsvm_reads_the_whole_file(dumped):
    _assert_batches_equal(read_libsvm(dumped), _sklearn_batch(dumped))


def test_query_ids_are_ignored(tmp_path):
    rng = np.random.default_rng(3)
    x = sp.random(40, 20, density=0.2, random_state=4, format="csr")
    y = rng.integers(0, 2, size=40)
    path = tmp_path / "ranking.svm"
    dump_svmlight_file(x, y, str(path), zero_based=True, query_id=np.repeat(np.arange(8), 5))
    assert "qid:" in path.read_text()
    want = _sklearn_batch(path)
    for chunk_bytes in CHUNKS:
        _assert_batches_equal(_read_sharded(path, 3, chunk_bytes), want)


def test_each_rank_gets_the_lines_starting_in_its_byte_range(tmp_path):
    # Line i holds key i, so every rank's rows can be traced back to their lines.
    rng = np.random.default_rng(5)
    lines = [f"{i % 2} {i}:" + "7" * int(rng.integers(1, 30)) for i in range(300)]
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / "lines.svm"
    path.write_bytes(data)
    line_starts = np.concatenate([[0], np.flatnonzero(np.frombuffer(data, np.uint8) == 10)[:-1] + 1])
    for num_ranks in (1, 2, 3, 7, 16):
        for chunk_bytes in (1, 13, 4096):
            seen = []
            for rank in range(num_ranks):
                lo, hi = len(data) * rank // num_ranks, len(data) * (rank + 1) // num_ranks
                mine = LibsvmShard(path, rank, num_ranks, chunk_bytes=chunk_bytes).read_all().keys
                want = np.flatnonzero((line_starts >= lo) & (line_starts < hi))
                np.testing.assert_array_equal(mine, want.astype(np.uint64))
                seen.append(mine)
            np.testing.assert_array_equal(np.concatenate(seen), np.arange(300, dtype=np.uint64))


def test_tiny_files_split_any_way(tmp_path):
    text = "1 1:1\n0 2:2\n\n1 3:3 4:4\n-1 5:5\n+1 6:6"  # no final newline
    path = tmp_path / "tiny.svm"
    path.write_text(text)
    want = read_libsvm(path)
    assert want.num_rows == 5
    for num_ranks in range(1, 12):
        for chunk_bytes in (1, 2, 3, 5, 100):
            _assert_batches_equal(_read_sharded(path, num_ranks, chunk_bytes, batch_size=2), want)


def test_batches_have_exactly_batch_size_rows_except_the_last(onehot):
    whole = read_libsvm(onehot)
    for batch_size in (1, 7, 64, 199, 200, 1000):
        for chunk_bytes in (64, 8 << 20):
            sizes = [b.num_rows for b in LibsvmShard(onehot, chunk_bytes=chunk_bytes).batches(batch_size)]
            assert sum(sizes) == whole.num_rows
            assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
            parts = list(LibsvmShard(onehot, chunk_bytes=chunk_bytes).batches(batch_size))
            _assert_batches_equal(Batch.concat(parts), whole)


def test_label_spellings(tmp_path):
    path = tmp_path / "labels.svm"
    path.write_text("+1 1:1\n-1 1:1\n1 1:1\n0 1:1\n1.0 1:1\n-1.0 1:1\n0.0 1:1\n+1.0 1:1\n-0 1:1\n")
    for chunk_bytes in CHUNKS:
        batch = LibsvmShard(path, chunk_bytes=chunk_bytes).read_all()
        np.testing.assert_array_equal(batch.labels, [1, 0, 1, 0, 1, 0, 0, 1, 0])


def test_comments_qid_blank_lines_crlf_and_odd_spacing(tmp_path):
    path = tmp_path / "messy.svm"
    path.write_bytes(
        b"# a header comment\n"
        b"\n"
        b"1 qid:7 3:0.5 10:2 # trailing comment 4:4\r\n"
        b"   \t  \r\n"
        b"  -1\t5:-1.25e-3   6:+.5  \r\n"
        b"0 qid:8\n"
        b"1 18446744073709551614:1\n"
        b"0 9007199254740993:3"
    )
    for chunk_bytes in (1, 7, 64, 8 << 20):
        for num_ranks in (1, 2, 3):
            got = _read_sharded(path, num_ranks, chunk_bytes)
            np.testing.assert_array_equal(got.labels, [1, 0, 0, 1, 0])
            np.testing.assert_array_equal(got.indptr, [0, 2, 4, 4, 5, 6])
            np.testing.assert_array_equal(
                got.keys, np.array([3, 10, 5, 6, 2**64 - 2, 2**53 + 1], dtype=np.uint64)
            )
            np.testing.assert_array_equal(got.values, np.float32([0.5, 2, -1.25e-3, 0.5, 1, 3]))


def test_a_line_longer_than_a_chunk(tmp_path):
    keys = np.arange(0, 5000, 7)
    path = tmp_path / "long.svm"
    path.write_text("1 " + " ".join(f"{k}:0.25" for k in keys) + "\n0 1:1\n")
    for num_ranks in (1, 2, 3):
        got = _read_sharded(path, num_ranks, chunk_bytes=16)
        np.testing.assert_array_equal(got.keys, np.append(keys, 1).astype(np.uint64))
        np.testing.assert_array_equal(got.labels, [1, 0])


def test_chunks_stay_small(onehot):
    shard = LibsvmShard(onehot, chunk_bytes=64)
    longest = max(len(line) for line in onehot.read_bytes().split(b"\n")) + 1
    pieces = [bytes(chunk.text) for chunk in chunks_of(shard.shares[0], 64)]
    assert len(pieces) > 10
    assert max(len(p) for p in pieces) <= 64 + longest
    assert b"".join(pieces) == onehot.read_bytes()


BAD_LINES = [
    ("2 1:1", "label"),
    ("yes 1:1", "label"),
    ("nan 1:1", "label"),
    ("1:1 2:2", "label"),
    ("1 oops", "expected index:value"),
    ("1 3:1 4", "expected index:value"),
    ("1 -3:1", "index"),
    ("1 1.5:1", "index"),
    ("1 x:1", "index"),
    ("1 :1", "index"),
    ("1 18446744073709551615:1", "index"),
    ("1 3:abc", "value"),
    ("1 3:", "value"),
    ("1 3:1:2", "value"),
    ("1 3:nan", "value"),
    ("1 3:1e39", "value"),
    ("1 3:1_0", "value"),
]


@pytest.mark.parametrize("bad,what", BAD_LINES)
def test_malformed_line_names_path_and_global_line(tmp_path, bad, what):
    lines = ["# header", "1 1:1"] + [f"{i % 2} {i}:0.5 {i + 1}:1" for i in range(40)] + [bad, "0 1:1"]
    path = tmp_path / "bad.svm"
    path.write_text("\n".join(lines) + "\n")
    lineno = len(lines) - 1
    for chunk_bytes in CHUNKS:
        with pytest.raises(DataError, match=what) as info:
            read_libsvm(path) if chunk_bytes == CHUNKS[-1] else LibsvmShard(path, chunk_bytes=chunk_bytes).read_all()
        assert f"{path}:{lineno}: " in str(info.value)
        # The bad line sits in the last third of the file: only rank 2 of 3 sees it.
        LibsvmShard(path, 0, 3, chunk_bytes=chunk_bytes).read_all()
        LibsvmShard(path, 1, 3, chunk_bytes=chunk_bytes).read_all()
        with pytest.raises(DataError, match=what) as info:
            list(LibsvmShard(path, 2, 3, chunk_bytes=chunk_bytes).batches(4))
        assert str(info.value).startswith(f"{path}:{lineno}: ")


def test_error_message_quotes_the_token(tmp_path):
    path = tmp_path / "bad.svm"
    path.write_text("1 1:1\n\n1 2:1 7:seven\n")
    with pytest.raises(DataError) as info:
        read_libsvm(path)
    assert str(info.value) == f"{path}:3: value is not a number: '7:seven'"


def test_bad_line_in_a_middle_rank_of_many(tmp_path):
    lines = [f"1 {i}:1" for i in range(1, 500)] + ["1 oops"] + [f"0 {i}:1" for i in range(1, 500)]
    path = tmp_path / "bad.svm"
    path.write_text("\n".join(lines) + "\n")
    failures = []
    for rank in range(4):
        try:
            LibsvmShard(path, rank, 4).read_all()
        except DataError as e:
            failures.append((rank, str(e)))
    assert len(failures) == 1 and failures[0][1].startswith(f"{path}:500: ")


def test_missing_empty_and_directory_paths(tmp_path):
    with pytest.raises(DataError, match="no such file") as info:
        LibsvmShard(tmp_path / "nope.svm")
    assert str(tmp_path / "nope.svm") in str(info.value)
    empty = tmp_path / "empty.svm"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=f"{empty}: file is empty"):
        read_libsvm(empty)
    (tmp_path / "no_parts").mkdir()
    with pytest.raises(DataError, match="a directory without data files"):
        LibsvmShard(tmp_path / "no_parts")


def test_a_file_of_blank_lines_and_comments_has_no_rows(tmp_path):
    path = tmp_path / "nothing.svm"
    path.write_text("# nothing\n\n   \n")
    assert read_libsvm(path).num_rows == 0
    assert list(LibsvmShard(path).batches(3)) == []


def test_bad_arguments(tmp_path):
    path = tmp_path / "ok.svm"
    path.write_text("1 1:1\n")
    with pytest.raises(ConfigError, match="rank 3"):
        LibsvmShard(path, 3, 3)
    with pytest.raises(ConfigError, match="chunk_bytes"):
        LibsvmShard(path, chunk_bytes=0)
    with pytest.raises(ConfigError, match="batch_size"):
        next(LibsvmShard(path).batches(0))


def test_fast_parser_agrees_with_the_line_parser_or_declines():
    """Random lines, good and bad: the vectorised parser gives the slow parser's rows or gives up."""
    rng = random.Random(0)
    labels = ["0", "1", "-1", "+1", "1.0", "-0", "01", "2", "x", "1e0", ".", "+", "nan"]
    indices = ["0", "7", "0005", "123456", "18446744073709551614", "99999999999999999999", "9007199254740993",
               "-1", "+3", "1.5", "9e2", "a", ""]
    values = ["1", "0", "-1", "0.5", "-0.25", "+.5", "5.", ".", "1e-5", "3E+2", "nan", "inf", "1e39", "3.4e38",
              "0.1234567890123456789", "0.5488135039273248", "123456789012345678901", "1..2", "--1", "1_0", "",
              "x", "0x10", "-0", "00.5000", "\x01"]

    def line() -> str:
        if rng.random() < 0.05:
            return rng.choice(["", " ", "\r", "# comment", " \t "])
        words = [rng.choice(labels) if rng.random() < 0.2 else rng.choice(["0", "1"])]
        for _ in range(rng.randrange(6)):
            if rng.random() < 0.03:
                words.append(rng.choice(["qid:3", "5", "5:1:2", "# c 1:1"]))
                continue
            index = rng.choice(indices) if rng.random() < 0.2 else str(rng.randrange(10 ** rng.randrange(1, 8)))
            value = rng.choice(values) if rng.random() < 0.2 else rng.choice(["1", f"{rng.random():.6g}"])
            words.append(f"{index}:{value}")
        return rng.choice([" ", "\t", "  "]).join(words) + rng.choice(["", " ", "\r"])

    agreed = 0
    for _ in range(600):
        text = ("\n".join(line() for _ in range(rng.randrange(1, 6))) + "\n").encode()
        fast = _parse_fast(text)
        if fast is None:
            continue
        slow = _parse_slow(text)  # the fast parser must not accept what the reference rejects
        for got, want in zip(fast, slow):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype
        agreed += 1
    assert agreed > 100


def test_slow_parser_reports_the_first_bad_line():
    with pytest.raises(_BadLine) as info:
        _parse_slow(b"1 1:1\n\n0 2:x\n1 bad\n")
    assert info.value.line == 2
