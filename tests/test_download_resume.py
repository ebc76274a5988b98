"""Member-granular resume of a streamed extraction: what an earlier run left in staging is checked, never trusted.

A first run is stopped by the network (the fault proxy cuts the tar, then refuses every
request), which keeps the staging folder; the second run, straight to nginx, must continue
after the last member still good, with every byte of the result checked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.nginx import Nginx
from devtools.sample import make_sample_dataset
from devtools.served_release import Release, build_release, expected_tree, flip_byte, tree
from objathor_release.errors import ChecksumError, TransferError, UsageError
from objathor_release.fetch.download import download_version
from objathor_release.fetch.extract import ExpectedMember, TarStreamExtractor, UnsafeMemberError
from objathor_release.fetch.http import HttpConfig
from objathor_release.fetch.resume import resume_point
from tests.support import hostile_tars
from tests.support.faultproxy import PASS, FaultProxy, Request, cut, status
from tests.support.tmpfs import mounted_tmpfs

V = "2024_02_01"
CONFIG = HttpConfig(attempts=2, backoff=0.01, connections=1, adaptive=False)


def publish(web: Nginx, tmp_path: Path) -> tuple[str, Release, Path]:
    folder = uuid.uuid4().hex[:10]
    src = tmp_path / "src" / "assets"
    make_sample_dataset(src, 30, seed=4, asset_bytes=32 * 1024)
    return f"{web.url}/{folder}", build_release(src, web.root / folder, V), src


def interrupted(web: Nginx, base: str, release: Release, dest: Path) -> Path:
    """Run once through a proxy that cuts assets.tar at its middle and then refuses everything."""
    size = release.artifact("assets.tar")["size"]
    seen: list[str] = []

    def rule(req: Request) -> Any:
        if not req.path.endswith("assets.tar"):
            return PASS
        seen.append(req.path)
        return cut(size // 2) if len(seen) == 1 else status(503)

    with FaultProxy(web.url, rule) as proxy:
        url = proxy.url + "/" + base.rsplit("/", 1)[1]
        with pytest.raises(TransferError):
            download_version("assets", V, path=dest, base_url=url, show_progress=False, http_config=CONFIG)
    staging = dest / V / ".objathor-release" / "assets.staging"
    assert staging.is_dir(), "a network failure keeps what was extracted, for the next run"
    assert not (dest / V / "assets").exists()
    return staging


def second_run(web: Nginx, base: str, dest: Path) -> tuple[list[str], Any]:
    before = len(web.access_log())
    result = download_version("assets", V, path=dest, base_url=base, show_progress=False, http_config=CONFIG)
    ranges = [r["range"] for r in web.access_log()[before:] if r["uri"].endswith("assets.tar")]
    return ranges, result


def test_a_network_failure_resumes_after_the_last_good_member(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path)
    dest = tmp_path / "dl"
    staging = interrupted(web, base, release, dest)
    point = resume_point(staging, release.artifact("assets.tar"))
    assert point is not None and 0 < point.offset < release.artifact("assets.tar")["size"]
    ranges, result = second_run(web, base, dest)
    assert ranges == [f"bytes={point.offset}-"]
    assert result.verified and tree(dest / V / "assets") == expected_tree(src)
    assert result.parts[0].bytes == release.artifact("assets.tar")["size"] - point.offset


def _members_in_staging(staging: Path, release: Release) -> list[Path]:
    members = sorted(release.artifact("assets.tar")["members"], key=lambda m: m["offset"])
    return [staging / m["path"] for m in members if (staging / m["path"]).is_file()]


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "replaced by a link", "replaced by a folder"])
def test_a_damaged_member_in_staging_is_fetched_again(web: Nginx, tmp_path: Path, damage: str) -> None:
    """The check stops at the first member that is not exactly the manifest's: it and all after it are
    fetched again (a folder where the member's file belongs is removed first), and nothing is read or
    written through a link."""
    base, release, src = publish(web, tmp_path)
    dest = tmp_path / "dl"
    staging = interrupted(web, base, release, dest)
    present = _members_in_staging(staging, release)
    assert len(present) >= 4
    victim = present[1]
    outside = tmp_path / "outside.bin"
    outside.write_bytes(victim.read_bytes())
    if damage == "flipped byte":
        flip_byte(victim, 0)
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:-1])
    elif damage == "replaced by a link":
        victim.unlink()
        victim.symlink_to(outside)
    else:
        victim.unlink()
        victim.mkdir()
    point = resume_point(staging, release.artifact("assets.tar"))
    members = sorted(release.artifact("assets.tar")["members"], key=lambda m: m["offset"])
    first = members[0]
    assert point is not None and point.done == {first["path"]}, "only the member before the damage is kept"
    ranges, result = second_run(web, base, dest)
    assert ranges == [f"bytes={point.offset}-"]
    assert result.verified and tree(dest / V / "assets") == expected_tree(src)
    assert outside.read_bytes() == (src / victim.relative_to(staging / "assets")).read_bytes()


def test_nothing_good_in_staging_starts_over(web: Nginx, tmp_path: Path) -> None:
    base, release, src = publish(web, tmp_path)
    dest = tmp_path / "dl"
    staging = interrupted(web, base, release, dest)
    first = _members_in_staging(staging, release)[0]
    flip_byte(first, 0)
    assert resume_point(staging, release.artifact("assets.tar")) is None
    ranges, result = second_run(web, base, dest)
    assert ranges in ([""], ["bytes=0-"]) and result.verified
    assert tree(dest / V / "assets") == expected_tree(src)


def test_a_release_without_a_manifest_starts_over(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    (staging / "assets" / "u").mkdir(parents=True)
    (staging / "assets" / "u" / "a.jpg").write_bytes(b"x")
    assert resume_point(staging, None) is None
    assert resume_point(staging, {"name": "assets.tar", "members": []}) is None
    no_offsets = {"name": "assets.tar", "members": [{"path": "assets/u/a.jpg", "size": 1,
                                                     "sha256": "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"}]}
    assert resume_point(staging, no_offsets) is None


# ---------------------------------------------------------------------- hostile staging folders and manifests


def _on_disk(root: Path) -> dict[str, str]:
    """relative path -> "file", "dir", "link" or "other" of everything under ``root``, links not followed."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = path.lstat()
            kind = ("link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode)
                    else "file" if stat.S_ISREG(st.st_mode) else "other")
            out[str(path.relative_to(root))] = kind
    return out


def _only_the_release(folder: Path, src: Path) -> None:
    """``folder`` holds exactly the release's files, real ones, and folders: nothing planted survived."""
    assert tree(folder) == expected_tree(src)
    kinds = _on_disk(folder)
    assert {p for p, k in kinds.items() if k != "dir"} == set(expected_tree(src))
    assert set(kinds.values()) <= {"file", "dir"}, kinds
    for path in expected_tree(src):
        assert (folder / path).stat().st_nlink == 1, f"{path} has another name somewhere"


@pytest.mark.parametrize("plant", ["extra file", "link to a file outside", "link to a folder outside",
                                   "FIFO", "extra folder holding a file"])
def test_entries_planted_in_staging_never_reach_the_folder(web: Nginx, tmp_path: Path, plant: str) -> None:
    """Only checked members survive a resume: whatever else is in staging is removed before the stream
    continues, without following a link out of it."""
    base, release, src = publish(web, tmp_path)
    dest = tmp_path / "dl"
    staging = interrupted(web, base, release, dest)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"keep me")
    top = staging / "assets"
    if plant == "extra file":
        (top / "planted.txt").write_bytes(b"not in the release")
    elif plant == "link to a file outside":
        (top / "planted.txt").symlink_to(outside / "secret.txt")
    elif plant == "link to a folder outside":
        (top / "planted").symlink_to(outside)
    elif plant == "FIFO":
        os.mkfifo(top / "planted.fifo")
    else:
        (top / "planted" / "deeper").mkdir(parents=True)
        (top / "planted" / "deeper" / "x.bin").write_bytes(b"x")
    point = resume_point(staging, release.artifact("assets.tar"))
    assert point is not None, "a planted entry beside the members does not spoil the members"
    ranges, result = second_run(web, base, dest)
    assert ranges == [f"bytes={point.offset}-"]
    assert result.verified
    _only_the_release(dest / V / "assets", src)
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"keep me"


def test_a_linked_parent_folder_in_staging_is_not_read_through(web: Nginx, tmp_path: Path) -> None:
    """A member whose folder in staging is a link (to a copy with the right bytes) is missing: it is
    neither hashed through the link nor kept, and the link is not in the result."""
    base, release, src = publish(web, tmp_path)
    dest = tmp_path / "dl"
    staging = interrupted(web, base, release, dest)
    present = _members_in_staging(staging, release)
    folder = present[-1].parent
    moved = tmp_path / "moved"
    folder.rename(moved)
    folder.symlink_to(moved)
    point = resume_point(staging, release.artifact("assets.tar"))
    linked = {str(p.relative_to(staging)) for p in present if p.parent == folder}
    assert point is None or not (point.done & linked)
    before = {p.name: p.read_bytes() for p in moved.iterdir()}
    _, result = second_run(web, base, dest)
    assert result.verified
    _only_the_release(dest / V / "assets", src)
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == before, "nothing written through the link"


def test_a_member_with_another_name_outside_staging_is_fetched_again(web: Nginx, tmp_path: Path) -> None:
    """A file in staging hard-linked from elsewhere has the right bytes today, but whoever holds the
    other name can change them later: it is not kept, and the result shares no file with the outside."""
    base, release, src = publish(web, tmp_path)
    dest = tmp_path / "dl"
    staging = interrupted(web, base, release, dest)
    present = _members_in_staging(staging, release)
    outside = tmp_path / "other-name.bin"
    os.link(present[1], outside)
    point = resume_point(staging, release.artifact("assets.tar"))
    first = min(release.artifact("assets.tar")["members"], key=lambda m: m["offset"])
    assert point is not None and point.done == {first["path"]}
    _, result = second_run(web, base, dest)
    assert result.verified
    _only_the_release(dest / V / "assets", src)
    assert outside.stat().st_nlink == 1


def _staging_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    staging = tmp_path / "staging"
    for path, data in files.items():
        (staging / path).parent.mkdir(parents=True, exist_ok=True)
        (staging / path).write_bytes(data)
    return staging


def _member(path: str, data: bytes, offset: int) -> dict[str, Any]:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "offset": offset}


@pytest.mark.parametrize("offsets, why", [
    ((1536, 1536), "two members at one offset"),
    ((2560, 1536), None),  # listed out of order, but a valid tar order: fine
    ((1536, 2000), "an offset off the 512-byte blocks"),
    ((0, 1536), "a member's data where its header must be"),
    ((1536, 2048), "the second member's header inside the first one's data"),
])
def test_manifest_offsets_that_cannot_be_one_tar_start_over(tmp_path: Path, offsets: tuple[int, int],
                                                            why: str | None) -> None:
    a, b = b"a" * 600, b"b" * 10  # a takes two blocks: the next header is 1024 bytes after its data
    staging = _staging_with(tmp_path, {"top/a.bin": a, "top/b.bin": b})
    art = {"name": "x.tar",
           "members": [_member("top/a.bin", a, offsets[0]), _member("top/b.bin", b, offsets[1])]}
    point = resume_point(staging, art)
    if why is None:
        assert point is not None and point.done == {"top/a.bin", "top/b.bin"} and point.offset == 2560 + 1024
    else:
        assert point is None, why


def test_a_member_listed_twice_starts_over(tmp_path: Path) -> None:
    a = b"a" * 10
    staging = _staging_with(tmp_path, {"top/a.bin": a})
    art = {"name": "x.tar", "members": [_member("top/a.bin", a, 1536), _member("top/a.bin", a, 2560)]}
    assert resume_point(staging, art) is None
    assert resume_point(staging, {"name": "x.tar", "members": [_member("top/a.bin", a, 1536)]}) is not None


@pytest.mark.parametrize("change", ["one late file", "every file"])
def test_a_release_republished_between_runs(web: Nginx, tmp_path: Path, change: str) -> None:
    """The second run checks staging against the manifest it reads now: what still matches is kept,
    the rest is fetched from the new tar, and the result is the new release exactly."""
    base, release, src = publish(web, tmp_path)
    dest = tmp_path / "dl"
    interrupted(web, base, release, dest)
    if change == "every file":
        shutil.rmtree(src)
        make_sample_dataset(src, 30, seed=5, asset_bytes=32 * 1024)
    else:
        last = max(release.artifact("assets.tar")["members"], key=lambda m: m["offset"])["path"]
        flip_byte(src.parent / last, 0)
    shutil.rmtree(release.vdir)
    build_release(src, release.root, V)
    _, result = second_run(web, base, dest)
    assert result.verified
    _only_the_release(dest / V / "assets", src)


def test_server_bytes_after_the_resume_point_unlike_the_manifest_leave_nothing(web: Nginx,
                                                                                tmp_path: Path) -> None:
    """The tar on the server is changed after the resume point (the manifest is not): the changed member
    fails its sha256, and nothing of the extraction is kept or placed."""
    base, release, src = publish(web, tmp_path)
    dest = tmp_path / "dl"
    staging = interrupted(web, base, release, dest)
    point = resume_point(staging, release.artifact("assets.tar"))
    assert point is not None
    later = min((m for m in release.artifact("assets.tar")["members"] if m["offset"] > point.offset
                 and m["size"]), key=lambda m: m["offset"])
    flip_byte(release.vdir / "assets.tar", later["offset"])
    with pytest.raises(ChecksumError, match="sha256"):
        second_run(web, base, dest)
    assert not staging.exists() and not (dest / V / "assets").exists()


def test_a_hard_link_after_the_resume_point_is_refused(tmp_path: Path) -> None:
    """The manifest lists no hard links and a resumed stream has no whole-tar sha256: a hard link in the
    rest of the stream (even to a member checked in staging) would add a name nothing checked."""
    dest = tmp_path / "staging"
    (dest / "assets" / "u1").mkdir(parents=True)
    (dest / "assets" / "u1" / "a.jpg").write_bytes(b"jpeg")
    expect = {"assets/u1/a.jpg": ExpectedMember(4, hashlib.sha256(b"jpeg").hexdigest(), 1536)}
    extractor = TarStreamExtractor(dest, top="assets", expect=expect, start=2048, done={"assets/u1/a.jpg"})
    with pytest.raises(UnsafeMemberError, match="hard link .* after the point"):
        extractor.feed(hostile_tars.hardlink("assets/u1/b.jpg", "assets/u1/a.jpg") + hostile_tars.end())
    assert not (dest / "assets" / "u1" / "b.jpg").exists()


def _fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler.bin"
    with open(filler, "wb") as fh:
        fh.write(bytes(max(0, shutil.disk_usage(disk).free - leave)))
    return filler


def test_a_resume_needs_space_for_the_rest_only(web: Nginx, tmp_path: Path) -> None:
    """Free space for what is still to come, not for the whole tar again: the resume goes ahead."""
    base, release, src = publish(web, tmp_path)
    size = release.artifact("assets.tar")["size"]
    with mounted_tmpfs(tmp_path / "disk", "size=4m") as disk:
        dest = disk / "dl"
        staging = interrupted(web, base, release, dest)
        point = resume_point(staging, release.artifact("assets.tar"))
        assert point is not None
        rest = size - point.offset
        _fill(disk, rest + 400 * 1024)
        assert shutil.disk_usage(disk).free < size, "the test needs less free space than the whole tar"
        ranges, result = second_run(web, base, dest)
        assert ranges == [f"bytes={point.offset}-"] and result.verified
        _only_the_release(dest / V / "assets", src)


def test_a_resume_on_a_full_disk_gives_the_space_back(web: Nginx, tmp_path: Path) -> None:
    """The disk fills between the runs: the resumed run stops with one line before writing, removes
    staging (a full disk is no place to keep it), and the run after space is freed starts over, exact."""
    base, release, src = publish(web, tmp_path)
    with mounted_tmpfs(tmp_path / "disk", "size=4m") as disk:
        dest = disk / "dl"
        staging = interrupted(web, base, release, dest)
        filler = _fill(disk, 64 * 1024)
        with pytest.raises(UsageError, match="not enough space in .* free some space"):
            second_run(web, base, dest)
        assert not staging.exists() and not (dest / V / "assets").exists()
        filler.unlink()
        ranges, result = second_run(web, base, dest)
        assert ranges in ([""], ["bytes=0-"]) and result.verified
        _only_the_release(dest / V / "assets", src)


@pytest.mark.parametrize("plant", ["dangling link", "link to a folder outside", "file"])
def test_something_else_at_the_staging_path_is_removed_not_followed(web: Nginx, tmp_path: Path,
                                                                     plant: str) -> None:
    """The staging path itself is a link (dangling, or to a folder elsewhere) or a file: it is removed
    and the extraction starts over in a real folder; nothing is written where a link points."""
    base, release, src = publish(web, tmp_path)
    dest = tmp_path / "dl"
    staging = dest / V / ".objathor-release" / "assets.staging"
    staging.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    if plant == "dangling link":
        staging.symlink_to(elsewhere)
    elif plant == "link to a folder outside":
        elsewhere.mkdir()
        staging.symlink_to(elsewhere)
    else:
        staging.write_bytes(b"not a folder")
    _, result = second_run(web, base, dest)
    assert result.verified
    _only_the_release(dest / V / "assets", src)
    assert not staging.exists() and not staging.is_symlink()
    assert not elsewhere.exists() or list(elsewhere.iterdir()) == []
