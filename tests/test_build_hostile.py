"""The build side under hostile input: prepare-annotations, tar, manifest, verify and release's walk.

Every case is driven through the command line in-process and checked for the
one line naming the file, the exit code and that nothing was written under
the output's name.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import os
import random
import shutil
import socket
import tarfile
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.sample import make_annotation, make_sample_dataset
from objathor_release.build.asset_reader import ANNOTATION, load_one, scan_assets
from objathor_release.build.inputs import fingerprints
from objathor_release.build.manifest import write_manifest
from objathor_release.build.tarball import build_tar
from objathor_release.build.tarscan import scan_tar
from objathor_release.cli import main
from objathor_release.errors import InputError, UsageError
from objathor_release.fsutil import NotRegularFileError, open_regular, prepare_output
from tests.support.tarball_helpers import leftovers, run_cli_unprivileged

VERSION = "2024_02_01"
annotations_mod = importlib.import_module("objathor_release.build.annotations")  # the package attribute is the __future__ feature
MiB = 1024 * 1024
no_hang = pytest.mark.timeout(30)

CLI = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> CLI:
    """``run("tar", ...)`` -> (exit code, stdout, stderr) of ``main`` in this process."""

    def go(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "-q"])
        out, err = capsys.readouterr()
        return code, out, err

    return go


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    root = tmp_path / "assets"
    make_sample_dataset(root, 4, seed=3, asset_bytes=4 * 1024)
    return root


def uids(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def no_traceback(err: str) -> None:
    assert "Traceback" not in err and "Error:" not in err.replace("error:", ""), err


def refused_asset(code: int, err: str, uid: str, *needles: str) -> str:
    """prepare-annotations' failure: the asset's one problem line holding ``needles``; returns it."""
    assert code == 2, err
    no_traceback(err)
    lines = err.strip().splitlines()
    mine = [ln for ln in lines if ln.startswith(f"{uid}: ")]
    assert len(mine) == 1, err
    for needle in needles:
        assert needle in mine[0], mine[0]
    assert lines[-1].startswith("objathor-release: error: 1 problems in 1 of "), err
    assert "was not written" in lines[-1]
    return mine[0]


def refused(code: int, err: str, *needles: str, exit_code: int = 2) -> str:
    """A one-line refusal holding ``needles``; returns the line."""
    assert code == exit_code, err
    no_traceback(err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("objathor-release: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def prepare(run: CLI, root: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    return run("prepare-annotations", "--save-dir", str(root), "--output-file", str(out), "--workers", "1",
               *extra)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes as one gzip stream, compressed a MiB at a time (never held whole)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(MiB)
    parts = [comp.compress(chunk) for _ in range(size // MiB)]
    return b"".join(parts) + comp.flush()


def multi_member_bomb(size: int) -> bytes:
    """``size`` zero bytes as a gzip file of one-MiB members (gzip readers join them)."""
    return gz(bytes(MiB)) * (size // MiB)


def nested(depth: int) -> bytes:
    return b'{"uid": "x", "category": "c", "description": "d", "deep": ' + b"[" * depth + b"]" * depth + b"}"


def annotation(uid: str) -> dict[str, object]:
    return make_annotation(uid, random.Random(0))


# --------------------------------------------------------------------------- annotation content


def _ann_bytes(uid: str, body: bytes) -> bytes:
    return gz(body.replace(b"UID", uid.encode()))


CONTENT_CASES: dict[str, tuple[Callable[[str], bytes], str]] = {
    "gzip-bomb": (lambda uid: gzip_bomb(8 * MiB), "larger than 1.0 MiB when decompressed"),
    "deep-65": (lambda uid: gz(nested(65)), "nested more than 64 levels deep"),
    "deep-3000": (lambda uid: gz(nested(3000)), "nested more than 64 levels deep"),
    "deep-200000": (lambda uid: gz(nested(200_000)), "nested more than 64 levels deep"),
    "invalid-utf8": (lambda uid: _ann_bytes(uid, b'{"uid": "UID", "category": "\xff\xfe", "description": ""}'),
                     "not valid UTF-8 (byte"),
    "utf16": (lambda uid: gz('{"uid": "x"}'.encode("utf-16")), "not valid UTF-8"),
    "nan": (lambda uid: _ann_bytes(uid, b'{"uid": "UID", "category": "c", "description": "", "mass": NaN}'),
            "NaN is not a JSON number"),
    "infinity": (lambda uid: _ann_bytes(uid, b'{"uid": "UID", "category": "c", "description": "", '
                                             b'"mass": -Infinity}'), "-Infinity is not a JSON number"),
    "overflow": (lambda uid: _ann_bytes(uid, b'{"uid": "UID", "category": "c", "description": "", '
                                             b'"mass": 1e999}'), "number 1e999 is out of range"),
    "huge-int": (lambda uid: _ann_bytes(uid, b'{"uid": "UID", "category": "c", "mass": ' + b"9" * 5000 + b"}"),
                 "not valid JSON"),
    "duplicate-key": (lambda uid: _ann_bytes(uid, b'{"uid": "UID", "category": "a", "category": "b", '
                                                  b'"description": ""}'), "duplicate key 'category'"),
    "top-level-array": (lambda uid: gz(json.dumps([annotation(uid)]).encode()),
                        "must be a JSON object, not an array"),
    "top-level-string": (lambda uid: gz(b'"hello"'), "must be a JSON object, not a string"),
    "not-gzip": (lambda uid: json.dumps(annotation(uid)).encode(), "not a gzip file"),
    "truncated-gzip": (lambda uid: gz(json.dumps(annotation(uid)).encode())[:-12], "truncated gzip file"),
    "corrupt-gzip": (lambda uid: (lambda b: b[:12] + bytes(x ^ 0x55 for x in b[12:40]) + b[40:])(
        gz(json.dumps(annotation(uid)).encode())), "gzip"),
    "empty-file": (lambda uid: b"", "empty file"),
    "empty-gzip": (lambda uid: gz(b""), "not valid JSON (Expecting value"),
}


@pytest.mark.parametrize("case", sorted(CONTENT_CASES))
def test_hostile_annotation_is_one_line(case: str, assets: Path, out_dir: Path, run: CLI) -> None:
    make, expected = CONTENT_CASES[case]
    uid = uids(assets)[1]
    path = assets / uid / ANNOTATION
    path.write_bytes(make(uid))
    out = out_dir / "annotations.json.gz"
    code, _, err = prepare(run, assets, out, "--max-annotation-size", "1M")
    line = refused_asset(code, err, uid, str(path), expected)
    assert len(line) < 400
    assert leftovers(out_dir) == []


@pytest.mark.parametrize("case", ["deep-3000", "invalid-utf8", "nan", "overflow", "duplicate-key", "top-level-array",
                                  "empty-file"])
def test_hostile_thor_metadata_is_one_line(case: str, assets: Path, out_dir: Path, run: CLI) -> None:
    make, expected = CONTENT_CASES[case]
    uid = uids(assets)[2]
    meta = assets / uid / "thor_metadata.json"
    data = make(uid)
    meta.write_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    out = out_dir / "annotations.json.gz"
    code, _, err = prepare(run, assets, out)
    refused_asset(code, err, uid, str(meta), expected)
    assert leftovers(out_dir) == []


def test_size_limit_names_uid_file_and_flag_and_can_be_raised(assets: Path, out_dir: Path, run: CLI) -> None:
    uid = uids(assets)[0]
    ann = annotation(uid)
    ann["description_long"] = "x" * (3 * MiB)
    (assets / uid / ANNOTATION).write_bytes(gz(json.dumps(ann).encode()))
    meta = assets / uid / "thor_metadata.json"
    out = out_dir / "annotations.json.gz"
    code, _, err = prepare(run, assets, out, "--max-annotation-size", "2M")
    refused_asset(code, err, uid, str(assets / uid / ANNOTATION), "larger than 2.0 MiB when decompressed",
                  "--max-annotation-size")
    code, _, err = prepare(run, assets, out, "--max-annotation-size", "4M")
    assert code == 0, err
    assert out.exists()
    out.unlink()
    (assets / uid / ANNOTATION).write_bytes(gz(json.dumps(annotation(uid)).encode()))
    meta.write_bytes(json.dumps({"assetMetadata": {"x": "y" * (3 * MiB)}}).encode())
    code, _, err = prepare(run, assets, out, "--max-annotation-size", "2M")
    refused_asset(code, err, uid, str(meta), "larger than 2.0 MiB", "--max-annotation-size")
    code, _, err = run("prepare-annotations", "--save-dir", str(assets), "--output-file", str(out),
                       "--max-annotation-size", "lots")
    refused(code, err, "size 'lots' is not understood")
    assert leftovers(out_dir) == []


def test_many_small_values_are_refused_before_parsing(assets: Path, out_dir: Path, run: CLI) -> None:
    """3 MB of empty objects would take 80 MB once parsed: the value count is bounded first."""
    uid = uids(assets)[0]
    path = assets / uid / ANNOTATION
    path.write_bytes(gz(b'{"uid": "x", "v": [' + b"{}," * 1_100_000 + b"{}]}"))
    code, _, err = prepare(run, assets, out_dir / "a.json.gz")
    refused_asset(code, err, uid, str(path), "holds more than 1048576 JSON values")
    assert leftovers(out_dir) == []


def test_default_limit_bounds_a_bomb_and_memory_stays_within_it(assets: Path) -> None:
    uid = uids(assets)[0]
    (assets / uid / ANNOTATION).write_bytes(multi_member_bomb(96 * MiB))
    src = next(s for s in scan_assets(assets) if s.uid == uid)
    _, body, problems = load_one(src)  # the default limit, 64 MiB
    assert body is None and [p.message for p in problems] == [
        "larger than 64.0 MiB when decompressed: real annotations are a few KB; "
        "pass --max-annotation-size to raise the limit"]
    (assets / uid / ANNOTATION).write_bytes(multi_member_bomb(32 * MiB))
    tracemalloc.start()
    try:
        _, body, problems = load_one(src, 2 * MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert body is None and "larger than 2.0 MiB" in problems[0].message
    assert peak < 4 * MiB, f"decompressing took {peak} bytes of memory"


def test_worker_processes_report_problems_as_lines(tmp_path: Path, out_dir: Path, run: CLI,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(annotations_mod, "INPROCESS_BELOW", 4)  # workers even for this small tree
    monkeypatch.setattr(annotations_mod, "BATCH", 3)
    root = tmp_path / "many"
    made = make_sample_dataset(root, 10, seed=5, asset_bytes=512, junk=False)
    bad = sorted(made)[:3]
    (root / bad[0] / ANNOTATION).write_bytes(gz(nested(100_000)))
    (root / bad[1] / ANNOTATION).write_bytes(gzip_bomb(4 * MiB))
    (root / bad[2] / ANNOTATION).write_bytes(b"\x1f\x8b\x08\x00garbage")
    out = out_dir / "a.json.gz"
    code, _, err = run("prepare-annotations", "--save-dir", str(root), "--output-file", str(out),
                       "--workers", "2", "--max-annotation-size", "1M")
    assert code == 2, err
    no_traceback(err)
    lines = err.strip().splitlines()
    assert [ln.split(":", 1)[0] for ln in lines[:-1]] == bad
    assert "nested more than 64" in lines[0] and "larger than 1.0 MiB" in lines[1]
    assert "gzip" in lines[2]
    assert lines[-1].startswith("objathor-release: error: 3 problems in 3 of 10 assets")
    assert leftovers(out_dir) == []


# --------------------------------------------------------------------------- per-asset <uid>.tar


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def header(name: bytes, size_field: bytes, kind: bytes = b"0") -> bytes:
    """A hand-made ustar header block with a correct checksum around a raw size field."""
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\x00"
    block[124:136] = size_field
    block[156:157] = kind
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def _pax(records: bytes) -> bytes:
    return header(b"././@PaxHeader", b"%011o\x00" % len(records), b"x") + records.ljust(512, b"\x00")


def per_asset_tar_cases(uid: str) -> dict[str, tuple[bytes, str, str]]:
    """case -> (tar bytes, the member in the message or "" for the tar itself, expected text)."""
    ann = gz(json.dumps(annotation(uid)).encode())
    good = tar_bytes([(member(f"{uid}/{ANNOTATION}"), ann)])
    a = f":{uid}/{ANNOTATION}"
    return {
        "garbage": (os.urandom(4096), "", "not a valid tar archive"),
        "empty": (b"", "", "empty or too short"),
        "truncated": (good[:700], "", "truncated"),
        "member-too-big": (tar_bytes([(member(f"{uid}/{ANNOTATION}"), gz(b"[]") + bytes(2 * MiB))]), a,
                           "larger than 1.0 MiB"),
        "bomb-member": (tar_bytes([(member(f"{uid}/{ANNOTATION}"), gzip_bomb(8 * MiB))]), a,
                        "larger than 1.0 MiB when decompressed"),
        "symlink-member": (tar_bytes([(member(f"{uid}/{ANNOTATION}", tarfile.SYMTYPE, "/etc/passwd"), b"")]),
                           a, "is a link or folder in the tar"),
        "hardlink-member": (tar_bytes([(member(f"{uid}/{ANNOTATION}", tarfile.LNKTYPE, "x"), b"")]), a,
                            "is a link or folder in the tar"),
        "duplicate-member": (tar_bytes([(member(f"{uid}/{ANNOTATION}"), ann)] * 2), a, "is in the tar twice"),
        "empty-member": (tar_bytes([(member(f"{uid}/{ANNOTATION}"), b"")]), a, "empty file"),
        "not-gzip-member": (tar_bytes([(member(f"{uid}/{ANNOTATION}"), b"{}")]), a, "not a gzip file"),
        "deep-member": (tar_bytes([(member(f"{uid}/{ANNOTATION}"), gz(nested(50_000)))]), a, "nested more"),
        "huge-long-name": (header(b"././@LongLink", b"%011o\x00" % (900 * MiB), b"L") + bytes(1024), "",
                           "an extended header of 943718400 bytes"),
        "negative-size": (header(b"x", b"\xff" * 12) + bytes(1024), "", "negative size"),
        "pax-zero-length": (_pax(b"0 path=x\n") + good, "", "malformed pax header"),
        "pax-bad-length": (_pax(b"99999 path=x\n") + good, "", "malformed pax header"),
        "pax-bad-size": (_pax(b"12 size=abc\n") + good, "", "bad pax size"),
        "bad-octal": (header(b"x", b"0000000z\x00\x00\x00\x00") + bytes(1024), "", "bad header"),
        "too-many-members": (header(b"d/", b"%011o\x00" % 0, b"5") * 10_001 + bytes(1024), "",
                             "more than 10000 members"),
    }


@pytest.mark.parametrize("case", sorted(per_asset_tar_cases("0" * 32)))
def test_hostile_per_asset_tar_is_one_line(case: str, assets: Path, out_dir: Path, run: CLI) -> None:
    uid = uids(assets)[0]
    data, where, expected = per_asset_tar_cases(uid)[case]
    shutil.rmtree(assets / uid)
    tar = assets / f"{uid}.tar"
    tar.write_bytes(data)
    out = out_dir / "a.json.gz"
    code, _, err = prepare(run, assets, out, "--max-annotation-size", "1M")
    line = refused_asset(code, err, uid, f"{uid}: {tar}{where}: $: ", expected)
    assert len(line) < 400
    assert leftovers(out_dir) == []


def test_per_asset_tar_holding_a_whole_asset_is_read(assets: Path, out_dir: Path, run: CLI) -> None:
    """A good per-asset tar with other members, a pax header and ./ names gives the folder's merge."""
    want = out_dir / "folders.json.gz"
    assert prepare(run, assets, want)[0] == 0
    uid = uids(assets)[0]
    folder = assets / uid
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for p in sorted(folder.iterdir()):
            tf.add(p, arcname=f"./{uid}/{p.name}")
    shutil.rmtree(folder)
    (assets / f"{uid}.tar").write_bytes(buf.getvalue())
    got = out_dir / "tars.json.gz"
    code, _, err = prepare(run, assets, got)
    assert code == 0, err
    assert got.read_bytes() == want.read_bytes()


# --------------------------------------------------------------------------- symlinks, both commands


def _link_uid_folder(root: Path, outside: Path) -> tuple[Path, str]:
    uid = uids(root)[0]
    shutil.move(root / uid, outside / uid)
    (root / uid).symlink_to(outside / uid)
    return root / uid, uid


def _link_annotation(root: Path, outside: Path) -> tuple[Path, str]:
    uid = uids(root)[0]
    real = outside / "real-annotation.json.gz"
    shutil.move(root / uid / ANNOTATION, real)
    (root / uid / ANNOTATION).symlink_to(real)
    return root / uid / ANNOTATION, uid


def _link_uid_tar(root: Path, outside: Path) -> tuple[Path, str]:
    uid = uids(root)[0]
    with tarfile.open(outside / f"{uid}.tar", "w") as tf:
        tf.add(root / uid / ANNOTATION, arcname=f"{uid}/{ANNOTATION}")
    shutil.rmtree(root / uid)
    (root / f"{uid}.tar").symlink_to(outside / f"{uid}.tar")
    return root / f"{uid}.tar", uid


def _link_outside_folder(root: Path, outside: Path) -> tuple[Path, str]:
    secret = outside / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("never read")
    uid = "e" * 32
    (root / uid).symlink_to(secret)
    return root / uid, uid


def _link_dangling(root: Path, outside: Path) -> tuple[Path, str]:
    uid = "d" * 32
    (root / uid).symlink_to(outside / "nothing-here")
    return root / uid, uid


LINKS = {"uid-folder": _link_uid_folder, "annotation-file": _link_annotation, "uid-tar": _link_uid_tar,
         "folder-outside": _link_outside_folder, "dangling": _link_dangling}


@pytest.mark.parametrize("case", sorted(LINKS))
def test_symlinks_are_refused_by_prepare_annotations(case: str, assets: Path, tmp_path: Path, out_dir: Path,
                                                     run: CLI) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link, uid = LINKS[case](assets, outside)
    out = out_dir / "a.json.gz"
    code, _, err = prepare(run, assets, out)
    refused_asset(code, err, uid, f"{uid}: {link}: $: ", "symlink")
    assert leftovers(out_dir) == []
    code, out_text, err = prepare(run, assets, out, "--skip-invalid")
    assert code == 0 and "1 invalid assets left out" in out_text, err
    with gzip.open(out) as fh:
        assert uid not in json.load(fh)


@pytest.mark.parametrize("case", sorted(LINKS))
def test_symlinks_are_refused_by_tar(case: str, assets: Path, tmp_path: Path, out_dir: Path, run: CLI) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link, _ = LINKS[case](assets, outside)
    out = out_dir / "assets.tar"
    code, _, err = run("tar", "--assets-dir", str(assets), "--output", str(out))
    if case == "annotation-file":
        # annotations.json.gz is on the exclude list: never read, never archived.
        assert code == 0, err
        assert all(ANNOTATION not in m["path"] for m in scan_tar(out).members)
        return
    refused(code, err, str(link), "symlink")
    assert leftovers(out_dir) == []


# --------------------------------------------------------------------------- FIFOs never hang


@no_hang
@pytest.mark.parametrize("where", ["annotation", "thor-metadata", "uid-tar", "uid-name"])
def test_fifo_in_assets_is_refused_by_prepare_annotations(where: str, assets: Path, out_dir: Path,
                                                          run: CLI) -> None:
    uid = uids(assets)[1]
    if where == "annotation":
        fifo = assets / uid / ANNOTATION
        fifo.unlink()
    elif where == "thor-metadata":
        fifo = assets / uid / "thor_metadata.json"
        fifo.unlink()
    elif where == "uid-tar":
        uid = "a" * 32
        fifo = assets / f"{uid}.tar"
    else:
        uid = "b" * 32
        fifo = assets / uid
    os.mkfifo(fifo)
    code, _, err = prepare(run, assets, out_dir / "a.json.gz")
    refused_asset(code, err, uid, str(fifo), "FIFO")
    assert leftovers(out_dir) == []


@no_hang
def test_fifo_in_assets_is_refused_by_tar(assets: Path, out_dir: Path, run: CLI) -> None:
    fifo = assets / uids(assets)[0] / "albedo.jpg"
    fifo.unlink()
    os.mkfifo(fifo)
    code, _, err = run("tar", "--assets-dir", str(assets), "--output", str(out_dir / "assets.tar"))
    refused(code, err, str(fifo), "FIFO")
    assert leftovers(out_dir) == []


@pytest.fixture
def release_dir(tmp_path: Path, assets: Path) -> Path:
    rdir = tmp_path / "release"
    build_tar(assets, rdir / "assets.tar", show_progress=False)
    (rdir / "annotations.json.gz").write_bytes(gz(b"{}"))
    write_manifest(rdir, VERSION, show_progress=False)
    return rdir


@no_hang
def test_fifo_in_release_dir_is_refused_by_manifest_and_verify(release_dir: Path, run: CLI) -> None:
    fifo = release_dir / "features.tar"
    os.mkfifo(fifo)
    before = (release_dir / "manifest.json").read_bytes()
    code, _, err = run("manifest", "--release-dir", str(release_dir), "--version", VERSION)
    refused(code, err, str(fifo), "is a FIFO")
    assert (release_dir / "manifest.json").read_bytes() == before
    assert not [n for n in os.listdir(release_dir) if ".tmp-" in n]
    code, _, err = run("verify", "--release-dir", str(release_dir), "--members")
    refused(code, err, str(fifo), "is a FIFO")


@no_hang
def test_fifo_sidecar_is_ignored_by_manifest(release_dir: Path, run: CLI) -> None:
    side = release_dir / ".assets.tar.index.json"
    side.unlink()
    os.mkfifo(side)
    code, out, err = run("manifest", "--release-dir", str(release_dir), "--version", VERSION)
    assert code == 0, err
    assert "2 artifacts" in out
    assert run("verify", "--release-dir", str(release_dir), "--members")[0] == 0


@no_hang
@pytest.mark.parametrize("name", ["manifest.json", "SHA256SUMS"])
def test_fifo_manifest_or_sums_does_not_hang_verify(name: str, release_dir: Path, run: CLI) -> None:
    (release_dir / name).unlink()
    os.mkfifo(release_dir / name)
    code, _, err = run("verify", "--release-dir", str(release_dir))
    no_traceback(err)
    expected = "cannot be read (is a FIFO)" if name == "manifest.json" else "is a FIFO, not a regular file"
    refused(code, err, str(release_dir / name), expected)


def release_argv(assets: Path, rdir: Path) -> list[str]:
    return ["release", "--version", VERSION, "--assets-dir", str(assets), "--release-dir", str(rdir),
            "--bucket", "unused", "--endpoint-url", "http://127.0.0.1:9", "--dry-run"]


@no_hang
def test_fifo_state_file_is_refused_by_release(assets: Path, tmp_path: Path, run: CLI) -> None:
    rdir = tmp_path / "release"
    rdir.mkdir()
    os.mkfifo(rdir / ".release-state.json")
    code, _, err = run(*release_argv(assets, rdir))
    refused(code, err, str(rdir / ".release-state.json"), "is a FIFO")
    assert not (rdir / "assets.tar").exists()


@no_hang
def test_fifo_in_assets_is_refused_by_release(assets: Path, tmp_path: Path, run: CLI) -> None:
    fifo = assets / uids(assets)[2] / "pipe"
    os.mkfifo(fifo)
    rdir = tmp_path / "release"
    code, _, err = run(*release_argv(assets, rdir))
    assert code == 2, err
    no_traceback(err)
    assert err.strip().splitlines()[-1] == (
        f"objathor-release: error: {fifo}: is a FIFO: remove it or --exclude it")
    assert not (rdir / "assets.tar").exists() and not (rdir / "manifest.json").exists()


# --------------------------------------------------------------------------- release's walk


def test_unreadable_folder_stops_the_release_walk(assets: Path, tmp_path: Path) -> None:
    victim = assets / uids(assets)[1]
    rdir = tmp_path / "release"
    os.chmod(victim, 0)
    try:
        r = run_cli_unprivileged(*release_argv(assets, rdir), "-q")
    finally:
        os.chmod(victim, 0o755)
    assert r.returncode == 2, r.stderr
    no_traceback(r.stderr)
    assert r.stderr.strip() == (f"objathor-release: error: {victim}: cannot be read (Permission denied): "
                                "fix its permissions, or stop whatever changes the tree, and run again")
    assert not (rdir / "annotations.json.gz").exists()


def test_unreadable_uid_folder_is_one_problem_line(assets: Path, tmp_path: Path) -> None:
    uid = uids(assets)[2]
    victim = assets / uid
    out = tmp_path / "out" / "a.json.gz"
    os.chmod(victim, 0)
    try:
        r = run_cli_unprivileged("prepare-annotations", "--save-dir", str(assets), "--output-file", str(out),
                                 "-q")
    finally:
        os.chmod(victim, 0o755)
    refused_asset(r.returncode, r.stderr, uid, f"{uid}: {victim}: $: cannot read the folder (Permission denied)")
    assert not out.exists()


@pytest.mark.parametrize("change", ["removed", "replaced-by-file"])
def test_folder_changing_during_the_walk_is_one_error(change: str, assets: Path) -> None:
    """The walk lists a folder, then reads its sub-folders later: change one in between."""
    later = assets / uids(assets)[-1]
    seen: list[str] = []

    def keep(rel: str) -> bool:
        if not seen:
            shutil.rmtree(later)
            if change == "replaced-by-file":
                later.write_text("now a file")
        seen.append(rel)
        return True

    how = "vanished while it was being read" if change == "removed" else "was replaced by a file"
    with pytest.raises(InputError, match=f"^{later}: {how}") as info:
        fingerprints(assets, (keep, ()))
    assert "\n" not in str(info.value)
    assert seen and not seen[0].startswith(later.name)


@no_hang
@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "dangling", "socket"])
def test_open_regular_refuses_what_is_not_a_regular_file(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "x"
    real = tmp_path / "real"
    real.write_text("data")
    sock = None
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(real)
    elif kind == "dangling":
        path.symlink_to(tmp_path / "missing")
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    try:
        with pytest.raises(NotRegularFileError) as info:
            open_regular(path)
    finally:
        if sock is not None:
            sock.close()
    what = {"fifo": "is a FIFO", "directory": "is a directory", "symlink": f"is a symlink (to {real})",
            "dangling": f"is a symlink (to {tmp_path / 'missing'})", "socket": "is a socket"}[kind]
    assert info.value.strerror == what and str(info.value) == f"{path}: {what}"
    with open_regular(real) as fh:
        assert fh.read() == b"data"


# --------------------------------------------------------------------------- outputs under a file


def test_output_under_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match=f"{tmp_path / 'gone'} is a dangling symlink, not a folder"):
        prepare_output(tmp_path / "gone" / "x" / "out.tar", "--output")
    assert not (tmp_path / "nowhere").exists()


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    f = tmp_path / "a-file"
    f.write_text("in the way")
    return f


@pytest.mark.parametrize("flag", ["--output-file", "--report"])
def test_prepare_annotations_output_under_a_file(flag: str, assets: Path, blocker: Path, tmp_path: Path,
                                                 run: CLI) -> None:
    target = blocker / "sub" / "x.json"
    out = tmp_path / "ok.json.gz" if flag == "--report" else target
    argv = ["prepare-annotations", "--save-dir", str(assets), "--output-file", str(out)]
    if flag == "--report":
        argv += ["--report", str(target)]
    code, _, err = run(*argv)
    refused(code, err, f"{flag} {target}", f"{blocker} is a file, not a folder")
    assert not out.exists() and blocker.read_text() == "in the way"


def test_prepare_annotations_output_that_is_a_directory(assets: Path, tmp_path: Path, run: CLI) -> None:
    code, _, err = prepare(run, assets, tmp_path)
    refused(code, err, f"--output-file {tmp_path}: is a directory")


def test_tar_output_under_a_file(assets: Path, blocker: Path, run: CLI) -> None:
    code, _, err = run("tar", "--assets-dir", str(assets), "--output", str(blocker / "assets.tar"))
    refused(code, err, f"--output {blocker / 'assets.tar'}", f"{blocker} is a file, not a folder")


def test_manifest_and_release_dir_that_is_or_runs_through_a_file(assets: Path, blocker: Path,
                                                                  run: CLI) -> None:
    code, _, err = run("manifest", "--release-dir", str(blocker), "--version", VERSION)
    refused(code, err, f"{blocker}: is not a directory")
    code, _, err = run("verify", "--release-dir", str(blocker / "rel"))
    assert code == 2 and "Traceback" not in err, err
    code, _, err = run(*release_argv(assets, blocker / "rel"))
    refused(code, err, f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "in the way"


# --------------------------------------------------------------------------- hostile tars for manifest/verify


def hostile_release_tars(good: bytes) -> dict[str, tuple[bytes, str]]:
    body = good[:1536]
    return {
        "garbage": (os.urandom(20480), "not a valid tar archive (bad header at byte 0"),
        "bad-checksum": (body[:148] + b"9999999\x00" + body[156:] + bytes(18944), "bad header at byte 0"),
        "pax-zero-length": (_pax(b"0 path=x\n") + body, "malformed pax header at byte 0"),
        "pax-no-newline": (_pax(b"12 path=xxxx") + body, "malformed pax header"),
        "pax-bad-size": (_pax(b"13 size=-512\n") + body, "bad pax size"),
        "negative-size": (header(b"x", b"\xff" * 12) + bytes(20480), "negative size at byte 0"),
        "huge-long-name": (header(b"././@LongLink", b"\x80" + (2**40).to_bytes(11, "big"), b"L") + bytes(20480),
                           "an extended header of 1099511627776 bytes"),
        "huge-member": (header(b"big", b"%011o\x00" % (8**11 - 1)) + bytes(20480), "truncated tar archive"),
        "empty-name": (header(b"", b"%011o\x00" % 0) + bytes(20480), "a member with an empty name"),
        "latin1-name": (header(b"caf\xe9", b"%011o\x00" % 0) + bytes(20480), "not valid UTF-8"),
        "sparse": (header(b"s", b"%011o\x00" % 0, b"S") + bytes(20480), "holds sparse member s"),
        "nul-in-pax-path": (_pax(b"12 path=a\x00b\n") + body, "holding a NUL byte"),
        "too-short": (b"ustar", "empty or too short"),
    }


@pytest.mark.parametrize("case", sorted(hostile_release_tars(bytes(2048))))
def test_hostile_tar_in_release_dir_is_one_line(case: str, release_dir: Path, run: CLI) -> None:
    good = (release_dir / "assets.tar").read_bytes()
    data, expected = hostile_release_tars(good)[case]
    bad = release_dir / "features.tar"
    bad.write_bytes(data)
    before = (release_dir / "manifest.json").read_bytes()
    code, _, err = run("manifest", "--release-dir", str(release_dir), "--version", VERSION)
    refused(code, err, f"{bad}: ", expected)
    assert (release_dir / "manifest.json").read_bytes() == before
    assert not [n for n in os.listdir(release_dir) if ".tmp-" in n]


@pytest.mark.parametrize("seed", range(3))
def test_verify_members_of_a_damaged_tar_is_one_line(seed: int, release_dir: Path, run: CLI) -> None:
    """Bytes overwritten in place (same size): verify --members names the archive in one line."""
    tar = release_dir / "assets.tar"
    data = bytearray(tar.read_bytes())
    rng = random.Random(seed)
    headers = [m["offset"] - 512 for m in json.loads((release_dir / "manifest.json").read_text())
               ["artifacts"][1]["members"]]
    at = rng.choice(headers)
    data[at + 124:at + 136] = b"\xff" * 12 if seed == 0 else bytes(rng.randrange(256) for _ in range(12))
    tar.write_bytes(bytes(data))
    code, _, err = run("verify", "--release-dir", str(release_dir), "--members")
    assert code in (1, 2), err
    no_traceback(err)
    assert str(tar) in err


def test_scan_tar_never_raises_anything_but_input_error_on_mangled_headers(tmp_path: Path,
                                                                           assets: Path) -> None:
    good = build_tar(assets, tmp_path / "good.tar", show_progress=False).path.read_bytes()
    rng = random.Random(7)
    path = tmp_path / "mangled.tar"
    outcomes = {"read": 0, "refused": 0}
    for _ in range(150):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            block = rng.randrange(0, 8) * 512
            i = block + rng.choice([0, 99, 100, 124, 130, 135, 148, 156, 257, 345, rng.randrange(512)])
            data[i:i + 4] = bytes(rng.randrange(256) for _ in range(4))
        path.write_bytes(bytes(data))
        try:
            scan_tar(path)
            outcomes["read"] += 1
        except InputError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50, outcomes
