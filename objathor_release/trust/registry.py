"""The package's pins: the published manifests' sha256s, and the trusted signing keys.

``registry/manifests.txt`` ships inside the package, pooch style: one line per
published version, ``VERSION sha256:<64 hex>``, sorted by version, ``#`` starts a
comment. A download checks the manifest.json it fetched against the line of its
version, so a server (or anyone who can write to the bucket) cannot hand out a
different manifest for a version that was pinned when this package was made.
``objathor-release registry add`` adds a line after a publish; an existing line
is changed only with ``force``.

``registry/trusted_keys.txt`` lists the public keys whose signatures
``download`` trusts without ``--trusted-key``: one base64 raw Ed25519 public
key per line, optionally followed by a name; ``#`` comments.

Both files are validated on load; a bad line is one error naming the file and
line. ``OBJATHOR_REGISTRY`` and ``OBJATHOR_TRUSTED_KEYS`` name other files to
use instead (tests, mirrors, a registry kept outside the package).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from objathor_release.errors import InputError, PublishedError, UsageError
from objathor_release.fsutil import atomic_write
from objathor_release.settings import VERSION_RE
from objathor_release.trust.signing import KeyId, parse_public_key

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "registry"
PACKAGE_REGISTRY = PACKAGE_DIR / "manifests.txt"
PACKAGE_TRUSTED_KEYS = PACKAGE_DIR / "trusted_keys.txt"
REGISTRY_ENV = "OBJATHOR_REGISTRY"
TRUSTED_KEYS_ENV = "OBJATHOR_TRUSTED_KEYS"
FILE_LIMIT = 4 * 1024 * 1024
_SHA = re.compile(r"sha256:([0-9a-f]{64})")
_LINE_FORMAT = "expected 'YYYY_MM_DD sha256:<64 lower-case hex>', one version per line, sorted"


def _read_bytes(path: Path, what: str) -> bytes | None:
    """The bytes of a small file; None if it does not exist. Refuses FIFOs, folders, huge files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"{path}: {what} cannot be read ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{path}: {what} is not a regular file")
        chunks = []
        size = 0
        while chunk := os.read(fd, 1024 * 1024):
            chunks.append(chunk)
            size += len(chunk)
            if size > FILE_LIMIT:
                raise InputError(f"{path}: {what} is larger than {FILE_LIMIT // 1024 // 1024} MiB")
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read_text(path: Path, what: str) -> str | None:
    data = _read_bytes(path, what)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None


def _show(line: str) -> str:
    return repr(line if len(line) <= 60 else line[:57] + "...")


# --------------------------------------------------------------------------- manifests.txt


@dataclass
class Entry:
    version: str
    sha256: str
    comments: list[str] = field(default_factory=list)  # comment lines just above it, kept with it
    text: str = ""  # the line as written (kept when the entry is unchanged)


@dataclass
class Registry:
    """A parsed manifests.txt: the comment block at its top, then its entries in version order."""

    path: Path
    header: list[str] = field(default_factory=list)
    entries: dict[str, Entry] = field(default_factory=dict)
    trailer: list[str] = field(default_factory=list)

    def pinned(self, version: str) -> str | None:
        entry = self.entries.get(version)
        return entry.sha256 if entry else None

    def render(self) -> str:
        lines = list(self.header)
        for version in sorted(self.entries):
            entry = self.entries[version]
            lines += entry.comments
            lines.append(entry.text or f"{entry.version} sha256:{entry.sha256}")
        lines += self.trailer
        return "".join(f"{line}\n" for line in lines)


def registry_path(path: str | Path | None = None) -> Path:
    """``path``, else ``$OBJATHOR_REGISTRY``, else the package's own registry/manifests.txt."""
    chosen = path if path is not None else os.environ.get(REGISTRY_ENV) or None
    return Path(chosen) if chosen is not None else PACKAGE_REGISTRY


def parse_registry(text: str, path: Path) -> Registry:
    """Validate every line of a manifests.txt; the first bad one is an InputError naming it."""
    reg = Registry(path)
    pending: list[str] = []
    last = ""
    for number, raw in enumerate(text.splitlines(), 1):
        body = raw.split("#", 1)[0].strip()
        if not body:
            (pending if reg.entries else reg.header).append(raw.rstrip())
            continue

        def bad(problem: str, number: int = number, raw: str = raw) -> InputError:
            return InputError(f"{path}:{number}: {_show(raw)}: {problem}: {_LINE_FORMAT}; fix or remove "
                              "that line")

        fields = body.split()
        if len(fields) != 2:
            raise bad(f"{len(fields)} fields, not 2")
        version, digest = fields
        if not VERSION_RE.match(version):
            raise bad(f"version {version!r} is not YYYY_MM_DD")
        match = _SHA.fullmatch(digest)
        if not match:
            raise bad(f"{digest[:80]!r} is not sha256:<64 lower-case hex>")
        if version in reg.entries:
            raise bad(f"version {version} is listed twice")
        if version < last:
            raise bad(f"version {version} comes after {last}: the lines are not sorted")
        last = version
        reg.entries[version] = Entry(version, match.group(1), pending, raw.rstrip())
        pending = []
    reg.trailer = pending
    return reg


def load_registry(path: str | Path | None = None, *, must_exist: bool | None = None) -> Registry:
    """The registry at ``registry_path(path)``. A missing package file is empty; a missing file named
    by ``path`` or ``$OBJATHOR_REGISTRY`` is an error unless ``must_exist`` is False."""
    where = registry_path(path)
    text = _read_text(where, "manifest registry")
    if text is None:
        required = must_exist if must_exist is not None else where != PACKAGE_REGISTRY
        if required:
            raise UsageError(f"{where}: no such manifest registry: check --registry / ${REGISTRY_ENV}")
        return Registry(where)
    return parse_registry(text, where)


def pinned_sha256(version: str, *, registry: str | Path | None = None) -> str | None:
    """The sha256 the registry pins for ``version``'s manifest.json, or None if it is not listed."""
    return load_registry(registry).pinned(version)


def manifest_file_sha256(manifest: str | Path, version: str) -> str:
    """The sha256 of a manifest.json's exact bytes, after checking that it is a manifest of ``version``."""
    from objathor_release.build.manifest import manifest_problems

    path = Path(manifest)
    text = _read_bytes(path, "manifest")
    if text is None:
        raise InputError(f"{path}: no such file: build the release (objathor-release manifest) first")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc}): rebuild it with objathor-release manifest") from None
    problems = manifest_problems(data)
    if problems:
        raise InputError(f"{path}: field {problems[0]}: rebuild it with objathor-release manifest")
    if data["version"] != version:
        raise UsageError(f"{path} is the manifest of version {data['version']}, not {version}: check "
                         "--version")
    return hashlib.sha256(text).hexdigest()


def add_pin(version: str, sha256: str, *, registry: str | Path | None = None, force: bool = False) -> str:
    """Pin ``version`` to ``sha256`` in the registry file (sorted, atomically). Returns what happened:
    "added", "unchanged" or "replaced". A different existing pin needs ``force`` (else PublishedError)."""
    if not VERSION_RE.match(version):
        raise UsageError(f"version {version!r} is not of the form YYYY_MM_DD")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise UsageError(f"{sha256!r} is not a lower-case hex sha256")
    reg = load_registry(registry, must_exist=False)
    old = reg.entries.get(version)
    if old is not None and old.sha256 == sha256:
        return "unchanged"
    if old is not None and not force:
        raise PublishedError(f"{reg.path}: version {version} is already pinned to sha256:{old.sha256}, not "
                             f"sha256:{sha256}: a published manifest should never change; pass --force if "
                             "the version really was republished")
    reg.entries[version] = Entry(version, sha256, old.comments if old else [])
    try:
        with atomic_write(reg.path) as fh:
            fh.write(reg.render().encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"{reg.path}: cannot write the registry ({exc.strerror}): pass --registry FILE "
                         "to write another file") from None
    return "replaced" if old is not None else "added"


# --------------------------------------------------------------------------- trusted_keys.txt


def trusted_keys_path(path: str | Path | None = None) -> Path:
    chosen = path if path is not None else os.environ.get(TRUSTED_KEYS_ENV) or None
    return Path(chosen) if chosen is not None else PACKAGE_TRUSTED_KEYS


def package_trusted_keys(path: str | Path | None = None) -> list[KeyId]:
    """The keys of trusted_keys.txt (or ``path`` / ``$OBJATHOR_TRUSTED_KEYS``), validated line by line."""
    where = trusted_keys_path(path)
    text = _read_text(where, "trusted keys file")
    if text is None:
        if where != PACKAGE_TRUSTED_KEYS:
            raise UsageError(f"{where}: no such trusted keys file: check ${TRUSTED_KEYS_ENV}")
        return []
    keys: list[KeyId] = []
    for number, raw in enumerate(text.splitlines(), 1):
        body = raw.split("#", 1)[0].strip()
        if body:
            key = parse_public_key(body.split()[0], f"{where}:{number}")
            if key not in keys:
                keys.append(key)
    return keys
