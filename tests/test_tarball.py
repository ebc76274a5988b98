"""objathor-release tar: equality with GNU tar, determinism, exclusion, one-pass figures, bad input."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sample import make_sample_dataset
from objathor_release.build.excludes import DEFAULT_EXCLUDES
from objathor_release.build.tarball import build_tar, read_sidecar, sidecar_path
from objathor_release.build.tarformat import normalize_mode
from objathor_release.errors import InputError, UsageError
from tests.support.tarball_helpers import (
    SEED_EXCLUDES,
    gnu_tar,
    gnu_tar_available,
    leftovers,
    make_messy_tree,
    run_cli_unprivileged,
    sha256_of,
    tarfile_members,
    write,
)

needs_gnu_tar = pytest.mark.skipif(not gnu_tar_available(), reason="GNU tar is not installed")
ROOT = os.geteuid() == 0


def _uid_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def build(src: Path, out: Path, **kw: object):  # type: ignore[no-untyped-def]
    return build_tar(src, out, show_progress=False, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- equality with GNU tar


@needs_gnu_tar
def test_default_excludes_are_the_seeds_list() -> None:
    assert list(DEFAULT_EXCLUDES) == SEED_EXCLUDES


@needs_gnu_tar
@pytest.mark.parametrize("epoch", [0, 1_700_000_000])
def test_identical_to_gnu_tar_on_an_awkward_tree(tmp_path: Path, epoch: int) -> None:
    src = make_messy_tree(tmp_path / "assets")
    ours = build(src, tmp_path / "out" / "assets.tar", source_date_epoch=epoch, extra_excludes=["a*z"])
    theirs = gnu_tar(src, tmp_path / "gnu.tar", SEED_EXCLUDES + ["a*z"], epoch)
    assert ours.path.read_bytes() == theirs.read_bytes()
    assert ours.size == theirs.stat().st_size and ours.size % 10240 == 0
    assert ours.sha256 == sha256_of(theirs)
    names = [m["path"] for m in ours.members]
    assert "assets/ab/cz" not in names and "assets/.lock" not in names  # GNU whole-path matching
    assert any(len(n.encode()) > 800 for n in names)  # a multi-block ././@LongLink name


@needs_gnu_tar
def test_identical_to_gnu_tar_on_a_sample_dataset(tmp_path: Path, sample_assets: Path) -> None:
    ours = build(sample_assets, tmp_path / "assets.tar")
    assert ours.path.read_bytes() == gnu_tar(sample_assets, tmp_path / "gnu.tar").read_bytes()


@needs_gnu_tar
def test_archive_end_matches_gnu_tar_wherever_the_data_ends_in_a_record(tmp_path: Path) -> None:
    """The data may end at any of the 20 blocks of a 10240-byte record; GNU tar's two zero blocks and
    record padding must come out the same at each (at the last block they spill into a new record)."""
    positions = set()
    for n in range(20):
        src = tmp_path / f"t{n:02d}" / "assets"
        write(src / "f", bytes(range(256)) * (2 * n))  # n blocks of data after two headers
        end = 2 * 512 + n * 512
        positions.add(end % 10240)
        ours = build(src, tmp_path / f"t{n:02d}" / "ours.tar")
        theirs = gnu_tar(src, tmp_path / f"t{n:02d}" / "gnu.tar")
        data = ours.path.read_bytes()
        assert data == theirs.read_bytes(), f"data ending at {end % 10240} of a record"
        assert len(data) % 10240 == 0 and len(data) >= end + 1024 and data[end:] == bytes(len(data) - end)
        assert ours.size == len(data) and ours.sha256 == hashlib.sha256(data).hexdigest()
    assert positions == {512 * k for k in range(20)}


@needs_gnu_tar
def test_features_tar_from_a_features_directory(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    make_sample_dataset(tmp_path / "assets", 2, features_dir=tmp_path / "features")
    out = tmp_path / "rel" / "features.tar"
    r = cli("tar", "--dir", str(tmp_path / "features"), "--output", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == gnu_tar(tmp_path / "features", tmp_path / "gnu.tar").read_bytes()
    with tarfile.open(out) as tf:
        assert tf.getnames() == ["features", "features/clip_features.pkl", "features/sbert_features.pkl"]


def _holodeck_base(root: Path) -> Path:
    """A Holodeck base folder: its annotation and THOR metadata files are data, not junk."""
    write(root / "thor_object_data" / "annotations.json.gz", b"\x1f\x8b" + bytes(30))
    write(root / "thor_object_data" / "thor_metadata.json", '{"assetMetadata": {}}')
    write(root / "objaverse_holodeck" / "09_23_combine_scale" / "thor_metadata.json", "{}")
    write(root / "objaverse_holodeck" / "README.txt", "holodeck base data\n")
    write(root / "objaverse_holodeck" / "build.lock", "")
    return root


@needs_gnu_tar
def test_holodeck_base_keeps_every_file_and_matches_gnu_tar_without_excludes(
        tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = _holodeck_base(tmp_path / "2023_09_23")
    out = tmp_path / "rel" / "holodeck" / "2023_09_23.tar"
    r = cli("tar", "--holodeck-base", "--assets-dir", str(src), "--output", str(out), "-q", "--verbose")
    assert r.returncode == 0, r.stderr
    assert "exclude:" not in r.stderr  # no list in force at all
    assert out.read_bytes() == gnu_tar(src, tmp_path / "gnu.tar", []).read_bytes()
    with tarfile.open(out) as tf:
        names = [m.name for m in tf.getmembers() if m.isfile()]
    assert names == [
        "2023_09_23/objaverse_holodeck/09_23_combine_scale/thor_metadata.json",
        "2023_09_23/objaverse_holodeck/README.txt", "2023_09_23/objaverse_holodeck/build.lock",
        "2023_09_23/thor_object_data/annotations.json.gz", "2023_09_23/thor_object_data/thor_metadata.json"]
    side = json.loads(sidecar_path(out).read_text())
    assert side["excludes"] == []
    assert [m["path"] for m in side["members"]] == names
    # the same folder as an assets tar loses its annotation files: the flag is what keeps them
    plain = build(src, tmp_path / "plain.tar")
    assert [m["path"] for m in plain.members] == ["2023_09_23/objaverse_holodeck/README.txt"]


@needs_gnu_tar
def test_holodeck_base_leaves_out_only_the_given_patterns(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = _holodeck_base(tmp_path / "2023_09_23")
    out = tmp_path / "rel" / "h.tar"
    r = cli("tar", "--holodeck-base", "--dir", str(src), "--output", str(out), "--exclude", "*.lock",
            "--verbose", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[:1] == ["exclude: *.lock"]
    assert out.read_bytes() == gnu_tar(src, tmp_path / "gnu.tar", ["*.lock"]).read_bytes()
    assert json.loads(sidecar_path(out).read_text())["excludes"] == ["*.lock"]
    again = build(src, tmp_path / "again.tar", extra_excludes=["*.lock"], default_excludes=False)
    assert again.path.read_bytes() == out.read_bytes() and again.excludes == ["*.lock"]


def test_one_top_level_folder_and_name_order(tmp_path: Path) -> None:
    src = make_messy_tree(tmp_path / "assets")
    result = build(src, tmp_path / "a.tar")
    with tarfile.open(result.path) as tf:
        names = tf.getnames()
    assert {n.split("/")[0] for n in names} == {"assets"}
    # lod/ and what is inside it come before lod-2 (GNU --sort=name walks directory by directory).
    assert names.index("assets/lod/x/f") < names.index("assets/lod-2") < names.index("assets/lod.b")
    assert names.index("assets/Lod") < names.index("assets/ab")  # bytewise: upper case first


def test_modes_are_normalized_like_gnu_tar() -> None:
    assert normalize_mode(0o100600, False) == 0o644
    assert normalize_mode(0o100000, False) == 0o644
    assert normalize_mode(0o100700, False) == 0o755
    assert normalize_mode(0o100001, False) == 0o655  # group and others get x; the owner keeps its bits
    assert normalize_mode(0o104755, False) == 0o755  # setuid dropped
    assert normalize_mode(0o041777, True) == 0o755  # sticky dropped
    assert normalize_mode(0o040600, True) == 0o655  # the owner's bits are kept (plus rw)


def test_environment_epoch_and_flag(tmp_path: Path, sample_assets: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1234567890")
    with tarfile.open(build(sample_assets, tmp_path / "env.tar").path) as tf:
        assert {m.mtime for m in tf} == {1234567890}
        assert {(m.uid, m.gid, m.uname, m.gname) for m in tf} == {(0, 0, "", "")}
    with tarfile.open(build(sample_assets, tmp_path / "flag.tar", source_date_epoch=42).path) as tf:
        assert {m.mtime for m in tf} == {42}
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    with tarfile.open(build(sample_assets, tmp_path / "zero.tar").path) as tf:
        assert {m.mtime for m in tf} == {0}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        build(sample_assets, tmp_path / "bad.tar")


# --------------------------------------------------------------------------- determinism


def _copy_tree(src: Path, dst: Path, *, reverse: bool, mode_shift: bool, owner: int | None) -> None:
    """Copy ``src`` to ``dst`` creating entries in another order, with other mtimes, modes and owners."""
    paths = sorted(src.rglob("*"), reverse=reverse)
    for p in sorted(paths, key=lambda p: len(p.parts)):  # parents first, siblings in the chosen order
        q = dst / p.relative_to(src)
        if p.is_dir():
            q.mkdir(parents=True, exist_ok=True)
        else:
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes(p.read_bytes())
    for p in sorted(dst.rglob("*")) + [dst]:
        if mode_shift:  # modes that normalize the same: 0600 -> 0644, 0700 -> 0755
            os.chmod(p, 0o700 if p.is_dir() else 0o600)
        else:
            os.chmod(p, 0o755 if p.is_dir() else 0o664)
        os.utime(p, (1_000_000_000 if reverse else 1_600_000_000,) * 2)
        if owner is not None:
            os.chown(p, owner, owner)


def test_two_copies_give_identical_archives(tmp_path: Path) -> None:
    make_sample_dataset(tmp_path / "orig", 8, seed=5, asset_bytes=8 * 1024)
    old = os.umask(0o077)
    try:
        _copy_tree(tmp_path / "orig", tmp_path / "one" / "assets", reverse=False, mode_shift=True,
                   owner=1234 if ROOT else None)
    finally:
        os.umask(0o002)
    try:
        _copy_tree(tmp_path / "orig", tmp_path / "two" / "assets", reverse=True, mode_shift=False, owner=None)
    finally:
        os.umask(old)
    one = tmp_path / "one" / "assets"
    two = tmp_path / "two" / "assets"
    assert os.stat(one / os.listdir(one)[0]).st_mtime != os.stat(two / os.listdir(two)[0]).st_mtime
    a = build(one, tmp_path / "a.tar")
    b = build(two, tmp_path / "b.tar")
    assert a.path.read_bytes() == b.path.read_bytes()
    assert a.sha256 == b.sha256 and a.members == b.members


# --------------------------------------------------------------------------- exclusion


def test_exclusion_defaults_and_extra_patterns(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = make_messy_tree(tmp_path / "assets")
    out = tmp_path / "rel" / "assets.tar"
    r = cli("tar", "--assets-dir", str(src), "--output", str(out), "--exclude", "s0*", "--exclude", "modes",
            "--verbose")
    assert r.returncode == 0, r.stderr
    patterns = [*SEED_EXCLUDES, "s0*", "modes"]
    assert r.stderr.splitlines()[:len(patterns)] == [f"exclude: {p}" for p in patterns]  # first, in order
    with tarfile.open(out) as tf:
        names = tf.getnames()
    base = {n.rsplit("/", 1)[-1] for n in names}
    assert not base & {"annotations.json.gz", "thor_metadata.json", ".DS_Store", "._albedo.jpg", "x.lock",
                       ".Trashes", "inside", ".lock", "modes", "m0", "s00000", "s00512"}
    assert "assets/uid1/albedo.jpg" in names and "assets/sizes" in names
    side = json.loads(sidecar_path(out).read_text())
    assert side["excludes"] == [*SEED_EXCLUDES, "s0*", "modes"]


def test_the_library_prints_nothing_and_notes_the_excludes(tmp_path: Path, sample_assets: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """``verbose`` notes go to ``on_note``, else to the logger at INFO (DEBUG when not verbose)."""
    notes: list[str] = []
    build(sample_assets, tmp_path / "a.tar", extra_excludes=["*.tmp"], verbose=True, on_note=notes.append)
    assert notes == [f"exclude: {p}" for p in [*SEED_EXCLUDES, "*.tmp"]]
    with caplog.at_level("DEBUG", logger="objathor_release.build.tarball"):
        build(sample_assets, tmp_path / "b.tar", verbose=True)
        build(sample_assets, tmp_path / "c.tar")
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels == [("INFO", f"exclude: {p}") for p in SEED_EXCLUDES] + [
        ("DEBUG", f"exclude: {p}") for p in SEED_EXCLUDES]
    assert capsys.readouterr() == ("", "")


# --------------------------------------------------------------------------- one-pass figures


def test_members_sizes_hashes_and_offsets(tmp_path: Path) -> None:
    src = make_messy_tree(tmp_path / "assets")
    result = build(src, tmp_path / "a.tar")
    assert result.members == tarfile_members(result.path)  # offsets and hashes read back independently
    raw = result.path.read_bytes()
    for m in result.members:
        original = (tmp_path / m["path"]).read_bytes()
        assert raw[m["offset"]:m["offset"] + m["size"]] == original
        assert m["sha256"] == hashlib.sha256(original).hexdigest()
    assert result.sha256 == hashlib.sha256(raw).hexdigest()
    assert result.excludes == list(DEFAULT_EXCLUDES)
    assert str(result.path) in result.summary() and result.sha256 in result.summary()


def test_sidecar_ties_figures_to_the_file(tmp_path: Path, sample_assets: Path) -> None:
    result = build(sample_assets, tmp_path / "assets.tar")
    side = read_sidecar(result.path)
    assert side is not None
    assert (side["sha256"], side["size"], side["members"]) == (result.sha256, result.size, result.members)
    os.utime(result.path, ns=(1, 1))  # touched: no longer trusted
    assert read_sidecar(result.path) is None


def test_progress_lines_when_not_on_a_terminal(tmp_path: Path, sample_assets: Path,
                                               cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("tar", "--assets-dir", str(sample_assets), "--output", str(tmp_path / "a.tar"))
    assert r.returncode == 0, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("tar a.tar: 100% ") and "12" in last and last.endswith("done")
    assert r.stdout.startswith(f"wrote {tmp_path / 'a.tar'}: ") and len(r.stdout.splitlines()) == 1


# --------------------------------------------------------------------------- bad input


def _assert_refused(r, out: Path, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("objathor-release: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    assert leftovers(out.parent) == []  # no temporary, no sidecar


@pytest.fixture
def out_path(tmp_path: Path) -> Path:
    out = tmp_path / "release" / "assets.tar"
    out.parent.mkdir()
    return out


def tar_cli(cli, src: Path, out: Path):  # type: ignore[no-untyped-def]
    return cli("tar", "--assets-dir", str(src), "--output", str(out), "-q")


def test_symlink_inside_the_tree_is_refused(sample_assets: Path, out_path: Path, tmp_path: Path,
                                            cli) -> None:  # type: ignore[no-untyped-def]
    outside = write(tmp_path / "secret.txt", "never archived")
    link = _uid_dirs(sample_assets)[3] / "albedo-link.jpg"
    link.symlink_to(outside)
    _assert_refused(tar_cli(cli, sample_assets, out_path), out_path, str(link), "symlink", str(outside))


def test_symlinked_assets_dir_is_refused(sample_assets: Path, out_path: Path, tmp_path: Path,
                                         cli) -> None:  # type: ignore[no-untyped-def]
    link = tmp_path / "linked"
    link.symlink_to(sample_assets)
    _assert_refused(tar_cli(cli, link, out_path), out_path, str(link), "symlink")


def test_fifo_is_refused(sample_assets: Path, out_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    fifo = _uid_dirs(sample_assets)[2] / "pipe"
    os.mkfifo(fifo)
    _assert_refused(tar_cli(cli, sample_assets, out_path), out_path, str(fifo), "FIFO")


def test_socket_is_refused(sample_assets: Path, out_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    path = sample_assets / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        _assert_refused(tar_cli(cli, sample_assets, out_path), out_path, str(path), "socket")
    finally:
        sock.close()


def test_device_file_is_refused(sample_assets: Path, out_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    dev = sample_assets / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("cannot create a device file here (needs CAP_MKNOD)")
    _assert_refused(tar_cli(cli, sample_assets, out_path), out_path, str(dev), "character device")


def test_unreadable_file_is_refused(sample_assets: Path, out_path: Path) -> None:
    victim = _uid_dirs(sample_assets)[1] / "normal.jpg"
    os.chmod(victim, 0)
    r = run_cli_unprivileged("tar", "--assets-dir", str(sample_assets), "--output", str(out_path), "-q")
    _assert_refused(r, out_path, str(victim), "cannot be read", "Permission denied")


def test_unreadable_folder_is_refused(sample_assets: Path, out_path: Path) -> None:
    victim = _uid_dirs(sample_assets)[4]
    os.chmod(victim, 0)
    try:
        r = run_cli_unprivileged("tar", "--assets-dir", str(sample_assets), "--output", str(out_path), "-q")
    finally:
        os.chmod(victim, 0o755)
    _assert_refused(r, out_path, str(victim), "cannot be read")


@contextlib.contextmanager
def _changing(path: Path, grow: bool) -> Iterator[None]:
    """Keep ``path`` growing (or shrinking) by 4 KiB a millisecond from another thread while the body runs."""
    stop = threading.Event()

    def churn() -> None:
        with open(path, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            while not stop.is_set():
                size = size + 4096 if grow else max(size - 4096, 0)
                fh.truncate(size)
                time.sleep(0.001)

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


@pytest.mark.parametrize("grow", [True, False], ids=["grows", "shrinks"])
def test_file_changing_while_archived_is_refused(tmp_path: Path, out_path: Path, grow: bool,
                                                 cli) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "assets"
    victim = write(src / "uid" / "big.pkl.gz", bytes(96 * 1024 * 1024))  # ~50 ms to read: ~50 changes
    with _changing(victim, grow):
        r = tar_cli(cli, src, out_path)
    _assert_refused(r, out_path, str(victim), "changed while being archived")


def test_name_that_is_not_utf8_is_refused(sample_assets: Path, out_path: Path,
                                          cli) -> None:  # type: ignore[no-untyped-def]
    folder = _uid_dirs(sample_assets)[0]
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "wb") as fh:
        fh.write(b"latin-1 name")
    _assert_refused(tar_cli(cli, sample_assets, out_path), out_path, f"{folder}/caf\\xe9.jpg", "UTF-8")


def test_missing_dir_is_refused(tmp_path: Path, out_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    _assert_refused(tar_cli(cli, tmp_path / "nope", out_path), out_path, str(tmp_path / "nope"),
                    "no such directory")


def test_empty_dir_is_refused(tmp_path: Path, out_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "assets").mkdir()
    _assert_refused(tar_cli(cli, tmp_path / "assets", out_path), out_path, str(tmp_path / "assets"),
                    "no files to archive")


def test_dir_of_only_excluded_files_is_refused(tmp_path: Path, out_path: Path,
                                               cli) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path / "assets" / "uid" / "annotations.json.gz", b"x")
    write(tmp_path / "assets" / ".DS_Store", b"x")
    _assert_refused(tar_cli(cli, tmp_path / "assets", out_path), out_path, "no files to archive")


def test_file_instead_of_dir_is_refused(tmp_path: Path, out_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    f = write(tmp_path / "assets.zip", b"x")
    _assert_refused(tar_cli(cli, f, out_path), out_path, str(f), "not a directory")


def test_output_inside_the_tree_is_refused(sample_assets: Path, cli) -> None:  # type: ignore[no-untyped-def]
    out = sample_assets / "assets.tar"
    r = tar_cli(cli, sample_assets, out)
    assert r.returncode == 2 and not out.exists() and r.stdout == ""
    assert r.stderr == (f"objathor-release: error: --output {out} is inside {sample_assets}: write the archive "
                        "outside the tree\n")


def test_failed_build_keeps_the_previous_archive(sample_assets: Path, out_path: Path) -> None:
    good = build(sample_assets, out_path)
    before = out_path.read_bytes()
    os.mkfifo(sample_assets / "pipe")
    with pytest.raises(InputError, match="FIFO"):
        build(sample_assets, out_path)
    assert out_path.read_bytes() == before and read_sidecar(out_path) is not None
    assert sorted(leftovers(out_path.parent)) == sorted([out_path.name, sidecar_path(out_path).name])
    assert good.sha256 == sha256_of(out_path)


def test_output_through_a_symlink_into_the_tree_is_refused(sample_assets: Path, tmp_path: Path) -> None:
    (tmp_path / "rel").symlink_to(sample_assets)
    with pytest.raises(UsageError, match="inside"):
        build(sample_assets, tmp_path / "rel" / "assets.tar")


def test_output_that_is_a_directory_is_refused(sample_assets: Path, tmp_path: Path) -> None:
    (tmp_path / "rel").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        build(sample_assets, tmp_path / "rel")


def test_buffers_smaller_than_files_and_members_across_buffers(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Files bigger than a buffer, and headers and data landing on buffer edges, give the same bytes."""
    import objathor_release.build.tarwriter as tarwriter

    src = tmp_path / "assets"
    for i, n in enumerate([0, 100, 4096 - 512, 4096, 4097, 9000, 20000, 3 * 4096 + 511]):
        write(src / f"f{i}", os.urandom(n))
    want = build(src, tmp_path / "big-buffers.tar")
    monkeypatch.setattr(tarwriter, "BUFFER", 4096)
    got = build(src, tmp_path / "small-buffers.tar")
    assert got.path.read_bytes() == want.path.read_bytes() and got.members == want.members
    assert got.members == tarfile_members(got.path)


@needs_gnu_tar
def test_the_readme_command_reproduces_our_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GNU tar command printed in docs/release.md, run as printed, gives our archive byte for byte."""
    import re
    import subprocess

    section = (Path(__file__).resolve().parent.parent / "docs" / "release.md").read_text()
    command = next(block for block in re.findall(r"```bash\n(.*?)```", section, re.S)
                   if block.startswith("tar --sort=name"))
    src = make_messy_tree(tmp_path / "assets")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ours = build(src, tmp_path / "ours" / "assets.tar")
    script = command.replace("ASSETS_DIR", str(src))
    subprocess.run(["bash", "-c", script], cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "assets.tar").read_bytes() == ours.path.read_bytes()
