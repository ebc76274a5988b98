"""A release directory's checksum manifest (manifest.json, SHA256SUMS) and its local verification.

Artifacts are the regular files under the release directory whose path has no
component starting with ``.`` (upload state, tar sidecars and temporaries are
hidden), except ``manifest.json`` and ``SHA256SUMS`` themselves; names are
relative with ``/`` and sorted. Each ``*.tar`` artifact lists its regular
members with the byte offset of their data, so one asset can be fetched with
an HTTP Range request and checked on its own.

A tar written by ``objathor-release tar`` is not read again: its one-pass
figures come from the sidecar beside it while that still matches the file's
size and mtime. Any other tar is read once, streaming.

``manifest.json`` is deterministic: sorted keys and names, one member per
line, no wall-clock time (``created`` appears only when SOURCE_DATE_EPOCH is
set). ``SHA256SUMS`` is in ``sha256sum`` format, so
``cd RELEASE_DIR && sha256sum -c SHA256SUMS`` checks a release with stock tools.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from objathor_release._version import __version__
from objathor_release.build.epoch import from_environment
from objathor_release.build.etags import ETAG_KEYS, UploadDigests, etag_problem, file_digests
from objathor_release.build.excludes import DEFAULT_EXCLUDES
from objathor_release.build.tarball import read_sidecar
from objathor_release.build.tarscan import scan_tar
from objathor_release.build.validation import schema_errors, too_deep
from objathor_release.errors import ChecksumError, InputError
from objathor_release.fsutil import CHUNK, atomic_write, describe_mode, open_regular
from objathor_release.progress import progress
from objathor_release.settings import planned_part_size, validate_version

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"
SIGNATURE = MANIFEST + ".sig"  # written by publish, over the exact manifest.json bytes
MANIFEST_FORMAT = 1
MAX_DEPTH = 16  # JSON nesting; a manifest nests 4 deep
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"([a-z][a-z0-9_]*)-([0-9]{5})\.tar")
_encode_str: Callable[[str], str] = json.encoder.encode_basestring


# --------------------------------------------------------------------------- listing and hashing


def list_artifacts(release_dir: str | Path) -> list[str]:
    """Every artifact's name under ``release_dir`` (relative, ``/``-separated, sorted)."""
    root = Path(release_dir)
    if not root.is_dir():
        if os.path.lexists(root):
            raise InputError(f"{root}: is not a directory: pass the release directory (--release-dir)")
        raise InputError(f"{root}: no such release directory: build the artifacts there first")
    names: list[str] = []

    def walk(path: Path, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"{path}: cannot be read ({exc.strerror}): fix its permissions") from None
        for e in entries:
            if e.name.startswith("."):
                continue
            name = prefix + e.name
            if e.is_symlink():
                raise InputError(
                    f"{e.path}: is a symlink: put the real file in the release directory (artifacts are "
                    "uploaded as they are on disk)"
                )
            if e.is_dir(follow_symlinks=False):
                walk(Path(e.path), name + "/")
            elif e.is_file(follow_symlinks=False):
                if name not in (MANIFEST, SUMS, SIGNATURE):
                    names.append(name)
            else:
                try:
                    kind = describe_mode(e.stat(follow_symlinks=False).st_mode)
                except OSError:
                    kind = "not a regular file"
                raise InputError(f"{e.path}: is {kind}, not a regular file: remove it from the release "
                                 "directory")

    walk(root, "")
    return sorted(names)


def _hash_file(path: Path, tick: Callable[[int], None], expected: int | None = None,
               ) -> tuple[int, str, dict[str, Any]]:
    """(size, sha256, ETag fields) of ``path`` in one read; the ETag fields assume ``expected``
    bytes (the size listed beforehand) and are empty when the file turns out to have another size."""
    import hashlib

    sha = hashlib.sha256()
    digests = UploadDigests(planned_part_size(expected)) if expected is not None else None
    size = 0
    try:
        with open_regular(path, buffering=0) as fh:
            while block := fh.read(CHUNK):
                sha.update(block)
                if digests is not None:
                    digests.update(block)
                size += len(block)
                tick(len(block))
    except OSError as exc:
        raise _unreadable(path, exc) from None
    return size, sha.hexdigest(), digests.fields() if digests is not None and size == expected else {}


def _etag_fields(path: Path, size: int) -> dict[str, Any]:
    """The ETag fields of an artifact whose other figures came without them (read once more)."""
    try:
        return file_digests(path, size)
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: OSError) -> InputError:
    return InputError(f"{path}: cannot be read ({exc.strerror}): it must be a regular file that can be "
                      "read; replace it or remove it from the release directory")


def _sizes(root: Path, names: list[str]) -> dict[str, int]:
    sizes = {}
    for name in names:
        try:
            sizes[name] = os.lstat(root / name).st_size
        except OSError as exc:
            raise _unreadable(root / name, exc) from None
    return sizes


# --------------------------------------------------------------------------- writing


def _created() -> str | None:
    """``$SOURCE_DATE_EPOCH`` as an ISO 8601 UTC time, or None when it is unset."""
    epoch = from_environment()
    if epoch is None:
        return None
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


_MEMBER_KEYS = ("offset", "path", "sha256", "size")


def _member_lines(members: list[dict[str, Any]]) -> str:
    """Members as ``_dump`` would write each, one per line, fast (a release has hundreds of thousands)."""
    enc = _encode_str
    lines = [
        f'        {{"offset": {m["offset"]}, "path": {enc(m["path"])}, "sha256": {enc(m["sha256"])}, '
        f'"size": {m["size"]}}}'
        if len(m) == 4 and type(m["offset"]) is int and type(m["size"]) is int
        else "        " + _dump(m)
        for m in members
    ]
    return ",\n".join(lines)


def render_manifest(manifest: dict[str, Any]) -> str:
    """``manifest`` as deterministic JSON text: sorted keys, two-space indent, one member per line."""
    lines = ["{"]
    keys = sorted(manifest)
    for i, key in enumerate(keys):
        comma = "," if i < len(keys) - 1 else ""
        if key != "artifacts":
            lines.append(f"  {_dump(key)}: {_dump(manifest[key])}{comma}")
            continue
        lines.append('  "artifacts": [')
        artifacts = manifest["artifacts"]
        for j, art in enumerate(artifacts):
            lines.append("    {")
            akeys = sorted(art)
            for k, akey in enumerate(akeys):
                acomma = "," if k < len(akeys) - 1 else ""
                if akey == "members" and art["members"]:
                    lines.append('      "members": [')
                    lines.append(_member_lines(art["members"]))
                    lines.append(f"      ]{acomma}")
                else:
                    lines.append(f"      {_dump(akey)}: {_dump(art[akey])}{acomma}")
            lines.append("    }" + ("," if j < len(artifacts) - 1 else ""))
        lines.append(f"  ]{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _sums_line(sha: str, name: str) -> str:
    """One ``sha256sum`` line; names holding a backslash or newline are escaped as sha256sum does."""
    if "\\" in name or "\n" in name or "\r" in name:
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{sha}  {escaped}\n"
    return f"{sha}  {name}\n"


def render_sums(manifest: dict[str, Any]) -> str:
    """SHA256SUMS text for ``manifest``'s artifacts, sorted by name."""
    arts = sorted(manifest["artifacts"], key=lambda a: a["name"])
    return "".join(_sums_line(a["sha256"], a["name"]) for a in arts)


def shard_sets(names: list[str]) -> dict[str, list[str]]:
    """The shards among artifact ``names``: ``{"assets.tar": ["assets-00000.tar", ...]}``, checked.

    Shards of a stem are named ``STEM-NNNNN.tar`` and numbered from 0 without
    a gap; a release holds either ``STEM.tar`` or its shards, not both.
    """
    found: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        m = _SHARD.fullmatch(name)
        if m:
            found.setdefault(m.group(1), []).append((int(m.group(2)), name))
    sets: dict[str, list[str]] = {}
    for stem, shards in sorted(found.items()):
        shards.sort()
        for want, (index, name) in enumerate(shards):
            if index != want:
                raise InputError(f"{name}: shard {want} of {stem} is missing (shards are numbered from 0 "
                                 "without gaps): build the release's shards again")
        if f"{stem}.tar" in names:
            raise InputError(f"{stem}.tar and its shards {shards[0][1]} ... are both in the release "
                             "directory: remove the one you did not mean to publish")
        sets[f"{stem}.tar"] = [name for _, name in shards]
    return sets


def write_manifest(release_dir: str | Path, version: str, *, show_progress: bool = True,
                   excludes: list[str] | None = None,
                   extra_artifacts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` and ``SHA256SUMS`` in ``release_dir`` (atomically) and return the manifest.

    Tars with a current sidecar (written by ``build_tar``) are not read again;
    every other artifact is hashed, tars with their members, in one pass each.
    ``excludes`` (the list in force) defaults to the one assets.tar's sidecar
    recorded, else any tar's, else DEFAULT_EXCLUDES. ``extra_artifacts`` are
    entries (name, size, sha256, members) of artifacts built and published
    elsewhere, e.g. shards uploaded by other machines; they are listed as given.
    Shards (``assets-00000.tar``, ...) are also listed, in order, under
    ``shards`` (see ``shard_sets``).
    """
    validate_version(version)
    root = Path(release_dir)
    names = list_artifacts(root)
    given = {a["name"]: a for a in extra_artifacts or []}
    if set(given) & set(names):
        raise InputError(f"{root / sorted(set(given) & set(names))[0]}: is both in the release directory and "
                         "among the artifacts built elsewhere: remove the local copy")
    if not names and not given:
        raise InputError(f"{root}: holds no artifacts: build assets.tar and annotations.json.gz there first")
    sidecars = {name: read_sidecar(root / name) for name in names if name.endswith(".tar")}
    to_read = [n for n in names if sidecars.get(n) is None]
    sizes = _sizes(root, to_read)
    total = sum(sizes.values())
    artifacts: list[dict[str, Any]] = []
    known: dict[str, list[str]] = {}
    with progress(total, f"manifest {root.name}", enabled=show_progress and total > 0) as bar:
        for name in names:
            path = root / name
            side = sidecars.get(name)
            if side is not None:
                art = {"name": name, "size": side["size"], "sha256": side["sha256"],
                       "members": side["members"]}
                art.update({k: side[k] for k in ETAG_KEYS if k in side} or _etag_fields(path, art["size"]))
                if isinstance(side.get("excludes"), list) and not name.startswith("holodeck"):
                    known[name] = side["excludes"]  # the Holodeck base keeps every file: not the list
            elif name.endswith(".tar"):
                digests = UploadDigests(planned_part_size(sizes[name]))
                scan = scan_tar(path, on_bytes=bar.update, digests=digests)
                art = {"name": name, "size": scan.size, "sha256": scan.sha256, "members": scan.members,
                       **(digests.fields() if scan.size == sizes[name] else _etag_fields(path, scan.size))}
            else:
                size, sha, fields = _hash_file(path, bar.update, sizes[name])
                art = {"name": name, "size": size, "sha256": sha, "members": [],
                       **(fields or _etag_fields(path, size))}
            artifacts.append(art)
    artifacts = sorted([*artifacts, *given.values()], key=lambda a: a["name"])
    sets = shard_sets([a["name"] for a in artifacts])
    if excludes is None:  # the list assets.tar was built with, else any tar we built, else the default
        shard_lists = [known[n] for n in sets.get("assets.tar", []) if n in known]
        excludes = (known.get("assets.tar") or next(iter(shard_lists), None)
                    or next(iter(known.values()), list(DEFAULT_EXCLUDES)))
    manifest: dict[str, Any] = {
        "manifest_format": MANIFEST_FORMAT,
        "version": version,
        "tool_version": __version__,
        "excludes": list(excludes),
        "artifacts": artifacts,
    }
    if sets:
        manifest["shards"] = sets
    created = _created()
    if created:
        manifest["created"] = created
    problems = manifest_problems(manifest)
    if problems:
        raise InputError(f"{root}: the manifest would not be valid ({problems[0]}): check the artifacts "
                         "given")
    with atomic_write(root / MANIFEST) as fh:
        fh.write(render_manifest(manifest).encode("utf-8"))
    with atomic_write(root / SUMS) as fh:
        fh.write(render_sums(manifest).encode("utf-8"))
    return manifest


# --------------------------------------------------------------------------- reading and verifying


def _member_problem(m: Any, where: str) -> str | None:
    """``$defs/member`` of the schema, checked by hand: jsonschema takes seconds on 100,000 members."""
    if not isinstance(m, dict):
        return f"{where}: {m!r} is not of type 'object'"
    for key in ("path", "size", "sha256", "offset"):
        if key not in m:
            return f"{where}: {key!r} is a required property"
    path, size, sha, offset = m["path"], m["size"], m["sha256"], m["offset"]
    if not isinstance(path, str) or not path:
        return f"{where}.path: {path!r} is not a non-empty string"
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"{where}.size: {size!r} is not an integer >= 0"
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        return f"{where}.sha256: {sha!r} does not match '^[0-9a-f]{{64}}$'"
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 512 or offset % 512:
        return f"{where}.offset: {offset!r} is not a multiple of 512 >= 512"
    return None


def manifest_problems(manifest: Any) -> list[str]:
    """Problems with ``manifest`` against schemas/manifest.schema.json, one line each (empty: valid).

    jsonschema checks everything but the members, whose simple fixed shape is
    checked by hand (the same rules; tests compare the two).
    """
    found: list[tuple[int, Any]] = []
    skeleton = manifest
    if isinstance(manifest, dict) and isinstance(manifest.get("artifacts"), list):
        skeleton = dict(manifest)
        skeleton["artifacts"] = []
        for i, art in enumerate(manifest["artifacts"]):
            if isinstance(art, dict) and isinstance(art.get("members"), list):
                found.append((i, art["members"]))
                art = {**art, "members": []}
            skeleton["artifacts"].append(art)
    problems = schema_errors(skeleton, "manifest")
    if not problems:
        for i, art in enumerate(skeleton["artifacts"]):
            problem = etag_problem(art)
            if problem:
                problems.append(f"$.artifacts[{i}]: {problem}")
                break
    for i, listed in found:
        for j, m in enumerate(listed):
            problem = _member_problem(m, f"$.artifacts[{i}].members[{j}]")
            if problem:
                problems.append(problem)
                break
    return problems


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a manifest (``path`` is manifest.json or the release directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    try:
        with open_regular(p) as fh:
            text = fh.read().decode("utf-8")
    except FileNotFoundError:
        raise InputError(
            f"{p}: not found: run `objathor-release manifest --release-dir {p.parent}` first"
        ) from None
    except OSError as exc:
        raise InputError(
            f"{p}: cannot be read ({exc.strerror}): rebuild it with `objathor-release manifest`"
        ) from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: cannot be read ({exc}): rebuild it with `objathor-release manifest`") \
            from None
    deep = InputError(f"{p}: not valid JSON (nested more than {MAX_DEPTH} deep): rebuild it with "
                      "`objathor-release manifest`")
    try:
        manifest = json.loads(text)
    except RecursionError:
        raise deep from None
    except ValueError as exc:
        raise InputError(f"{p}: not valid JSON ({exc}): rebuild it with `objathor-release manifest`") \
            from None
    if too_deep(manifest, MAX_DEPTH):
        raise deep
    problems = manifest_problems(manifest)
    if problems:
        raise InputError(
            f"{p}: field {problems[0]} (see schemas/manifest.schema.json): "
            "rebuild it with `objathor-release manifest`"
        )
    seen: set[str] = set()
    for art in manifest["artifacts"]:
        if art["name"] in seen:
            raise InputError(f"{p}: field artifacts: {art['name']!r} is listed twice: rebuild the manifest")
        seen.add(art["name"])
    for logical, shards in manifest.get("shards", {}).items():
        if logical in seen:
            raise InputError(f"{p}: field shards: {logical} is both an artifact and split into shards: "
                             "rebuild the manifest")
        listed: set[str] = set()
        for name in shards:
            if name not in seen or name in listed:
                why = "is listed twice" if name in listed else "is not among the artifacts"
                raise InputError(f"{p}: field shards.{logical}: {name!r} {why}: rebuild the manifest")
            listed.add(name)
    result: dict[str, Any] = manifest
    return result


def _compare_members(name: str, listed: list[dict[str, Any]], found: list[dict[str, Any]]) -> list[str]:
    problems = []
    want = {m["path"]: m for m in listed}
    have = {m["path"]: m for m in found}
    for path in sorted(want.keys() | have.keys()):
        w, h = want.get(path), have.get(path)
        if h is None:
            problems.append(f"{name}: member {path}: missing from the archive")
        elif w is None:
            problems.append(f"{name}: member {path}: in the archive but not in {MANIFEST}")
        else:
            diffs = [k for k in ("size", "offset", "sha256") if w[k] != h[k]]
            if diffs:
                detail = ", ".join(f"{k} {h[k]} (manifest: {w[k]})" for k in diffs)
                problems.append(f"{name}: member {path}: {detail}")
    return problems


def verify_release(release_dir: str | Path, *, members: bool = False, show_progress: bool = True,
                   on_problem: Callable[[str], None] | None = None, elsewhere: Collection[str] = ()) -> None:
    """Re-hash every artifact of ``release_dir`` against its manifest (``members``: every tar member too).

    Artifacts named in ``elsewhere`` were built and uploaded on other machines (shards of a
    distributed release): they are not expected here, and are checked on the server instead.

    Reports each problem (mismatch, missing file, extra file) as one line, to
    ``on_problem`` if given, else as a warning of this module's logger, then
    raises ChecksumError counting them. Returns quietly when all match.
    """
    root = Path(release_dir)
    manifest = load_manifest(root)
    listed = {a["name"]: a for a in manifest["artifacts"]}
    present = list_artifacts(root)
    problems: list[str] = []
    for name in sorted(set(listed) - set(present) - set(elsewhere)):
        problems.append(f"{root / name}: missing (listed in {MANIFEST})")
    for name in sorted(set(present) - set(listed)):
        problems.append(f"{root / name}: extra file, not in {MANIFEST}")
    check = sorted(set(listed) & set(present))
    sizes = _sizes(root, check)
    total = sum(sizes[n] for n in check if sizes[n] == listed[n]["size"])
    with progress(total, f"verify {root.name}", enabled=show_progress) as bar:
        for name in check:
            art, path = listed[name], root / name
            if sizes[name] != art["size"]:
                problems.append(
                    f"{path}: size {sizes[name]}, manifest says {art['size']} (truncated or replaced)"
                )
                continue
            if members and name.endswith(".tar"):
                scan = scan_tar(path, on_bytes=bar.update)
                sha = scan.sha256
                problems.extend(f"{root}/{p}" for p in _compare_members(name, art["members"], scan.members))
            else:
                _, sha, _ = _hash_file(path, bar.update)
            if sha != art["sha256"]:
                problems.append(f"{path}: sha256 {sha}, manifest says {art['sha256']}")
    sums = root / SUMS
    try:
        with open_regular(sums) as fh:
            sums_text = fh.read().decode("utf-8")
        if sums_text != render_sums(manifest):
            problems.append(f"{sums}: does not match {MANIFEST}")
    except (OSError, UnicodeDecodeError):
        problems.append(f"{sums}: missing or unreadable")
    if problems:
        for line in problems:
            if on_problem is not None:
                on_problem(line)
            else:
                logger.warning("%s", line)
        raise ChecksumError(
            f"{root}: {len(problems)} problem{'s' if len(problems) != 1 else ''} against {MANIFEST} (listed "
            "above): rebuild the named files, or run `objathor-release manifest` again if the change is "
            "intended"
        )
