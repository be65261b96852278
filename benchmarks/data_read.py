"""Reading real data: rows/s of the reader on plain, gzip and zstd files, libsvm and Criteo, against the
decompression alone (the floor a reader of compressed files cannot beat) and scikit-learn's svmlight
loader (compiled, one file, in memory).

    python -m benchmarks.data_read [--rows 300000]

The headline: Criteo TSV from gzip, rows/s of ``DataShard`` over rows/s of gzip's decompression alone
(1.0x = parsing costs nothing next to decompressing).
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

from .common import finish, print_table

LIBSVM_NNZ = 20


def _criteo_text(rows: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        fields = [str(int(rng.random() < 0.25))]
        fields += ["" if rng.random() < 0.2 else str(int(rng.integers(0, 10 ** int(rng.integers(1, 6)))))
                   for _ in range(13)]
        fields += ["" if rng.random() < 0.15 else f"{int(rng.integers(0, 2**32)):08x}" for _ in range(26)]
        lines.append("\t".join(fields))
    return ("\n".join(lines) + "\n").encode()


def _libsvm_text(rows: int, seed: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    keys = np.cumsum(rng.integers(1, 50_000, (rows, LIBSVM_NNZ)), axis=1)  # strictly increasing in a row
    labels = rng.integers(0, 2, rows)
    lines = [f"{label} " + " ".join(f"{k}:1" for k in row) for label, row in zip(labels, keys, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def _seconds(run, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _decompress_only(path: Path, codec: str) -> None:
    from hybrid_ps.data.compression import open_decompressed

    with open_decompressed(path, codec) as stream:
        while stream.read(4 << 20):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    from sklearn.datasets import load_svmlight_file

    from hybrid_ps.data.reader import DataShard

    rows, results = args.rows, {}
    with tempfile.TemporaryDirectory() as tmp:
        table = []
        for fmt, text in (("criteo", _criteo_text(rows)), ("libsvm", _libsvm_text(rows))):
            plain = Path(tmp) / f"data.{fmt}"
            plain.write_bytes(text)
            files = {"plain": plain, "gzip": Path(tmp) / f"data.{fmt}.gz", "zstd": Path(tmp) / f"data.{fmt}.zst"}
            files["gzip"].write_bytes(gzip.compress(text, compresslevel=6))
            files["zstd"].write_bytes(zstandard.ZstdCompressor(level=3).compress(text))
            for codec, path in files.items():
                read = _seconds(lambda path=path, fmt=fmt: DataShard(path, format=fmt).read_all())
                floor = _seconds(lambda path=path, codec=codec: _decompress_only(path, codec)) \
                    if codec != "plain" else float("nan")
                results[f"{fmt}_{codec}"] = {"rows_per_s": rows / read, "decompress_rows_per_s": rows / floor,
                                             "mb": path.stat().st_size / 1e6}
                table.append((fmt, codec, f"{path.stat().st_size / 1e6:.1f}", rows / read / 1e6, rows / floor / 1e6))
            if fmt == "libsvm":
                sklearn = _seconds(lambda plain=plain: load_svmlight_file(str(plain), zero_based=True), repeat=1)
                results["libsvm_sklearn_rows_per_s"] = rows / sklearn
                table.append(("libsvm", "sklearn", f"{plain.stat().st_size / 1e6:.1f}", rows / sklearn / 1e6,
                              float("nan")))
    print_table(["format", "file", "MB", "M rows/s read", "M rows/s decompress only"], table)
    headline = results["criteo_gzip"]
    ratio = headline["rows_per_s"] / headline["decompress_rows_per_s"]
    finish("data_read", {"rows": rows, "results": results}, "Criteo TSV from gzip, reader vs decompression alone",
           ratio, "gzip decompression alone", ">= 0.5x", met=ratio >= 0.5)


if __name__ == "__main__":
    main()
