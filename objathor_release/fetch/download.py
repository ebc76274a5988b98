"""Download a dataset version into ``~/.objathor-assets``: fast, verified, resumable, safe.

    download_version("assets", "2023_09_23")                  # the library call
    objathor-release download assets --version 2023_09_23     # the command

The result on disk is exactly objathor's (Holodeck and existing code read it)::

    DIR/VERSION/annotations.json.gz
    DIR/VERSION/assets/<uid>/...
    DIR/VERSION/features/*.pkl
    DIR/holodeck/VERSION/...

Bookkeeping lives in a hidden ``.objathor-release`` folder beside those: one
lock file per part (two processes never work on the same part at once; the
second waits, then finds the work done), a ``PART.done`` marker written only
after verification (later runs trust the marker, never the mere presence of a
folder), ``.part`` files of interrupted single-file downloads (continued with
Range + If-Range), and the staging directory a tar is extracted into before
being renamed into place.

assets.tar and features.tar stream from the server straight into the safe
extractor (:mod:`.extract`) while the whole stream is hashed in a second
thread: no copy of the tar on disk. Single files come with parallel Range
requests into a preallocated ``.part`` (:mod:`.download_http`). ``uids=``
fetches only some assets, by the member offsets in the release's manifest.json.

With manifest.json every byte is checked (whole files and every extracted
member against their sha256); a mismatch deletes what failed, retries once,
then fails. Without one (older releases) one line says the data is unverified,
and ``require_checksums=True`` refuses instead.

A hostile or unlucky server cannot hang a download or leave half of it
behind: every read has a minimum throughput (:mod:`.download_http`),
redirects go only to http(s) URLs, error pages of any type (HTML, XML, JSON,
text) are named as such, 401/403 say "access denied", and only a 404 for
manifest.json means a version without one. A full disk, an unwritable folder
or a manifest that lies about its members is one line, with the staging
folder removed and the lock released.

Test hook: ``OBJATHOR_FREE_SPACE`` (a size such as ``10M``) replaces the free
disk space figure used by the "will it fit" check.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import shutil
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objathor_release.errors import ChecksumError, InputError, ReleaseError, TransferError, UsageError
from objathor_release.fetch.extract import TarStreamExtractor, expected_members, member_parts
from objathor_release.fetch.http import (
    Http,
    HttpConfig,
    Info,
    NotFound,
    disk_full,
    download_file,
    is_disk_full,
    part_paths,
)
from objathor_release.fsutil import atomic_write, sha256_file
from objathor_release.progress import progress
from objathor_release.settings import format_size, parse_size, validate_version
from objathor_release.trust.origin import OriginResult, TrustPolicy, check_served_manifest

# ---------------------------------------------------------------------- where versions live

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
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_MARKUP_TYPES = (*_HTML_TYPES, "application/xml", "text/xml")
_PAGE_TYPES = (*_MARKUP_TYPES, "application/json", "application/problem+json", "application/javascript")
#: errors that say --path is unusable (read-only, not ours, a file where a folder must be)
_PATH_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR})
MANIFEST_LIMIT = 256 * 1024 * 1024  # bytes: a manifest of 100,000 members is about 20 MB


def _is_page_type(ctype: str, kind: str) -> bool:
    """Whether a Content-Type is an error page rather than ``kind`` data (JSON may come as text/plain)."""
    if kind == "json":
        return ctype in _MARKUP_TYPES or ctype.endswith("+xml")
    return ctype in _PAGE_TYPES or ctype.startswith("text/") or ctype.endswith(("+json", "+xml"))


@dataclass(frozen=True)
class Source:
    """The URLs of one version: ``{version_url}/NAME`` and the Holodeck base data tar."""

    version: str
    version_url: str
    holodeck_url: str
    custom: bool

    def url(self, name: str) -> str:
        return f"{self.version_url}/{name}"


def resolve_source(version: str, base_url: str | None = None) -> Source:
    """Where ``version`` is served: ``base_url`` ({base}/{VERSION}/...) or objathor's public table."""
    if base_url:
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise UsageError(f"--base-url {base_url!r} is not an http:// or https:// URL")
        if "@" in urllib.parse.urlsplit(base).netloc:
            raise UsageError("--base-url holds a user name or password: they are not sent, and would be "
                             "printed in messages and saved in state files; give the URL without them")
        return Source(version, f"{base}/{version}", f"{base}/holodeck/{version}.tar", True)
    version_url = ROOT_VERSIONS.get(version, f"{DEFAULT_BUCKET}/{version}")
    return Source(version, version_url, f"{DEFAULT_BUCKET}/holodeck/{version}.tar", False)


# ---------------------------------------------------------------------- results


@dataclass
class PartResult:
    """One part of a version: where it is and what this run did about it."""

    what: str
    path: Path
    status: str  # "downloaded", "already there", "not in this version"
    verified: bool
    bytes: int = 0
    note: str = ""


@dataclass
class DownloadResult:
    """What ``download_version`` did, part by part."""

    version: str
    root: Path
    parts: list[PartResult] = field(default_factory=list)
    manifest: bool = False
    seconds: float = 0.0
    origin: OriginResult | None = None

    @property
    def verified(self) -> bool:
        return all(p.verified for p in self.parts if p.status != "not in this version")

    def path(self, what: str) -> Path:
        return next(p.path for p in self.parts if p.what == what)

    def summary(self) -> str:
        lines = []
        for p in self.parts:
            check = "verified" if p.verified else "unverified"
            size = f", {format_size(p.bytes)}" if p.bytes else ""
            extra = f", {p.note}" if p.note else ""
            if p.status == "not in this version":
                lines.append(f"{p.what}: not in version {self.version}")
            else:
                lines.append(f"{p.what}: {p.status} at {p.path} ({check}{size}{extra})")
        lines += self.origin.notes() if self.origin else []
        total = sum(p.bytes for p in self.parts)
        lines.append(f"version {self.version}: {format_size(total)} fetched in {self.seconds:.1f} s")
        return "\n".join(lines)


# ---------------------------------------------------------------------- small helpers


def free_space(path: Path) -> int:
    """Free bytes on the filesystem of ``path`` (or the OBJATHOR_FREE_SPACE test hook)."""
    hook = os.environ.get("OBJATHOR_FREE_SPACE")
    if hook:
        return parse_size(hook)
    return shutil.disk_usage(path).free


def _warn(text: str) -> None:
    print(f"objathor-release: {text}", file=sys.stderr, flush=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _locked(lock: Path, what: str) -> Iterator[None]:
    """An exclusive lock on ``lock`` (flock); says so when another process holds it and waits."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _warn(f"waiting for another download of {what} to finish (lock {lock})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (deleting lock files races)


def _replace_dir(src: Path, dst: Path, trash: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is moved to ``trash`` first, then deleted."""
    if dst.exists() or dst.is_symlink():
        _remove(trash)
        os.replace(dst, trash)
    os.replace(src, dst)
    _remove(trash)


def parse_uids(uids: str | None = None, uids_file: str | None = None) -> list[str] | None:
    """``--uids a,b,c`` and ``--uids-file FILE`` (one uid per line, ``#`` comments) as one list."""
    if not uids and not uids_file:
        return None
    out: list[str] = [u.strip() for u in (uids or "").split(",") if u.strip()]
    if uids_file:
        try:
            text = Path(uids_file).read_text()
        except OSError as exc:
            raise UsageError(f"--uids-file {uids_file}: {exc.strerror or exc}") from None
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(line)
    if not out:
        raise UsageError("--uids/--uids-file gave no uids: list at least one")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------- the manifest


def _check_manifest(data: bytes, url: str, version: str) -> dict[str, Any]:
    """Parse manifest.json; check it against schemas/manifest.schema.json, its version and member paths."""
    from objathor_release.build.manifest import manifest_problems

    def bad(why: str) -> InputError:
        return InputError(f"{url}: {why}: the release's manifest is malformed; tell its publisher")

    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise bad(f"not JSON ({str(exc)[:100]})") from None
    except RecursionError:
        raise bad("nested too deeply to be a manifest") from None
    try:
        problems = manifest_problems(manifest)
    except RecursionError:
        raise bad("nested too deeply to be a manifest") from None
    if problems:
        raise bad(f"field {problems[0]}")
    if manifest["version"] != version:
        raise bad(f"field version is {manifest['version']!r}, not {version}")
    for i, art in enumerate(manifest["artifacts"]):
        for j, m in enumerate(art["members"]):
            try:
                member_parts(m["path"])
            except ValueError as exc:
                raise bad(f"field artifacts[{i}].members[{j}].path {m['path']!r} is unsafe ({exc})") from None
    result: dict[str, Any] = manifest
    return result


def _artifact(manifest: Mapping[str, Any] | None, *names: str) -> dict[str, Any] | None:
    if manifest is None:
        return None
    for art in manifest["artifacts"]:
        if art["name"] in names:
            result: dict[str, Any] = art
            return result
    return None


def _top(artifact: Mapping[str, Any] | None) -> str | None:
    """The top-level directory the manifest's member paths share (None if it lists none)."""
    members = (artifact or {}).get("members") or []
    tops = {member_parts(m["path"])[0] for m in members if member_parts(m["path"])}
    if len(tops) > 1:
        raise InputError(f"manifest.json: {artifact and artifact['name']} lists members under "
                         f"{len(tops)} top-level folders ({', '.join(sorted(tops)[:3])}): expected one")
    return tops.pop() if tops else None


# ---------------------------------------------------------------------- one download


class _Downloader:
    """One ``download_version`` call: the shared client, the paths, the manifest."""

    def __init__(self, version: str, root: Path, source: Source, http: Http, *, require_checksums: bool,
                 show_progress: bool, keep_tar: bool) -> None:
        self.version, self.root, self.source, self.http = version, root, source, http
        self.require_checksums = require_checksums
        self.show_progress = show_progress
        self.keep_tar = keep_tar
        self.vdir = root / version
        self.manifest: dict[str, Any] | None = None
        self.needed: int | None = None  # bytes the part being fetched needs on disk, once known

    # ------------------------------------------------------------------ paths

    def target(self, what: str) -> Path:
        if what == "holodeck-base":
            return self.root / "holodeck" / self.version
        return self.vdir / ("annotations.json.gz" if what == "annotations" else what)

    def state(self, what: str) -> Path:
        return (self.root / "holodeck" if what == "holodeck-base" else self.vdir) / STATE

    def key(self, what: str) -> str:
        return self.version if what == "holodeck-base" else what

    def url(self, what: str) -> str:
        return self.source.holodeck_url if what == "holodeck-base" else self.source.url(FILES[what])

    def artifact(self, what: str) -> dict[str, Any] | None:
        if what == "holodeck-base":
            return _artifact(self.manifest, f"holodeck/{self.version}.tar", "holodeck.tar")
        return _artifact(self.manifest, FILES[what])

    # ------------------------------------------------------------------ checks

    def unknown_version(self, url: str, status: int) -> UsageError:
        known = ", ".join(KNOWN_VERSIONS)
        where = f"; is --base-url {self.source.version_url.rsplit('/', 1)[0]} right?" if self.source.custom \
            else ""
        return UsageError(f"version {self.version} was not found: {url} answered HTTP {status}; "
                          f"known public versions: {known}{where}")

    def check_response(self, url: str, kind: str, expected: int | None = None,
                       need: Callable[[Info], int] | None = None) -> Callable[[Info], None]:
        """A check run on the first response of ``url``: content type, size, free space."""
        def check(info: Info) -> None:
            ctype = info.content_type
            if _is_page_type(ctype, kind):
                raise TransferError(f"{url} returned a page of type {ctype} instead of {kind} data: check "
                                    "--base-url and --version (a proxy, captive portal or error page may be "
                                    "answering)")
            if expected is not None and info.size is not None and info.size != expected:
                self.sniff_remote(url, kind, info.size)
                raise ChecksumError(f"{url} is {info.size} bytes on the server but manifest.json says "
                                    f"{expected}: the upload is incomplete or stale; tell the publisher")
            if need is not None and info.size is not None:
                self.check_space(url, need(info))
        return check

    def sniff_remote(self, url: str, kind: str, size: int) -> None:
        """When the server's size is not the manifest's: is it an error page? (its first bytes say)."""
        label = {"tar": "a tar", "gzip": "gzip data"}.get(kind)
        if label is None or size <= 0:
            return
        try:
            head = b"".join(self.http.stream(url, start=0, end=min(size, 512) - 1))
        except TransferError:
            return  # the size mismatch is the error to report
        _sniff_page(url, head, label)

    def check_space(self, url: str, needed: int) -> None:
        self.needed = needed
        self.root.mkdir(parents=True, exist_ok=True)
        free = free_space(self.root)
        if needed > free:
            raise UsageError(f"not enough space in {self.root} for {url}: it needs {format_size(needed)}, "
                             f"{format_size(free)} is free; free some space or pass --path on a larger disk")

    def size_of(self, url: str, art: Mapping[str, Any] | None) -> int | None:
        """The size for the progress bar: the manifest's, else the server's (None if it will not say)."""
        if art is not None:
            return int(art["size"])
        if not self.show_progress:
            return None
        return self.http.info(url).size

    # ------------------------------------------------------------------ markers

    def marker(self, what: str) -> Path:
        return self.state(what) / f"{self.key(what)}.done"

    def done(self, what: str, *, quiet: bool = False) -> dict[str, Any] | None:
        """The finished marker, if it is there, its target exists and it matches the manifest."""
        try:
            mark: dict[str, Any] = json.loads(self.marker(what).read_text())
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(mark, dict) or not self.target(what).exists():
            return None
        art = self.artifact(what)
        if art is not None and mark.get("sha256") != art["sha256"].lower():
            if not quiet:
                    _warn(f"{self.target(what)} is from an earlier release of {self.version} "
                      f"(sha256 {str(mark.get('sha256'))[:12]}..., manifest.json now says "
                      f"{art['sha256'][:12]}...): downloading it again")
            return None
        return mark

    def write_marker(self, what: str, url: str, sha256: str, size: int, verified: bool,
                     **extra: Any) -> None:
        finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {"what": what, "version": self.version, "url": url, "sha256": sha256, "size": size,
                  "verified": verified, "finished": finished, **extra}
        with atomic_write(self.marker(what)) as fh:
            fh.write(json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")

    # ------------------------------------------------------------------ parts

    def run_part(self, what: str, uids: Sequence[str] | None) -> PartResult:
        """Fetch one part under its lock; a full disk or an unwritable folder becomes one line."""
        self.needed = None
        try:
            return self._run_part(what, uids)
        except ReleaseError:
            raise
        except OSError as exc:
            where = exc.filename or self.target(what)
            if is_disk_full(exc):
                raise disk_full(where, self.needed) from None
            if exc.errno in _PATH_ERRORS:
                raise UsageError(f"cannot write {where}: {exc.strerror}: check --path and its "
                                 "permissions") from None
            raise TransferError(f"cannot write {where} while fetching {what}: {exc.strerror or exc}; "
                                "check --path and run the command again") from None

    def _run_part(self, what: str, uids: Sequence[str] | None) -> PartResult:
        state = self.state(what)
        with _locked(state / f"{self.key(what)}.lock", f"{what} of {self.version}"):
            if what == "assets" and uids is not None:
                from objathor_release.fetch.uids import fetch_uids

                return fetch_uids(self, uids)
            mark = self.done(what)
            if mark is not None:
                return PartResult(what, self.target(what), "already there", bool(mark.get("verified")))
            if self.manifest is not None and self.artifact(what) is None:
                if self.require_checksums:
                    raise ChecksumError(f"manifest.json of {self.version} does not list {self.url(what)}, so "
                                        "it cannot be verified, and --require-checksums was given")
                _warn(f"note: manifest.json of {self.version} does not list {self.url(what)}: it is "
                      "unverified")
            if what == "annotations":
                return self.fetch_file(what)
            return self.fetch_tar(what)

    def _twice(self, name: str, attempt: Callable[[], PartResult], cleanup: Callable[[], None]) -> PartResult:
        """Run ``attempt``; on a checksum mismatch delete what failed and try once more."""
        try:
            return attempt()
        except ChecksumError as exc:
            cleanup()
            _warn(f"{exc}; deleted it, retrying {name} once")
        try:
            return attempt()
        except ChecksumError:
            cleanup()
            raise

    def fetch_file(self, what: str) -> PartResult:
        """annotations.json.gz: parallel Range requests into a ``.part``, verified, renamed into place."""
        url, target, art = self.url(what), self.target(what), self.artifact(what)
        part, state_json = part_paths(target)

        def cleanup() -> None:
            for p in (part, state_json):
                _remove(p)

        def attempt() -> PartResult:
            digest, size = self._fetch_file(url, target, art, "gzip" if target.suffix == ".gz" else "file")
            self.write_marker(what, url, digest, size, art is not None)
            return PartResult(what, target, "downloaded", art is not None, size)

        # A file some other tool (objathor's downloader) left under the final name: keep it only if it
        # is exactly the listed one.
        if (art is not None and target.is_file() and target.stat().st_size == art["size"]
                and sha256_file(target) == art["sha256"].lower()):
            self.write_marker(what, url, art["sha256"].lower(), art["size"], True)
            return PartResult(what, target, "already there", True, note="checked against manifest.json")
        return self._twice(target.name, attempt, cleanup)

    def _fetch_file(self, url: str, target: Path, art: dict[str, Any] | None, kind: str) -> tuple[str, int]:
        """Download into ``target``'s ``.part``, verify, rename to ``target``; returns (sha256, size)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        part, state_json = part_paths(target)
        have = part.stat().st_size if part.exists() else 0  # preallocated: already reserved on disk
        copies = 2 if kind == "tar" else 1  # a kept tar is extracted beside itself
        check = self.check_response(url, kind, art["size"] if art else None,
                                    need=lambda info: copies * (info.size or 0) - have)
        with progress(self.size_of(url, art), f"download {target.name}",
                      enabled=self.show_progress) as bar:
            info = download_file(self.http, url, target, check=check, bar=bar)
        if kind in ("gzip", "tar"):
            with open(part, "rb") as fh:
                _sniff_page(url, fh.read(512), "gzip data" if kind == "gzip" else "a tar")
        digest = sha256_file(part)
        size = part.stat().st_size
        if art is not None:
            if size != art["size"] or digest != art["sha256"].lower():
                raise ChecksumError(f"{url}: downloaded {size} bytes with sha256:{digest}, manifest.json "
                                    f"says {art['size']} bytes with sha256:{art['sha256'].lower()}")
        elif kind == "gzip":
            with open(part, "rb") as fh:
                if fh.read(2) != b"\x1f\x8b":
                    raise TransferError(f"{url} is not gzip data (an error page?): check --base-url and "
                                        "--version")
        if info.size is not None and size != info.size:
            raise TransferError(f"{url}: got {size} bytes, the server announced {info.size}; run again")
        os.replace(part, target)
        _remove(state_json)
        return digest, size

    # ------------------------------------------------------------------ tars

    def fetch_tar(self, what: str) -> PartResult:
        """assets/features/holodeck-base: stream into the safe extractor, verify, rename into place."""
        url, art = self.url(what), self.artifact(what)
        name = url.rsplit("/", 1)[1]
        staging = self.state(what) / f"{self.key(what)}.staging"
        kept = self.vdir / FILES[what] if self.keep_tar and what in FILES else None

        def cleanup() -> None:
            _remove(staging)
            if kept is not None:
                for p in (kept, *part_paths(kept), self.state(what) / f"{kept.name}.done"):
                    _remove(p)

        def attempt() -> PartResult:
            if staging.exists():
                _warn(f"restarting the interrupted extraction of {name} (removing {staging})")
                _remove(staging)
            staging.mkdir(parents=True)
            if kept is not None:
                digest, size = self._extract_kept(what, url, art, kept, staging)
            else:
                digest, size = self._extract_stream(url, art, staging, name)
            top = self._place(what, staging)
            self.write_marker(what, url, digest, size, art is not None, top=top)
            _remove(staging)
            return PartResult(what, self.target(what), "downloaded", art is not None, size)

        try:
            return self._twice(name, attempt, cleanup)
        except Exception:
            _remove(staging)  # an interrupted run (Ctrl-C, kill) leaves it; the next run restarts cleanly
            raise

    def _extractor(self, art: dict[str, Any] | None, staging: Path, name: str) -> TarStreamExtractor:
        expect = expected_members(art["members"]) if art is not None and art.get("members") else None
        return TarStreamExtractor(staging, top=_top(art), expect=expect, source=name)

    def _extract_stream(self, url: str, art: dict[str, Any] | None, staging: Path,
                        name: str) -> tuple[str, int]:
        """Stream ``url`` into the extractor; a reader thread downloads and hashes the whole stream."""
        extractor = self._extractor(art, staging, name)
        check = self.check_response(url, "tar", art["size"] if art else None,
                                    need=lambda info: info.size or 0)
        chunks: queue.Queue[Any] = queue.Queue(maxsize=8)
        stop = threading.Event()
        digest = hashlib.sha256()
        total = 0
        end = object()

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    chunks.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        def reader() -> None:
            nonlocal total
            head: bytearray | None = bytearray()  # the first block, held back until it is sniffed
            try:
                for data in self.http.stream(url, on_open=check, stop=stop):
                    digest.update(data)
                    total += len(data)
                    if head is not None:
                        head += data
                        if len(head) < 512:
                            continue
                        _sniff_page(url, bytes(head))
                        data, head = bytes(head), None
                    put(data)
                if head:
                    _sniff_page(url, bytes(head))
                    put(bytes(head))
                put(end)
            except BaseException as exc:  # handed to the main thread, which raises it
                put(exc)

        thread = threading.Thread(target=reader, name="download-reader", daemon=True)
        with progress(self.size_of(url, art), f"download {name}", enabled=self.show_progress) as bar:
            thread.start()
            try:
                while True:
                    item = chunks.get()
                    if item is end:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    extractor.feed(item)
                    bar.update(len(item))
                extractor.finish()
            finally:
                stop.set()
                extractor.close()
                thread.join(timeout=5)  # it stops at its next read; do not wait out a read timeout
        sha = digest.hexdigest()
        if art is not None and (total != art["size"] or sha != art["sha256"].lower()):
            raise ChecksumError(f"{url}: the stream was {total} bytes with sha256:{sha}, manifest.json says "
                                f"{art['size']} bytes with sha256:{art['sha256'].lower()}")
        return sha, total

    def _extract_kept(self, what: str, url: str, art: dict[str, Any] | None, kept: Path,
                      staging: Path) -> tuple[str, int]:
        """``--keep-tar``: fetch the tar like a single file (verified), then extract it from disk.

        The kept tar has its own marker, so a later run neither fetches it again
        nor trusts a same-named file some other tool left half-written.
        """
        tar_mark = self.state(what) / f"{kept.name}.done"
        digest: str | None = None
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, RecursionError):
            saved = json.loads(tar_mark.read_text())
            if kept.exists() and kept.stat().st_size == saved["size"] and (
                    art is None or saved["sha256"] == art["sha256"].lower()):
                digest, size = saved["sha256"], saved["size"]
        if digest is None:
            _remove(tar_mark)
            digest, size = self._fetch_file(url, kept, art, "tar")
            with atomic_write(tar_mark) as fh:
                fh.write(json.dumps({"url": url, "sha256": digest, "size": size}).encode())
        extractor = self._extractor(art, staging, kept.name)
        with open(kept, "rb") as fh:
            while block := fh.read(4 * 1024 * 1024):
                extractor.feed(block)
        extractor.finish()
        return digest, size

    def _place(self, what: str, staging: Path) -> str:
        """Rename the extracted top-level folder to its objathor name; returns the tar's folder name."""
        entries = [p for p in staging.iterdir()]
        if len(entries) != 1 or not entries[0].is_dir():
            raise InputError(f"{self.url(what)} holds {len(entries)} top-level entries: expected one folder")
        extracted = entries[0]
        if what == "features":
            extracted = _flatten_pkl(extracted, staging / ".features")
        target = self.target(what)
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace_dir(extracted, target, self.state(what) / f"{self.key(what)}.old")
        return entries[0].name

def _sniff_page(url: str, data: bytes, kind: str = "a tar") -> None:
    """Refuse a body that is an error page (HTML, XML, JSON or plain text), whatever its type says.

    For JSON (manifest.json) only markup is a page. Binary data (a tar's first
    header, gzip) always holds a NUL or the gzip magic in its first 512 bytes;
    text without either is a page.
    """
    block = bytes(data[:512])
    head = block.lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body", b"<error")):
        what = "an HTML/XML page"
    elif kind == "JSON" or block.startswith(b"\x1f\x8b") or b"\0" in block or not block:
        return
    elif head.startswith((b"{", b"[")):
        what = "a JSON page"
    elif head.startswith(b"<"):
        what = "an HTML/XML page"
    else:
        what = "a text page"
    text = "".join(c if c.isprintable() else " " for c in block[:80].decode("utf-8", "replace")).strip()
    raise TransferError(f"{url} returned {what} instead of {kind} (it begins {text[:60]!r}): check "
                        "--base-url and --version (a proxy, captive portal or error page may be answering)")


def _flatten_pkl(folder: Path, out: Path) -> Path:
    """objathor's features layout: every ``*.pkl`` of the tar, flat in one folder."""
    out.mkdir()
    found = 0
    for pkl in sorted(folder.rglob("*.pkl")):
        if not pkl.is_file() or pkl.is_symlink():
            continue
        dest = out / pkl.name
        if dest.exists():
            raise InputError(f"features.tar holds two files named {pkl.name}: objathor's layout keeps them "
                             "in one folder, so the names must differ")
        os.replace(pkl, dest)
        found += 1
    if not found:
        raise InputError("features.tar holds no *.pkl files: expected CLIP/SBERT feature files")
    shutil.rmtree(folder)
    return out


# ---------------------------------------------------------------------- the entry points


def download_version(
    what: str,
    version: str,
    *,
    path: str | Path | None = None,
    base_url: str | None = None,
    uids: Iterable[str] | None = None,
    require_checksums: bool = False,
    show_progress: bool = True,
    keep_tar: bool = False,
    connections: int | None = None,
    http_config: HttpConfig | None = None,
    trusted_keys: Sequence[str] = (),
    require_signature: bool = False,
) -> DownloadResult:
    """Download ``what`` (annotations, assets, features, holodeck-base or all) of ``version``.

    ``path`` is where versions live (default ``~/.objathor-assets``); ``base_url``
    (default ``$OBJATHOR_BASE_URL``, else objathor's public table) serves
    ``{base}/{VERSION}/...`` and ``{base}/holodeck/{VERSION}.tar``. ``uids``
    limits assets to those uids. ``trusted_keys`` (base64 Ed25519 public keys or
    files holding one) check manifest.json.sig, ``require_signature`` refuses an
    unsigned version (see :mod:`.origin`). Raises the errors of :mod:`.errors`.
    """
    started = time.monotonic()
    if what not in WHATS:
        raise UsageError(f"cannot download {what!r}: choose one of {', '.join(WHATS)}")
    validate_version(version)
    uid_list = list(dict.fromkeys(uids)) if uids is not None else None
    for uid in uid_list or []:
        if not uid or "/" in uid or uid in (".", "..") or "\\" in uid:
            raise UsageError(f"uid {uid!r} is not a valid asset folder name")
    root = Path(path if path is not None else DEFAULT_PATH).expanduser()
    if base_url is None:
        base_url = os.environ.get("OBJATHOR_BASE_URL") or None
    source = resolve_source(version, base_url)
    trust = TrustPolicy.load(trusted_keys, require_signature)
    config = http_config or HttpConfig.from_env(connections=connections)
    http = Http(config)
    d = _Downloader(version, root, source, http, require_checksums=require_checksums,
                    show_progress=show_progress, keep_tar=keep_tar)
    result = DownloadResult(version, root)
    try:
        d.manifest, result.origin = _load_manifest(http, source, version, trust)
        result.manifest = d.manifest is not None
        parts = _choose_parts(d, what)
        if d.manifest is None:
            if require_checksums:
                raise ChecksumError(f"version {version} has no manifest.json at "
                                    f"{source.url('manifest.json')}, so it cannot be verified, and "
                                    "--require-checksums was given")
            _warn(f"note: version {version} has no manifest.json, so this download is unverified "
                  "(pass --require-checksums to refuse unverified versions)")
        for part in PARTS:
            if part not in parts:
                if what == "all":
                    result.parts.append(PartResult(part, d.target(part), "not in this version", True))
                continue
            result.parts.append(d.run_part(part, uid_list if part == "assets" else None))
    finally:
        http.close()
        result.seconds = time.monotonic() - started
    return result


def _load_manifest(http: Http, source: Source, version: str,
                   trust: TrustPolicy) -> tuple[dict[str, Any] | None, OriginResult]:
    """manifest.json (None if the version has none), after its origin checks on the exact bytes."""
    url = source.url("manifest.json")

    def check(info: Info) -> None:
        if _is_page_type(info.content_type, "json"):
            raise TransferError(f"{url} returned a page of type {info.content_type} instead of JSON: "
                                "check --base-url and --version")
    try:
        data, _ = http.fetch_bytes(url, limit=MANIFEST_LIMIT, check=check)
    except NotFound:  # only a 404: an older version without one (401/403/5xx are errors, never "none")
        return None, check_served_manifest(http, url, version, None, trust)
    _sniff_page(url, data, "JSON")
    origin = check_served_manifest(http, url, version, data, trust)
    return _check_manifest(data, url, version), origin


def _choose_parts(d: _Downloader, what: str) -> list[str]:
    """The parts to fetch; for ``all``, those the version has (by manifest, else by asking the server)."""
    if d.manifest is None:
        _probe_version(d, "annotations" if what == "all" else what)
    if what != "all":
        return [what]
    out = []
    for part in PARTS:
        if part in ("annotations", "assets") or d.artifact(part) is not None or d.done(part, quiet=True):
            out.append(part)
            continue
        try:
            d.http.info(d.url(part))
            out.append(part)
        except NotFound:
            pass
    return out


def _probe_version(d: _Downloader, part: str) -> None:
    """Without a manifest: is the version there at all, and does it have ``part``? Else say which."""
    try:
        d.http.info(d.url(part))
        return
    except NotFound as exc:
        missing = exc
    if part != "annotations":
        try:
            d.http.info(d.url("annotations"))
        except NotFound:
            pass
        else:
            raise UsageError(f"version {d.version} has no {part}: {missing.url} answered HTTP "
                             f"{missing.status}")
    raise d.unknown_version(missing.url, missing.status)


def run_download_command(args: Any) -> int:
    """``objathor-release download WHAT --version V [...]``: the CLI runner."""
    uids = parse_uids(getattr(args, "uids", None), getattr(args, "uids_file", None))
    if uids is not None and args.what not in ("assets", "all"):
        raise UsageError("--uids/--uids-file select assets: use them with 'download assets' or "
                         "'download all'")
    result = download_version(
        args.what, args.version, path=args.path, base_url=args.base_url, uids=uids,
        require_checksums=args.require_checksums, show_progress=not getattr(args, "quiet", False),
        keep_tar=getattr(args, "keep_tar", False), connections=getattr(args, "connections", None),
        trusted_keys=getattr(args, "trusted_key", None) or (),
        require_signature=getattr(args, "require_signature", False),
    )
    print(result.summary())
    return 0
