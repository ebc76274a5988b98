"""Resumable, verified multipart upload of a release directory to R2 or any S3 API endpoint.

``upload_release`` sends every artifact named in ``RELEASE_DIR/manifest.json`` to
``BUCKET/PREFIX/NAME``, then ``SHA256SUMS``, ``manifest.json.sig`` (when the
release is signed) and ``manifest.json`` last: the manifest's presence marks a
version as published, so nobody sees half a release as complete.

Local files: each is opened once, through the release dir's descriptor, with
``O_NOFOLLOW``/``O_NONBLOCK`` on every component, and must be a regular file of
the manifest's size by ``fstat`` of that descriptor; a symlink, FIFO, device or
folder is refused with one line. Every later read is a ``pread`` of it, so a
rename over the name during the upload changes nothing. SHA256SUMS must list
exactly the manifest's artifacts and sha256.

Integrity: a part is read once to compute its md5 (sent as ``Content-MD5``) and,
in the same pass, the file's sha256: the parts of one file take turns in order
for that pass (then are sent concurrently), so the digest is the file's. An
object whose sha256 is not the manifest's is never completed: a single PUT is
not sent, a multipart upload is aborted, and the run ends with an InputError
naming the file. The part ETag the server returns must equal the local md5;
after completion the object's ETag must equal the one computed locally (md5 of
the parts' binary md5s, then ``-N``), and a HEAD checks size, ETag and the
``sha256`` metadata. Parts of an interrupted upload already on the server are
read and hashed too (in their turn) and kept only if their md5 equals the
server's ETag. An object already on the server is skipped only after the local
file was read in the remote part layout: its sha256 must be the manifest's and
its ETag the remote one. The ETag math, part reading and resume records live
in :mod:`.upload_state`; reading and checking the bucket in :mod:`.remote`.

Resume: ``RELEASE_DIR/.upload-state/`` (a real folder, never followed through a
symlink) holds one small JSON file per object (upload id, part size, per-part
md5, the local file's size/mtime/sha256). The next run lists the parts already
on the server and uploads only the rest. A stale upload id or a changed local
file starts over. ``cleanup_uploads`` aborts abandoned multipart uploads.

Idempotence and concurrent publishers: an object already on the server with the
same size, ETag and sha256 metadata is skipped; different content under the same
key, or a published version whose manifest differs, is refused without
``force``. Without ``force`` every object is created only if its key is free
(``If-None-Match: *`` on PutObject and CompleteMultipartUpload, which S3 and R2
honour). When another publisher created it first, the same content counts as
done and other content ends the run with PublishedError (exit 3) before
manifest.json: of two publishers of different content, at most one publishes,
and the one whose manifest.json lands has all its own objects (a loser stops at
its first taken key and never overwrites). manifest.json itself is compared byte
for byte when its create is refused. ``force`` writes unconditionally.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from objathor_release.build.manifest import MANIFEST as MANIFEST_NAME
from objathor_release.build.manifest import SIGNATURE as SIGNATURE_NAME
from objathor_release.build.manifest import SUMS as SUMS_NAME
from objathor_release.errors import (
    ChecksumError,
    InputError,
    PublishedError,
    ReleaseError,
    TransferError,
    UsageError,
)
from objathor_release.progress import Progress, progress
from objathor_release.publish.cleanup import cleanup_uploads, format_age, parse_duration
from objathor_release.publish.client import (
    clean_etag,
    client_error,
    client_secrets,
    error_code,
    head_or_none,
    http_status,
    is_transient,
    make_client,
    object_key,
    one_line,
)
from objathor_release.publish.remote import (
    SMALL_FILE_LIMIT,
    _object_problems,
    expected_digests,
    published_manifest,
    read_object,
)
from objathor_release.publish.target import S3Target, normalize_prefix, redact, resolve_target
from objathor_release.publish.upload_state import (
    SHA256_META,
    STATE_DIR,
    Job,
    LocalFile,
    PartReader,
    ReleaseDir,
    SequentialSha256,
    StateDir,
    UploadState,
    multipart_etag,
)
from objathor_release.settings import UploadConfig, format_size, format_table, parse_size

__all__ = [
    "FileResult", "S3Target", "UploadReport", "cleanup_uploads", "make_client", "resolve_target",
    "run_cleanup_command", "run_upload_command", "upload_release",
]

BACKOFF_BASE = 0.5  # seconds; doubles per attempt, with jitter
BACKOFF_CAP = 20.0
FINAL_NAMES = (SUMS_NAME, SIGNATURE_NAME, MANIFEST_NAME)  # uploaded last, in this order

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- results


@dataclass
class FileResult:
    """What happened to one file: ``status`` is uploaded, resumed, skipped or dry-run."""

    name: str
    key: str
    size: int
    sha256: str
    etag: str
    parts: int
    part_size: int
    status: str
    parts_uploaded: int = 0
    parts_resumed: int = 0
    multipart: bool = True

    @property
    def requests(self) -> int:
        """Requests a new upload of this file takes: HEAD check, create + parts + complete
        (or one PUT), HEAD verify."""
        return 2 + (self.parts + 2 if self.multipart else 1)


@dataclass
class UploadReport:
    """Every file's result, the number of UploadPart calls made, and a printable table."""

    bucket: str
    prefix: str
    endpoint_url: str
    results: list[FileResult] = field(default_factory=list)
    part_uploads: int = 0
    put_uploads: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    def etags(self) -> dict[str, str]:
        """name -> ETag of every object, for :func:`verify_remote`."""
        return {r.name: r.etag for r in self.results if r.etag}

    def table(self) -> str:
        if self.dry_run:
            head = ("file", "size", "part size", "parts", "requests")
            rows = [(r.name, format_size(r.size), format_size(r.part_size) if r.multipart else "-",
                     str(r.parts), str(r.requests)) for r in self.results]
        else:
            head = ("file", "size", "parts", "status", "etag")
            rows = [(r.name, format_size(r.size), f"{r.parts} x {format_size(r.part_size)}", r.status, r.etag)
                    for r in self.results]
        return format_table(head, rows)

    def summary(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        if self.dry_run:
            total = sum(r.size for r in self.results)
            requests = sum(r.requests for r in self.results)
            return (f"dry run: would upload {len(self.results)} files ({format_size(total)}) to {where} "
                    f"at {self.endpoint_url} in about {requests} requests (HEAD checks included); "
                    "the bucket was not contacted")
        counts = {s: sum(r.status == s for r in self.results) for s in ("uploaded", "resumed", "skipped")}
        rate = self.bytes_sent / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (f"{where}: {counts['uploaded']} uploaded, {counts['resumed']} resumed, {counts['skipped']} "
                f"skipped; {format_size(self.bytes_sent)} sent in {self.seconds:.1f} s ({rate:.1f} MB/s), "
                f"{self.part_uploads} part uploads; every object verified (the sha256 of the local bytes "
                "against manifest.json, then the remote size, ETag and sha256 metadata)")


# --------------------------------------------------------------------------- the plan


def _parse_manifest(data: bytes, path: Path) -> dict[str, Any]:
    """The manifest in ``data`` (the bytes that will be uploaded), validated like manifest.load_manifest."""
    from objathor_release.build.manifest import manifest_problems

    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: cannot be read ({exc}): rebuild it with `objathor-release manifest`") \
            from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}): rebuild it with `objathor-release manifest`") \
            from None
    problems = manifest_problems(manifest)
    if problems:
        raise InputError(f"{path}: field {problems[0]} (see schemas/manifest.schema.json): "
                         "rebuild it with `objathor-release manifest`")
    seen: set[str] = set()
    for art in manifest["artifacts"]:
        if art["name"] in seen:
            raise InputError(f"{path}: field artifacts: {art['name']!r} is listed twice: "
                             "rebuild the manifest")
        seen.add(art["name"])
    result: dict[str, Any] = manifest
    return result


def _open_manifest(rd: ReleaseDir) -> tuple[LocalFile, bytes, dict[str, Any]]:
    path = rd.path / MANIFEST_NAME
    file = rd.open(MANIFEST_NAME)
    if file is None:
        raise InputError(f"{path}: not found: run 'objathor-release manifest --release-dir {rd.path}'")
    try:
        data = file.read_all(SMALL_FILE_LIMIT)
        return file, data, _parse_manifest(data, path)
    except BaseException:
        file.close()
        raise


def load_release_manifest(release_dir: Path) -> dict[str, Any]:
    """Read and validate ``RELEASE_DIR/manifest.json`` (a regular file, never through a symlink)."""
    with ReleaseDir(release_dir) as rd:
        file, _, manifest = _open_manifest(rd)
        file.close()
    return manifest


def _check_name(name: str, release_dir: Path) -> None:
    parts = PurePosixPath(name).parts
    reserved = (MANIFEST_NAME, SUMS_NAME, SIGNATURE_NAME)
    if name in reserved:
        raise InputError(f"{release_dir / MANIFEST_NAME}: lists {name} as an artifact, but the upload writes "
                         f"{name} itself: remove {release_dir / name} if it is stale, then rerun "
                         f"'objathor-release manifest --release-dir {release_dir}'")
    if (not name or name.startswith("/") or ".." in parts or "." in name.split("/") or "\\" in name
            or name in reserved or "\0" in name or parts[0] == STATE_DIR):
        raise InputError(f"{release_dir / MANIFEST_NAME}: artifact name {name!r} is not a relative path "
                         "inside the release dir: rebuild the manifest")


def _check_sums(data: bytes, manifest: dict[str, Any], path: Path) -> None:
    """SHA256SUMS must list exactly the manifest's artifacts with their sha256 (in any order)."""
    from objathor_release.build.manifest import render_sums

    want = sorted(render_sums({"artifacts": [a]}).rstrip("\n") for a in manifest["artifacts"])
    try:
        have = sorted(line.rstrip("\n") for line in data.decode("utf-8").splitlines(keepends=True))
    except UnicodeDecodeError:
        have = []
    if have != want:
        raise InputError(f"{path}: does not list exactly the artifacts and sha256 of manifest.json: "
                         f"rerun 'objathor-release manifest --release-dir {path.parent}'")


def plan_jobs(rd: ReleaseDir, manifest: dict[str, Any], manifest_file: LocalFile, prefix: str,
              config: UploadConfig, log: Log = _stderr) -> list[Job]:
    """Every file to upload, artifacts first, then SHA256SUMS, manifest.json.sig (when the release
    has one) and manifest.json. Each file is opened here, once (a regular file, no symlink on the
    way), and its size checked on the open descriptor; the jobs own the descriptors."""
    jobs: list[Job] = []

    def add(name: str, file: LocalFile, size: int, sha: str) -> None:
        multipart = size >= config.multipart_threshold and size > 0
        part_size = config.part_size_for(size) if multipart else max(size, 1)
        if multipart and part_size != config.chunk_size:
            log(f"{name}: {format_size(size)} would need more than 10,000 parts of "
                f"{format_size(config.chunk_size)}: using {format_size(part_size)} parts")
        jobs.append(Job(name, file.path, object_key(prefix, name), size, sha, part_size, multipart,
                        file.mtime_ns, file))

    try:
        for art in manifest["artifacts"]:
            _check_name(art["name"], rd.path)
        for art in manifest["artifacts"]:
            name, size, sha = art["name"], int(art["size"]), str(art["sha256"])
            file = rd.open(name)
            if file is None:
                raise InputError(f"{rd.path / name}: listed in manifest.json but missing: "
                                 "rebuild the release")
            add(name, file, size, sha)
            if file.size != size:
                raise InputError(f"{file.path}: size {file.size} does not match manifest.json ({size}): "
                                 "rebuild the release or rerun 'objathor-release manifest'")
        sums = rd.open(SUMS_NAME)
        if sums is None:
            raise InputError(f"{rd.path / SUMS_NAME}: not found: run 'objathor-release manifest' for this "
                             "release dir")
        data = sums.read_all(SMALL_FILE_LIMIT)
        add(SUMS_NAME, sums, len(data), hashlib.sha256(data).hexdigest())
        _check_sums(data, manifest, sums.path)
        sig = rd.open(SIGNATURE_NAME)
        if sig is not None:
            data = sig.read_all(SMALL_FILE_LIMIT)
            add(SIGNATURE_NAME, sig, len(data), hashlib.sha256(data).hexdigest())
        data = manifest_file.read_all(SMALL_FILE_LIMIT)
        add(MANIFEST_NAME, manifest_file, len(data), hashlib.sha256(data).hexdigest())
    except BaseException:
        _close_jobs(jobs)
        raise
    return jobs


def _close_jobs(jobs: list[Job]) -> None:
    for job in jobs:
        if job.file is not None:
            job.file.close()


# --------------------------------------------------------------------------- errors and retries


class _PartMismatch(Exception):
    """The server's part ETag is not the md5 we sent: retry the part."""


class _Exists(ReleaseError):
    """A conditional create found the key taken (412 PreconditionFailed, 409 ConditionalRequestConflict)."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, _PartMismatch) or is_transient(exc)


def _backoff(attempt: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)


def _raise_if_taken(exc: BaseException) -> None:
    """Turn a failed precondition of a conditional create into :class:`_Exists`."""
    code = error_code(exc)
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or http_status(exc) == 412:
        raise _Exists(code or "412") from None


# --------------------------------------------------------------------------- the uploader


class _Uploader:
    """One run of ``upload_release``: shared client, executors, counters and abort flag."""

    def __init__(self, client: Any, bucket: str, prefix: str, version: str, states: StateDir | None,
                 config: UploadConfig, part_executor: Executor, log: Log, verbose: bool,
                 conditional: bool) -> None:
        self.client, self.bucket, self.config = client, bucket, config
        self.version, self.conditional = version, conditional
        self.where = f"s3://{bucket}/{prefix + '/' if prefix else ''}"
        self.endpoint = str(client.meta.endpoint_url)
        self.states = states
        self.parts_pool, self.log, self.verbose = part_executor, log, verbose
        self.abort = threading.Event()
        # At most one hashing pass per core at a time (each file's parts are hashed in order, one
        # after the other, so that the file's sha256 can be computed in the same pass as the md5s).
        self.hash_slots = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))
        self.bar: Progress = progress(0, "", enabled=False)
        self._lock = threading.Lock()
        self.part_uploads = 0
        self.put_uploads = 0
        self.bytes_sent = 0

    # -- helpers

    def _count(self, attr: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + n)

    def _call(self, action: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` with bounded retries (and backoff) on transient failures; clean errors otherwise."""
        attempts = self.config.max_part_attempts
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except ReleaseError:
                raise
            except Exception as exc:
                if not _retryable(exc):
                    raise client_error(self.client, exc, action, self.bucket) from None
                if attempt == attempts or self.abort.is_set():
                    detail = one_line(str(exc), client_secrets(self.client))
                    raise TransferError(
                        f"{action} failed after {attempt} attempts ({detail}): "
                        "run the same command again to resume"
                    ) from None
                wait = _backoff(attempt)
                if self.verbose:
                    self.log(f"{action}: {type(exc).__name__}, retrying in {wait:.1f} s")
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _state(self, job: Job) -> UploadState:
        name = UploadState.name_for(self.endpoint, self.bucket, job.key, job.name)
        return UploadState.load(self.states, name)

    def _target_fields(self, job: Job) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "bucket": self.bucket, "key": job.key}

    def _file(self, job: Job) -> LocalFile:
        assert job.file is not None, job.name
        return job.file

    def _changed(self, job: Job, got: str) -> InputError:
        if job.name in FINAL_NAMES:
            return InputError(f"{job.path} changed while it was being uploaded (sha256 {got} != {job.sha256} "
                              "read at the start): nothing was published; run the same command again")
        return InputError(f"{job.path} changed after manifest.json was written (sha256 {got} != manifest "
                          f"{job.sha256}): rebuild the release")

    # -- classification

    def classify(self, job: Job) -> tuple[str, str]:
        """("new" | "skip" | "conflict", remote ETag or reason) for one job.

        "skip" is only given after the local file was read in the remote object's part layout:
        its sha256 equals the manifest's and its ETag the remote one."""
        head = head_or_none(self.client, self.bucket, job.key)
        if head is None:
            return "new", ""
        etag = clean_etag(head.get("ETag"))
        size = _int_or(head.get("ContentLength"), -1)
        sha = (head.get("Metadata") or {}).get(SHA256_META, "")
        if size != job.size:
            return "conflict", f"size {size} != local {job.size}"
        if sha != job.sha256:
            return "conflict", "sha256 metadata differs" if sha else "no sha256 metadata"
        with self.hash_slots:
            want, local_sha = expected_digests(self.client, self.bucket, job, etag)
        if local_sha != job.sha256:
            raise self._changed(job, local_sha)
        if want and want == etag:
            return "skip", etag
        return "conflict", "ETag differs"

    # -- an object someone else created meanwhile

    def _taken(self, job: Job, etag: str, why: _Exists) -> FileResult:
        """A conditional create found ``job.key`` taken: the same content is success, other content
        means another upload of this version got there first."""
        head = head_or_none(self.client, self.bucket, job.key)
        if head is None:  # 409: another create of the key was under way at that moment
            raise TransferError(f"another upload of s3://{self.bucket}/{job.key} was being completed at the "
                                f"same moment ({why}): nothing was published by this run; run the same "
                                "command again") from None
        same = head is not None and not _object_problems(job.name, job.size, job.sha256, etag, head)
        if same and job.name == MANIFEST_NAME:
            ours = self._file(job).read_all(SMALL_FILE_LIMIT)
            same = read_object(self.client, self.bucket, job.key, len(ours)) == ours
        if not same:
            if job.name == MANIFEST_NAME:
                raise PublishedError(
                    f"another publish of version {self.version} won at {self.where}: its manifest.json "
                    f"differs from {job.path}: check what was published, then pass --force to overwrite it")
            raise PublishedError(
                f"another upload wrote s3://{self.bucket}/{job.key} first, with other content: another "
                f"publish of version {self.version} is running or ran at {self.where}; nothing was "
                "published by this run: check the bucket, then pass --force to overwrite")
        what = "already published, identical" if job.name == MANIFEST_NAME else "already there, identical"
        self.log(f"{job.name}: {what} (written meanwhile by another upload of the same release)")
        self.bar.update(job.size)
        return FileResult(job.name, job.key, job.size, job.sha256, etag, job.parts, job.part_size, "skipped",
                          multipart=job.multipart)

    # -- single PUT

    def put(self, job: Job) -> FileResult:
        import botocore.exceptions as bx

        action = f"uploading {job.name} to s3://{self.bucket}/{job.key}"
        body = PartReader(self._file(job), 0, job.size, str(job.path))
        sha = hashlib.sha256()
        with self.hash_slots:
            md5 = body.md5(sha.update)
        if sha.hexdigest() != job.sha256:
            raise self._changed(job, sha.hexdigest())
        extra = {"IfNoneMatch": "*"} if self.conditional else {}

        def attempt() -> str:
            body.seek(0)
            self._count("put_uploads")
            try:
                resp = self.client.put_object(
                    Bucket=self.bucket, Key=job.key, Body=body if job.size else b"", ContentLength=job.size,
                    ContentMD5=base64.b64encode(md5).decode(), ContentType=job.content_type,
                    Metadata={SHA256_META: job.sha256}, **extra,
                )
            except bx.ClientError as exc:
                _raise_if_taken(exc)
                raise
            if clean_etag(resp.get("ETag")) != md5.hex():
                raise _PartMismatch(f"server ETag {resp.get('ETag')} != local md5 {md5.hex()}")
            return md5.hex()

        try:
            etag = self._call(action, attempt)
        except _Exists as exc:
            return self._taken(job, md5.hex(), exc)
        self._count("bytes_sent", job.size)
        self.bar.update(job.size)
        self.verify_object(job, etag)
        self._record_complete(job, etag)
        return FileResult(job.name, job.key, job.size, job.sha256, etag, 1, job.part_size, "uploaded", 1,
                          multipart=False)

    # -- multipart

    def _resume(self, job: Job, state: UploadState) -> dict[int, str] | None:
        """part number -> ETag of the parts of the interrupted upload on the server that can be ours
        (right size, and the md5 recorded for them, if any, matches); None: start over. Each is read
        and hashed in its turn later, and kept only if its md5 equals that ETag."""
        import botocore.exceptions as bx

        upload_id = state.data.get("upload_id")
        if state.unreadable:
            self.log(f"{job.name}: the resume record {state.path} is unreadable: starting over")
        if not upload_id or not isinstance(upload_id, str):
            return None
        if not state.matches(self._target_fields(job), job.identity()):
            self.log(f"{job.name}: the local file or part size changed since the interrupted upload: "
                     "starting over")
            self._abort_upload(job.key, upload_id)
            return None
        server: dict[int, tuple[str, int]] = {}
        max_pages = job.parts // 1000 + 10
        try:
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=job.key, UploadId=upload_id)
            for i, page in enumerate(pages):
                if i >= max_pages:
                    raise TransferError(f"listing the parts of {job.key}: the server sent more than "
                                        f"{max_pages} pages for an upload of {job.parts} parts: run "
                                        "'objathor-release cleanup' for this prefix, then run again")
                for p in page.get("Parts") or []:
                    with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
                        server[int(p["PartNumber"])] = (clean_etag(p.get("ETag")), int(p.get("Size", -1)))
        except bx.ClientError as exc:
            if error_code(exc) in ("NoSuchUpload", "404"):
                self.log(f"{job.name}: the interrupted upload no longer exists on the server: starting over")
                return None
            raise client_error(self.client, exc, f"listing the parts of {job.key}", self.bucket) from None
        except ReleaseError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore, parsing: one clean line
            raise client_error(self.client, exc, f"listing the parts of {job.key}", self.bucket) from None
        known = state.md5s
        done: dict[int, str] = {}
        for number, (etag, size) in sorted(server.items()):
            if not 1 <= number <= job.parts or size != job.part_range(number)[1]:
                continue
            if number in known and known[number].hex() != etag:
                continue
            done[number] = etag
        self.log(f"{job.name}: resuming: {len(done)} of {job.parts} parts already on the server")
        return done

    def _abort_upload(self, key: str, upload_id: str) -> None:
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    def _part(self, job: Job, upload_id: str, number: int, state: UploadState, sha: SequentialSha256,
              on_server: str | None) -> tuple[bytes, bool]:
        """Hash part ``number`` in its turn (md5 and the file's sha256 in one read); send it unless the
        server already holds exactly these bytes. (md5, whether it was sent)."""
        offset, length = job.part_range(number)
        body = PartReader(self._file(job), offset, length, str(job.path))
        with sha.turn(number, self.abort), self.hash_slots:
            md5 = body.md5(sha.update)
        if on_server == md5.hex():
            state.record_part(number, md5)
            self.bar.update(length)
            return md5, False
        action = f"uploading part {number} of {job.parts} of {job.name}"

        def attempt() -> bytes:
            if self.abort.is_set():
                raise TransferError(f"{job.name}: stopped")
            body.seek(0)
            self._count("part_uploads")
            resp = self.client.upload_part(
                Bucket=self.bucket, Key=job.key, UploadId=upload_id, PartNumber=number, Body=body,
                ContentLength=length, ContentMD5=base64.b64encode(md5).decode(),
            )
            if clean_etag(resp.get("ETag")) != md5.hex():
                raise _PartMismatch(f"part ETag {resp.get('ETag')} != local md5 {md5.hex()}")
            return md5

        self._call(action, attempt)
        state.record_part(number, md5)
        self._count("bytes_sent", length)
        self.bar.update(length)
        if self.verbose:
            self.log(f"{job.name}: part {number}/{job.parts} ({format_size(length)}) uploaded")
        return md5, True

    def multipart(self, job: Job) -> FileResult:
        state = self._state(job)
        on_server = self._resume(job, state)
        if on_server is None:
            state.delete()
            create = {"Bucket": self.bucket, "Key": job.key, "ContentType": job.content_type,
                      "Metadata": {SHA256_META: job.sha256}}
            resp = self._call(f"starting the upload of {job.name}",
                              lambda: self.client.create_multipart_upload(**create))
            upload_id = resp.get("UploadId") if isinstance(resp, dict) else None
            if not upload_id or not isinstance(upload_id, str):
                raise TransferError(f"starting the upload of {job.name}: {self.endpoint} answered without an "
                                    "upload id: run the same command again")
            state = UploadState(state.folder, state.name, {
                **self._target_fields(job), **job.identity(), "upload_id": upload_id, "parts": {},
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat()})
            state.save()
            on_server = {}
        upload_id = str(state.data["upload_id"])
        sha = SequentialSha256(str(job.path))
        futures: dict[int, Future[tuple[bytes, bool]]] = {}
        slots = threading.BoundedSemaphore(self.config.upload_concurrency)
        done: dict[int, tuple[bytes, bool]] = {}
        try:
            for number in range(1, job.parts + 1):
                slots.acquire()
                if self.abort.is_set():
                    slots.release()
                    break
                fut = self.parts_pool.submit(self._part, job, upload_id, number, state, sha,
                                             on_server.get(number))
                fut.add_done_callback(lambda _f: slots.release())
                fut.add_done_callback(lambda f: self.abort.set() if f.exception() else None)
                futures[number] = fut
        finally:
            errors = []
            for number, fut in futures.items():
                try:
                    done[number] = fut.result()
                except BaseException as exc:  # noqa: BLE001 - collected, the first is raised below
                    errors.append(exc)
            state.save()
        if errors:
            first = next((e for e in errors if not str(e).endswith(": stopped")), errors[0])
            if isinstance(first, InputError):
                self._abort_upload(job.key, upload_id)
                state.delete()
            raise first
        if len(done) != job.parts:
            raise TransferError(f"{job.name}: stopped before every part was sent: run the same command again")
        if sha.hexdigest() != job.sha256:
            self._abort_upload(job.key, upload_id)
            state.delete()
            raise self._changed(job, sha.hexdigest())
        md5s = [done[n][0] for n in range(1, job.parts + 1)]
        sent = sum(1 for n in done if done[n][1])
        try:
            etag = self._complete(job, upload_id, md5s)
        except _Exists as exc:
            self._abort_upload(job.key, upload_id)
            state.delete()
            return self._taken(job, multipart_etag(md5s), exc)
        self.verify_object(job, etag)
        self._record_complete(job, etag)
        status = "resumed" if sent < job.parts else "uploaded"
        return FileResult(job.name, job.key, job.size, job.sha256, etag, job.parts, job.part_size, status,
                          sent, job.parts - sent)

    def _complete(self, job: Job, upload_id: str, md5s: list[bytes]) -> str:
        import botocore.exceptions as bx

        expected = multipart_etag(md5s)
        parts = [{"PartNumber": n, "ETag": f'"{m.hex()}"'} for n, m in enumerate(md5s, 1)]
        extra = {"IfNoneMatch": "*"} if self.conditional else {}

        def attempt() -> str:
            try:
                resp = self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=job.key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                    **extra)
                return clean_etag(resp.get("ETag"))
            except bx.ClientError as exc:
                _raise_if_taken(exc)
                code = error_code(exc)
                if code in ("InvalidPart", "InvalidPartOrder"):
                    self._state(job).delete()
                    self._abort_upload(job.key, upload_id)
                    raise TransferError(f"completing the upload of {job.name}: the server lacks parts it "
                                        f"listed ({code}): run the same command again, it starts over") \
                        from None
                if code != "NoSuchUpload":
                    raise
                # An earlier attempt may have completed it before the connection dropped.
                head = head_or_none(self.client, self.bucket, job.key)
                if head is not None and clean_etag(head.get("ETag")) == expected:
                    return expected
                self._state(job).delete()
                raise TransferError(f"{job.name}: the multipart upload vanished before it was completed: "
                                    "run the same command again to start over") from None

        etag: str = self._call(f"completing the upload of {job.name}", attempt)
        if etag != expected:
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=job.key)
            self._state(job).delete()
            raise ChecksumError(f"s3://{self.bucket}/{job.key}: the server's ETag {etag or '(none)'} is not "
                                f"the local {expected}: the object was deleted; run the same command again")
        return etag

    # -- verification and bookkeeping

    def verify_object(self, job: Job, etag: str) -> None:
        head = head_or_none(self.client, self.bucket, job.key)
        problems = _object_problems(job.name, job.size, job.sha256, etag, head)
        if problems:
            raise ChecksumError(f"s3://{self.bucket}/{job.key}: {'; '.join(problems)} after upload: "
                                "nothing was published; run the same command again (with --force if it "
                                "says the object differs)")

    def _record_complete(self, job: Job, etag: str) -> None:
        state = self._state(job)
        state.data = {**self._target_fields(job), **job.identity(), "status": "complete", "etag": etag}
        state.save()

    def upload(self, job: Job) -> FileResult:
        if self.abort.is_set():
            raise TransferError(f"{job.name}: stopped")
        return self.multipart(job) if job.multipart else self.put(job)


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _split_target(target: S3Target | tuple[str, str | None], manifest: dict[str, Any]) -> tuple[str, str]:
    if isinstance(target, S3Target):
        bucket, prefix = target.bucket, target.prefix
    else:
        bucket, prefix = target
    prefix = normalize_prefix(prefix)
    return bucket, str(manifest["version"]) if prefix is None else prefix


def _run_parallel(fn: Callable[[Job], Any], jobs: list[Job], workers: int, abort: threading.Event
                  ) -> list[Any]:
    """``fn`` over ``jobs`` on ``workers`` threads, in order; the first error is raised once all settle."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="upload-file") as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        for fut in futures:  # the first failure stops the others at their next part
            fut.add_done_callback(lambda f: abort.set() if not f.cancelled() and f.exception() else None)
        try:
            for fut in futures:
                while not fut.done():
                    time.sleep(0.05)  # short waits keep Ctrl-C responsive in the main thread
        except KeyboardInterrupt:
            abort.set()
            for fut in futures:
                fut.cancel()
            raise
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        abort.set()
        raise next((e for e in errors if not str(e).endswith(": stopped")), errors[0])  # type: ignore[misc]
    return [f.result() for f in futures]


def upload_release(
    client: Any,
    release_dir: str | Path,
    target_or_bucket_and_prefix: S3Target | tuple[str, str | None],
    config: UploadConfig,
    *,
    force: bool = False,
    dry_run: bool = False,
    show_progress: bool = True,
    executor: Executor | None = None,
    log: Log | None = None,
    verbose: bool = False,
) -> UploadReport:
    """Upload a release directory: every artifact of its manifest, then SHA256SUMS,
    manifest.json.sig (when there is one) and manifest.json.

    ``executor`` runs the part uploads (it needs ``transfers * upload_concurrency``
    workers for full speed); by default one is made and shut down here.
    Raises PublishedError (without ``force``) when the version is published
    with other content, an object differs, or another upload of the version
    created an object first; InputError when a file's bytes are not those of
    the manifest; TransferError when a part still fails after its retries (the
    run is resumable); ChecksumError when the server's copy does not match.
    """
    log = log or _stderr
    started = time.monotonic()
    release_dir = Path(release_dir)
    with contextlib.ExitStack() as stack:
        rd = stack.enter_context(ReleaseDir(release_dir))
        manifest_file, _, manifest = _open_manifest(rd)
        stack.callback(manifest_file.close)
        bucket, prefix = _split_target(target_or_bucket_and_prefix, manifest)
        endpoint = str(client.meta.endpoint_url) if client is not None else getattr(
            target_or_bucket_and_prefix, "endpoint_url", "")
        report = UploadReport(bucket, prefix, endpoint, dry_run=dry_run)
        notes: list[str] = []

        def note(line: str) -> None:
            notes.append(line)
            log(line)

        jobs = plan_jobs(rd, manifest, manifest_file, prefix, config, log=note)
        stack.callback(_close_jobs, jobs)
        report.notes = notes
        if dry_run:
            report.results = [FileResult(j.name, j.key, j.size, j.sha256, "", j.parts, j.part_size, "dry-run",
                                         multipart=j.multipart) for j in jobs]
            return report
        states = rd.state_dir(create=True)
        if states is not None:
            stack.callback(states.close)
        own_pool = executor is None
        pool = executor or ThreadPoolExecutor(max_workers=config.transfers * config.upload_concurrency,
                                              thread_name_prefix="upload-part")
        up = _Uploader(client, bucket, prefix, str(manifest["version"]), states, config, pool, log, verbose,
                       conditional=not force)
        try:
            report.results = _upload_all(up, jobs, manifest, prefix, force, show_progress)
        finally:
            if own_pool:
                pool.shutdown(wait=True, cancel_futures=True)
    report.part_uploads, report.put_uploads = up.part_uploads, up.put_uploads
    report.bytes_sent = up.bytes_sent
    report.seconds = time.monotonic() - started
    return report


def _unpublish(up: _Uploader, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        try:
            up.client.delete_object(Bucket=up.bucket, Key=object_key(prefix, name))
        except Exception as exc:  # noqa: BLE001 - mapped to one clean line
            raise client_error(up.client, exc, f"unpublishing {up.where}", up.bucket) from None


def _upload_all(up: _Uploader, jobs: list[Job], manifest: dict[str, Any], prefix: str, force: bool,
                show_progress: bool) -> list[FileResult]:
    where = up.where
    remote_manifest = published_manifest(up.client, up.bucket, prefix)
    if remote_manifest is not None and remote_manifest != manifest:
        if not force:
            raise PublishedError(f"version {manifest.get('version')} is already published at {where} with a "
                                 "different manifest.json: pass --force to replace it")
        up.log(f"{where}: replacing a published version (--force): removing its manifest.json first")
        _unpublish(up, prefix, (MANIFEST_NAME, SIGNATURE_NAME))

    decisions = _run_parallel(up.classify, jobs, max(up.config.transfers, 8), up.abort)
    conflicts = [f"{j.key} ({why})" for j, (kind, why) in zip(jobs, decisions, strict=True)
                 if kind == "conflict"]
    if conflicts and not force:
        raise PublishedError(f"{len(conflicts)} object(s) on the server differ from the local release: "
                             f"{', '.join(conflicts)}: pass --force to overwrite")
    results: dict[str, FileResult] = {}
    todo: list[Job] = []
    for job, (kind, etag) in zip(jobs, decisions, strict=True):
        if kind == "skip":
            results[job.name] = FileResult(job.name, job.key, job.size, job.sha256, etag, job.parts,
                                           job.part_size, "skipped", multipart=job.multipart)
            if up.verbose:
                up.log(f"{job.name}: already on the server with the same content: skipped")
        else:
            todo.append(job)
    artifacts = [j for j in todo if j.name not in FINAL_NAMES]
    finals = [j for j in todo if j.name in FINAL_NAMES]
    total = sum(j.size for j in todo)
    with progress(total, f"upload {where}", enabled=show_progress and total > 0) as bar:
        up.bar = bar
        for r in _run_parallel(up.upload, artifacts, up.config.transfers, up.abort):
            results[r.name] = r
        # SHA256SUMS, manifest.json.sig, then manifest.json, created only if absent (unless --force):
        # the version is published only when all else is there, and by one publisher only.
        for job in finals:
            results[job.name] = up.upload(job)
    return [results[j.name] for j in jobs]


# --------------------------------------------------------------------------- command line


def _target_from_args(args: Any, require_credentials: bool) -> S3Target:
    return resolve_target(bucket=args.bucket, prefix=args.prefix, endpoint_url=args.endpoint_url,
                          profile=args.profile, remote=args.remote, rclone_config=args.rclone_config,
                          require_credentials=require_credentials)


def run_upload_command(args: Any) -> int:
    """``objathor-release upload``: resolve the target, upload, print the table and summary."""
    chunk = parse_size(args.chunk_size)
    config = UploadConfig(chunk_size=chunk, upload_concurrency=args.upload_concurrency,
                          transfers=args.transfers, multipart_threshold=max(chunk, 5 * 1024 * 1024),
                          max_part_attempts=getattr(args, "part_attempts", None) or 5)
    release_dir = Path(args.release_dir)
    if not release_dir.is_dir():
        raise UsageError(f"{release_dir}: release directory not found: check --release-dir")
    target = _target_from_args(args, require_credentials=not args.dry_run)
    if args.verbose:
        _stderr(f"target: {target!r}")
    client = None if args.dry_run else make_client(
        target, max_pool_connections=config.transfers * config.upload_concurrency + 8)
    try:
        report = upload_release(client, release_dir, target, config, force=args.force, dry_run=args.dry_run,
                                show_progress=not args.quiet, verbose=args.verbose)
    except ReleaseError as exc:
        exc.args = (redact(str(exc), target.secrets()),)
        raise
    print(report.table())
    print(report.summary())
    return 0


def run_cleanup_command(args: Any) -> int:
    """``objathor-release cleanup``: list and abort abandoned multipart uploads."""
    older = parse_duration(args.older_than)
    target = _target_from_args(args, require_credentials=True)
    if args.verbose:
        _stderr(f"target: {target!r}")
    found = cleanup_uploads(make_client(target), target.bucket, target.prefix, older_than=older,
                            dry_run=args.dry_run)
    for p in found:
        action = "aborted" if p.aborted else "would abort"
        age = format_age(p.age_seconds)
        print(f"{action}  {p.key}  started {p.initiated:%Y-%m-%d %H:%M} UTC ({age} ago)"
              f"  upload id {p.upload_id[:16]}...")
    verb = "found" if args.dry_run else "aborted"
    print(f"{verb} {len(found)} incomplete multipart upload(s) older than {args.older_than} "
          f"in s3://{target.bucket}/{target.prefix or ''}")
    return 0
