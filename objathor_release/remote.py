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

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, UploadConfig
from .errors import ChecksumError
from .s3 import client_error, error_code, head_or_none, normalize_prefix, object_key
from .upload_state import (
    MANIFEST_NAME,
    SHA256_META,
    STATE_DIR,
    SUMS_NAME,
    Job,
    UploadState,
    _clean_etag,
    local_etag,
)

__all__ = ["RemoteCheck", "expected_etag", "published_manifest", "verify_remote"]


# --------------------------------------------------------------------------- reading the bucket


def published_manifest(client: Any, bucket: str, prefix: str) -> dict[str, Any] | None:
    """The remote ``PREFIX/manifest.json`` if this version is published, else None."""
    import botocore.exceptions as bx

    key = object_key(normalize_prefix(prefix) or "", MANIFEST_NAME)
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except bx.ClientError as exc:
        if error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise client_error(client, exc, f"reading s3://{bucket}/{key}", bucket) from None
    except bx.BotoCoreError as exc:
        raise client_error(client, exc, f"reading s3://{bucket}/{key}", bucket) from None
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


def expected_etag(client: Any, bucket: str, job: Job, remote_etag: str) -> str:
    """The ETag the local file would have in the remote object's part layout (reads the file)."""
    match = re.fullmatch(r"[0-9a-f]{32}-(\d+)", remote_etag)
    if not match:
        return local_etag(job.path, job.size, job.size, multipart=False)
    count = int(match.group(1))
    part_size = job.part_size if job.multipart and job.parts == count else None
    if part_size is None:
        part_size = _remote_part_size(client, bucket, job.key)
    if not part_size or part_size < 1 or math.ceil(job.size / part_size) != count:
        return ""
    return local_etag(job.path, job.size, part_size, multipart=True)


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
        multipart = size >= config.multipart_threshold
        want = math.ceil(size / config.part_size_for(size)) if multipart else None
        if count != want:
            return f"ETag {etag} is not that of {want or 'a single'} part(s) for this size and part size"
        return None
    if count is None:
        return None if size <= MAX_PART_SIZE else f"single-part ETag {etag} for an object over 5 GiB"
    low, high = math.ceil(size / MAX_PART_SIZE), min(MAX_PARTS, max(1, math.ceil(size / MIN_PART_SIZE)))
    return None if low <= count <= high else f"ETag {etag}: {count} parts cannot hold {size} bytes"


def _object_problems(name: str, size: int, sha256: str, etag: str | None, head: dict[str, Any] | None
                     ) -> list[str]:
    if head is None:
        return ["missing"]
    out = []
    remote_size = int(head.get("ContentLength", -1))
    if remote_size != size:
        out.append(f"size {remote_size} != {size}")
    remote_etag = _clean_etag(head.get("ETag"))
    if etag is not None and remote_etag != etag:
        out.append(f"ETag {remote_etag} != {etag}")
    remote_sha = (head.get("Metadata") or {}).get(SHA256_META)
    if remote_sha != sha256:
        out.append(f"sha256 metadata {remote_sha or 'missing'} != {sha256[:12]}...")
    return out


def verify_remote(
    client: Any,
    bucket: str,
    prefix: str,
    manifest: dict[str, Any],
    *,
    release_dir: str | Path | None = None,
    expected_etags: dict[str, str] | None = None,
    config: UploadConfig | None = None,
) -> list[RemoteCheck]:
    """HEAD every artifact (size, ETag, sha256 metadata) and read back manifest.json.

    The exact expected ETag comes from ``expected_etags`` (e.g. ``report.etags()``),
    else from the local files in ``release_dir`` (the upload's state record, or a
    re-hash in the remote object's part layout). Without either, an ETag is only
    checked for its part count: exactly the one ``config`` gives for the size,
    or (no ``config``) one that some legal part size gives. Raises ChecksumError
    naming every mismatch.
    """
    prefix = normalize_prefix(prefix) or ""
    local_dir = Path(release_dir) if release_dir is not None else None
    state_dir = (local_dir or Path()) / STATE_DIR
    expected_etags = expected_etags or {}
    endpoint = str(client.meta.endpoint_url)
    problems: list[str] = []
    checks: list[RemoteCheck] = []

    def check(artifact: dict[str, Any]) -> tuple[RemoteCheck | None, list[str]]:
        name, size, sha = artifact["name"], int(artifact["size"]), str(artifact["sha256"])
        key = object_key(prefix, name)
        head = head_or_none(client, bucket, key)
        if head is None:
            return None, [f"{key} (missing)"]
        remote_etag = _clean_etag(head.get("ETag"))
        want: str | None = expected_etags.get(name)
        path = local_dir / name if local_dir is not None else None
        if want is None and path is not None and path.is_file() and path.stat().st_size == size:
            cfg = config or UploadConfig()
            multipart = size >= cfg.multipart_threshold
            part_size = cfg.part_size_for(size) if multipart else max(size, 1)
            job = Job(name, path, key, size, sha, part_size, multipart, path.stat().st_mtime_ns)
            state = UploadState.load(UploadState.path_for(state_dir, endpoint, bucket, key, name))
            fields = {"endpoint": endpoint, "bucket": bucket, "key": key}
            if state and state.data.get("status") == "complete" and state.matches(fields, job.identity()):
                want = str(state.data["etag"])
            else:
                want = expected_etag(client, bucket, job, remote_etag)
        out = _object_problems(name, size, sha, want, head)
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
    for name in (SUMS_NAME, MANIFEST_NAME):
        key = object_key(prefix, name)
        head = head_or_none(client, bucket, key)
        if head is None:
            problems.append(f"{key} (missing)")
            continue
        out: list[str] = []
        local = local_dir / name if local_dir is not None else None
        if local is not None and local.is_file():
            data = local.read_bytes()
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            remote_etag = _clean_etag(head.get("ETag"))
            want = expected_etags.get(name) or (md5 if "-" not in remote_etag else None)
            out = _object_problems(name, len(data), hashlib.sha256(data).hexdigest(), want, head)
        if name == MANIFEST_NAME and published_manifest(client, bucket, prefix) != manifest:
            out.append("differs from the local manifest")
        if out:
            problems.append(f"{key} ({'; '.join(out)})")
        else:
            meta = (head.get("Metadata") or {}).get(SHA256_META, "")
            how = "exact" if local is not None and local.is_file() else "content"
            size = int(head.get("ContentLength", 0))
            checks.append(RemoteCheck(name, key, size, _clean_etag(head.get("ETag")), meta, how))
    if problems:
        raise ChecksumError(f"the remote copy at s3://{bucket}/{prefix} does not match the manifest: "
                            f"{', '.join(problems)}: upload again (with --force for changed objects)")
    return checks
