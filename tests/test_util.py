"""Atomic file writes: whole files only, and readable like any other file (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from edgekit.bundle.archive import write_archive
from edgekit.errors import InputError
from edgekit.util import write_atomic


def test_write_atomic_replaces_whole_and_keeps_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = tmp_path / "report.json"
        target.write_text("old")
        write_atomic(target, '{"new": 1}')
        assert target.read_text() == '{"new": 1}'
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left behind
        os.umask(0o077)
        write_atomic(target, b"private")
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_write_atomic_into_a_missing_folder_is_one_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot write"):
        write_atomic(tmp_path / "missing" / "x.json", "{}")


def test_archive_members_are_readable(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        folder = tmp_path / "bundle"
        folder.mkdir()
        write_atomic(folder / "report.json", "{}")
        dest = write_archive(folder, tmp_path / "bundle.tar.gz")
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    with tarfile.open(dest) as tar:
        assert [m.mode & 0o777 for m in tar.getmembers()] == [0o644]
