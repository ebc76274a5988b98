"""Member-granular resume of a streamed extraction: what an earlier run left in staging is checked, never trusted.

A first run is stopped by the network (the fault proxy cuts the tar, then refuses every
request), which keeps the staging folder; the second run, straight to nginx, must continue
after the last member still good, with every byte of the result checked.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.nginx import Nginx
from devtools.sample import make_sample_dataset
from devtools.served_release import Release, build_release, expected_tree, flip_byte, tree
from objathor_release.errors import TransferError
from objathor_release.fetch.download import download_version
from objathor_release.fetch.http import HttpConfig
from objathor_release.fetch.resume import resume_point
from tests.support.faultproxy import PASS, FaultProxy, Request, cut, status

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
    fetched again, and nothing is read or written through a link."""
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
    if damage == "replaced by a folder":
        with pytest.raises(Exception, match="would replace a folder"):
            second_run(web, base, dest)
        return
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
