"""Download tests: over HTTP on 127.0.0.1 from a real nginx, faults through tests/faultproxy.py.

Each test publishes its own release under ``web.root/<folder>`` (built with the
project's tar builder and manifest writer when present) and downloads it with
``--base-url web.url/<folder>``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.nginx import Nginx
from devtools.sample import make_sample_dataset
from devtools.served_release import Release, build_release, expected_tree, flip_byte, tree
from objathor_release.cli import main
from objathor_release.errors import ChecksumError, InputError, TransferError, UsageError
from objathor_release.fetch.download import DownloadResult, download_version, resolve_source
from objathor_release.fetch.extract import TarStreamExtractor, UnsafeMemberError
from objathor_release.fetch.http import HttpConfig
from tests.conftest import run_cli
from tests.support.faultproxy import PASS, FaultProxy, Request, cut, drop, status

V = "2024_02_01"
FAST = HttpConfig(attempts=3, backoff=0.01, connections=4, part_size=1024 * 1024, read_size=256 * 1024)
QUIET = {"OBJATHOR_PROGRESS": "0", "OBJATHOR_DOWNLOAD_BACKOFF": "0.01"}


def publish(web: Nginx, tmp_path: Path, *, n_assets: int = 12, asset_bytes: int = 24 * 1024,
            features: bool = True, holodeck: bool = True, manifest: bool = True) -> tuple[str, Release, Path]:
    """A release under a fresh folder of the web root; returns (base_url, release, source assets dir)."""
    folder = uuid.uuid4().hex[:10]
    src = tmp_path / "src" / "assets"
    feats = tmp_path / "src" / "features" if features else None
    make_sample_dataset(src, n_assets, seed=7, asset_bytes=asset_bytes, features_dir=feats)
    hd = None
    if holodeck:
        hd = tmp_path / "src" / V
        (hd / "objaverse_holodeck").mkdir(parents=True)
        (hd / "objaverse_holodeck" / "thor_object_data.json").write_text('{"a": 1}')
        (hd / "objaverse_holodeck" / "thor_metadata.json").write_text('{"m": 1}')  # data here, not excluded
        (hd / "README.txt").write_text("holodeck base data\n")
    release = build_release(src, web.root / folder, V, features_dir=feats, holodeck_dir=hd, manifest=manifest)
    return f"{web.url}/{folder}", release, src


def requests_for(web: Nginx, name: str) -> list[dict[str, str]]:
    return [r for r in web.access_log() if r["uri"].endswith(name)]


def state_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".objathor-release" in p.parts)


# ---------------------------------------------------------------------- layout and content


def test_all_parts_exact_layout_and_content(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path)
    dest = tmp_path / "dl"
    result = download_version("all", V, path=dest, base_url=base, show_progress=False, http_config=FAST)
    assert result.manifest
    # holodeck/VERSION.tar sits beside the version and the manifest lists it as holodeck.tar: verified too.
    assert [p.verified for p in result.parts] == [True, True, True, True]
    assert [(p.what, p.status) for p in result.parts] == [
        ("annotations", "downloaded"), ("assets", "downloaded"), ("features", "downloaded"),
        ("holodeck-base", "downloaded")]
    visible = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if ".objathor-release" not in p.parts)
    uids = release.uids
    want = sorted(
        [V, f"{V}/annotations.json.gz", f"{V}/assets", f"{V}/features", "holodeck", f"holodeck/{V}"]
        + [f"{V}/assets/{u}" for u in uids]
        + [f"{V}/assets/{k}" for k in expected_tree(src)]
        + [f"{V}/features/{p.name}" for p in (tmp_path / "src" / "features").iterdir()]
        + [f"holodeck/{V}/README.txt", f"holodeck/{V}/objaverse_holodeck",
           f"holodeck/{V}/objaverse_holodeck/thor_metadata.json",
           f"holodeck/{V}/objaverse_holodeck/thor_object_data.json"])
    assert visible == want
    assert tree(dest / V / "assets") == expected_tree(src)
    got = (dest / V / "annotations.json.gz").read_bytes()
    assert got == (release.vdir / "annotations.json.gz").read_bytes()
    assert tree(dest / V / "features") == tree(tmp_path / "src" / "features")
    assert tree(dest / "holodeck" / V) == tree(tmp_path / "src" / V)
    # Only markers and locks remain as bookkeeping: no .part, no staging.
    assert [s for s in state_files(dest) if not s.endswith((".done", ".lock"))] == [
        f"{V}/.objathor-release", "holodeck/.objathor-release"]

    before = len(web.access_log())
    again = download_version("all", V, path=dest, base_url=base, show_progress=False, http_config=FAST)
    assert [p.status for p in again.parts] == ["already there"] * 4
    assert [r["uri"] for r in web.access_log()[before:]] == [f"/{base.rsplit('/', 1)[1]}/{V}/manifest.json"]


def test_cli_assets_from_a_release_without_manifest(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path, manifest=False, features=False, holodeck=False)
    dest = tmp_path / "dl"
    proc = run_cli("download", "assets", "--version", V, "--path", str(dest), "--base-url", base, env=QUIET)
    assert proc.returncode == 0, proc.stderr
    assert "no manifest.json" in proc.stderr and "unverified" in proc.stderr
    assert f"assets: downloaded at {dest / V / 'assets'} (unverified" in proc.stdout
    assert tree(dest / V / "assets") == expected_tree(src)

    refused = run_cli("download", "annotations", "--version", V, "--path", str(tmp_path / "dl2"),
                      "--base-url", base, "--require-checksums", env=QUIET)
    assert refused.returncode == 1
    assert "no manifest.json" in refused.stderr and "--require-checksums" in refused.stderr
    assert not (tmp_path / "dl2" / V / "annotations.json.gz").exists()


def test_all_skips_parts_the_version_does_not_have(web: Nginx, tmp_path: Path) -> None:
    base, _, _ = publish(web, tmp_path, features=False, holodeck=False)
    result = download_version("all", V, path=tmp_path / "dl", base_url=base, show_progress=False,
                              http_config=FAST)
    assert [(p.what, p.status) for p in result.parts] == [
        ("annotations", "downloaded"), ("assets", "downloaded"), ("features", "not in this version"),
        ("holodeck-base", "not in this version")]
    assert not (tmp_path / "dl" / V / "features").exists()


def test_keep_tar_keeps_the_verified_tar(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path, features=False, holodeck=False)
    dest = tmp_path / "dl"
    download_version("assets", V, path=dest, base_url=base, keep_tar=True, show_progress=False,
                     http_config=FAST)
    assert (dest / V / "assets.tar").read_bytes() == (release.vdir / "assets.tar").read_bytes()
    assert tree(dest / V / "assets") == expected_tree(src)


# ---------------------------------------------------------------------- resume


def test_cut_stream_resumes_at_the_byte_it_stopped(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path, features=False, holodeck=False)
    size = release.artifact("assets.tar")["size"]

    def rule(req: Request) -> Any:
        cuts = [r for r in proxy.log if r.path.endswith("assets.tar") and r.method == "GET"]
        return cut(size // 2) if req.path.endswith("assets.tar") and len(cuts) == 1 else PASS

    with FaultProxy(web.url, rule) as proxy:
        url = proxy.url + "/" + base.rsplit("/", 1)[1]
        result = download_version("assets", V, path=tmp_path / "dl", base_url=url, show_progress=False,
                                  http_config=FAST)
    assert result.verified
    gets = [r for r in proxy.log if r.path.endswith("assets.tar")]
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    assert gets[1].headers["Range"] == f"bytes={size // 2}-"
    assert gets[1].headers["If-Range"]  # the ETag: a changed file would restart, not be spliced
    assert tree(tmp_path / "dl" / V / "assets") == expected_tree(src)


def test_interrupted_file_continues_from_its_part_on_the_next_run(web: Nginx, tmp_path: Path) -> None:
    big = os.urandom(5 * 1024 * 1024 + 1234)
    base, release, _ = publish(web, tmp_path, features=False, holodeck=False, n_assets=2)
    (release.vdir / "annotations.json.gz").write_bytes(gzip.compress(big, compresslevel=0))
    from devtools.served_release import write_manifest
    write_manifest(release.vdir, V)
    dest = tmp_path / "dl"
    target = dest / V / "annotations.json.gz"

    # First run: the first piece arrives, then every request is cut short or dropped.
    def failing(req: Request) -> Any:
        if not req.path.endswith("annotations.json.gz"):
            return PASS
        return PASS if req.headers.get("Range", "").startswith("bytes=0-") else (
            cut(1000) if req.index % 2 else drop())

    one = HttpConfig(attempts=2, backoff=0.01, connections=1, part_size=1024 * 1024)
    with FaultProxy(web.url, failing) as proxy:
        url = proxy.url + "/" + base.rsplit("/", 1)[1]
        with pytest.raises(TransferError, match="run the command again to resume"):
            download_version("annotations", V, path=dest, base_url=url, show_progress=False, http_config=one)
        assert not target.exists()
        part = target.with_name(target.name + ".part")
        state = json.loads(target.with_name(target.name + ".part.json").read_text())
        assert part.exists() and state["done"] == [0]

        proxy.set_rule(lambda r: PASS)
        seen = len(proxy.log)
        result = download_version("annotations", V, path=dest, base_url=url, show_progress=False,
                                  http_config=one)
        ranges = [r.headers.get("Range") for r in proxy.log[seen:] if r.path.endswith(".json.gz")]
        if_ranges = [r.headers.get("If-Range") for r in proxy.log[seen:] if r.path.endswith(".json.gz")]
    assert result.verified and target.read_bytes() == (release.vdir / "annotations.json.gz").read_bytes()
    assert "bytes=0-1048575" not in ranges  # the piece from the first run is not fetched again
    assert ranges[0] == "bytes=1048576-2097151" and all(if_ranges)
    assert not part.exists()


def test_killed_extraction_resumes_after_the_members_it_checked(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path, features=False, holodeck=False, n_assets=40,
                                 asset_bytes=64 * 1024)
    slow = base.replace(web.url, web.url + "/slow")
    dest = tmp_path / "dl"
    staging = dest / V / ".objathor-release" / "assets.staging"
    cmd = [sys.executable, "-m", "objathor_release", "download", "assets", "--version", V,
           "--path", str(dest), "--base-url", slow]
    proc = subprocess.Popen(cmd, env={**os.environ, **QUIET}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len([p for p in staging.rglob("*") if p.is_file()]) < 6:
        time.sleep(0.05)
    proc.kill()
    proc.communicate()
    assert len([p for p in staging.rglob("*") if p.is_file()]) >= 6, "finished before it could be interrupted"
    assert not (dest / V / "assets").exists()  # nothing that looks finished

    before = len(web.access_log())
    again = run_cli("download", "assets", "--version", V, "--path", str(dest), "--base-url", base, env=QUIET)
    assert again.returncode == 0, again.stderr
    assert "resuming the interrupted extraction of assets.tar after" in again.stderr, again.stderr
    starts = [int(r["range"].split("=")[1].split("-")[0]) for r in web.access_log()[before:]
              if r["uri"].endswith("assets.tar") and r["range"].startswith("bytes=") and r["range"] != "bytes=0-0"]
    assert starts and min(starts) > 0, "the second run must not fetch the tar from its first byte"
    assert tree(dest / V / "assets") == expected_tree(src)
    assert not staging.exists()


def test_retries_5xx_and_dropped_connections(web: Nginx, tmp_path: Path) -> None:
    base, _, src = publish(web, tmp_path, features=False, holodeck=False)
    faults = iter([status(503), drop(), status(500)])

    def rule(req: Request) -> Any:
        return next(faults, PASS) if req.path.endswith(("assets.tar", "manifest.json")) else PASS

    with FaultProxy(web.url, rule) as proxy:
        url = proxy.url + "/" + base.rsplit("/", 1)[1]
        result = download_version("assets", V, path=tmp_path / "dl", base_url=url, show_progress=False,
                                  http_config=HttpConfig(attempts=4, backoff=0.01))
    assert result.verified and tree(tmp_path / "dl" / V / "assets") == expected_tree(src)

    with FaultProxy(web.url, lambda r: status(503)) as proxy:
        url = proxy.url + "/" + base.rsplit("/", 1)[1]
        with pytest.raises(TransferError, match=r"HTTP 503 \(3 attempts"):
            download_version("assets", V, path=tmp_path / "dl2", base_url=url, show_progress=False,
                             http_config=FAST)
        assert len(proxy.log) == 3


# ---------------------------------------------------------------------- verification


def test_flipped_byte_in_a_member_is_caught_and_nothing_is_left(web: Nginx, tmp_path: Path) -> None:
    base, release, _ = publish(web, tmp_path, features=False, holodeck=False)
    member = release.artifact("assets.tar")["members"][5]
    flip_byte(release.vdir / "assets.tar", member["offset"] + member["size"] // 2)
    dest = tmp_path / "dl"
    before = len(requests_for(web, "assets.tar"))
    with pytest.raises(ChecksumError, match=member["path"]):
        download_version("assets", V, path=dest, base_url=base, show_progress=False, http_config=FAST)
    assert len(requests_for(web, "assets.tar")) - before == 2  # retried once
    assert not (dest / V / "assets").exists()
    assert [s for s in state_files(dest) if not s.endswith((".lock", ".objathor-release"))] == []


def test_flipped_byte_in_a_single_file_is_caught(web: Nginx, tmp_path: Path) -> None:
    base, release, _ = publish(web, tmp_path, features=False, holodeck=False)
    flip_byte(release.vdir / "annotations.json.gz", 100)
    dest = tmp_path / "dl"
    proc = run_cli("download", "annotations", "--version", V, "--path", str(dest), "--base-url", base,
                   env=QUIET)
    assert proc.returncode == 1
    assert "annotations.json.gz" in proc.stderr and "sha256" in proc.stderr and "retrying" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list((dest / V).glob("annotations.json.gz*")) == []


def test_republished_release_is_downloaded_again(web: Nginx, tmp_path: Path) -> None:
    base, release, _ = publish(web, tmp_path, features=False, holodeck=False)
    dest = tmp_path / "dl"
    download_version("annotations", V, path=dest, base_url=base, show_progress=False, http_config=FAST)
    (release.vdir / "annotations.json.gz").write_bytes(gzip.compress(b'{"new": 1}', mtime=0))
    from devtools.served_release import write_manifest
    write_manifest(release.vdir, V)
    result = download_version("annotations", V, path=dest, base_url=base, show_progress=False,
                              http_config=FAST)
    assert result.parts[0].status == "downloaded"
    assert gzip.decompress((dest / V / "annotations.json.gz").read_bytes()) == b'{"new": 1}'


# ---------------------------------------------------------------------- safety


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> tuple[
        tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info, data


GOOD = [_entry("assets", tarfile.DIRTYPE), _entry("assets/u1", tarfile.DIRTYPE), _entry("assets/u1/a.jpg")]
MALICIOUS = {  # case: (entries, the member the error must name)
    "absolute path": ([_entry("/tmp/ESCAPED")], "/tmp/ESCAPED"),
    "dot-dot": ([*GOOD, _entry("assets/../ESCAPED")], "assets/../ESCAPED"),
    "dot-dot deep": ([*GOOD, _entry("assets/u1/../../../ESCAPED")], "assets/u1/../../../ESCAPED"),
    "symlink absolute": ([*GOOD, _entry("assets/u1/link", tarfile.SYMTYPE, link="/etc")], "assets/u1/link"),
    "symlink outside": ([*GOOD, _entry("assets/u1/link", tarfile.SYMTYPE, link="../../..")],
                        "assets/u1/link"),
    "symlink then write through it": ([*GOOD, _entry("assets/up", tarfile.SYMTYPE, link=".."),
                                       _entry("assets/up/ESCAPED")], "assets/up"),
    "symlink inside then a dir through it": ([*GOOD, _entry("assets/u2", tarfile.SYMTYPE, link="u1"),
                                              _entry("assets/u2/ESCAPED")], "assets/u2"),
    "hardlink outside": ([*GOOD, _entry("assets/u1/hard", tarfile.LNKTYPE, link="../ESCAPED")],
                         "assets/u1/hard"),
    "hardlink absolute": ([*GOOD, _entry("assets/u1/hard", tarfile.LNKTYPE, link="/etc/passwd")],
                          "assets/u1/hard"),
    "character device": ([*GOOD, _entry("assets/u1/tty", tarfile.CHRTYPE)], "assets/u1/tty"),
    "block device": ([*GOOD, _entry("assets/u1/disk", tarfile.BLKTYPE)], "assets/u1/disk"),
    "fifo": ([*GOOD, _entry("assets/u1/pipe", tarfile.FIFOTYPE)], "assets/u1/pipe"),
    "second top-level folder": ([*GOOD, _entry("other", tarfile.DIRTYPE), _entry("other/ESCAPED")], "other/"),
    "file at top level": ([*GOOD, _entry("ESCAPED")], "ESCAPED"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_tar_is_refused_with_nothing_escaping(web: Nginx, tmp_path: Path, case: str) -> None:
    folder = f"evil-{uuid.uuid4().hex[:8]}"
    vdir = web.root / folder / V
    vdir.mkdir(parents=True)
    entries, refused = MALICIOUS[case]
    (vdir / "assets.tar").write_bytes(_tar(entries))
    jail = tmp_path / "jail"  # DIR is two levels below, so '../..' from the staging dir lands in here
    dest = jail / "dl"
    dest.mkdir(parents=True)
    with pytest.raises(UnsafeMemberError) as err:
        download_version("assets", V, path=dest, base_url=f"{web.url}/{folder}", show_progress=False,
                         http_config=FAST)
    assert f"refused member {refused!r}" in str(err.value)
    assert not list(jail.rglob("ESCAPED")) and not Path("/tmp/ESCAPED").exists()
    assert not (dest / V / "assets").exists()
    assert not list((dest / V / ".objathor-release").glob("*staging*"))


FLAT_MALICIOUS = {c: v for c, v in MALICIOUS.items() if c not in ("second top-level folder", "file at top level")}


def _serve_features(web: Nginx, entries: list[tuple[tarfile.TarInfo, bytes]]) -> str:
    folder = f"feat-{uuid.uuid4().hex[:8]}"
    vdir = web.root / folder / V
    vdir.mkdir(parents=True)
    (vdir / "features.tar").write_bytes(_tar(entries))
    (vdir / "annotations.json.gz").write_bytes(gzip.compress(b"{}"))
    return f"{web.url}/{folder}"


@pytest.mark.parametrize("layout", ["flat", "one folder", "several folders, nested"])
def test_features_tar_of_any_layout_lands_flat(web: Nginx, tmp_path: Path, layout: str) -> None:
    """objathor globs **/*.pkl in features.tar and flattens them; so do we (other files are left out)."""
    names = {"flat": ["clip_features.pkl", "sbert_features.pkl", "README.txt"],
             "one folder": ["features/clip_features.pkl", "features/sbert_features.pkl"],
             "several folders, nested": ["a/clip_features.pkl", "b/c/sbert_features.pkl", "b/notes.md"]}[layout]
    dirs = sorted({"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)})
    entries = [_entry(d, tarfile.DIRTYPE) for d in dirs] + [_entry(n, data=n.encode() * 100) for n in names]
    base = _serve_features(web, entries)
    dest = tmp_path / "dl"
    result = download_version("features", V, path=dest, base_url=base, show_progress=False, http_config=FAST)
    assert result.parts[0].status == "downloaded"
    want = {n.rsplit("/", 1)[-1]: n.encode() * 100 for n in names if n.endswith(".pkl")}
    assert tree(dest / V / "features") == want
    assert not list((dest / V / ".objathor-release").glob("*.flat"))


def test_features_with_two_pkl_of_one_name_are_refused(web: Nginx, tmp_path: Path) -> None:
    entries = [_entry("a", tarfile.DIRTYPE), _entry("b", tarfile.DIRTYPE), _entry("a/clip.pkl"), _entry("b/clip.pkl")]
    with pytest.raises(InputError, match="two files named clip.pkl"):
        download_version("features", V, path=tmp_path / "dl", base_url=_serve_features(web, entries),
                         show_progress=False, http_config=FAST)
    assert not (tmp_path / "dl" / V / "features").exists()
    assert not list((tmp_path / "dl" / V / ".objathor-release").glob("*.flat"))


@pytest.mark.parametrize("case", sorted(FLAT_MALICIOUS))
def test_a_flat_features_tar_keeps_every_other_refusal(web: Nginx, tmp_path: Path, case: str) -> None:
    entries, refused = FLAT_MALICIOUS[case]
    renamed = [(_rename(info, "assets", "feats"), data) for info, data in entries]
    jail = tmp_path / "jail"
    dest = jail / "dl"
    dest.mkdir(parents=True)
    with pytest.raises(UnsafeMemberError) as err:
        download_version("features", V, path=dest, base_url=_serve_features(web, renamed), show_progress=False,
                         http_config=FAST)
    assert f"refused member {refused.replace('assets', 'feats', 1)!r}" in str(err.value)
    assert not list(jail.rglob("ESCAPED")) and not Path("/tmp/ESCAPED").exists()
    assert not (dest / V / "features").exists()


def _rename(info: tarfile.TarInfo, old: str, new: str) -> tarfile.TarInfo:
    out = tarfile.TarInfo(info.name.replace(old, new, 1) if info.name.startswith(old) else info.name)
    out.type, out.linkname, out.mode = info.type, info.linkname, info.mode
    return out


def test_extractor_handles_long_names_pax_and_any_chunking(tmp_path: Path) -> None:
    src = tmp_path / "assets"
    deep = src / ("d" * 120) / ("e" * 130)
    deep.mkdir(parents=True)
    (deep / ("f" * 150)).write_bytes(os.urandom(3000))
    (src / "u1").mkdir()
    (src / "u1" / "empty").write_bytes(b"")
    (src / "u1" / "ünïcode.jpg").write_bytes(b"j" * 513)
    for fmt in ("gnu", "posix"):
        tar = tmp_path / f"{fmt}.tar"
        subprocess.run(["tar", f"--format={fmt}", "-C", str(tmp_path), "-cf", str(tar), "assets"], check=True)
        data = tar.read_bytes()
        for step in (1, 511, 512, 4099):
            out = tmp_path / f"out-{fmt}-{step}"
            out.mkdir()
            ex = TarStreamExtractor(out, source=tar.name)
            for i in range(0, len(data), step):
                ex.feed(data[i:i + step])
            ex.finish()
            assert tree(out / "assets") == tree(src)
            shutil.rmtree(out)


def test_truncated_tar_is_an_error(tmp_path: Path) -> None:
    data = _tar(GOOD)
    ex = TarStreamExtractor(tmp_path, source="assets.tar")
    ex.feed(data[:1100])
    with pytest.raises(Exception, match="truncated"):
        ex.finish()


# ---------------------------------------------------------------------- --uids


def test_uids_fetch_only_those_assets_by_range(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path, features=False, holodeck=False, n_assets=20)
    pick = release.uids[3:6]
    dest = tmp_path / "dl"
    uids_file = tmp_path / "uids.txt"
    uids_file.write_text(f"# three assets\n{pick[0]}\n{pick[1]}\n")
    before = len(web.access_log())
    proc = run_cli("download", "assets", "--version", V, "--path", str(dest), "--base-url", base,
                   "--uids", pick[2], "--uids-file", str(uids_file), env=QUIET)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (dest / V / "assets").iterdir()) == sorted(pick)
    want = {k: v for k, v in expected_tree(src).items() if k.split("/")[0] in pick}
    assert tree(dest / V / "assets") == want
    tar_requests = [r for r in web.access_log()[before:] if r["uri"].endswith("assets.tar")]
    assert all(r["method"] == "GET" and r["status"] == "206" for r in tar_requests)
    assert [r["range"] for r in tar_requests].count("bytes=0-0") == 1  # the probe: size and ETag
    gets = [r for r in tar_requests if r["range"] != "bytes=0-0"]
    assert len(gets) == 1 and all(r["if_range"] for r in gets)  # three neighbours: one request
    assert sum(int(r["bytes"]) for r in gets) < release.artifact("assets.tar")["size"] / 4

    again = download_version("assets", V, path=dest, base_url=base, uids=pick, show_progress=False,
                             http_config=FAST)
    assert again.parts[0].status == "already there"
    full = download_version("assets", V, path=dest, base_url=base, show_progress=False, http_config=FAST)
    assert full.parts[0].status == "downloaded" and tree(dest / V / "assets") == expected_tree(src)


def test_uids_far_apart_or_many_come_in_several_requests(web: Nginx, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Neighbours share a request only within the gap and the size bound; each request stays verified."""
    from objathor_release.fetch import uids as uids_mod

    base, release, src = publish(web, tmp_path, features=False, holodeck=False, n_assets=20)
    members = release.artifact("assets.tar")["members"]

    def span(uid: str) -> tuple[int, int]:
        mine = [m for m in members if f"/{uid}/" in m["path"] and m["size"]]
        return min(m["offset"] for m in mine), max(m["offset"] + m["size"] for m in mine)

    pick = [release.uids[i] for i in (0, 1, 2, 10, 19)]
    gap = span(release.uids[10])[0] - span(release.uids[2])[1] - 1  # 0-2 close, 10 and 19 too far
    monkeypatch.setattr(uids_mod, "COALESCE_GAP", min(gap, span(release.uids[1])[0] - span(release.uids[0])[1]
                                                      + 4096))
    before = len(web.access_log())
    got = download_version("assets", V, path=tmp_path / "a", base_url=base, uids=pick, show_progress=False,
                           http_config=FAST)
    assert got.parts[0].status == "downloaded"
    gets = [r for r in web.access_log()[before:] if r["uri"].endswith("assets.tar") and r["range"] != "bytes=0-0"]
    starts = sorted(int(r["range"].removeprefix("bytes=").split("-")[0]) for r in gets)
    assert starts == [span(release.uids[0])[0], span(release.uids[10])[0], span(release.uids[19])[0]]
    want = {k: v for k, v in expected_tree(src).items() if k.split("/")[0] in pick}
    assert tree(tmp_path / "a" / V / "assets") == want

    # a size bound smaller than two assets: one request each, the same files
    monkeypatch.setattr(uids_mod, "MAX_RANGE", 1)
    before = len(web.access_log())
    download_version("assets", V, path=tmp_path / "b", base_url=base, uids=pick[:3], show_progress=False,
                     http_config=FAST)
    gets = [r for r in web.access_log()[before:] if r["uri"].endswith("assets.tar") and r["range"] != "bytes=0-0"]
    assert len(gets) == 3
    assert tree(tmp_path / "b" / V / "assets") == {k: v for k, v in want.items() if k.split("/")[0] in pick[:3]}


def test_a_flipped_byte_in_a_shared_request_lands_none_of_its_assets(web: Nginx, tmp_path: Path) -> None:
    base, release, _ = publish(web, tmp_path, features=False, holodeck=False)
    pick = release.uids[2:5]
    member = next(m for m in release.artifact("assets.tar")["members"] if f"/{pick[2]}/" in m["path"])
    flip_byte(release.vdir / "assets.tar", member["offset"])
    with pytest.raises(ChecksumError, match=member["path"]):
        download_version("assets", V, path=tmp_path / "dl", base_url=base, uids=pick, show_progress=False,
                         http_config=FAST)
    assert not any((tmp_path / "dl" / V / "assets" / u).exists() for u in pick)


def test_uids_errors(web: Nginx, tmp_path: Path) -> None:
    base, release, _ = publish(web, tmp_path, features=False, holodeck=False)
    with pytest.raises(UsageError, match="not in version"):
        download_version("assets", V, path=tmp_path / "dl", base_url=base, uids=["f" * 32],
                         show_progress=False, http_config=FAST)
    old, _, _ = publish(web, tmp_path / "old", features=False, holodeck=False, manifest=False)
    with pytest.raises(UsageError, match="needs the release's manifest.json"):
        download_version("assets", V, path=tmp_path / "dl", base_url=old, uids=release.uids[:1],
                         show_progress=False, http_config=FAST)


def test_uid_with_a_flipped_byte_fails(web: Nginx, tmp_path: Path) -> None:
    base, release, _ = publish(web, tmp_path, features=False, holodeck=False)
    uid = release.uids[2]
    member = next(m for m in release.artifact("assets.tar")["members"] if f"/{uid}/" in m["path"])
    flip_byte(release.vdir / "assets.tar", member["offset"])
    with pytest.raises(ChecksumError, match=member["path"]):
        download_version("assets", V, path=tmp_path / "dl", base_url=base, uids=[uid], show_progress=False,
                         http_config=FAST)
    assert not (tmp_path / "dl" / V / "assets" / uid).exists()


# ---------------------------------------------------------------------- concurrency


def test_two_processes_download_the_same_version_at_once(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path, features=False, holodeck=False, n_assets=30,
                                 asset_bytes=48 * 1024)
    slow = base.replace(web.url, web.url + "/slow")
    dest = tmp_path / "dl"
    cmd = [sys.executable, "-m", "objathor_release", "download", "assets", "--version", V,
           "--path", str(dest), "--base-url", slow]
    env = {**os.environ, **QUIET}
    before = len(requests_for(web, "assets.tar"))
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    # Usually the first one started downloads; on a loaded machine the second may win the lock.
    (did, _), (waited, waited_err) = sorted([(out1, err1), (out2, err2)], key=lambda o: "already" in o[0])
    assert "assets: downloaded" in did and "assets: already there" in waited
    assert "waiting for another download of assets" in waited_err
    assert len(requests_for(web, "assets.tar")) - before == 1
    assert tree(dest / V / "assets") == expected_tree(src)


# ---------------------------------------------------------------------- bad answers and settings


def test_unknown_version_lists_the_known_ones(web: Nginx, tmp_path: Path) -> None:
    proc = run_cli("download", "all", "--version", "2031_01_01", "--path", str(tmp_path), "--base-url",
                   f"{web.url}/nothing-here", env=QUIET)
    assert proc.returncode == 2
    assert "version 2031_01_01 was not found" in proc.stderr and "HTTP 404" in proc.stderr
    assert "2023_09_23" in proc.stderr and "2025_06_10" in proc.stderr
    assert not (tmp_path / "2031_01_01" / "annotations.json.gz").exists()


def test_bad_version_string_fails_before_any_request(tmp_path: Path) -> None:
    proc = run_cli("download", "assets", "--version", "2024-02-01", "--path", str(tmp_path), "--base-url",
                   "http://127.0.0.1:9", env=QUIET)
    assert proc.returncode == 2
    assert "not of the form YYYY_MM_DD" in proc.stderr and "127.0.0.1" not in proc.stderr


def test_html_page_instead_of_data_names_the_url(web: Nginx, tmp_path: Path) -> None:
    proc = run_cli("download", "assets", "--version", V, "--path", str(tmp_path / "dl"), "--base-url",
                   f"{web.url}/html", env=QUIET)
    assert proc.returncode == 1
    assert f"{web.url}/html/{V}/" in proc.stderr and "text/html" in proc.stderr
    assert not (tmp_path / "dl" / V / "assets").exists()


def test_html_served_as_octet_stream_is_caught_too(web: Nginx, tmp_path: Path) -> None:
    folder = f"portal-{uuid.uuid4().hex[:8]}"
    (web.root / folder / V).mkdir(parents=True)
    page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
    (web.root / folder / V / "assets.tar").write_bytes(page)
    with pytest.raises(TransferError, match=f"{folder}/{V}/assets.tar returned an HTML"):
        download_version("assets", V, path=tmp_path / "dl", base_url=f"{web.url}/{folder}",
                         show_progress=False, http_config=FAST)


def test_not_enough_space_is_refused_before_downloading(web: Nginx, tmp_path: Path) -> None:
    base, release, _ = publish(web, tmp_path, features=False, holodeck=False)
    dest = tmp_path / "dl"
    proc = run_cli("download", "assets", "--version", V, "--path", str(dest), "--base-url", base,
                   env={**QUIET, "OBJATHOR_FREE_SPACE": "64K"})
    assert proc.returncode == 2
    assert "not enough space" in proc.stderr and "64.0 KiB is free" in proc.stderr
    assert not (dest / V / "assets").exists()
    proc = run_cli("download", "annotations", "--version", V, "--path", str(dest), "--base-url", base,
                   env={**QUIET, "OBJATHOR_FREE_SPACE": "10"})
    assert proc.returncode == 2 and "not enough space" in proc.stderr
    assert list((dest / V).glob("annotations.json.gz*")) == []


def test_public_version_table() -> None:
    assert resolve_source("2025_06_10").url("assets.tar") == \
        "https://pub-ddc5ca49fcee4247b552f4217e910a0f.r2.dev/assets.tar"
    assert resolve_source("2024_08_16").url("annotations.json.gz") == \
        "https://pub-2619544d52bd4f35927b08d301d2aba0.r2.dev/annotations.json.gz"
    src = resolve_source("2023_09_23")
    assert src.url("features.tar") == "https://pub-daedd7738a984186a00f2ab264d06a07.r2.dev/2023_09_23/features.tar"
    assert src.holodeck_url == "https://pub-daedd7738a984186a00f2ab264d06a07.r2.dev/holodeck/2023_09_23.tar"
    custom = resolve_source("2024_02_01", "http://127.0.0.1:1234/bucket/")
    assert custom.url("manifest.json") == "http://127.0.0.1:1234/bucket/2024_02_01/manifest.json"
    assert custom.holodeck_url == "http://127.0.0.1:1234/bucket/holodeck/2024_02_01.tar"


def test_base_url_layouts() -> None:
    """Versioned (default), bucket root (--layout root) and a {version} placeholder anywhere."""
    versioned = resolve_source(V, "https://cdn.example/data")
    assert (versioned.url("assets.tar"), versioned.holodeck_url, versioned.fallback("features.tar")) == (
        f"https://cdn.example/data/{V}/assets.tar", f"https://cdn.example/data/holodeck/{V}.tar",
        "https://cdn.example/data/features.tar")
    root = resolve_source(V, "https://pub-x.r2.dev/", "root")
    assert (root.url("assets.tar"), root.holodeck_url, root.fallback("features.tar")) == (
        "https://pub-x.r2.dev/assets.tar", f"https://pub-x.r2.dev/holodeck/{V}.tar", None)
    placed = resolve_source(V, "https://cdn.example/mirror/{version}/files")
    assert (placed.url("manifest.json"), placed.holodeck_url) == (
        f"https://cdn.example/mirror/{V}/files/manifest.json", f"https://cdn.example/mirror/holodeck/{V}.tar")
    assert resolve_source("2024_08_16").fallback("features.tar") is None  # a bucket-root version
    assert resolve_source("2023_09_23").fallback("features.tar") == \
        "https://pub-daedd7738a984186a00f2ab264d06a07.r2.dev/features.tar"
    for bad, layout, why in [
        ("https://cdn.example/{ver}", "versioned", "only placeholder"),
        ("https://cdn.example/{version}", "root", "leave out --layout root"),
        ("https://{version}.example", "versioned", "after the host name"),
        ("https://cdn.example", "flat", "choose one of versioned, root"),
    ]:
        with pytest.raises(UsageError, match=why):
            resolve_source(V, bad, layout)


def test_a_bucket_root_release_downloads_with_layout_root(web: Nginx, tmp_path: Path) -> None:
    """2024_08_16 and 2025_06_10 sit at the root of their bucket: BASE/NAME, no VERSION/."""
    base, release, src = publish(web, tmp_path, holodeck=False)
    root = web.root / f"root-{uuid.uuid4().hex[:8]}"
    release.vdir.rename(root)
    url = f"{web.url}/{root.name}"
    dest = tmp_path / "dl"
    code = main(["download", "all", "--version", V, "--path", str(dest), "--base-url", url,
                 "--layout", "root", "-q"])
    assert code == 0
    assert tree(dest / V / "assets") == expected_tree(src)
    assert tree(dest / V / "features") == tree(tmp_path / "src" / "features")
    uris = {r["uri"] for r in web.access_log()}
    assert f"/{root.name}/assets.tar" in uris and f"/{root.name}/{V}/assets.tar" not in uris
    # The same release through a {version} placeholder: the folder name carries the version.
    placed = web.root / f"m-{uuid.uuid4().hex[:8]}" / V / "files"
    placed.parent.mkdir(parents=True)
    root.rename(placed)
    dest2 = tmp_path / "dl2"
    result = download_version("assets", V, path=dest2, base_url=f"{web.url}/{placed.parent.parent.name}"
                              "/{version}/files", show_progress=False, http_config=FAST)
    assert result.manifest and result.parts[0].verified
    assert tree(dest2 / V / "assets") == expected_tree(src)


def objathor_layout(release: Release, dest: Path) -> None:
    """What objathor 0.0.8 leaves: assets.tar extracted and its one top folder renamed ``assets``,
    features' *.pkl flattened into ``features``; no marker of ours."""
    vdir = dest / V
    vdir.mkdir(parents=True)
    with tarfile.open(release.vdir / "assets.tar") as tf:
        tf.extractall(vdir / "tmp", filter="data")
    (top,) = list((vdir / "tmp").iterdir())
    top.rename(vdir / "assets")
    (vdir / "tmp").rmdir()
    (vdir / "features").mkdir()
    with tarfile.open(release.vdir / "features.tar") as tf:
        for m in tf.getmembers():
            if m.isfile() and m.name.endswith(".pkl"):
                (vdir / "features" / Path(m.name).name).write_bytes(tf.extractfile(m).read())  # type: ignore[union-attr]


def test_a_folder_objathor_downloaded_is_checked_in_place_not_fetched_again(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path, holodeck=False)
    dest = tmp_path / "dl"
    objathor_layout(release, dest)
    before = len(web.access_log())
    result = download_version("all", V, path=dest, base_url=base, show_progress=False, http_config=FAST)
    got = {p.what: (p.status, p.verified) for p in result.parts}
    assert got["assets"] == ("already there", True) and got["features"] == ("already there", True)
    fetched = [r["uri"].rsplit("/", 1)[1] for r in web.access_log()[before:]]
    assert "assets.tar" not in fetched and "features.tar" not in fetched
    assert tree(dest / V / "assets") == expected_tree(src)
    assert "checked file by file" in result.summary()


@pytest.mark.parametrize("damage", ["changed byte", "extra file", "missing file", "link to a member",
                                    "hard link from outside", "FIFO", "linked parent folder", "deep tree"])
def test_a_folder_that_differs_from_the_release_is_downloaded_again(web: Nginx, tmp_path: Path,
                                                                    damage: str) -> None:
    base, release, src = publish(web, tmp_path, holodeck=False, features=False)
    dest = tmp_path / "dl"
    assets = dest / V / "assets"
    assets.parent.mkdir(parents=True)
    with tarfile.open(release.vdir / "assets.tar") as tf:
        tf.extractall(dest / V / "tmp", filter="data")
    next((dest / V / "tmp").iterdir()).rename(assets)
    victim = sorted(p for p in assets.rglob("*") if p.is_file())[0]
    original = victim.read_bytes()
    outside = tmp_path / "outside.bin"
    outside.write_bytes(original)
    if damage == "changed byte":
        flip_byte(victim, 0)
    elif damage == "extra file":
        (victim.parent / "extra.txt").write_text("not in the release")
    elif damage == "missing file":
        victim.unlink()
    elif damage == "link to a member":
        victim.unlink()
        victim.symlink_to(outside)
    elif damage == "hard link from outside":
        outside.unlink()
        os.link(victim, outside)
    elif damage == "FIFO":
        os.mkfifo(victim.parent / "extra.fifo")
    elif damage == "linked parent folder":
        moved = tmp_path / "moved"
        victim.parent.rename(moved)
        victim.parent.symlink_to(moved)
    else:
        _deep_folders(victim.parent, 200)
    before = len(web.access_log())
    result = download_version("assets", V, path=dest, base_url=base, show_progress=False, http_config=FAST)
    assert (result.parts[0].status, result.parts[0].verified) == ("downloaded", True)
    assert any(r["uri"].endswith("/assets.tar") for r in web.access_log()[before:])
    assert tree(dest / V / "assets") == expected_tree(src)
    placed = dest / V / "assets" / victim.relative_to(assets)
    assert not placed.is_symlink() and placed.read_bytes() == original
    assert outside.read_bytes() == original  # a link's target is never written through
    assert os.stat(placed).st_ino != os.stat(outside).st_ino


def _deep_folders(parent: Path, levels: int) -> None:
    """``parent/d/d/d/...``, ``levels`` deep (made by descriptor: the path is longer than PATH_MAX allows)."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
    finally:
        os.close(fd)


def test_a_folder_in_place_that_is_a_link_is_not_checked_through_it(web: Nginx, tmp_path: Path) -> None:
    """``V/assets`` as a link to a copy of the release elsewhere: never taken as the release, and the
    copy it points to is left alone."""
    base, release, src = publish(web, tmp_path, holodeck=False, features=False)
    dest = tmp_path / "dl"
    elsewhere = tmp_path / "elsewhere"
    with tarfile.open(release.vdir / "assets.tar") as tf:
        tf.extractall(elsewhere, filter="data")
    (top,) = list(elsewhere.iterdir())
    (dest / V).mkdir(parents=True)
    (dest / V / "assets").symlink_to(top)
    before = tree(top)
    result = download_version("assets", V, path=dest, base_url=base, show_progress=False, http_config=FAST)
    assert (result.parts[0].status, result.parts[0].verified) == ("downloaded", True)
    assert not (dest / V / "assets").is_symlink() and tree(dest / V / "assets") == expected_tree(src)
    assert tree(top) == before


def test_result_summary_mentions_every_part(web: Nginx, tmp_path: Path) -> None:
    base, _, _ = publish(web, tmp_path, features=False, holodeck=False)
    result: DownloadResult = download_version("annotations", V, path=tmp_path / "dl", base_url=base,
                                              show_progress=False, http_config=FAST)
    text = result.summary()
    assert "annotations: downloaded at" in text and "verified" in text and f"version {V}" in text


# ---------------------------------------------------------------------- an S3 server (what `make demo` uses)


def test_download_from_a_moto_bucket_by_path_style_get(tmp_path: Path, s3_client: Any, bucket: str,
                                                        s3_server: Any) -> None:
    """The demo serves a release straight from moto: plain GETs on http://HOST:PORT/BUCKET/VERSION/..."""
    src = tmp_path / "src" / "assets"
    make_sample_dataset(src, 8, seed=5, asset_bytes=16 * 1024, features_dir=tmp_path / "src" / "features")
    release = build_release(src, tmp_path / "served", V, features_dir=tmp_path / "src" / "features")
    for path in sorted(release.vdir.iterdir()):
        s3_client.upload_file(str(path), bucket, f"{V}/{path.name}")
    s3_client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({  # public reads, as on r2.dev
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    base = f"{s3_server.endpoint_url}/{bucket}"
    one_piece = HttpConfig(attempts=2, backoff=0.01, part_size=1024 * 1024, connections=2)
    result = download_version("all", V, path=tmp_path / "dl", base_url=base, show_progress=False,
                              http_config=one_piece)
    assert result.verified
    assert [(p.what, p.status) for p in result.parts] == [
        ("annotations", "downloaded"), ("assets", "downloaded"), ("features", "downloaded"),
        ("holodeck-base", "not in this version")]
    assert tree(tmp_path / "dl" / V / "assets") == expected_tree(src)
    assert tree(tmp_path / "dl" / V / "features") == tree(tmp_path / "src" / "features")
    uid = release.uids[4]
    part = download_version("assets", V, path=tmp_path / "dl2", base_url=base, uids=[uid],
                            show_progress=False, http_config=one_piece)
    assert part.verified and [p.name for p in (tmp_path / "dl2" / V / "assets").iterdir()] == [uid]


def test_a_part_the_version_lacks_is_named(web: Nginx, tmp_path: Path) -> None:
    base, _, _ = publish(web, tmp_path, features=False, holodeck=False, manifest=False)
    proc = run_cli("download", "features", "--version", V, "--path", str(tmp_path / "dl"), "--base-url", base,
                   env=QUIET)
    assert proc.returncode == 2
    assert f"version {V} has no features" in proc.stderr and "features.tar answered HTTP 404" in proc.stderr


def test_uids_only_select_assets(tmp_path: Path) -> None:
    proc = run_cli("download", "annotations", "--version", V, "--uids", "abc", "--path", str(tmp_path),
                   "--base-url", "http://127.0.0.1:9", env=QUIET)
    assert proc.returncode == 2 and "--uids/--uids-file select assets" in proc.stderr
    proc = run_cli("download", "assets", "--version", V, "--uids-file", str(tmp_path / "missing.txt"),
                   "--path", str(tmp_path), "--base-url", "http://127.0.0.1:9", env=QUIET)
    assert proc.returncode == 2 and "missing.txt" in proc.stderr


def test_redirects_are_followed(web: Nginx, tmp_path: Path) -> None:
    base, _, src = publish(web, tmp_path, features=False, holodeck=False)
    moved = base.replace(web.url, web.url + "/moved")  # 301 then 302 to the real files
    result = download_version("assets", V, path=tmp_path / "dl", base_url=moved, show_progress=False,
                              http_config=FAST)
    assert result.verified and tree(tmp_path / "dl" / V / "assets") == expected_tree(src)


def test_a_file_left_by_another_tool_is_checked_not_trusted(web: Nginx, tmp_path: Path) -> None:
    base, release, _ = publish(web, tmp_path, features=False, holodeck=False)
    target = tmp_path / "dl" / V / "annotations.json.gz"
    target.parent.mkdir(parents=True)
    good = (release.vdir / "annotations.json.gz").read_bytes()
    target.write_bytes(good[: len(good) // 2])  # objathor's downloader cut short: the final name, half the bytes
    result = download_version("annotations", V, path=tmp_path / "dl", base_url=base, show_progress=False,
                              http_config=FAST)
    assert result.parts[0].status == "downloaded" and target.read_bytes() == good
    (result.parts[0].path.parent / ".objathor-release" / "annotations.done").unlink()  # a complete one
    before = len(requests_for(web, "annotations.json.gz"))
    again = download_version("annotations", V, path=tmp_path / "dl", base_url=base, show_progress=False,
                             http_config=FAST)
    assert again.parts[0].status == "already there" and again.verified
    assert len(requests_for(web, "annotations.json.gz")) == before


def test_extractor_checks_the_manifest_and_the_headers(tmp_path: Path) -> None:
    from objathor_release.errors import InputError
    from objathor_release.fetch.extract import ExpectedMember

    data = _tar(GOOD)
    offset = 3 * 512  # two directory headers, then a.jpg's header: its data starts here
    good = {"assets/u1/a.jpg": ExpectedMember(1, hashlib.sha256(b"x").hexdigest(), offset)}
    ex = TarStreamExtractor(tmp_path / "ok", expect=good, source="t.tar")
    (tmp_path / "ok").mkdir()
    ex.feed(data)
    ex.finish()
    for expect, match in [
        ({"assets/u1/a.jpg": ExpectedMember(1, "0" * 64, offset)}, "has sha256:"),
        ({"assets/u1/a.jpg": ExpectedMember(2, good["assets/u1/a.jpg"].sha256, offset)}, "manifest.json says 2"),
        ({"assets/u1/a.jpg": ExpectedMember(1, good["assets/u1/a.jpg"].sha256, 0)}, "starts at byte 1536"),
        ({}, "is not listed in manifest.json"),
        ({**good, "assets/u1/b.jpg": good["assets/u1/a.jpg"]}, "lacks 1 member"),
    ]:
        out = tmp_path / uuid.uuid4().hex
        out.mkdir()
        with pytest.raises(ChecksumError, match=match):
            ex = TarStreamExtractor(out, expect=expect, source="t.tar")
            ex.feed(data)
            ex.finish()
    broken = bytearray(data)
    broken[512 + 10] ^= 1  # a name byte of the second header
    out = tmp_path / "broken"
    out.mkdir()
    with pytest.raises(InputError, match="bad tar header checksum at byte 512"):
        TarStreamExtractor(out, source="t.tar").feed(bytes(broken))


def test_invoke_download_fetches_every_part_the_version_has(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path, holodeck=False)
    invoke = Path(sys.executable).parent / "invoke"
    proc = subprocess.run([str(invoke), "download", "--version", V, "--path", str(tmp_path / "dl"),
                           "--base-url", base], cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                          text=True, env={**os.environ, **QUIET}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "features: downloaded" in proc.stdout and "holodeck-base: not in version" in proc.stdout
    assert tree(tmp_path / "dl" / V / "assets") == expected_tree(src)
