"""SOURCE_DATE_EPOCH: one resolver, one error, used by the tar, the manifest and the image build."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from devtools import dockerimage
from objathor_release.build.epoch import LIMIT, from_environment, source_date_epoch
from objathor_release.build.manifest import write_manifest
from objathor_release.build.tarball import build_tar
from objathor_release.errors import UsageError
from tests.support.tarball_helpers import write

VERSION = "2024_02_01"


def message(value: str) -> str:
    with pytest.raises(UsageError) as info:
        source_date_epoch()
    assert info.value.exit_code == 2
    return str(info.value)


@pytest.mark.parametrize(("env", "want"), [(None, 0), ("", 0), ("   ", 0), ("0", 0), ("1700000000", 1700000000),
                                           (" 42\n", 42), (str(LIMIT - 1), LIMIT - 1)])
def test_good_values(env: str | None, want: int, monkeypatch: pytest.MonkeyPatch) -> None:
    if env is None:
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    else:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", env)
    assert source_date_epoch() == want
    assert from_environment() == (None if env is None or not env.strip() else want)


@pytest.mark.parametrize("bad", ["-1", "yesterday", "1.5", "1e9", "+5", "1_000", "0x10", "٣", str(LIMIT), "9" * 5000,
                                 str(10**30)])
def test_bad_values_get_the_one_message(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
    text = message(bad)
    assert text == (f"SOURCE_DATE_EPOCH={bad!r} is not a whole number of seconds since 1970 from 0 to "
                    f"{LIMIT - 1}: set e.g. SOURCE_DATE_EPOCH=1700000000, or unset it for 0")
    with pytest.raises(UsageError) as again:
        from_environment()
    assert str(again.value) == text


def test_the_argument_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")  # not even read when the argument is given
    assert source_date_epoch(7) == 7
    assert source_date_epoch(0) == 0
    for bad in (-1, LIMIT):
        with pytest.raises(UsageError, match=rf"^SOURCE_DATE_EPOCH={bad} is not a whole number"):
            source_date_epoch(bad)
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH=True"):
        source_date_epoch(True)


def test_tar_manifest_and_image_share_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reader takes the same value and refuses a bad one with the same words."""
    src = tmp_path / "assets"
    write(src / "u1" / "a.bin", b"abc")
    rel = tmp_path / "rel"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    build_tar(src, rel / "assets.tar", show_progress=False)
    with tarfile.open(rel / "assets.tar") as tf:
        assert {m.mtime for m in tf} == {1700000000}
    assert write_manifest(rel, VERSION, show_progress=False)["created"] == "2023-11-14T22:13:20Z"
    assert dockerimage.default_source_date_epoch(tmp_path) == 1700000000  # the variable wins over git

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "-5")
    want = message("-5")
    with pytest.raises(UsageError) as tar_error:
        build_tar(src, tmp_path / "other.tar", show_progress=False)
    with pytest.raises(UsageError) as manifest_error:
        write_manifest(rel, VERSION, show_progress=False)
    with pytest.raises(UsageError) as image_error:
        dockerimage.default_source_date_epoch(tmp_path)
    assert str(tar_error.value) == str(manifest_error.value) == str(image_error.value) == want
    assert not (tmp_path / "other.tar").exists()


def test_the_image_falls_back_to_the_commit_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert dockerimage.default_source_date_epoch(tmp_path) == 0  # not a git checkout
    monkeypatch.setenv("SOURCE_DATE_EPOCH", " ")
    assert dockerimage.default_source_date_epoch(tmp_path) == 0


def test_the_cli_names_the_variable(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path / "assets" / "u1" / "a.bin", b"abc")
    r = cli("tar", "--assets-dir", str(tmp_path / "assets"), "--output", str(tmp_path / "a.tar"), "-q",
            env={"SOURCE_DATE_EPOCH": "soon"})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("objathor-release: error: SOURCE_DATE_EPOCH='soon' is not a whole number of seconds "
                        f"since 1970 from 0 to {LIMIT - 1}: set e.g. SOURCE_DATE_EPOCH=1700000000, or unset it "
                        "for 0\n")
    r = cli("tar", "--assets-dir", str(tmp_path / "assets"), "--output", str(tmp_path / "a.tar"), "-q",
            "--source-date-epoch", "-3", env={"SOURCE_DATE_EPOCH": "soon"})
    assert r.returncode == 2 and "SOURCE_DATE_EPOCH=-3 is not a whole number" in r.stderr
