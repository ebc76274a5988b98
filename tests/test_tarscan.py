"""Reading any tar back in one pass: ours, GNU tar's in its three formats, and files that are not tars."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from objathor_release.build.tarscan import scan_tar
from objathor_release.errors import InputError
from tests.support.tarball_helpers import gnu_tar, gnu_tar_available, sha256_of, tarfile_members, write

needs_gnu_tar = pytest.mark.skipif(not gnu_tar_available(), reason="GNU tar is not installed")


@needs_gnu_tar
@pytest.mark.parametrize("fmt", ["gnu", "pax", "ustar"])
def test_scan_reads_other_tools_tars(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "features"
    write(src / "clip_features.pkl", os.urandom(3000))
    write(src / ("long" * 30) / "x.pkl", os.urandom(600))  # long name: GNU LongLink / pax path record
    write(src / "empty.pkl", b"")
    if fmt == "ustar":
        shutil.rmtree(src / ("long" * 30))
    tar = gnu_tar(src, tmp_path / "features.tar", [], extra=(f"--format={fmt}",))
    scan = scan_tar(tar)
    assert scan.members == tarfile_members(tar)
    assert (scan.size, scan.sha256) == (tar.stat().st_size, sha256_of(tar))


def test_scan_names_a_file_that_is_not_a_tar(tmp_path: Path) -> None:
    bad = write(tmp_path / "features.tar", bytes(range(256)) * 8)
    with pytest.raises(InputError) as info:
        scan_tar(bad)
    assert str(info.value) == (f"{bad}: not a valid tar archive (bad header at byte 0: bad checksum): rebuild "
                               "it with `objathor-release tar`")


def test_scan_names_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty.tar: empty or too short"):
        scan_tar(write(tmp_path / "empty.tar", b""))
