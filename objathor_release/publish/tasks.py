"""The requests of one upload, each a small function of the run's :class:`~.context.Context`, one
job and (for a multipart upload) its resume record: the requests s3transfer would make for one
object.

:func:`check_existing` (HEAD, and the local file read in the remote layout), :func:`read_whole`
and :func:`put_object` (a single PUT), :func:`resumable_parts` (ListParts of an interrupted
upload), :func:`create_upload`, :func:`upload_part`, :func:`complete_upload`,
:func:`abort_upload`, then :func:`verify_object` (HEAD) and :func:`record_complete`. A
conditional create that finds its key taken raises :class:`~.context.Exists`;
:func:`settle_taken` decides whether that is the same content. Which files go when, and in what
order, is the coordinator's (:mod:`.upload`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import logging
from typing import Any

from objathor_release.build.etags import MD5CHKSUM_META, md5chksum
from objathor_release.build.manifest import MANIFEST as MANIFEST_NAME
from objathor_release.errors import ChecksumError, PublishedError, ReleaseError, TransferError
from objathor_release.publish.client import clean_etag, client_error, error_code, head_or_none
from objathor_release.publish.context import (
    Context,
    Exists,
    PartMismatch,
    changed_error,
    job_file,
    raise_if_taken,
)
from objathor_release.publish.parts import SHA256_META, Job, PartReader, SequentialSha256, multipart_etag
from objathor_release.publish.remote import SMALL_FILE_LIMIT, expected_digests, object_problems, read_object
from objathor_release.publish.upload_state import UploadState
from objathor_release.settings import format_size

__all__ = ["abort_upload", "check_existing", "complete_upload", "create_upload", "metadata", "put_object",
           "read_whole", "record_complete", "resumable_parts", "settle_taken", "upload_part", "verify_object"]


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default




def metadata(job: Job) -> dict[str, str]:
    """The object metadata of ``job``: its sha256 and, when the manifest lists it, the whole file's
    md5 as rclone keeps it (``md5chksum``, base64), so ``rclone check`` compares it by hash."""
    meta = {SHA256_META: job.sha256}
    if job.md5 is not None:
        meta[MD5CHKSUM_META] = md5chksum(job.md5)
    return meta


# --------------------------------------------------------------------------- before: what is there


def check_existing(ctx: Context, job: Job) -> tuple[str, str]:
    """("new" | "skip" | "conflict", remote ETag or reason) for one job.

    "skip" is only given after the local file was read in the remote object's part layout:
    its sha256 equals the manifest's and its ETag the remote one."""
    head = head_or_none(ctx.client, ctx.bucket, job.key)
    if head is None:
        return "new", ""
    etag = clean_etag(head.get("ETag"))
    size = _int_or(head.get("ContentLength"), -1)
    sha = (head.get("Metadata") or {}).get(SHA256_META, "")
    if size != job.size:
        return "conflict", f"size {size} != local {job.size}"
    if sha != job.sha256:
        return "conflict", "sha256 metadata differs" if sha else "no sha256 metadata"
    with ctx.hash_slots:
        want, local_sha = expected_digests(ctx.client, ctx.bucket, job, etag)
    if local_sha != job.sha256:
        raise changed_error(job, local_sha)
    if want and want == etag:
        return "skip", etag
    return "conflict", "ETag differs"


def settle_taken(ctx: Context, job: Job, etag: str, why: Exists) -> None:
    """A conditional create found ``job.key`` taken: return when it holds this very content (written
    by another upload of the same release); raise when another upload of this version got there first
    with other content (PublishedError) or is completing it right now (TransferError)."""
    head = head_or_none(ctx.client, ctx.bucket, job.key)
    if head is None:  # 409: another create of the key was under way at that moment
        raise TransferError(f"another upload of s3://{ctx.bucket}/{job.key} was being completed at the "
                            f"same moment ({why}): nothing was published by this run; run the same "
                            "command again") from None
    same = not object_problems(job.name, job.size, job.sha256, etag, head)
    if same and job.name == MANIFEST_NAME:
        ours = job_file(job).read_all(SMALL_FILE_LIMIT)
        same = read_object(ctx.client, ctx.bucket, job.key, len(ours)) == ours
    if not same:
        if job.name == MANIFEST_NAME:
            raise PublishedError(
                f"another publish of version {ctx.version} won at {ctx.where}: its manifest.json "
                f"differs from {job.path}: check what was published, then pass --force to overwrite it")
        raise PublishedError(
            f"another upload wrote s3://{ctx.bucket}/{job.key} first, with other content: another "
            f"publish of version {ctx.version} is running or ran at {ctx.where}; nothing was "
            "published by this run: check the bucket, then pass --force to overwrite")
    what = "already published, identical" if job.name == MANIFEST_NAME else "already there, identical"
    ctx.note(logging.INFO, f"{job.name}: {what} (written meanwhile by another upload of the same release)")


# --------------------------------------------------------------------------- a single PUT


def read_whole(ctx: Context, job: Job) -> tuple[PartReader, bytes]:
    """The file as one request body, and its md5; InputError when its sha256 is not the planned one."""
    body = PartReader(job_file(job), 0, job.size, str(job.path))
    sha = hashlib.sha256()
    with ctx.hash_slots:
        md5 = body.md5(sha.update)
    if sha.hexdigest() != job.sha256:
        raise changed_error(job, sha.hexdigest())
    return body, md5


def put_object(ctx: Context, job: Job, body: PartReader, md5: bytes) -> str:
    """PUT the whole file (created only if the key is free, unless ``ctx.conditional`` is off);
    its ETag. Raises :class:`Exists` when the key is taken."""
    import botocore.exceptions as bx

    extra = {"IfNoneMatch": "*"} if ctx.conditional else {}

    def attempt() -> str:
        body.seek(0)
        ctx.counters.add(put_uploads=1)
        try:
            resp = ctx.client.put_object(
                Bucket=ctx.bucket, Key=job.key, Body=body if job.size else b"", ContentLength=job.size,
                ContentMD5=base64.b64encode(md5).decode(), ContentType=job.content_type,
                Metadata=metadata(job), **extra,
            )
        except bx.ClientError as exc:
            raise_if_taken(exc)
            raise
        if clean_etag(resp.get("ETag")) != md5.hex():
            raise PartMismatch(f"server ETag {resp.get('ETag')} != local md5 {md5.hex()}")
        return md5.hex()

    return ctx.call(f"uploading {job.name} to s3://{ctx.bucket}/{job.key}", attempt)


# --------------------------------------------------------------------------- multipart


def resumable_parts(ctx: Context, job: Job, state: UploadState) -> dict[int, str] | None:
    """part number -> ETag of the parts of the interrupted upload on the server that can be ours
    (right size, and the md5 recorded for them, if any, matches); None: start over. Each is read
    and hashed in its turn later, and kept only if its md5 equals that ETag."""
    import botocore.exceptions as bx

    upload_id = state.data.get("upload_id")
    if state.unreadable:
        ctx.note(logging.WARNING, f"{job.name}: the resume record {state.path} is unreadable: starting over")
    if not upload_id or not isinstance(upload_id, str):
        return None
    if not state.matches(ctx.target_fields(job), job.identity()):
        ctx.note(logging.WARNING, f"{job.name}: the local file or part size changed since the interrupted "
                 "upload: starting over")
        abort_upload(ctx, job.key, upload_id)
        return None
    server: dict[int, tuple[str, int]] = {}
    max_pages = job.parts // 1000 + 10
    try:
        pages = ctx.client.get_paginator("list_parts").paginate(
            Bucket=ctx.bucket, Key=job.key, UploadId=upload_id)
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
            ctx.note(logging.WARNING, f"{job.name}: the interrupted upload no longer exists on the server: "
                     "starting over")
            return None
        raise client_error(ctx.client, exc, f"listing the parts of {job.key}", ctx.bucket) from None
    except ReleaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore, parsing: one clean line
        raise client_error(ctx.client, exc, f"listing the parts of {job.key}", ctx.bucket) from None
    known = state.md5s
    done: dict[int, str] = {}
    for number, (etag, size) in sorted(server.items()):
        if not 1 <= number <= job.parts or size != job.part_range(number)[1]:
            continue
        if number in known and known[number].hex() != etag:
            continue
        done[number] = etag
    ctx.note(logging.INFO, f"{job.name}: resuming: {len(done)} of {job.parts} parts already on the server")
    return done


def create_upload(ctx: Context, job: Job, state: UploadState) -> UploadState:
    """CreateMultipartUpload; the new resume record (saved) that holds its upload id."""
    create = {"Bucket": ctx.bucket, "Key": job.key, "ContentType": job.content_type,
              "Metadata": metadata(job)}
    resp = ctx.call(f"starting the upload of {job.name}",
                    lambda: ctx.client.create_multipart_upload(**create))
    upload_id = resp.get("UploadId") if isinstance(resp, dict) else None
    if not upload_id or not isinstance(upload_id, str):
        raise TransferError(f"starting the upload of {job.name}: {ctx.endpoint} answered without an "
                            "upload id: run the same command again")
    fresh = UploadState(state.folder, state.name, {
        **ctx.target_fields(job), **job.identity(), "upload_id": upload_id, "parts": {},
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat()})
    fresh.save()
    return fresh


def upload_part(ctx: Context, job: Job, upload_id: str, number: int, state: UploadState,
                sha: SequentialSha256, on_server: str | None) -> tuple[bytes, bool]:
    """Hash part ``number`` in its turn (md5 and the file's sha256 in one read); send it unless the
    server already holds exactly these bytes. (md5, whether it was sent)."""
    offset, length = job.part_range(number)
    body = PartReader(job_file(job), offset, length, str(job.path))
    with sha.turn(number, ctx.abort), ctx.hash_slots:
        md5 = body.md5(sha.update)
    if on_server == md5.hex():
        state.record_part(number, md5)
        ctx.bar.update(length)
        return md5, False

    def attempt() -> bytes:
        if ctx.abort.is_set():
            raise TransferError(f"{job.name}: stopped")
        body.seek(0)
        ctx.counters.add(part_uploads=1)
        resp = ctx.client.upload_part(
            Bucket=ctx.bucket, Key=job.key, UploadId=upload_id, PartNumber=number, Body=body,
            ContentLength=length, ContentMD5=base64.b64encode(md5).decode(),
        )
        if clean_etag(resp.get("ETag")) != md5.hex():
            raise PartMismatch(f"part ETag {resp.get('ETag')} != local md5 {md5.hex()}")
        return md5

    ctx.call(f"uploading part {number} of {job.parts} of {job.name}", attempt)
    state.record_part(number, md5)
    ctx.counters.add(bytes_sent=length)
    ctx.bar.update(length)
    ctx.detail(f"{job.name}: part {number}/{job.parts} ({format_size(length)}) uploaded")
    return md5, True


def complete_upload(ctx: Context, job: Job, upload_id: str, md5s: list[bytes], state: UploadState) -> str:
    """CompleteMultipartUpload (created only if the key is free, unless ``ctx.conditional`` is off);
    the object's ETag, checked against the one computed from ``md5s``. Raises :class:`Exists` when
    the key is taken; starts over (deleting the record) when the server lost the upload or parts."""
    import botocore.exceptions as bx

    expected = multipart_etag(md5s)
    parts = [{"PartNumber": n, "ETag": f'"{m.hex()}"'} for n, m in enumerate(md5s, 1)]
    extra = {"IfNoneMatch": "*"} if ctx.conditional else {}

    def attempt() -> str:
        try:
            resp = ctx.client.complete_multipart_upload(
                Bucket=ctx.bucket, Key=job.key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **extra)
            return clean_etag(resp.get("ETag"))
        except bx.ClientError as exc:
            raise_if_taken(exc)
            code = error_code(exc)
            if code in ("InvalidPart", "InvalidPartOrder"):
                state.delete()
                abort_upload(ctx, job.key, upload_id)
                raise TransferError(f"completing the upload of {job.name}: the server lacks parts it "
                                    f"listed ({code}): run the same command again, it starts over") from None
            if code != "NoSuchUpload":
                raise
            # An earlier attempt may have completed it before the connection dropped.
            head = head_or_none(ctx.client, ctx.bucket, job.key)
            if head is not None and clean_etag(head.get("ETag")) == expected:
                return expected
            state.delete()
            raise TransferError(f"{job.name}: the multipart upload vanished before it was completed: "
                                "run the same command again to start over") from None

    etag = ctx.call(f"completing the upload of {job.name}", attempt)
    if etag != expected:
        with contextlib.suppress(Exception):
            ctx.client.delete_object(Bucket=ctx.bucket, Key=job.key)
        state.delete()
        raise ChecksumError(f"s3://{ctx.bucket}/{job.key}: the server's ETag {etag or '(none)'} is not "
                            f"the local {expected}: the object was deleted; run the same command again")
    return etag


def abort_upload(ctx: Context, key: str, upload_id: str) -> None:
    """AbortMultipartUpload, best effort (an upload left behind is for ``cleanup``)."""
    with contextlib.suppress(Exception):
        ctx.client.abort_multipart_upload(Bucket=ctx.bucket, Key=key, UploadId=upload_id)


# --------------------------------------------------------------------------- after: check and record


def verify_object(ctx: Context, job: Job, etag: str) -> None:
    """HEAD the new object: its size, ETag and sha256 metadata must be the local file's."""
    head = head_or_none(ctx.client, ctx.bucket, job.key)
    problems = object_problems(job.name, job.size, job.sha256, etag, head)
    if job.expected_etag is not None and etag != job.expected_etag:
        problems.append(f"ETag {etag}, manifest.json lists {job.expected_etag} (its md5s are not of "
                        "these bytes: run 'objathor-release manifest' again)")
    if job.md5 is not None and head is not None:
        remote = (head.get("Metadata") or {}).get(MD5CHKSUM_META)
        if remote != metadata(job)[MD5CHKSUM_META]:
            problems.append(f"{MD5CHKSUM_META} metadata {remote or 'missing'}")
    if problems:
        raise ChecksumError(f"s3://{ctx.bucket}/{job.key}: {'; '.join(problems)} after upload: "
                            "nothing was published; run the same command again (with --force if it "
                            "says the object differs)")


def record_complete(ctx: Context, job: Job, etag: str) -> None:
    """Mark the object done in its resume record (a later run's skip and remote verify read it)."""
    state = ctx.state(job)
    state.data = {**ctx.target_fields(job), **job.identity(), "status": "complete", "etag": etag}
    state.save()
