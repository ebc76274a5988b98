"""Where a version is served and where each of its parts lands: :class:`Source` and :class:`Part`.

The cut: names and paths only, no I/O. The result on disk is exactly
objathor's (Holodeck and existing code read it)::

    DIR/VERSION/annotations.json.gz
    DIR/VERSION/assets/<uid>/...
    DIR/VERSION/features/*.pkl
    DIR/holodeck/VERSION/...

Bookkeeping lives in a hidden ``.objathor-release`` folder beside those: a
part's lock, its ``.done`` marker, its staging folder and its ``.old`` trash
are all named by the part's ``key``. A :class:`Part` is built once per part of
a download, with the manifest's entry for it, so nothing downstream asks which
part it is by name.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objathor_release.errors import InputError, UsageError
from objathor_release.fetch.extract import member_parts

DEFAULT_PATH = "~/.objathor-assets"
#: objathor's own table: these versions sit at the root of their own public bucket ...
ROOT_VERSIONS = {
    "2025_06_10": "https://pub-ddc5ca49fcee4247b552f4217e910a0f.r2.dev",
    "2024_08_16": "https://pub-2619544d52bd4f35927b08d301d2aba0.r2.dev",
}
#: ... and every other version under ``VERSION/`` in this one, beside ``holodeck/VERSION.tar``.
DEFAULT_BUCKET = "https://pub-daedd7738a984186a00f2ab264d06a07.r2.dev"
KNOWN_VERSIONS = ("2023_07_28", "2023_09_23", "2024_08_16", "2025_06_10")

PARTS = ("annotations", "assets", "features", "holodeck-base")
WHATS = (*PARTS, "all")
STATE = ".objathor-release"
FILES = {"annotations": "annotations.json.gz", "assets": "assets.tar", "features": "features.tar"}


LAYOUTS = ("versioned", "root")
PLACEHOLDER = "{version}"


@dataclass(frozen=True)
class Source:
    """The URLs of one version: ``{version_url}/NAME`` and the Holodeck base data tar.

    ``fallback_base`` is objathor's second place for features.tar: when the
    versioned URL answers an HTML page, objathor 0.0.8 reads ``BASE/features.tar``
    (None where there is no such place: a bucket-root version).
    """

    version: str
    version_url: str
    holodeck_url: str
    custom: bool
    fallback_base: str | None = None

    def url(self, name: str) -> str:
        return f"{self.version_url}/{name}"

    def fallback(self, name: str) -> str | None:
        return f"{self.fallback_base}/{name}" if self.fallback_base else None


def resolve_source(version: str, base_url: str | None = None, layout: str = "versioned") -> Source:
    """Where ``version`` is served: ``base_url`` or objathor's public table.

    ``base_url`` serves ``{base}/{VERSION}/NAME`` (``layout="versioned"``, the
    default) or ``{base}/NAME`` (``layout="root"``: a version at the root of its
    own bucket, as 2024_08_16 and 2025_06_10 are); ``s3://BUCKET/PREFIX`` is read over the S3 API
    (every request signed, see :mod:`objathor_release.s3.presign`). A ``{version}`` in the URL is
    replaced by the version and nothing is appended, wherever it stands. The
    Holodeck base data is ``BASE/holodeck/VERSION.tar`` in every layout, BASE
    being the URL up to the placeholder.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if base_url:
        base = base_url.strip().rstrip("/")
        if not base.startswith(("http://", "https://", "s3://")):
            raise UsageError(f"--base-url {base_url!r} is not an http://, https:// or s3://BUCKET/PREFIX URL")
        if base.startswith("s3://"):
            parts = urllib.parse.urlsplit(base)
            if not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
                raise UsageError(f"--base-url {base_url!r} is not of the form s3://BUCKET/PREFIX")
        if "@" in urllib.parse.urlsplit(base).netloc:
            raise UsageError("--base-url holds a user name or password: they are not sent, and would be "
                             "printed in messages and saved in state files; give the URL without them")
        rest = base.replace(PLACEHOLDER, "")
        if "{" in rest or "}" in rest:
            raise UsageError(f"--base-url {base_url!r}: the only placeholder it may hold is {PLACEHOLDER}")
        if PLACEHOLDER in base:
            if layout == "root":
                raise UsageError(f"--base-url {base_url!r} holds {PLACEHOLDER}, which already says where "
                                 "the version is: leave out --layout root")
            head = base.split(PLACEHOLDER, 1)[0].rstrip("/")
            if not urllib.parse.urlsplit(head).netloc:
                raise UsageError(f"--base-url {base_url!r}: {PLACEHOLDER} must come after the host name")
            return Source(version, base.replace(PLACEHOLDER, version), f"{head}/holodeck/{version}.tar",
                          True, head)
        if layout == "root":
            return Source(version, base, f"{base}/holodeck/{version}.tar", True, None)
        return Source(version, f"{base}/{version}", f"{base}/holodeck/{version}.tar", True, base)
    if version in ROOT_VERSIONS:
        return Source(version, ROOT_VERSIONS[version], f"{DEFAULT_BUCKET}/holodeck/{version}.tar", False)
    return Source(version, f"{DEFAULT_BUCKET}/{version}", f"{DEFAULT_BUCKET}/holodeck/{version}.tar", False,
                  DEFAULT_BUCKET)


@dataclass(frozen=True)
class Part:
    """One part of a version: what it is called, where it comes from and where it lands.

    ``tar`` parts stream into the extractor, the others are single files;
    ``keep_as`` is where ``--keep-tar`` keeps the tar (None: it is not kept);
    ``flatten`` puts every ``*.pkl`` of the tar flat in one folder (objathor's
    features layout); ``artifact`` is the manifest's entry (None: unlisted);
    ``fallback_url`` is where to look when ``url`` answers an HTML page
    (objathor's ``BASE/features.tar``; None for every other part). ``merge``
    (a shard of a sharded assets tar) moves the extracted asset folders into
    ``target`` one by one instead of replacing it.
    """

    what: str
    version: str
    url: str
    target: Path
    state: Path
    key: str
    tar: bool
    keep_as: Path | None
    flatten: bool
    artifact: Mapping[str, Any] | None
    fallback_url: str | None = None
    merge: bool = False

    @classmethod
    def of(cls, what: str, root: Path, source: Source, manifest: Mapping[str, Any] | None) -> Part:
        version = source.version
        vdir = root / version
        if what == "holodeck-base":
            art = artifact(manifest, f"holodeck/{version}.tar", "holodeck.tar")
            holodeck = root / "holodeck"
            return cls(what, version, source.holodeck_url, holodeck / version, holodeck / STATE, version,
                       True, None, False, art)
        name = FILES[what]
        tar = name.endswith(".tar")
        return cls(what, version, source.url(name), vdir / (name if what == "annotations" else what),
                   vdir / STATE, what, tar, vdir / name if tar else None, what == "features",
                   artifact(manifest, name), source.fallback(name) if what == "features" else None)

    @classmethod
    def shard(cls, assets: Part, source: Source, art: Mapping[str, Any]) -> Part:
        """The shard ``art`` of the sharded assets tar: its own URL, marker and staging folder, landing
        in the assets folder beside the other shards' asset folders."""
        name = art["name"]
        return cls(assets.what, assets.version, source.url(name), assets.target, assets.state,
                   f"shard-{name.removesuffix('.tar')}", True, assets.target.parent / name, False, art,
                   merge=True)

    @property
    def name(self) -> str:
        """The file name on the server (``assets.tar``, ``2023_09_23.tar``)."""
        return self.url.rsplit("/", 1)[1]

    @property
    def lock(self) -> Path:
        return self.state / f"{self.key}.lock"

    @property
    def marker(self) -> Path:
        return self.state / f"{self.key}.done"

    @property
    def staging(self) -> Path:
        return self.state / f"{self.key}.staging"

    @property
    def trash(self) -> Path:
        return self.state / f"{self.key}.old"


def artifact(manifest: Mapping[str, Any] | None, *names: str) -> Mapping[str, Any] | None:
    """The manifest's entry for the first of ``names`` it lists (None without a manifest or an entry)."""
    if manifest is None:
        return None
    for art in manifest["artifacts"]:
        if art["name"] in names:
            found: Mapping[str, Any] = art
            return found
    return None


def top_folder(artifact: Mapping[str, Any] | None) -> str | None:
    """The top-level directory the manifest's member paths share (None if it lists none)."""
    members = (artifact or {}).get("members") or []
    tops = {member_parts(m["path"])[0] for m in members if member_parts(m["path"])}
    if len(tops) > 1:
        raise InputError(f"manifest.json: {artifact and artifact['name']} lists members under "
                         f"{len(tops)} top-level folders ({', '.join(sorted(tops)[:3])}): expected one")
    return tops.pop() if tops else None


def asset_folders(artifact: Mapping[str, Any]) -> list[str]:
    """The asset folders (``<uid>`` of ``assets/<uid>/...``) the artifact's members lie in, in order."""
    found: dict[str, None] = {}
    for m in artifact.get("members") or []:
        parts = member_parts(m["path"])
        if len(parts) >= 3:
            found.setdefault(parts[1])
    return list(found)
