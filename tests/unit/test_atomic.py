"""hybrid_ps.atomic: a file is replaced whole or not at all, and no temporary is left behind."""

from __future__ import annotations

import stat

import pytest

from hybrid_ps.atomic import atomic_path, atomic_write


def test_the_content_replaces_the_file_and_the_temporary_goes(tmp_path):
    target = tmp_path / "latest"
    target.write_text("old\n")
    with atomic_write(target) as handle:
        handle.write("new\n")
        assert target.read_text() == "old\n"  # readers see the old file until the end
    assert target.read_text() == "new\n" and not (tmp_path / "latest.tmp").exists()


def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "tier.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_permissions_apply_from_the_start(tmp_path):
    target = tmp_path / "secret"
    with atomic_write(target, permissions=0o600) as handle:
        assert stat.S_IMODE((tmp_path / "secret.tmp").stat().st_mode) == 0o600
        handle.write("key")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_path_for_writers_that_open_the_file_themselves(tmp_path):
    target = tmp_path / "model.h5"
    with atomic_path(target) as temporary:
        assert temporary == tmp_path / "model.h5.tmp"
        temporary.write_bytes(b"\x89HDF")
    assert target.read_bytes() == b"\x89HDF" and not temporary.exists()
    with pytest.raises(OSError), atomic_path(target) as temporary:
        temporary.write_bytes(b"partial")
        raise OSError("disk full")
    assert target.read_bytes() == b"\x89HDF" and not temporary.exists()
