"""Abandoned multipart uploads: find them under a prefix, and abort those older than an age.

An interrupted ``upload`` leaves its multipart upload open on the server so that the next
run can resume it; :func:`cleanup_uploads` is for the runs that never come back.
:func:`parse_duration` and :func:`format_age` read and show the ages the CLI uses.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import re
from dataclasses import dataclass
from typing import Any

from objathor_release.errors import ReleaseError, UsageError
from objathor_release.publish.client import client_error, error_code, http_status

__all__ = ["PendingUpload", "cleanup_uploads", "format_age", "parse_duration"]

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30m``, ``24h``, ``7d``, ``90s`` or plain seconds -> seconds."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise UsageError(f"--older-than {text!r} is not a duration: use e.g. 30m, 24h or 7d")
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


def format_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


@dataclass
class PendingUpload:
    """An incomplete multipart upload found by :func:`cleanup_uploads`."""

    key: str
    upload_id: str
    initiated: _dt.datetime
    age_seconds: float
    aborted: bool = False


_UNSUPPORTED_CODES = {"NotImplemented", "MethodNotAllowed", "501", "405"}


def _listing(client: Any, bucket: str, kwargs: dict[str, Any]) -> Any:
    """The ListMultipartUploads pages; an endpoint without that call is one UsageError, not "run again"."""
    import botocore.exceptions as bx

    pages = iter(client.get_paginator("list_multipart_uploads").paginate(**kwargs))
    try:
        first = next(pages)
    except StopIteration:
        return []
    except bx.ClientError as exc:
        code, status = error_code(exc), http_status(exc)
        if code in _UNSUPPORTED_CODES or status in (405, 501):
            raise UsageError(f"cleanup is not supported by this endpoint (it has no ListMultipartUploads): "
                             f"{client.meta.endpoint_url} answered {code or status} for bucket "
                             f"{bucket!r}") from None
        raise
    return itertools.chain([first], pages)


def cleanup_uploads(client: Any, bucket: str, prefix: str | None = None, *, older_than: float = 86400,
                    dry_run: bool = False) -> list[PendingUpload]:
    """Find (and unless ``dry_run`` abort) multipart uploads started at least ``older_than`` seconds ago."""
    import botocore.exceptions as bx

    now = _dt.datetime.now(_dt.timezone.utc)
    found: list[PendingUpload] = []
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if prefix:
        kwargs["Prefix"] = prefix
    try:
        pages = _listing(client, bucket, kwargs)
        for page in pages:
            for u in page.get("Uploads", []):
                initiated = u["Initiated"]
                if initiated.tzinfo is None:
                    initiated = initiated.replace(tzinfo=_dt.timezone.utc)
                age = (now - initiated).total_seconds()
                if age >= older_than:
                    found.append(PendingUpload(u["Key"], u["UploadId"], initiated, age))
        if not dry_run:
            for p in found:
                try:
                    client.abort_multipart_upload(Bucket=bucket, Key=p.key, UploadId=p.upload_id)
                except bx.ClientError as exc:
                    if error_code(exc) != "NoSuchUpload":
                        raise
                p.aborted = True
    except ReleaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore, or an answer it could not parse: one clean line
        raise client_error(client, exc, f"listing multipart uploads in bucket {bucket!r}", bucket) from None
    return found
