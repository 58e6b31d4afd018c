"""The one atomic writer: whole files or none, with the mode a plain open() gives."""

from __future__ import annotations

import os
import stat

import pytest

from spadecam._fs import atomic_write, atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask():
    """Set a umask for the test and restore the caller's afterwards."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(saved)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_bytes(tmp_path / "b.bin", b"x")
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.bin") == mode(tmp_path / "plain.txt")
    assert mode(tmp_path / "a.txt") == 0o666 & ~mask  # 0o644 under umask 022, not 0o600


def test_replacing_a_file_keeps_its_mode_as_open_would(tmp_path, umask):
    umask(0o022)
    for old_mode in (0o600, 0o664):
        target = tmp_path / f"x{old_mode:o}.csv"
        target.write_text("old")
        target.chmod(old_mode)
        with open(tmp_path / "plain.csv", "w") as f:
            f.write("old")
        os.chmod(tmp_path / "plain.csv", old_mode)
        with open(tmp_path / "plain.csv", "w") as f:  # what open() does to an existing file
            f.write("new")
        atomic_write_text(target, "new")
        assert target.read_text() == "new"
        assert mode(target) == mode(tmp_path / "plain.csv") == old_mode


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")

    def fail(p: str) -> None:
        with open(p, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_text_is_utf8_and_folders_are_created(tmp_path):
    path = atomic_write_text(tmp_path / "new" / "ünïcode.csv", "path\nbilder/größe.png\n")
    assert path.read_bytes().decode("utf-8") == "path\nbilder/größe.png\n"
