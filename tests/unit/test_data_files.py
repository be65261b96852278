"""hybrid_ps.data.parts, compression, text_chunks and reader: data paths of part files, compressed or not.

What is tested: ``find_parts`` (a file, a directory without its ``_``/``.`` files and sub-directories, a glob;
the exact errors), ``codec_of`` by magic bytes and ``open_decompressed`` across gzip members and zstd frames,
``shares_of`` (byte ranges of plain parts, whole compressed parts balanced largest first, strided rows when
there are fewer compressed parts than ranks), ``DataShard`` over the same libsvm rows stored plain, in each
codec and as a directory of mixed parts (every row read by exactly one rank, in the order the shares say),
line numbers of bad lines inside compressed parts, corrupt and truncated compressed files, and ``format_of``.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import math
import os
import random

import numpy as np
import pytest
import zstandard
from sklearn.datasets import load_svmlight_file

from hybrid_ps.data.batch import Batch
from hybrid_ps.data.compression import CODECS, codec_of, open_decompressed
from hybrid_ps.data.parts import Part, Share, find_parts, shares_of
from hybrid_ps.data.reader import DataShard, format_of, read_data
from hybrid_ps.errors import ConfigError, DataError

NUM_ROWS = 400


def _compress(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        return gzip.compress(data)
    if codec == "bz2":
        return bz2.compress(data)
    if codec == "xz":
        return lzma.compress(data)
    if codec == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    raise AssertionError(codec)


_SUFFIX = {"gzip": ".gz", "bz2": ".bz2", "xz": ".xz", "zstd": ".zst"}


def _libsvm_lines(num_rows: int, seed: int = 0) -> list[bytes]:
    """Line ``i`` has key ``i`` first (its id), then a few large keys: every row can be traced to its line."""
    rng = random.Random(seed)
    lines = []
    for i in range(num_rows):
        extra = sorted(rng.sample(range(1000, 2**31 - 1), rng.randrange(0, 6)))
        words = [str(rng.randrange(2)), f"{i}:{rng.uniform(-3, 3):.6g}"] + [f"{k}:1" for k in extra]
        lines.append(" ".join(words).encode() + (b"\r" if rng.random() < 0.05 else b""))
    return lines


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same rows as one plain file, one file per codec, and a directory of five mixed parts.

    Returns ``{name: (path, layout)}``; ``layout`` maps each part's path to ``[(line offset, row id)]``.
    """
    root = tmp_path_factory.mktemp("sources")
    lines = _libsvm_lines(NUM_ROWS)
    header = b"# written for test_data_files\n"
    data = header + b"\n".join(lines) + b"\n"

    def layout_of(part_lines: list[bytes], first_id: int, prefix: bytes = b"") -> list[tuple[int, int]]:
        out, offset = [], len(prefix)
        for k, line in enumerate(part_lines):
            out.append((offset, first_id + k))
            offset += len(line) + 1
        return out

    whole_layout = layout_of(lines, 0, header)
    found = {}
    plain = root / "data.svm"
    plain.write_bytes(data)
    found["plain"] = (plain, {str(plain): whole_layout})
    for codec, suffix in _SUFFIX.items():
        path = root / f"data.svm{suffix}"
        path.write_bytes(_compress(codec, data))
        found[codec] = (path, {str(path): whole_layout})

    mixed = root / "mixed"
    mixed.mkdir()
    cuts = [0, 60, 150, 230, 330, NUM_ROWS]
    codecs = [None, "gzip", None, "zstd", "bz2"]
    layout = {}
    for number, (codec, lo, hi) in enumerate(zip(codecs, cuts, cuts[1:], strict=False)):
        text = b"\n".join(lines[lo:hi]) + b"\n"
        path = mixed / f"part-{number:05d}{_SUFFIX.get(codec, '')}"
        if codec == "gzip":  # two members, as `cat a.gz b.gz` makes
            middle = text.index(b"\n", len(text) // 2) + 1
            path.write_bytes(gzip.compress(text[:middle]) + gzip.compress(text[middle:]))
        elif codec == "zstd":  # three frames
            third = text.index(b"\n", len(text) // 3) + 1
            compressor = zstandard.ZstdCompressor()
            path.write_bytes(b"".join(compressor.compress(piece) for piece in (text[:third], text[third:], b"")))
        elif codec is not None:
            path.write_bytes(_compress(codec, text))
        else:
            path.write_bytes(text)
        layout[str(path)] = layout_of(lines[lo:hi], lo)
    # What a directory reader must skip: Hadoop's marker, checksum files, sub-directories.
    (mixed / "_SUCCESS").write_bytes(b"")
    (mixed / ".part-00000.crc").write_bytes(b"\x00\x01 not libsvm")
    (mixed / "_temporary").mkdir()
    (mixed / "_temporary" / "part-00009").write_bytes(b"not libsvm at all\n")
    (mixed / "nested").mkdir()
    (mixed / "nested" / "part-00000").write_bytes(b"1 999999:1\n")
    found["mixed"] = (mixed, layout)
    return found


def _row_ids(batch: Batch) -> list[int]:
    return [int(k) for k in batch.keys[batch.indptr[:-1]]]


def _row_tuples(batch: Batch) -> list[tuple]:
    """Each row as ``(label, keys, value bits)``: comparable exactly, sortable into a multiset."""
    values = batch.values.view(np.uint32)
    return [
        (float(batch.labels[i]), tuple(batch.keys[lo:hi].tolist()), tuple(values[lo:hi].tolist()))
        for i, (lo, hi) in enumerate(zip(batch.indptr[:-1], batch.indptr[1:], strict=True))
    ]


def _expected_ids(shares: list[Share], layout: dict[str, list[tuple[int, int]]]) -> list[int]:
    """The row ids a rank must read, in order, by what its shares say."""
    ids = []
    for share in shares:
        lines = layout[share.part.path]
        if share.part.codec is None:
            ids += [i for offset, i in lines if share.start <= offset < share.end]
        else:
            ids += [i for _, i in lines][share.first_row :: share.stride]
    return ids


def test_the_plain_file_reads_as_scikit_learn_reads_it(sources):
    path, _ = sources["plain"]
    x, y = load_svmlight_file(str(path), zero_based=True)
    got = read_data(path)
    np.testing.assert_array_equal(got.labels, (y > 0).astype(np.float32))
    np.testing.assert_array_equal(got.indptr, x.indptr)
    np.testing.assert_array_equal(got.keys, x.indices.astype(np.uint64))
    np.testing.assert_array_equal(got.values, x.data.astype(np.float32))
    assert _row_ids(got) == list(range(NUM_ROWS))


@pytest.mark.parametrize("chunk_bytes", [64, None])
@pytest.mark.parametrize("num_ranks", [1, 2, 3, 7])
@pytest.mark.parametrize("source", ["plain", "gzip", "bz2", "xz", "zstd", "mixed"])
def test_ranks_together_read_every_row_once(sources, source, num_ranks, chunk_bytes):
    path, layout = sources[source]
    want = read_data(sources["plain"][0])
    options = {} if chunk_bytes is None else {"chunk_bytes": chunk_bytes}
    shards = [DataShard(path, rank, num_ranks, **options) for rank in range(num_ranks)]
    batches = [shard.read_all() for shard in shards]
    seen = [_row_ids(batch) for batch in batches]
    for rank, shard in enumerate(shards):
        assert seen[rank] == _expected_ids(shard.shares, layout), f"rank {rank}"
    every = [i for ids in seen for i in ids]
    assert sorted(every) == list(range(NUM_ROWS))  # together all rows, and no row twice (disjoint ranks)
    assert sorted(_row_tuples(Batch.concat(batches))) == sorted(_row_tuples(want))
    if source == "plain" or num_ranks == 1:  # byte ranges, or one reader: rank order is file order
        assert every == list(range(NUM_ROWS))
    if source in CODECS and num_ranks > 1:  # one compressed file, more ranks: rows r, r + R, ...
        assert seen == [list(range(rank, NUM_ROWS, num_ranks)) for rank in range(num_ranks)]


def test_batches_of_a_mixed_directory_equal_read_all(sources):
    path, _ = sources["mixed"]
    for num_ranks in (1, 2, 7):
        for rank in range(num_ranks):
            shard = DataShard(path, rank, num_ranks, chunk_bytes=64)
            whole = shard.read_all()
            sizes = [b.num_rows for b in shard.batches(9)]
            assert sum(sizes) == whole.num_rows and all(s == 9 for s in sizes[:-1])
            assert _row_tuples(Batch.concat(list(shard.batches(9)))) == _row_tuples(whole)


def test_a_compressed_file_is_read_by_its_content_not_its_name(tmp_path, sources):
    path = tmp_path / "looks_plain.svm"
    path.write_bytes(sources["zstd"][0].read_bytes())
    assert find_parts(path)[0].codec == "zstd"
    assert _row_tuples(read_data(path)) == _row_tuples(read_data(sources["plain"][0]))


# find_parts


def test_find_parts_of_a_single_file(tmp_path):
    path = tmp_path / "one.svm"
    path.write_bytes(b"1 1:1\n")
    assert find_parts(path) == [Part(str(path), 6, None)]
    packed = tmp_path / "one.svm.gz"
    packed.write_bytes(gzip.compress(b"1 1:1\n"))
    assert find_parts(str(packed)) == [Part(str(packed), packed.stat().st_size, "gzip")]


def test_find_parts_of_a_directory_skips_hidden_and_underscore_files_and_subdirectories(tmp_path):
    for name in ("part-00002", "part-00000.gz", "part-00001", "_SUCCESS", ".part-00000.crc", "_metadata", ".hidden"):
        (tmp_path / name).write_bytes(gzip.compress(b"0 1:1\n") if name.endswith(".gz") else b"0 1:1\n")
    (tmp_path / "empty-part").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "part-00003").write_bytes(b"1 2:2\n")
    (tmp_path / "_temporary").mkdir()
    parts = find_parts(tmp_path)
    assert [os.path.basename(p.path) for p in parts] == ["empty-part", "part-00000.gz", "part-00001", "part-00002"]
    assert [p.codec for p in parts] == [None, "gzip", None, None]
    assert parts[0].size == 0 and parts[2].size == 6
    assert all(os.path.dirname(p.path) == str(tmp_path) for p in parts)


def test_find_parts_of_a_glob_in_name_order(tmp_path):
    for name in ("day_1.gz", "day_10.gz", "day_0.gz", "night_0.gz"):
        (tmp_path / name).write_bytes(gzip.compress(name.encode() + b"\n"))
    (tmp_path / "day_2.gz").mkdir()  # a directory matching the glob is not a part
    parts = find_parts(f"{tmp_path}/day_*.gz")
    assert [os.path.basename(p.path) for p in parts] == ["day_0.gz", "day_1.gz", "day_10.gz"]
    assert {p.codec for p in parts} == {"gzip"}


def test_an_existing_file_with_glob_characters_in_its_name_is_that_file(tmp_path):
    path = tmp_path / "data[1].svm"
    path.write_bytes(b"1 1:1\n")
    assert find_parts(path) == [Part(str(path), 6, None)]


def test_find_parts_errors_name_the_path(tmp_path):
    pattern = f"{tmp_path}/nothing_*.svm"
    with pytest.raises(DataError) as info:
        find_parts(pattern)
    assert str(info.value) == f"{pattern}: no file matches"

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "_SUCCESS").write_bytes(b"")
    (bare / ".part-00000.crc").write_bytes(b"crc")
    (bare / "sub").mkdir()
    (bare / "sub" / "part-00000").write_bytes(b"1 1:1\n")
    with pytest.raises(DataError) as info:
        find_parts(bare)
    assert str(info.value) == f"{bare}: a directory without data files"

    empties = tmp_path / "empties"
    empties.mkdir()
    (empties / "part-00000").write_bytes(b"")
    (empties / "part-00001").write_bytes(b"")
    with pytest.raises(DataError) as info:
        find_parts(empties)
    assert str(info.value) == f"{empties}: every file is empty"

    empty = tmp_path / "empty.svm"
    empty.write_bytes(b"")
    with pytest.raises(DataError) as info:
        find_parts(empty)
    assert str(info.value) == f"{empty}: file is empty"

    missing = tmp_path / "missing.svm"
    with pytest.raises(DataError) as info:
        find_parts(missing)
    assert str(info.value) == f"{missing}: no such file"
    with pytest.raises(DataError) as info:
        DataShard(missing)
    assert str(info.value) == f"{missing}: no such file"


def test_find_parts_refuses_a_device():
    with pytest.raises(DataError) as info:
        find_parts("/dev/null")
    assert str(info.value) == "/dev/null: not a regular file (a device, pipe or socket)"


# compression


@pytest.mark.parametrize("codec", ["gzip", "bz2", "xz", "zstd"])
def test_codec_of_by_magic_bytes(tmp_path, codec):
    path = tmp_path / "data.txt"  # the name says nothing
    path.write_bytes(_compress(codec, b"1 1:1\n0 2:2\n"))
    assert codec_of(path) == codec
    with open_decompressed(path, codec) as stream:
        assert stream.read() == b"1 1:1\n0 2:2\n"


def test_codec_of_plain_text_and_empty_files_is_none(tmp_path):
    plain = tmp_path / "plain.svm"
    plain.write_bytes(b"1 1:1\n")
    assert codec_of(plain) is None
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert codec_of(empty) is None
    short = tmp_path / "short"
    short.write_bytes(b"\x1f")  # half a gzip magic
    assert codec_of(short) is None


def test_codec_of_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=f"^{tmp_path}/nope: cannot read: "):
        codec_of(tmp_path / "nope")


def test_open_decompressed_reads_every_gzip_member_and_zstd_frame(tmp_path):
    pieces = [b"1 1:1\n", b"0 2:2\n" * 1000, b"", b"1 3:3\n"]
    whole = b"".join(pieces)
    members = tmp_path / "members.gz"
    members.write_bytes(b"".join(gzip.compress(p) for p in pieces))
    frames = tmp_path / "frames.zst"
    compressor = zstandard.ZstdCompressor()
    frames.write_bytes(b"".join(compressor.compress(p) for p in pieces))
    streamed = tmp_path / "streamed.zst"  # a frame without its content size, as `zstd` on a pipe writes
    streamed.write_bytes(_zstd_stream(pieces))
    streams = tmp_path / "streams.bz2"
    streams.write_bytes(b"".join(bz2.compress(p) for p in pieces))
    for path, codec in ((members, "gzip"), (frames, "zstd"), (streamed, "zstd"), (streams, "bz2")):
        with open_decompressed(path, codec) as stream:
            got = b""
            while block := stream.read(100):
                got += block
        assert got == whole, path.name


def _zstd_stream(pieces: list[bytes]) -> bytes:
    """One frame per piece, written through a streaming compressor (no content size in the header)."""
    out = b""
    for piece in pieces:
        compressor = zstandard.ZstdCompressor().compressobj()
        out += compressor.compress(piece) + compressor.flush()
    return out


def test_open_decompressed_refuses_an_unknown_codec(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"1 1:1\n")
    with pytest.raises(ValueError, match="unknown codec 'lz4'"):
        open_decompressed(path, "lz4")


def test_concatenated_members_read_through_a_data_shard(tmp_path):
    lines = _libsvm_lines(50, seed=3)
    text = b"\n".join(lines) + b"\n"
    plain = tmp_path / "plain.svm"
    plain.write_bytes(text)
    members = tmp_path / "members.gz"
    members.write_bytes(b"".join(gzip.compress(line + b"\n") for line in lines))
    for chunk_bytes in (7, 64, 1 << 20):
        assert _row_tuples(DataShard(members, chunk_bytes=chunk_bytes).read_all()) == _row_tuples(read_data(plain))


# shares_of


def _plain(name: str, size: int) -> Part:
    return Part(name, size, None)


def _packed(name: str, size: int, codec: str = "gzip") -> Part:
    return Part(name, size, codec)


def test_plain_parts_are_cut_into_byte_ranges_covering_each_file():
    parts = [_plain("a", 100), _plain("b", 0), _plain("c", 37), _plain("d", 1), _plain("e", 5)]
    for num_ranks in range(1, 9):
        shares = [shares_of(parts, rank, num_ranks) for rank in range(num_ranks)]
        for rank_shares in shares:  # the parts' order, each part at most once
            names = [s.part.path for s in rank_shares]
            assert names == sorted(set(names))
            assert "b" not in names  # an empty part is no one's
            assert all(s.first_row == 0 and s.stride == 1 for s in rank_shares)
        for part in parts:
            if part.size == 0:
                continue
            ranges = []
            for rank in range(num_ranks):
                mine = [s for s in shares[rank] if s.part == part]
                assert len(mine) == 1  # every rank has a (possibly empty) range of every plain part
                ranges.append((mine[0].start, mine[0].end))
            assert ranges[0][0] == 0 and ranges[-1][1] == part.size
            assert all(ranges[r][1] == ranges[r + 1][0] for r in range(num_ranks - 1))
            lengths = [end - start for start, end in ranges]
            assert max(lengths) - min(lengths) <= 1


def test_whole_compressed_parts_go_largest_first_to_the_least_loaded_rank():
    parts = [_packed("p10", 10), _packed("p9", 9), _packed("p8", 8), _packed("p1a", 1), _packed("p1b", 1)]
    rank0, rank1 = shares_of(parts, 0, 2), shares_of(parts, 1, 2)
    # 10 -> rank 0; 9 -> rank 1; 8 -> rank 1 (9 < 10); 1 -> rank 0 (10 < 17); 1 -> rank 0 (11 < 17)
    assert rank0 == [Share(parts[0]), Share(parts[3]), Share(parts[4])]
    assert rank1 == [Share(parts[1]), Share(parts[2])]
    assert sum(s.part.size for s in rank0) == 12 and sum(s.part.size for s in rank1) == 17


@pytest.mark.parametrize("seed", range(20))
def test_whole_compressed_parts_each_go_to_one_rank_by_the_greedy_rule(seed):
    rng = random.Random(seed)
    num_ranks = rng.randrange(1, 9)
    sizes = [rng.choice([rng.randrange(1, 10), rng.randrange(1, 10**6)]) for _ in range(rng.randrange(num_ranks, 30))]
    parts = [_packed(f"part-{i:05d}", size, rng.choice(CODECS)) for i, size in enumerate(sizes)]
    plain = [_plain("plain-a", 1000), _plain("plain-b", 3)]
    everything = sorted(parts + plain, key=lambda p: p.path)
    owner = {}
    for rank in range(num_ranks):
        shares = shares_of(everything, rank, num_ranks)
        assert [s.part.path for s in shares] == sorted(s.part.path for s in shares)  # the parts' order
        for share in shares:
            if share.part.codec is None:
                continue  # plain parts are still cut into byte ranges
            assert share == Share(share.part)  # whole: from row 0, every row
            assert share.part.path not in owner
            owner[share.part.path] = rank
        assert sum(s.part.codec is None for s in shares) == 2
    assert set(owner) == {p.path for p in parts}  # every compressed part to exactly one rank
    load = [0] * num_ranks
    for part in sorted(parts, key=lambda p: (-p.size, p.path)):
        least = min(range(num_ranks), key=lambda r: (load[r], r))
        assert owner[part.path] == least
        load[least] += part.size
    assert max(load) - min(load) <= max(sizes)


def test_fewer_compressed_parts_than_ranks_gives_every_rank_a_stride_of_each(caplog):
    parts = [_packed("a.gz", 500), _plain("b", 90), _packed("c.zst", 20, "zstd")]
    with caplog.at_level(logging.WARNING, logger="hybrid_ps.data.parts"):
        for rank in range(3):
            assert shares_of(parts, rank, 3) == [
                Share(parts[0], first_row=rank, stride=3),
                Share(parts[1], 30 * rank, 30 * (rank + 1)),
                Share(parts[2], first_row=rank, stride=3),
            ]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "split them into at least 3 parts" in warnings[0].getMessage()


def test_one_compressed_part_and_one_rank_is_read_whole(caplog):
    part = _packed("a.xz", 50, "xz")
    with caplog.at_level(logging.WARNING, logger="hybrid_ps.data.parts"):
        assert shares_of([part], 0, 1) == [Share(part)]
    assert not caplog.records


# bad lines and bad compressed data


@pytest.mark.parametrize("chunk_bytes", [64, 4 << 20])
@pytest.mark.parametrize("codec", ["gzip", "bz2", "xz", "zstd"])
def test_a_bad_line_in_a_compressed_part_names_its_decompressed_line(tmp_path, codec, chunk_bytes):
    lines = _libsvm_lines(200, seed=4)
    text = b"# header\n\n" + b"\n".join(lines[:150]) + b"\n1 7:seven\n" + b"\n".join(lines[150:]) + b"\n"
    bad_line = 2 + 150 + 1
    assert text.split(b"\n")[bad_line - 1] == b"1 7:seven"
    assert len(text) > 20 * 64  # many chunks before it
    path = tmp_path / f"bad.svm{_SUFFIX[codec]}"
    path.write_bytes(_compress(codec, text))
    for num_ranks in (1, 3):  # one reader, or every rank reading every row of the file (and failing)
        for rank in range(num_ranks):
            with pytest.raises(DataError) as info:
                DataShard(path, rank, num_ranks, chunk_bytes=chunk_bytes).read_all()
            assert str(info.value) == f"{path}:{bad_line}: value is not a number: '7:seven'"


def test_a_bad_last_line_without_newline_in_a_compressed_part(tmp_path):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(b"1 1:1\n" * 40 + b"1 oops"))
    with pytest.raises(DataError) as info:
        DataShard(path, chunk_bytes=64).read_all()
    assert str(info.value).startswith(f"{path}:41: ")


def test_a_bad_line_in_a_whole_compressed_part_of_a_directory(tmp_path):
    lines = _libsvm_lines(120, seed=5)
    (tmp_path / "part-00000").write_bytes(b"\n".join(lines[:60]) + b"\n")
    bad = tmp_path / "part-00001.zst"
    bad.write_bytes(_compress("zstd", b"\n".join(lines[60:100]) + b"\n0 -3:1\n"))
    (tmp_path / "part-00002.gz").write_bytes(_compress("gzip", b"\n".join(lines[100:]) + b"\n"))
    failures = []
    for rank in range(2):
        try:
            DataShard(tmp_path, rank, 2, chunk_bytes=64).read_all()
        except DataError as e:
            failures.append((rank, str(e)))
    assert len(failures) == 1  # the part is whole on one rank
    assert failures[0][1].startswith(f"{bad}:41: ")


def test_a_truncated_gzip_file_is_a_data_error(tmp_path):
    packed = gzip.compress(b"".join(b"1 %d:1\n" % i for i in range(3000)))
    for cut in (len(packed) // 2, len(packed) - 4):
        path = tmp_path / f"cut{cut}.gz"
        path.write_bytes(packed[:cut])
        for chunk_bytes in (64, 4 << 20):
            with pytest.raises(DataError) as info:
                DataShard(path, chunk_bytes=chunk_bytes).read_all()
            assert str(info.value).startswith(f"{path}: corrupt or truncated gzip data: ")


def test_a_gzip_file_with_a_wrong_checksum_is_a_data_error(tmp_path):
    packed = bytearray(gzip.compress(b"1 1:1\n0 2:2\n"))
    packed[-8] ^= 0xFF  # the CRC-32 of the trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(DataError) as info:
        read_data(path)
    assert str(info.value).startswith(f"{path}: corrupt or truncated gzip data: ")


@pytest.mark.parametrize("codec", ["bz2", "xz"])
def test_truncated_bz2_and_xz_files_are_data_errors(tmp_path, codec):
    packed = _compress(codec, b"".join(b"1 %d:1\n" % i for i in range(3000)))
    path = tmp_path / f"cut{_SUFFIX[codec]}"
    path.write_bytes(packed[: len(packed) - 10])
    with pytest.raises(DataError) as info:
        read_data(path)
    assert str(info.value).startswith(f"{path}: corrupt or truncated {codec} data: ")


def test_a_corrupt_zstd_file_is_a_data_error(tmp_path):
    packed = _compress("zstd", b"".join(b"1 %d:1\n" % i for i in range(3000)))
    path = tmp_path / "corrupt.zst"
    path.write_bytes(packed[:4] + b"\xff" * 8 + packed[12:])  # the frame header after the magic
    with pytest.raises(DataError) as info:
        read_data(path)
    assert str(info.value).startswith(f"{path}: corrupt or truncated zstd data: ")
    garbage = tmp_path / "garbage.zst"
    garbage.write_bytes(packed + b"\x28\xb5\x2f\xfd" + b"\xff" * 40)  # a second frame that is not one
    with pytest.raises(DataError) as info:
        read_data(garbage)
    assert str(info.value).startswith(f"{garbage}: corrupt or truncated zstd data: ")


def test_a_truncated_zstd_file_is_a_data_error(tmp_path):
    packed = _compress("zstd", b"".join(b"1 %d:1\n" % i for i in range(3000)))
    path = tmp_path / "cut.zst"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError) as info:
        read_data(path)  # today: a batch of 0 rows
    assert str(info.value).startswith(f"{path}: corrupt or truncated zstd data: ")


# format_of


@pytest.mark.parametrize("name,want", [
    ("train.tsv.gz", "criteo"),
    ("day_0.zst", "criteo"),
    ("day_23", "criteo"),
    ("x.svm", "libsvm"),
    ("x.svm.gz", "libsvm"),
    ("criteo_sample.txt", "criteo"),
    ("Criteo-Kaggle.txt.xz", "criteo"),
    ("clicks.criteo.bz2", "criteo"),
    ("data/day_3/part-00000.gz", "libsvm"),  # the part's own name decides
    ("part-00000", "libsvm"),
])
def test_format_of_by_name(name, want):
    assert format_of(name, "auto") == want


def test_an_explicit_format_wins():
    assert format_of("train.tsv.gz", "libsvm") == "libsvm"
    assert format_of("x.svm", "criteo") == "criteo"


def test_an_unknown_format_is_a_config_error(tmp_path):
    path = tmp_path / "x.svm"
    path.write_bytes(b"1 1:1\n")
    with pytest.raises(ConfigError, match="data.format must be one of auto, libsvm, criteo; got 'bogus'"):
        DataShard(path, format="bogus")


def test_auto_format_reads_each_part_by_its_name(tmp_path):
    fields = ["1"] + [""] * 12 + ["5"] + ["68fd1e64"] + [""] * 25
    (tmp_path / "a.svm").write_bytes(b"0 3:1.5\n")
    (tmp_path / "b.tsv.gz").write_bytes(gzip.compress("\t".join(fields).encode() + b"\n"))
    batch = DataShard(tmp_path, format="auto").read_all()
    np.testing.assert_array_equal(batch.labels, [0, 1])
    np.testing.assert_array_equal(batch.indptr, [0, 1, 3])
    assert batch.keys[0] == 3 and batch.values[0] == np.float32(1.5)
    assert batch.values[1] == np.float32(math.log1p(5))
