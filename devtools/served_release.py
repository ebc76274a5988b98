"""Build a published release tree for the download tests and benchmark, as a web server would serve it.

    release = build_release(assets_dir, served_root, "2024_02_01", features_dir=..., holodeck_dir=...)

writes ``served_root/VERSION/{annotations.json.gz, assets.tar, features.tar,
manifest.json, SHA256SUMS}`` and ``served_root/holodeck/VERSION.tar``: the
layout the upload publishes and ``download --base-url`` reads. The Holodeck
base tar is built as ``tar --holodeck-base`` builds it (every file kept) and
listed in the manifest as ``holodeck.tar``, as a release with HOLODECK_DIR is. The tars come
from the project's ``tarball.build_tar`` and the manifest from
``manifest.write_manifest``, so the download tests exercise the real pipeline.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objathor_release.build.excludes import DEFAULT_EXCLUDES
from objathor_release.build.manifest import write_manifest as project_write_manifest
from objathor_release.build.tarball import build_tar

EXCLUDES = DEFAULT_EXCLUDES


@dataclass
class Release:
    version: str
    root: Path  # the served root: the base URL points here
    vdir: Path  # root/VERSION
    uids: list[str]
    manifest: dict[str, Any] | None

    def artifact(self, name: str) -> dict[str, Any]:
        assert self.manifest is not None
        return next(a for a in self.manifest["artifacts"] if a["name"] == name)


def make_tar(src: Path, out: Path) -> None:
    build_tar(src, out, show_progress=False, fsync=False)


def write_manifest(vdir: Path, version: str) -> dict[str, Any]:
    """manifest.json (and SHA256SUMS) for the files in ``vdir``."""
    return dict(project_write_manifest(vdir, version, show_progress=False))


def annotations_of(assets_dir: Path) -> bytes:
    merged = {}
    for d in sorted(p for p in assets_dir.iterdir() if p.is_dir()):
        ann = d / "annotations.json.gz"
        if ann.exists():
            merged[d.name] = json.loads(gzip.decompress(ann.read_bytes()))
    return gzip.compress(json.dumps(merged, sort_keys=True).encode(), mtime=0)


def build_release(assets_dir: Path, root: Path, version: str, *, features_dir: Path | None = None,
                  holodeck_dir: Path | None = None, manifest: bool = True,
                  annotations: bytes | None = None) -> Release:
    """Write a served release for ``version`` under ``root`` (see the module docstring)."""
    vdir = root / version
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / "annotations.json.gz").write_bytes(annotations if annotations is not None
                                               else annotations_of(assets_dir))
    make_tar(assets_dir, vdir / "assets.tar")
    if features_dir is not None:
        make_tar(features_dir, vdir / "features.tar")
    if holodeck_dir is not None:  # as ``tar --holodeck-base`` builds it: every file kept, no default excludes
        build_tar(holodeck_dir, vdir / "holodeck.tar", default_excludes=False, show_progress=False,
                  fsync=False)
    data = write_manifest(vdir, version) if manifest else None
    if holodeck_dir is not None:  # listed in the manifest as holodeck.tar, served beside the version folder
        (root / "holodeck").mkdir(exist_ok=True)
        os.replace(vdir / "holodeck.tar", root / "holodeck" / f"{version}.tar")
    for leftover in [*vdir.glob(".*"), *(root / "holodeck").glob(".*")]:  # sidecars a tar builder leaves
        leftover.unlink() if leftover.is_file() else shutil.rmtree(leftover)
    uids = sorted(p.name for p in assets_dir.iterdir() if p.is_dir())
    return Release(version, root, vdir, uids, data)


def expected_tree(src: Path, excludes: tuple[str, ...] = EXCLUDES) -> dict[str, bytes]:
    """relative path -> bytes of every file a tar of ``src`` keeps (the excluded ones left out)."""
    import fnmatch

    out = {}
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = [d for d in dirnames if not any(fnmatch.fnmatch(d, p) for p in excludes)]
        for name in filenames:
            if any(fnmatch.fnmatch(name, p) for p in excludes):
                continue
            path = Path(dirpath) / name
            out[str(path.relative_to(src))] = path.read_bytes()
    return out


def tree(root: Path) -> dict[str, bytes]:
    """relative path -> bytes of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))
