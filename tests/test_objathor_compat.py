"""Compatibility with the real objathor 0.0.8 from PyPI, in both directions.

Forward: a release this tool builds (prepare-annotations, tar, manifest, the Holodeck base),
served by nginx, is read by objathor's own ``DatasetSaveConfig`` and ``load_*`` functions, run in a
separate venv that holds objathor 0.0.8 (cached across runs under
``~/.cache/objathor-release/compat``, or ``$OBJATHOR_COMPAT_CACHE``).

Reverse: releases laid out as objathor's README makes them (GNU tar of the assets folder, with and
without a leading ``./``, pax with xattrs, a flat features.tar, no manifest) are downloaded by this
tool into the folders objathor reads.

The venv is made with uv from PyPI the first time. Without PyPI the tests skip with the reason,
except under CI (``CI`` or ``OBJATHOR_REQUIRE_COMPAT`` set), where they fail.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.nginx import Nginx
from devtools.sample import make_sample_dataset
from devtools.served_release import expected_tree, tree

OBJATHOR = "objathor==0.0.8"
# objathor 0.0.8 imports attrs and requests without declaring them (requests is in an extra).
UNDECLARED = ("attrs", "requests")
VERSION = "2024_02_01"
pytestmark = pytest.mark.slow


def _required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("OBJATHOR_REQUIRE_COMPAT"))


@pytest.fixture(scope="session")
def objathor_python() -> Path:
    """The interpreter of a venv holding objathor 0.0.8 (made once, then reused)."""
    cache = Path(os.environ.get("OBJATHOR_COMPAT_CACHE", Path.home() / ".cache" / "objathor-release" / "compat"))
    venv = cache / "objathor-0.0.8"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import objathor.dataset, compress_pickle, numpy"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    uv = Path(sys.executable).with_name("uv")
    if not uv.exists():
        uv = Path(shutil.which("uv") or "uv")
    cache.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(venv, ignore_errors=True)
    steps = [[str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)],
             [str(uv), "pip", "install", "--quiet", "--python", str(python), OBJATHOR, *UNDECLARED]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            reason = f"could not install {OBJATHOR} from PyPI: {done.stderr.strip().splitlines()[-1:]}"
            if _required():
                pytest.fail(reason)
            pytest.skip(reason)
    assert subprocess.run(probe, capture_output=True).returncode == 0
    return python


@pytest.fixture
def served(web: Nginx, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(a fresh folder under nginx's root, its URL)."""
    name = tmp_path.name
    root = Path(web.root) / name
    root.mkdir()
    yield root, f"{web.url}/{name}"
    shutil.rmtree(root, ignore_errors=True)


def run_objathor(python: Path, code: str, *args: str) -> dict:
    done = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"objathor 0.0.8 failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


OBJATHOR_LOADS = r"""
import glob, json, os, sys
import compress_pickle
from objathor.dataset import (DatasetSaveConfig, load_annotations, load_assets_path,
                              load_features_dir, load_holodeck_base)
version, base_path, base_url = sys.argv[1:4]
dsc = DatasetSaveConfig(VERSION=version, BASE_PATH=base_path, BASE_BUCKET_URL=base_url)
annotations = load_annotations(dsc)
assets = load_assets_path(dsc)
features = load_features_dir(dsc)
holodeck = load_holodeck_base(dsc)
loaded = {}
for uid in sorted(os.listdir(assets)):
    asset = compress_pickle.load(os.path.join(assets, uid, f"{uid}.pkl.gz"))
    loaded[uid] = sorted(asset)
print(json.dumps({"annotations": sorted(annotations), "assets": assets, "features": features,
                  "holodeck": holodeck, "loaded": loaded}))
"""


def test_objathor_reads_a_release_this_tool_built(objathor_python: Path, served: tuple[Path, str],
                                                  tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    root, url = served
    src = tmp_path / "src"
    assets, features, holodeck = src / "assets", src / "features", src / VERSION
    uids = make_sample_dataset(assets, 6, seed=5, asset_bytes=8 * 1024, features_dir=features)
    (holodeck / "thor_object_data").mkdir(parents=True)
    (holodeck / "thor_object_data" / "annotations.json.gz").write_bytes(b"\x1f\x8b" + bytes(30))
    (holodeck / "objaverse_holodeck").mkdir()
    (holodeck / "objaverse_holodeck" / "README.txt").write_text("holodeck base data\n")
    vdir = root / VERSION
    steps = [
        ("prepare-annotations", "--save-dir", str(assets), "--output-file", str(vdir / "annotations.json.gz")),
        ("tar", "--assets-dir", str(assets), "--output", str(vdir / "assets.tar")),
        ("tar", "--assets-dir", str(features), "--output", str(vdir / "features.tar")),
        ("tar", "--holodeck-base", "--assets-dir", str(holodeck), "--output", str(root / "holodeck" / f"{VERSION}.tar")),
        ("manifest", "--release-dir", str(vdir), "--version", VERSION),
    ]
    for step in steps:
        done = cli(*step)
        assert done.returncode == 0, f"{step[0]}: {done.stderr}"
    for leftover in [*vdir.glob(".*"), *(root / "holodeck").glob(".*")]:
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()

    got = run_objathor(objathor_python, OBJATHOR_LOADS, VERSION, str(tmp_path / "home"), url)
    assert got["annotations"] == sorted(uids)
    assert tree(Path(got["assets"])) == expected_tree(assets)
    assert sorted(os.listdir(got["features"])) == sorted(p.name for p in features.rglob("*.pkl"))
    assert tree(Path(got["holodeck"])) == tree(holodeck), "the Holodeck base must keep every file"
    # every asset loads with objathor's own pickle loader, with the keys THOR reads
    assert sorted(got["loaded"]) == sorted(uids)
    for keys in got["loaded"].values():
        assert {"name", "vertices", "triangles", "albedoTexturePath"} <= set(keys)


def _objathor_style_release(kind: str, assets: Path, features: Path, out: Path) -> None:
    """assets.tar and features.tar made with GNU tar the ways objathor's README and users make them."""
    excludes = [f"--exclude={p}" for p in ("annotations.json.gz", "thor_metadata.json", ".DS_Store", "._*",
                                           "*.lock")]
    out.mkdir(parents=True)
    member = {"plain": "assets", "dot": "./assets", "pax": "assets"}[kind]
    extra = ["--format=pax", "--xattrs"] if kind == "pax" else []
    subprocess.run(["tar", *excludes, *extra, "-cf", str(out / "assets.tar"), member], cwd=assets.parent,
                   check=True)
    # a flat features.tar: the .pkl files at the top level, no folder
    subprocess.run(["tar", "-cf", str(out / "features.tar"), *sorted(p.name for p in features.glob("*.pkl"))],
                   cwd=features, check=True)
    merged = {p.name: json.loads(gzip.decompress((p / "annotations.json.gz").read_bytes()))
              for p in sorted(assets.iterdir()) if p.is_dir()}
    (out / "annotations.json.gz").write_bytes(gzip.compress(json.dumps(merged).encode()))


@pytest.mark.parametrize("kind", ["plain", "dot", "pax"])
def test_this_tool_downloads_releases_made_the_objathor_way(kind: str, served: tuple[Path, str],
                                                            tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    root, url = served
    assets, features = tmp_path / "src" / "assets", tmp_path / "src" / "features"
    uids = make_sample_dataset(assets, 5, seed=8, asset_bytes=8 * 1024, features_dir=features)
    if kind == "pax":
        first = assets / uids[0] / f"{uids[0]}.pkl.gz"
        # a file system without user xattrs: the pax headers still carry mtime/atime records
        with contextlib.suppress(OSError):
            os.setxattr(first, "user.origin", b"objaverse")
    _objathor_style_release(kind, assets, features, root / VERSION)
    done = cli("download", "all", "--version", VERSION, "--base-url", url, "--path", str(tmp_path / "home"))
    assert done.returncode == 0, done.stderr
    home = tmp_path / "home" / VERSION
    # no manifest: every part says it could not be verified, and the Holodeck base is not there
    lines = done.stdout.splitlines()
    assert [line.split(" (unverified, ")[0] for line in lines[:4]] == [
        f"annotations: downloaded at {home / 'annotations.json.gz'}", f"assets: downloaded at {home / 'assets'}",
        f"features: downloaded at {home / 'features'}", f"holodeck-base: not in version {VERSION}"]
    assert all(" (unverified, " in line for line in lines[:3])
    assert f"note: version {VERSION} has no manifest.json, so this download is unverified" in done.stderr
    assert tree(home / "assets") == expected_tree(assets)
    assert tree(home / "features") == {p.name: p.read_bytes() for p in features.glob("*.pkl")}
    assert sorted(json.loads(gzip.decompress((home / "annotations.json.gz").read_bytes()))) == sorted(uids)
