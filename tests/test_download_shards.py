"""Sharded releases downloaded: every shard (or a slice) into one assets folder, verified, resumable.

The served releases are built as a sharded release is: each shard by GNU tar with the reproducible
flags over exactly its run of asset folders (so no ``assets/`` entry of its own), the manifest by
the project's write_manifest with the shard order under ``"shards"``. Requests are counted in
nginx's access log; the interruption comes from the fault proxy.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.nginx import Nginx
from devtools.sample import make_sample_dataset
from devtools.served_release import annotations_of, build_release, expected_tree, tree
from objathor_release.build.excludes import DEFAULT_EXCLUDES
from objathor_release.build.manifest import render_manifest, render_sums, write_manifest
from objathor_release.errors import InputError, TransferError
from objathor_release.fetch.download import download_version
from objathor_release.fetch.http import HttpConfig
from tests.conftest import run_cli
from tests.support.faultproxy import PASS, FaultProxy, Request, cut, status
from tests.support.tarball_helpers import gnu_tar_available

V = "2024_03_01"
ONE = HttpConfig(attempts=2, backoff=0.01, connections=1, adaptive=False)  # one shard at a time, in order
POOLED = HttpConfig(attempts=2, backoff=0.01, connections=6, adaptive=False)  # three shards at once
QUIET = {"OBJATHOR_PROGRESS": "0", "OBJATHOR_DOWNLOAD_BACKOFF": "0.01"}

pytestmark = pytest.mark.skipif(not gnu_tar_available(), reason="GNU tar builds the shards")


def shard_tar(src: Path, uids: list[str], out: Path) -> None:
    """A shard as GNU tar writes it over exactly these asset folders (the release's excludes applied)."""
    cmd = ["tar", "--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner",
           "--mode=go=rX,u+rw,a-s", "--format=gnu", "--hard-dereference",
           *(f"--exclude={p}" for p in DEFAULT_EXCLUDES),
           "-C", str(src.parent), "-cf", str(out), *(f"{src.name}/{u}" for u in uids)]
    subprocess.run(cmd, check=True, capture_output=True)


def publish_manifest(vdir: Path, manifest: dict[str, Any]) -> None:
    (vdir / "manifest.json").write_text(render_manifest(manifest))
    (vdir / "SHA256SUMS").write_text(render_sums(manifest))


class Sharded:
    """A sharded release served by nginx: its base URL, folders, shard names and which uids each holds."""

    def __init__(self, web: Nginx, tmp_path: Path, *, assets: int = 14, per_shard: int = 2) -> None:
        self.folder = uuid.uuid4().hex[:10]
        self.base = f"{web.url}/{self.folder}"
        self.src = tmp_path / "src" / "assets"
        make_sample_dataset(self.src, assets, seed=7, asset_bytes=24 * 1024)
        self.vdir = web.root / self.folder / V
        self.vdir.mkdir(parents=True)
        (self.vdir / "annotations.json.gz").write_bytes(annotations_of(self.src))
        uids = sorted(p.name for p in self.src.iterdir() if p.is_dir())
        self.shard_uids = [uids[i:i + per_shard] for i in range(0, len(uids), per_shard)]
        self.names = [f"assets-{i:05d}.tar" for i in range(len(self.shard_uids))]
        for name, run in zip(self.names, self.shard_uids, strict=True):
            shard_tar(self.src, run, self.vdir / name)
        self.manifest = dict(write_manifest(self.vdir, V, show_progress=False))
        assert self.manifest["shards"] == {"assets.tar": self.names}

    def artifact(self, name: str) -> dict[str, Any]:
        return next(a for a in self.manifest["artifacts"] if a["name"] == name)

    def uri(self, name: str) -> str:
        return f"/{self.folder}/{V}/{name}"

    def requests(self, web: Nginx, since: int) -> dict[str, list[str]]:
        """Shard name -> the Range of each GET of it since access-log row ``since``."""
        out: dict[str, list[str]] = {}
        for row in web.access_log()[since:]:
            name = row["uri"].rsplit("/", 1)[1]
            if name in self.names and row["method"] == "GET":
                out.setdefault(name, []).append(row["range"])
        return out

    def expected(self, uids: list[str]) -> dict[str, bytes]:
        return {k: v for k, v in expected_tree(self.src).items() if k.split("/", 1)[0] in uids}


def test_every_shard_lands_in_one_assets_folder_equal_to_the_source(web: Nginx, tmp_path: Path) -> None:
    rel = Sharded(web, tmp_path)
    first = rel.artifact(rel.names[0])["members"][0]["path"]
    assert first.count("/") >= 2, "a shard's first member is inside assets/<uid>/: it has no assets/ entry"
    dest = tmp_path / "dl"
    result = download_version("assets", V, path=dest, base_url=rel.base, show_progress=False,
                              http_config=POOLED)
    assert result.verified and result.parts[0].status == "downloaded"
    assert tree(dest / V / "assets") == expected_tree(rel.src)
    assert f"{len(rel.names)} shards: {len(rel.names)} fetched" in result.parts[0].note
    state = dest / V / ".objathor-release"
    for name in rel.names:
        mark = json.loads((state / f"shard-{name[:-4]}.done").read_text())
        assert mark["sha256"] == rel.artifact(name)["sha256"] and mark["verified"]
    assert not list(state.glob("*.staging")) and not list(state.glob("*.old"))
    assert not list((dest / V).glob("*.tar")), "no tar on disk without --keep-tar"

    before = len(web.access_log())
    again = download_version("assets", V, path=dest, base_url=rel.base, show_progress=False,
                             http_config=POOLED)
    assert again.parts[0].status == "already there" and rel.requests(web, before) == {}


def test_keep_tar_keeps_every_shard_beside_the_folder(web: Nginx, tmp_path: Path) -> None:
    rel = Sharded(web, tmp_path, assets=6, per_shard=3)
    dest = tmp_path / "dl"
    download_version("assets", V, path=dest, base_url=rel.base, show_progress=False, http_config=ONE,
                     keep_tar=True)
    assert tree(dest / V / "assets") == expected_tree(rel.src)
    for name in rel.names:
        assert (dest / V / name).read_bytes() == (rel.vdir / name).read_bytes()


def _hostile(rel: Sharded, case: str) -> None:
    m = json.loads((rel.vdir / "manifest.json").read_text())
    names = m["shards"]["assets.tar"]
    if case == "shard not among the artifacts":
        m["artifacts"] = [a for a in m["artifacts"] if a["name"] != names[1]]
    elif case == "shard listed twice":
        names.append(names[0])
    elif case == "an asset in two shards":
        one = next(a for a in m["artifacts"] if a["name"] == names[0])
        two = next(a for a in m["artifacts"] if a["name"] == names[1])
        stolen = dict(one["members"][0])
        stolen["offset"] = two["members"][-1]["offset"] + 512 * 1024
        two["members"].append(stolen)
    elif case == "a member outside assets/":
        m["artifacts"][1]["members"][0]["path"] = "features/x.pkl"
    else:
        m["artifacts"][1]["members"][0]["path"] = "assets/loose-file.jpg"
    publish_manifest(rel.vdir, m)


HOSTILE = {
    "shard not among the artifacts": "is listed in field shards.assets.tar but not among its artifacts",
    "shard listed twice": "is listed twice in field shards.assets.tar",
    "an asset in two shards": "is in two shards, assets-00000.tar and assets-00001.tar",
    "a member outside assets/": "is not inside assets/<uid>/",
    "a file loose in assets/": "is not inside assets/<uid>/",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_shard_list_is_one_line_and_nothing_is_written(web: Nginx, tmp_path: Path,
                                                                  case: str) -> None:
    rel = Sharded(web, tmp_path, assets=6, per_shard=2)
    _hostile(rel, case)
    dest = tmp_path / "dl"
    before = len(web.access_log())
    with pytest.raises(InputError) as err:
        download_version("all", V, path=dest, base_url=rel.base, show_progress=False, http_config=ONE)
    assert HOSTILE[case] in str(err.value) and "\n" not in str(err.value)
    assert rel.requests(web, before) == {}, "refused before any shard is fetched"
    assert not (dest / V / "assets").exists() and not (dest / V / "annotations.json.gz").exists()
    proc = run_cli("download", "assets", "--version", V, "--path", str(dest), "--base-url", rel.base,
                   env=QUIET)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and HOSTILE[case] in proc.stderr


def test_an_interrupted_download_fetches_only_the_shards_not_done(web: Nginx, tmp_path: Path) -> None:
    """Shards 0 and 1 finish, shard 2 is cut half-way (then refused): the next run asks nothing of 0 and
    1, continues shard 2 after its last good member, and fetches shard 3 whole."""
    rel = Sharded(web, tmp_path, assets=8, per_shard=2)
    victim = rel.names[2]
    size = rel.artifact(victim)["size"]
    seen: list[str] = []

    def rule(req: Request) -> Any:
        if not req.path.endswith(victim):
            return PASS
        seen.append(req.path)
        return cut(size // 2) if len(seen) == 1 else status(503)

    dest = tmp_path / "dl"
    with FaultProxy(web.url, rule) as proxy, pytest.raises(TransferError):
        download_version("assets", V, path=dest, base_url=f"{proxy.url}/{rel.folder}", show_progress=False,
                         http_config=ONE)
    state = dest / V / ".objathor-release"
    done = {i for i, name in enumerate(rel.names) if (state / f"shard-{name[:-4]}.done").exists()}
    # shard 3 may have been taken up by the pool before shard 2's failure stopped it
    assert done in ({0, 1}, {0, 1, 3}), done
    assert (state / "shard-assets-00002.staging").is_dir(), "the network failed: kept, to resume"
    assert sorted(p.name for p in (dest / V / "assets").iterdir()) == sorted(
        uid for i in done for uid in rel.shard_uids[i])
    before = len(web.access_log())
    result = download_version("assets", V, path=dest, base_url=rel.base, show_progress=False,
                              http_config=ONE)
    asked = rel.requests(web, before)
    assert set(asked) == {rel.names[i] for i in range(4) if i not in done}, asked
    (resumed,) = asked[rel.names[2]]
    assert resumed.startswith("bytes=") and int(resumed[6:].rstrip("-")) > 0, "continued, not restarted"
    assert asked.get(rel.names[3], [""]) == [""]
    assert result.verified and tree(dest / V / "assets") == expected_tree(rel.src)
    assert f"{4 - len(done)} fetched, {len(done)} already there" in result.parts[0].note


def test_slices_partition_the_shards_and_a_full_run_fetches_the_rest(web: Nginx, tmp_path: Path) -> None:
    rel = Sharded(web, tmp_path, assets=14, per_shard=2)  # 7 shards: slices of 3, 2 and 2
    trees = []
    for k in range(3):
        dest = tmp_path / f"node{k}"
        before = len(web.access_log())
        result = download_version("assets", V, path=dest, base_url=rel.base, show_progress=False,
                                  http_config=POOLED, shard_slice=(k, 3))
        assert result.verified
        assert set(rel.requests(web, before)) == {rel.names[i] for i in range(k, 7, 3)}
        trees.append(tree(dest / V / "assets"))
    assert sum(len(t) for t in trees) == len(expected_tree(rel.src)), "pairwise disjoint"
    assert {k: v for t in trees for k, v in t.items()} == expected_tree(rel.src), "together, the whole set"

    dest = tmp_path / "one-node"
    for k in (0, 2):
        download_version("assets", V, path=dest, base_url=rel.base, show_progress=False, http_config=POOLED,
                         shard_slice=(k, 3))
    before = len(web.access_log())
    result = download_version("assets", V, path=dest, base_url=rel.base, show_progress=False,
                              http_config=POOLED)
    assert set(rel.requests(web, before)) == {rel.names[1], rel.names[4]}
    assert tree(dest / V / "assets") == expected_tree(rel.src)
    assert "2 fetched, 5 already there" in result.parts[0].note


def test_uids_come_from_the_shards_that_hold_them(web: Nginx, tmp_path: Path) -> None:
    rel = Sharded(web, tmp_path, assets=8, per_shard=2)
    wanted = [rel.shard_uids[3][1], rel.shard_uids[0][0]]
    dest = tmp_path / "dl"
    before = len(web.access_log())
    result = download_version("assets", V, path=dest, base_url=rel.base, show_progress=False,
                              http_config=ONE, uids=wanted)
    assert result.verified and "2 asset(s) from 2 of 4 shards" in result.parts[0].note
    assert tree(dest / V / "assets") == rel.expected(wanted)
    asked = rel.requests(web, before)
    assert set(asked) == {rel.names[0], rel.names[3]}
    assert all(r.startswith("bytes=") for rs in asked.values() for r in rs), "only the members' ranges"

    before = len(web.access_log())
    again = download_version("assets", V, path=dest, base_url=rel.base, show_progress=False,
                             http_config=ONE, uids=wanted)
    assert again.parts[0].status == "already there" and rel.requests(web, before) == {}
    full = download_version("assets", V, path=dest, base_url=rel.base, show_progress=False, http_config=ONE)
    assert full.verified and tree(dest / V / "assets") == expected_tree(rel.src)


def test_a_folder_objathor_extracted_is_checked_in_place_per_shard(web: Nginx, tmp_path: Path) -> None:
    rel = Sharded(web, tmp_path, assets=6, per_shard=2)
    dest = tmp_path / "dl"
    (dest / V).mkdir(parents=True)
    for name in rel.names:  # what extracting each shard with tar gives, without our markers
        subprocess.run(["tar", "-xf", str(rel.vdir / name), "-C", str(dest / V)], check=True)
    before = len(web.access_log())
    result = download_version("assets", V, path=dest, base_url=rel.base, show_progress=False,
                              http_config=ONE)
    assert result.verified and rel.requests(web, before) == {}
    assert result.parts[0].status == "already there" and "0 fetched, 3 already there" in result.parts[0].note
    assert tree(dest / V / "assets") == expected_tree(rel.src)

    changed = dest / V / "assets" / rel.shard_uids[1][0]
    victim = next(p for p in sorted(changed.rglob("*")) if p.is_file())
    victim.write_bytes(b"not the release's bytes")
    for mark in (dest / V / ".objathor-release").glob("shard-*.done"):
        mark.unlink()
    before = len(web.access_log())
    download_version("assets", V, path=dest, base_url=rel.base, show_progress=False, http_config=ONE)
    assert set(rel.requests(web, before)) == {rel.names[1]}, "only the changed shard is fetched again"
    assert tree(dest / V / "assets") == expected_tree(rel.src)


def test_a_release_of_one_assets_tar_is_shard_0(web: Nginx, tmp_path: Path) -> None:
    folder = uuid.uuid4().hex[:10]
    src = tmp_path / "src" / "assets"
    make_sample_dataset(src, 4, seed=2, asset_bytes=16 * 1024)
    build_release(src, web.root / folder, V)
    base = f"{web.url}/{folder}"
    before = len(web.access_log())
    proc = run_cli("download", "assets", "--version", V, "--path", str(tmp_path / "b"), "--base-url", base,
                   "--slice", "1/2", env=QUIET)
    assert proc.returncode == 0, proc.stderr
    assert [r for r in web.access_log()[before:] if r["uri"].endswith("assets.tar")] == []
    line = next(s for s in proc.stdout.splitlines() if s.startswith("assets:"))
    assert "shard 0 of 1" in line and "slice 1/2" in line and "nothing to fetch" in line
    assert not (tmp_path / "b" / V / "assets").exists()
    result = download_version("assets", V, path=tmp_path / "a", base_url=base, show_progress=False,
                              http_config=ONE, shard_slice=(0, 2))
    assert result.verified and tree(tmp_path / "a" / V / "assets") == expected_tree(src)


@pytest.mark.parametrize("bad", ["3/2", "-1/2", "x/y", "0/0", "1", "2/2"])
def test_a_bad_slice_is_one_usage_line(tmp_path: Path, bad: str) -> None:
    proc = run_cli("download", "assets", "--version", V, "--path", str(tmp_path), "--base-url",
                   "http://127.0.0.1:9/none", f"--slice={bad}", env=QUIET)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--slice" in proc.stderr, proc.stderr
    assert not (tmp_path / V).exists()
