"""Read only some assets' members out of a manifest.json, streaming, in memory bounded by what is kept.

``download --uids`` needs the members of a few assets, yet parsing the whole
manifest builds a dict per member: about 0.9 KB each, so close to a gigabyte
for a release of a million members. :func:`members_of` reads the manifest
line by line instead, in the layout :func:`objathor_release.build.manifest.render_manifest`
writes (two-space indent, sorted keys, one member per line), and keeps only
the members whose path is ``TOP/<uid>/...`` for a wanted uid, plus every
artifact's name, size and sha256 and the manifest's other top-level fields.
Each member line is tested for its uid before it is parsed, so the others cost
a few byte operations each.

What it checks: the layout (any other line raises :class:`LayoutError`, and
the caller can then parse the whole manifest as before), the JSON of every
line it keeps, and that each member kept has a safe path and integer offset
and size. It does not validate the members it skips against the schema, as the
full parse does; ``sha256`` of the result is the digest of every byte read, so
a caller that pins or signs the manifest's bytes can still check them.

``download assets --uids`` reads its manifest through it
(:func:`objathor_release.fetch.origin.check_manifest_for_uids`), which then checks
what is kept as a whole manifest is checked.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from objathor_release.fetch.extract import member_parts

_TOP = b"  "
_ARTIFACT_KEY = b"      "
_MEMBER = b"        {"
_PATH_KEY = b'"path": "'
_NAME_OF_PATH = b'"path"'


class LayoutError(ValueError):
    """The text is not laid out as render_manifest writes it (parse the whole manifest instead)."""


@dataclass
class ArtifactMembers:
    """One artifact of the manifest: its own fields, and the wanted uids' members in file order."""

    name: str | None = None
    size: int | None = None
    sha256: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # any other artifact-level key
    members: list[dict[str, Any]] = field(default_factory=list)
    total_members: int = 0

    def by_uid(self, top: str = "assets") -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for m in self.members:
            parts = member_parts(m["path"])
            if len(parts) >= 3 and parts[0] == top:
                out.setdefault(parts[1], []).append(m)
        return out


@dataclass
class MembersIndex:
    """What :func:`members_of` found: top-level fields, artifacts by name, the digest of the bytes read."""

    top: dict[str, Any]
    artifacts: dict[str, ArtifactMembers]
    sha256: str
    bytes_read: int

    def uids_found(self, top: str = "assets") -> set[str]:
        return {u for a in self.artifacts.values() for u in a.by_uid(top)}


def _value(line: bytes, where: str) -> tuple[str, Any]:
    """``"key": value`` with an optional trailing comma, as one JSON pair."""
    text = line.strip()
    if text.endswith(b","):
        text = text[:-1]
    try:
        pair = json.loads(b"{" + text + b"}")
    except ValueError:
        raise LayoutError(f"{where}: not a key and value on one line") from None
    if not isinstance(pair, dict) or len(pair) != 1:
        raise LayoutError(f"{where}: not one key and value")
    ((key, value),) = pair.items()
    return key, value


def _member(line: bytes, where: str) -> dict[str, Any]:
    text = line.strip()
    if text.endswith(b","):
        text = text[:-1]
    try:
        m = json.loads(text)
    except ValueError:
        raise LayoutError(f"{where}: a member that is not one JSON object on its line") from None
    if not isinstance(m, dict) or not isinstance(m.get("path"), str):
        raise LayoutError(f"{where}: a member without a path")
    for key in ("offset", "size"):
        if type(m.get(key)) is not int or m[key] < 0:
            raise LayoutError(f"{where}: member {m['path']!r} has no whole {key}")
    try:
        member_parts(m["path"])
    except ValueError as exc:
        raise LayoutError(f"{where}: member path {m['path']!r} is unsafe ({exc})") from None
    return m


def _uid_of(line: bytes, top: bytes) -> bytes | None:
    """The uid folder of a member line's path (fast path), or None when the line needs a real parse."""
    # Only a line whose one "path" key is plain text is read without a parse: a backslash (an escaped
    # key or value) or a second "path" (a repeated key, where JSON keeps the last; two members on one
    # line) could make the first `"path": "` another path than the one json.loads gives.
    i = line.find(_NAME_OF_PATH)
    if i < 0 or not line.startswith(_PATH_KEY, i) or line.find(_NAME_OF_PATH, i + 6) >= 0 or b"\\" in line:
        return None
    start = i + len(_PATH_KEY)
    end = line.find(b'"', start)
    path = line[start:end]
    if end < 0:
        return None
    parts = [p for p in path.split(b"/") if p not in (b"", b".")]
    return parts[1] if len(parts) >= 3 and parts[0] == top else b""


def _lines(fh: BinaryIO, sha: Any) -> Iterator[tuple[int, bytes]]:
    for n, line in enumerate(fh, 1):
        sha.update(line)
        yield n, line


def members_of(source: BinaryIO | bytes | str | Path, uids: Iterable[str], *, top: str = "assets",
               name: str = "manifest.json") -> MembersIndex:
    """The members of ``uids`` (paths ``TOP/<uid>/...``) in every artifact of the manifest ``source``.

    ``source`` is an open binary file, the manifest's bytes or a path. Raises
    :class:`LayoutError` (naming ``name`` and the line) when the text is not in
    render_manifest's layout or a kept member is malformed.
    """
    if isinstance(source, (str, Path)):
        with open(source, "rb") as opened:
            return members_of(opened, uids, top=top, name=str(source))
    fh: BinaryIO = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    wanted_str = set(uids)
    wanted = {u.encode() for u in wanted_str}
    top_b = top.encode()
    sha = hashlib.sha256()
    top_fields: dict[str, Any] = {}
    artifacts: dict[str, ArtifactMembers] = {}
    art: ArtifactMembers | None = None
    # keys seen in the manifest and in the artifact being read: JSON keeps a repeated key's last value,
    # this reader would merge them (a second "artifacts" or "members" list), so a repeat is not the layout
    top_keys: set[str] = set()
    art_keys: set[str] = set()

    def once(seen: set[str], key: str, where: str) -> None:
        if key in seen:
            raise LayoutError(f"{where}: field {key!r} given twice")
        seen.add(key)

    state = "start"  # start, top, artifacts, artifact, members, end
    read = 0
    for n, line in _lines(fh, sha):
        read += len(line)
        where = f"{name} line {n}"
        if state == "members":
            if line.startswith(_MEMBER):
                assert art is not None
                art.total_members += 1
                uid = _uid_of(line, top_b)
                if uid is None:  # an escaped or unusual path: parse it to decide
                    m = _member(line, where)
                    parts = member_parts(m["path"])
                    if len(parts) >= 3 and parts[0] == top and parts[1] in wanted_str:
                        art.members.append(m)
                elif uid in wanted:
                    art.members.append(_member(line, where))
                continue
            if line.rstrip(b",\n") == b"      ]":
                state = "artifact"
                continue
            raise LayoutError(f"{where}: expected a member line or the end of the members")
        if state == "artifact":
            if line.rstrip(b",\n") == b"    }":
                assert art is not None
                if art.name is None:
                    raise LayoutError(f"{where}: an artifact without a name")
                if art.name in artifacts:  # the full parse refuses it
                    raise LayoutError(f"{where}: artifact {art.name!r} listed twice")
                artifacts[art.name] = art
                state = "artifacts"
                continue
            if line.rstrip(b"\n") == b'      "members": [':
                once(art_keys, "members", where)
                state = "members"
                continue
            if not line.startswith(_ARTIFACT_KEY) or line.startswith(_ARTIFACT_KEY + b" "):
                raise LayoutError(f"{where}: expected an artifact field")
            key, value = _value(line, where)
            once(art_keys, key, where)
            assert art is not None
            if key == "name" and isinstance(value, str):
                art.name = value
            elif key == "size" and type(value) is int:
                art.size = value
            elif key == "sha256" and isinstance(value, str):
                art.sha256 = value
            elif key == "members":
                if value != []:
                    raise LayoutError(f"{where}: members on one line")
            else:
                art.fields[key] = value
            continue
        if state == "artifacts":
            if line.rstrip(b"\n") == b"    {":
                art = ArtifactMembers()
                art_keys = set()
                state = "artifact"
                continue
            if line.rstrip(b",\n") == b"  ]":
                state = "top"
                continue
            raise LayoutError(f"{where}: expected an artifact")
        if state == "start":
            if line.rstrip(b"\n") != b"{":
                raise LayoutError(f"{where}: does not start as a manifest written by objathor-release")
            state = "top"
            continue
        if state == "top":
            if line.rstrip(b"\n") == b"}":
                state = "end"
                continue
            if line.rstrip(b"\n") == b'  "artifacts": [':
                once(top_keys, "artifacts", where)
                state = "artifacts"
                continue
            if not line.startswith(_TOP) or line.startswith(_TOP + b" "):
                raise LayoutError(f"{where}: expected a top-level field")
            key, value = _value(line, where)
            once(top_keys, key, where)
            if key == "artifacts":  # a list on one line: not the layout, and would be dropped below
                raise LayoutError(f"{where}: artifacts on one line")
            top_fields[key] = value
            continue
        if line.strip():
            raise LayoutError(f"{where}: text after the end of the manifest")
    if state != "end":
        raise LayoutError(f"{name}: ends before the manifest does (truncated?)")
    return MembersIndex(top=top_fields, artifacts=artifacts, sha256=sha.hexdigest(), bytes_read=read)
