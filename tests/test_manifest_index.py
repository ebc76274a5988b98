"""`download assets --uids` reads only the wanted assets' members out of manifest.json.

The slim reading (fetch.origin.check_manifest_for_uids over fetch.manifest_index) must give what
the full parse gives for those assets, fall back to the full parse for any other layout, and refuse
what the full parse refuses among the members it keeps.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from objathor_release.build.manifest import MANIFEST_FORMAT, render_manifest
from objathor_release.errors import InputError
from objathor_release.fetch.origin import check_manifest, check_manifest_for_uids

V = "2024_02_01"
URL = "http://example.invalid/2024_02_01/manifest.json"


def manifest(n_assets: int = 50, per_asset: int = 3) -> dict[str, Any]:
    members, offset = [], 512
    for a in range(n_assets):
        for f in range(per_asset):
            members.append({"path": f"assets/{a:032x}/file{f}.bin", "offset": offset, "size": 100,
                            "sha256": f"{a * 10 + f:064x}"})
            offset += 1024
    return {"manifest_format": MANIFEST_FORMAT, "version": V, "tool_version": "0.1.0", "excludes": [],
            "artifacts": [
                {"name": "annotations.json.gz", "size": 10, "sha256": "a" * 64, "members": []},
                {"name": "assets.tar", "size": offset + 1024, "sha256": "b" * 64, "members": members}]}


def uid(a: int) -> str:
    return f"{a:032x}"


def assets_members(m: dict[str, Any]) -> list[dict[str, Any]]:
    return next(a for a in m["artifacts"] if a["name"] == "assets.tar")["members"]


def test_the_slim_reading_keeps_exactly_the_wanted_assets_members() -> None:
    full = manifest()
    data = render_manifest(full).encode()
    wanted = {uid(3), uid(41)}
    slim = check_manifest_for_uids(data, URL, V, wanted)
    kept = assets_members(slim)
    assert kept == [m for m in assets_members(full) if m["path"].split("/")[1] in wanted]
    assert len(kept) == 6
    assert {k: v for k, v in slim.items() if k != "artifacts"} == {
        k: v for k, v in check_manifest(data, URL, V).items() if k != "artifacts"}
    assert [(a["name"], a["size"], a["sha256"]) for a in slim["artifacts"]] == [
        (a["name"], a["size"], a["sha256"]) for a in full["artifacts"]]
    assert assets_members(check_manifest_for_uids(data, URL, V, {"f" * 32})) == []


def test_another_layout_is_parsed_whole_with_the_same_answer() -> None:
    full = manifest(10)
    compact = json.dumps(full).encode()  # valid JSON, not the layout the project writes
    slim = check_manifest_for_uids(compact, URL, V, {uid(2)})
    assert assets_members(slim) == assets_members(full), "the full parse: every member"


@pytest.mark.parametrize("path", ["assets/{u}/../../../etc/passwd", "/assets/{u}/x", "assets/{u}/a\x00b",
                                  "assets/./{u}/../{u}/x"])
def test_a_hostile_member_of_a_wanted_asset_is_refused_in_one_line(path: str) -> None:
    full = manifest(5)
    assets_members(full)[4]["path"] = path.format(u=uid(1))
    data = render_manifest(full).encode()
    with pytest.raises(InputError, match="manifest is malformed") as exc:
        check_manifest_for_uids(data, URL, V, {uid(1)})
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.99])
def test_a_truncated_manifest_is_refused(cut: float) -> None:
    data = render_manifest(manifest(20)).encode()
    with pytest.raises(InputError, match="manifest is malformed"):
        check_manifest_for_uids(data[: int(len(data) * cut)], URL, V, {uid(1)})


def test_another_version_is_refused() -> None:
    data = render_manifest(manifest(3)).encode()
    with pytest.raises(InputError, match="not 2023_09_23"):
        check_manifest_for_uids(data, URL, "2023_09_23", {uid(1)})
