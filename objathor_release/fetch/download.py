"""Download a dataset version into ``~/.objathor-assets``: fast, verified, resumable, safe.

    download_version("assets", "2023_09_23")                  # the library call
    objathor-release download assets --version 2023_09_23     # the command (cli/fetch.py)

The cut: this module coordinates one call. It resolves where the version is
served and where it lands (:mod:`.layout`), loads and checks the manifest and
its origin (:mod:`.origin`), chooses the parts, and runs each under its lock
(:mod:`.markers`), handing it to its fetcher: :mod:`.files` for
annotations.json.gz, :mod:`.tars` for assets.tar, features.tar and the Holodeck
base tar, :mod:`.uids` for some assets only. It returns a
:class:`DownloadResult`; it prints nothing: notes are logged as warnings (the
CLI shows each as an ``objathor-release: <note>`` line on stderr).

assets.tar and features.tar stream from the server straight into the safe
extractor (:mod:`.extract`) while the whole stream is hashed: no copy of the
tar on disk. Single files come with parallel Range requests into a
preallocated ``.part`` (:mod:`.ranges`). ``uids=`` fetches only some assets,
by the member offsets in the release's manifest.json.

With manifest.json every byte is checked (whole files and every extracted
member against their sha256); a mismatch deletes what failed, retries once,
then fails. Without one (older releases) one note says the data is unverified,
and ``require_checksums=True`` refuses instead.

A hostile or unlucky server cannot hang a download or leave half of it
behind: every read has a minimum throughput (:mod:`.transport`), redirects go
only to http(s) URLs, error pages of any type (HTML, XML, JSON, text) are named
as such (:mod:`.pages`), 401/403 say "access denied", and only a 404 for
manifest.json means a version without one. A full disk, an unwritable folder
or a manifest that lies about its members is one line, with the staging folder
removed and the lock released.
"""

from __future__ import annotations

import errno
import os
import re
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from objathor_release.errors import ChecksumError, ReleaseError, TransferError, UsageError
from objathor_release.fetch.files import fetch_file
from objathor_release.fetch.http import Http, HttpConfig, NotFound
from objathor_release.fetch.job import Job, Note, PartResult
from objathor_release.fetch.layout import DEFAULT_PATH, PARTS, WHATS, Part, resolve_source
from objathor_release.fetch.markers import locked, read_done
from objathor_release.fetch.origin import load_manifest
from objathor_release.fetch.ranges import disk_full
from objathor_release.fetch.shards import ShardPlan, Slice, fetch_shards, shard_plan
from objathor_release.fetch.tars import fetch_tar
from objathor_release.fetch.uids import fetch_uids
from objathor_release.fsutil import is_disk_full
from objathor_release.s3.presign import Presigner
from objathor_release.s3.target import redact
from objathor_release.settings import format_size, validate_version
from objathor_release.trust.origin import OriginResult, TrustPolicy

__all__ = ["DownloadResult", "PartResult", "download_version", "resolve_source"]

#: a query string that carries a SigV4 signature, key id or token (a presigned URL's)
_SIGNED_QUERY = re.compile(r"\?[^\s'\"]*X-Amz-[^\s'\"]*", re.IGNORECASE)
#: errors that say --path is unusable (read-only, not ours, a file where a folder must be)
_PATH_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR})


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
        skipped = ("not in this version", "not in this slice")
        return all(p.verified for p in self.parts if p.status not in skipped)

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
            elif p.status == "not in this slice":
                lines.append(f"{p.what}: {p.note}")
            else:
                lines.append(f"{p.what}: {p.status} at {p.path} ({check}{size}{extra})")
        lines += self.origin.notes() if self.origin else []
        total = sum(p.bytes for p in self.parts)
        lines.append(f"version {self.version}: {format_size(total)} fetched in {self.seconds:.1f} s")
        return "\n".join(lines)


def download_version(
    what: str,
    version: str,
    *,
    path: str | Path | None = None,
    base_url: str | None = None,
    layout: str = "versioned",
    uids: Iterable[str] | None = None,
    require_checksums: bool = False,
    show_progress: bool = True,
    keep_tar: bool = False,
    connections: int | None = None,
    http_config: HttpConfig | None = None,
    trusted_keys: Sequence[str] = (),
    require_signature: bool = False,
    on_note: Note | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    shard_slice: tuple[int, int] | None = None,
) -> DownloadResult:
    """Download ``what`` (annotations, assets, features, holodeck-base or all) of ``version``.

    ``path`` is where versions live (default ``~/.objathor-assets``); ``base_url``
    (default ``$OBJATHOR_BASE_URL``, else objathor's public table) serves
    ``{base}/{VERSION}/...`` and ``{base}/holodeck/{VERSION}.tar``; ``layout="root"``
    reads ``{base}/NAME`` instead, and a ``{version}`` in the URL says where the
    version goes (see :func:`~objathor_release.fetch.layout.resolve_source`). ``uids``
    limits assets to those uids. ``trusted_keys`` (base64 Ed25519 public keys or
    files holding one) check manifest.json.sig, ``require_signature`` refuses an
    unsigned version (see :mod:`objathor_release.trust.origin`). Each note shown
    while the download runs is logged as a warning, or given to ``on_note``
    instead when a caller passes one. Raises the errors of
    :mod:`objathor_release.errors`.

    A ``base_url`` of ``s3://BUCKET/PREFIX`` reads a private bucket over the S3 API: the endpoint
    is ``endpoint_url`` (else ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or ``R2_ACCOUNT_ID``), the
    credentials those of ``profile`` or the environment, as the upload finds them; every request is
    presigned just before it is sent, and everything shown or recorded keeps the ``s3://`` form.

    ``shard_slice=(K, N)`` fetches only the shards of a sharded assets tar whose index ``i`` has
    ``i % N == K`` (an unsharded release's assets.tar is shard 0); see :mod:`.shards`.
    """
    started = time.monotonic()
    if what not in WHATS:
        raise UsageError(f"cannot download {what!r}: choose one of {', '.join(WHATS)}")
    validate_version(version)
    chosen = Slice(*shard_slice) if shard_slice is not None else None
    if chosen is not None and (what not in ("assets", "all") or uids is not None):
        raise UsageError("--slice takes a part of the assets' shards: use it with 'download assets' or "
                         "'download all', and without --uids/--uids-file")
    uid_list = list(dict.fromkeys(uids)) if uids is not None else None
    for uid in uid_list or []:
        if not uid or "/" in uid or uid in (".", "..") or "\\" in uid:
            raise UsageError(f"uid {uid!r} is not a valid asset folder name")
    root = Path(path if path is not None else DEFAULT_PATH).expanduser()
    if base_url is None:
        base_url = os.environ.get("OBJATHOR_BASE_URL") or None
    source = resolve_source(version, base_url, layout)
    trust = TrustPolicy.load(trusted_keys, require_signature)
    config = http_config or HttpConfig.from_env(connections=connections, adaptive=connections is None)
    signer = _signer(source.version_url, endpoint_url, profile)
    http = Http(config, signer=signer)
    job = Job(http, root, source, require_checksums=require_checksums, show_progress=show_progress,
              keep_tar=keep_tar, on_note=on_note)
    result = DownloadResult(version, root)
    try:
        _run(job, result, what, uid_list, require_checksums, trust, chosen)
    except ReleaseError as exc:
        if signer is not None:  # messages name s3:// URLs only; this makes sure nothing signed slips through
            exc.args = tuple(_SIGNED_QUERY.sub("", redact(str(a), signer.secrets())) for a in exc.args)
        raise
    finally:
        http.close()
        result.seconds = time.monotonic() - started
    return result


def _signer(version_url: str, endpoint_url: str | None, profile: str | None) -> Presigner | None:
    """The request signer an ``s3://`` source needs (None for http(s) sources)."""
    if not version_url.startswith("s3://"):
        if endpoint_url or profile:
            raise UsageError("--endpoint-url and --profile are for downloading over the S3 API: pass "
                             "--base-url s3://BUCKET/PREFIX too")
        return None
    from objathor_release.s3.target import resolve_target

    bucket = urllib.parse.urlsplit(version_url).netloc
    target = resolve_target(bucket=bucket, prefix=None, endpoint_url=endpoint_url, profile=profile,
                            remote=None, rclone_config=None, require_credentials=True)
    return Presigner(target)


def _run(job: Job, result: DownloadResult, what: str, uid_list: list[str] | None, require_checksums: bool,
         trust: TrustPolicy, shard_slice: Slice | None) -> None:
    """Load the manifest, choose the parts and fetch each (``download_version`` closes up)."""
    version, source, root = job.version, job.source, job.root
    slim = uid_list if what == "assets" else None  # only these assets' members are needed, and kept
    job.manifest, result.origin = load_manifest(job.http, source.url("manifest.json"), version, trust, slim)
    result.manifest = job.manifest is not None
    plan = shard_plan(job.manifest, source.url("manifest.json"))  # a bad shard list: before any byte
    parts = {p: Part.of(p, root, source, job.manifest) for p in PARTS}
    chosen = _choose_parts(job, parts, what)
    if job.manifest is None:
        if require_checksums:
            raise ChecksumError(f"version {version} has no manifest.json at "
                                f"{source.url('manifest.json')}, so it cannot be verified, and "
                                "--require-checksums was given")
        job.note(f"note: version {version} has no manifest.json, so this download is unverified "
                 "(pass --require-checksums to refuse unverified versions)")
    for name, part in parts.items():
        if name not in chosen:
            if what == "all":
                result.parts.append(PartResult(name, part.target, "not in this version", True))
            continue
        if name == "assets":
            result.parts.append(_run_part(job, part, uid_list, plan, shard_slice))
        else:
            result.parts.append(_run_part(job, part, None))


def _run_part(job: Job, part: Part, uids: Sequence[str] | None, plan: ShardPlan | None = None,
              chosen: Slice | None = None) -> PartResult:
    """Fetch one part under its lock; a full disk or an unwritable folder becomes one line."""
    job.needed = None
    try:
        with locked(part.lock, f"{part.what} of {job.version}", job.note):
            return _fetch_part(job, part, uids, plan, chosen)
    except ReleaseError:
        raise
    except OSError as exc:
        where = exc.filename or part.target
        if is_disk_full(exc):
            raise disk_full(where, job.needed) from None
        if exc.errno in _PATH_ERRORS:
            raise UsageError(f"cannot write {where}: {exc.strerror}: check --path and its "
                             "permissions") from None
        raise TransferError(f"cannot write {where} while fetching {part.what}: {exc.strerror or exc}; "
                            "check --path and run the command again") from None


def _fetch_part(job: Job, part: Part, uids: Sequence[str] | None, plan: ShardPlan | None,
                chosen: Slice | None) -> PartResult:
    """The part's fetcher, unless its marker says it is done (the caller holds the lock)."""
    if plan is not None:
        return fetch_shards(job, part, plan, chosen, uids)
    if chosen is not None and not chosen.holds(0):
        return PartResult(part.what, part.target, "not in this slice", True,
                          note=f"version {job.version} is one {part.name} (shard 0 of 1), which slice "
                          f"{chosen} does not hold: nothing to fetch")
    if uids is not None:
        return fetch_uids(job, part, uids)
    mark = read_done(part, job.note)
    if mark is not None:
        return PartResult(part.what, part.target, "already there", bool(mark.get("verified")))
    if job.manifest is not None and part.artifact is None:
        if job.require_checksums:
            raise ChecksumError(f"manifest.json of {job.version} does not list {part.url}, so "
                                "it cannot be verified, and --require-checksums was given")
        job.note(f"note: manifest.json of {job.version} does not list {part.url}: it is unverified")
    return fetch_tar(job, part) if part.tar else fetch_file(job, part)


def _choose_parts(job: Job, parts: dict[str, Part], what: str) -> list[str]:
    """The parts to fetch; for ``all``, those the version has (by manifest, else by asking the server)."""
    if job.manifest is None:
        _probe_version(job, parts, "annotations" if what == "all" else what)
    if what != "all":
        return [what]
    out = []
    for name, part in parts.items():
        if name in ("annotations", "assets") or part.artifact is not None or read_done(part) is not None:
            out.append(name)
            continue
        try:
            job.http.info(part.url)
            out.append(name)
        except NotFound:
            pass
    return out


def _probe_version(job: Job, parts: dict[str, Part], name: str) -> None:
    """Without a manifest: is the version there at all, and does it have ``name``? Else say which."""
    try:
        job.http.info(parts[name].url)
        return
    except NotFound as exc:
        missing = exc
    if name != "annotations":
        try:
            job.http.info(parts["annotations"].url)
        except NotFound:
            pass
        else:
            raise UsageError(f"version {job.version} has no {name}: {missing.url} answered HTTP "
                             f"{missing.status}")
    raise job.unknown_version(missing.url, missing.status)
