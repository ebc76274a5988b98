"""What is in the bucket: the published manifest, and the remote objects checked against a release.

``published_manifest`` reads ``PREFIX/manifest.json``; its presence marks a
version as published. ``verify_remote`` HEADs every artifact (size, ETag and the
``sha256`` metadata) and reads back manifest.json. The exact ETag expected comes
from the upload's report, its resume record, or a re-hash of the local file in
the remote object's own part layout (``expected_etag``, which asks the server
for part 1's size when the part count differs from the local config); without
any of them only the ETag's part count is checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objathor_release.build.etags import MD5CHKSUM_META, md5chksum
from objathor_release.build.manifest import MANIFEST as MANIFEST_NAME
from objathor_release.build.manifest import SIGNATURE as SIGNATURE_NAME
from objathor_release.build.manifest import SUMS as SUMS_NAME
from objathor_release.errors import ChecksumError
from objathor_release.publish.client import (
    artifact_key,
    clean_etag,
    client_error,
    error_code,
    head_or_none,
    object_key,
)
from objathor_release.publish.localfiles import ReleaseDir, StateDir
from objathor_release.publish.parts import SHA256_META, Job, layout_for, local_digests
from objathor_release.publish.upload_state import UploadState
from objathor_release.s3.target import normalize_prefix
from objathor_release.settings import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, UploadConfig

SMALL_FILE_LIMIT = 64 * 1024 * 1024  # SHA256SUMS, manifest.json and its signature are read whole

__all__ = ["RemoteCheck", "expected_digests", "expected_etag", "object_problems", "published_manifest",
           "read_object", "verify_remote"]


# --------------------------------------------------------------------------- reading the bucket


def read_object(client: Any, bucket: str, key: str, limit: int) -> bytes | None:
    """The body of ``key`` (at most ``limit + 1`` bytes are read), or None when it does not exist."""
    import botocore.exceptions as bx

    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            data: bytes = body.read(limit + 1)
        finally:
            body.close()
    except bx.ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise client_error(client, exc, f"reading s3://{bucket}/{key}", bucket) from None
    except (bx.BotoCoreError, OSError, KeyError, ValueError, TypeError) as exc:
        raise client_error(client, exc, f"reading s3://{bucket}/{key}", bucket) from None
    return data


def published_manifest(client: Any, bucket: str, prefix: str) -> dict[str, Any] | None:
    """The remote ``PREFIX/manifest.json`` if this version is published, else None."""
    key = object_key(normalize_prefix(prefix) or "", MANIFEST_NAME)
    body = read_object(client, bucket, key, SMALL_FILE_LIMIT)
    if body is None:
        return None
    if len(body) > SMALL_FILE_LIMIT:
        raise ChecksumError(f"s3://{bucket}/{key} holds more than {SMALL_FILE_LIMIT} bytes, not a manifest: "
                            "upload the release with --force")
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ChecksumError(f"s3://{bucket}/{key} is not a JSON object: upload the release with --force")
    return data


def _remote_part_size(client: Any, bucket: str, key: str) -> int | None:
    """Part 1's size of a multipart object (HEAD with partNumber), if the server tells."""
    import botocore.exceptions as bx

    try:
        return int(client.head_object(Bucket=bucket, Key=key, PartNumber=1)["ContentLength"])
    except (bx.ClientError, bx.BotoCoreError, KeyError, ValueError):
        return None


def expected_digests(client: Any, bucket: str, job: Job, remote_etag: str) -> tuple[str, str]:
    """(the ETag the local file would have in the remote object's part layout, or "" when that
    layout cannot be known; the file's sha256), from one read of the file."""
    source = job.file if job.file is not None else job.path
    match = re.fullmatch(r"[0-9a-f]{32}-(\d+)", remote_etag)
    if not match:
        return local_digests(source, job.size, job.size, multipart=False)
    count = int(match.group(1))
    part_size = job.part_size if job.multipart and job.parts == count else None
    if part_size is None:
        part_size = _remote_part_size(client, bucket, job.key)
    if not part_size or part_size < 1 or math.ceil(job.size / part_size) != count:
        return "", local_digests(source, job.size, max(job.size, 1), multipart=False)[1]
    return local_digests(source, job.size, part_size, multipart=True)


def expected_etag(client: Any, bucket: str, job: Job, remote_etag: str) -> str:
    """The ETag the local file would have in the remote object's part layout (reads the file)."""
    return expected_digests(client, bucket, job, remote_etag)[0]


# --------------------------------------------------------------------------- remote verification


@dataclass
class RemoteCheck:
    """One object checked by :func:`verify_remote`; ``etag_check`` says how far the ETag was checked."""

    name: str
    key: str
    size: int
    etag: str
    sha256: str
    etag_check: str  # "exact", "part-count", or "content" (manifest.json compared as JSON)


def _etag_shape_problem(etag: str, size: int, config: UploadConfig | None) -> str | None:
    """Why ``etag`` cannot be the ETag of ``size`` bytes uploaded with ``config`` (any config if None)."""
    m = re.fullmatch(r"[0-9a-f]{32}(?:-(\d+))?", etag)
    if not m:
        return f"ETag {etag!r} is not an S3 ETag"
    count = int(m.group(1)) if m.group(1) else None
    if config is not None:
        layout = layout_for(size, config)
        want = layout.parts if layout.multipart else None
        if count != want:
            return f"ETag {etag} is not that of {want or 'a single'} part(s) for this size and part size"
        return None
    if count is None:
        return None if size <= MAX_PART_SIZE else f"single-part ETag {etag} for an object over 5 GiB"
    low, high = math.ceil(size / MAX_PART_SIZE), min(MAX_PARTS, max(1, math.ceil(size / MIN_PART_SIZE)))
    return None if low <= count <= high else f"ETag {etag}: {count} parts cannot hold {size} bytes"


def object_problems(name: str, size: int, sha256: str, etag: str | None, head: dict[str, Any] | None
                    ) -> list[str]:
    """What is wrong with the object ``head`` describes, as the upload of ``size`` bytes with this
    sha256 (and, unless ``etag`` is None, this ETag) would leave it; empty when nothing is."""
    if head is None:
        return ["missing"]
    out = []
    remote_size = int(head.get("ContentLength", -1))
    if remote_size != size:
        out.append(f"size {remote_size} != {size}")
    remote_etag = clean_etag(head.get("ETag"))
    if etag is not None and remote_etag != etag:
        out.append(f"ETag {remote_etag} != {etag}")
    remote_sha = (head.get("Metadata") or {}).get(SHA256_META)
    if remote_sha != sha256:
        out.append(f"sha256 metadata {remote_sha or 'missing'} != {sha256[:12]}...")
    return out


def _local_small(local: ReleaseDir | None, name: str) -> bytes | None:
    if local is None:
        return None
    f = local.open(name)
    if f is None:
        return None
    try:
        return f.read_all(SMALL_FILE_LIMIT)
    finally:
        f.close()


def verify_remote(
    client: Any,
    bucket: str,
    prefix: str,
    manifest: dict[str, Any],
    *,
    release_dir: str | Path | None = None,
    expected_etags: dict[str, str] | None = None,
    config: UploadConfig | None = None,
    artifacts_only: bool = False,
) -> list[RemoteCheck]:
    """HEAD every artifact (size, ETag, sha256 metadata) and read back manifest.json
    (``artifacts_only``: the artifacts alone, as one shard's upload leaves them).

    The exact expected ETag comes from ``expected_etags`` (e.g. ``report.etags()``),
    else from the local files in ``release_dir`` (the upload's state record, or a
    re-hash in the remote object's part layout, which also checks the local file's
    sha256 against the manifest). Without either, an ETag is only checked for its
    part count: exactly the one ``config`` gives for the size, or (no ``config``)
    one that some legal part size gives. SHA256SUMS, manifest.json.sig (when the
    release has one, or the server does) and manifest.json are compared with the
    local files. Raises ChecksumError naming every mismatch.
    """
    prefix = normalize_prefix(prefix) or ""
    with contextlib.ExitStack() as stack:
        local = stack.enter_context(ReleaseDir(Path(release_dir))) if release_dir is not None else None
        states = local.state_dir(create=False) if local is not None else None
        if states is not None:
            stack.callback(states.close)
        return _verify(client, bucket, prefix, manifest, local, states, expected_etags or {}, config,
                       artifacts_only)


def _verify(client: Any, bucket: str, prefix: str, manifest: dict[str, Any], local: ReleaseDir | None,
            states: StateDir | None, expected_etags: dict[str, str], config: UploadConfig | None,
            artifacts_only: bool = False) -> list[RemoteCheck]:
    endpoint = str(client.meta.endpoint_url)
    problems: list[str] = []
    checks: list[RemoteCheck] = []

    def check(artifact: dict[str, Any]) -> tuple[RemoteCheck | None, list[str]]:
        name, size, sha = artifact["name"], int(artifact["size"]), str(artifact["sha256"])
        key = artifact_key(prefix, name, str(manifest["version"]))
        head = head_or_none(client, bucket, key)
        if head is None:
            return None, [f"{key} (missing)"]
        remote_etag = clean_etag(head.get("ETag"))
        want: str | None = expected_etags.get(name)
        out: list[str] = []
        file = local.open(name) if want is None and local is not None else None
        if file is not None:
            try:
                if file.size == size:
                    job = Job.of(name, file, key, size, sha, config or UploadConfig())
                    state = UploadState.load(states, UploadState.name_for(endpoint, bucket, key, name))
                    fields = {"endpoint": endpoint, "bucket": bucket, "key": key}
                    if state.data.get("status") == "complete" and state.matches(fields, job.identity()):
                        want = str(state.data["etag"])
                    else:
                        want, local_sha = expected_digests(client, bucket, job, remote_etag)
                        if local_sha != sha:
                            out.append(f"the local {name} does not match the manifest")
            finally:
                file.close()
        if want is None and artifact.get("etag") == remote_etag:
            want = remote_etag  # uploaded in the layout the manifest worked its ETag out for: exact
        out.extend(object_problems(name, size, sha, want, head))
        if isinstance(artifact.get("md5"), str):
            remote_md5 = (head.get("Metadata") or {}).get(MD5CHKSUM_META)
            if remote_md5 is not None and remote_md5 != md5chksum(artifact["md5"]):
                out.append(f"{MD5CHKSUM_META} metadata {remote_md5} is not the manifest's md5")
        how = "exact"
        if want is None:
            how = "part-count"
            shape = _etag_shape_problem(remote_etag, size, config)
            out.extend([shape] if shape else [])
        errs = [f"{key} ({'; '.join(out)})"] if out else []
        return RemoteCheck(name, key, size, remote_etag, sha, how), errs

    from concurrent.futures import ThreadPoolExecutor as _Pool

    with _Pool(max_workers=8) as pool:
        for result, errs in pool.map(check, manifest["artifacts"]):
            problems.extend(errs)
            if result is not None and not errs:
                checks.append(result)
    for name in () if artifacts_only else (SUMS_NAME, SIGNATURE_NAME, MANIFEST_NAME):
        key = object_key(prefix, name)
        head = head_or_none(client, bucket, key)
        data = _local_small(local, name)
        if head is None:
            if name != SIGNATURE_NAME or data is not None:
                problems.append(f"{key} (missing)")
            continue
        out: list[str] = []
        if data is not None:
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            remote_etag = clean_etag(head.get("ETag"))
            want = expected_etags.get(name) or (md5 if "-" not in remote_etag else None)
            out = object_problems(name, len(data), hashlib.sha256(data).hexdigest(), want, head)
        elif name == SIGNATURE_NAME and local is not None:
            out.append("on the server but not in the local release: publish again with --force")
        if name == MANIFEST_NAME and published_manifest(client, bucket, prefix) != manifest:
            out.append("differs from the local manifest")
        if out:
            problems.append(f"{key} ({'; '.join(out)})")
        else:
            meta = (head.get("Metadata") or {}).get(SHA256_META, "")
            how = "exact" if data is not None else "content"
            size = int(head.get("ContentLength", 0))
            checks.append(RemoteCheck(name, key, size, clean_etag(head.get("ETag")), meta, how))
    if problems:
        raise ChecksumError(f"the remote copy at s3://{bucket}/{prefix} does not match the manifest: "
                            f"{', '.join(problems)}: upload again (with --force for changed objects)")
    return checks
