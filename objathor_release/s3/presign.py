"""Signed GETs for downloading from a private bucket over the S3 API.

The download engine (:mod:`objathor_release.fetch`) keeps its own HTTP: ranges, retries,
resume, verification. For a source named ``s3://BUCKET/KEY`` it asks a :class:`Presigner`
for the URL to send, just before each request: botocore's ``generate_presigned_url`` for
``get_object`` (SigV4 in the query string, signing only the Host header, so the engine's
``Range`` and ``If-Range`` headers go along unchanged), valid for :data:`EXPIRES` seconds and
made afresh for every request, so a long download never meets an expired signature.

The signed URL carries the signature and the access key id: it is only ever sent. Everything
shown or recorded keeps the ``s3://BUCKET/KEY`` form.
"""

from __future__ import annotations

import threading
import urllib.parse
from typing import Any

from objathor_release.errors import UsageError
from objathor_release.s3.target import S3Target

__all__ = ["EXPIRES", "Presigner", "split_s3_url"]

EXPIRES = 900  # seconds; a request is signed just before it is sent, so this only bounds a stalled one


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b.tar`` -> ``("bucket", "a/b.tar")``."""
    parts = urllib.parse.urlsplit(url)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key or parts.query or parts.fragment:
        raise UsageError(f"{url!r} is not of the form s3://BUCKET/KEY")
    return parts.netloc, urllib.parse.unquote(key)


class Presigner:
    """``presigner("s3://BUCKET/KEY")`` -> a signed https URL at the target's endpoint."""

    def __init__(self, target: S3Target, expires: int = EXPIRES) -> None:
        from botocore.config import Config

        from objathor_release._version import __version__

        self.target = target
        self.expires = expires
        config = Config(region_name=target.region, signature_version="s3v4",
                        user_agent_extra=f"objathor-release/{__version__}")
        self._client: Any = target.session().client("s3", endpoint_url=target.endpoint_url, config=config)
        self._lock = threading.Lock()

    def __call__(self, url: str) -> str:
        bucket, key = split_s3_url(url)
        with self._lock:  # botocore's signer is shared state; signing takes microseconds
            signed: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.expires)
        return signed

    def secrets(self) -> list[str]:
        """The strings no message may show: the target's keys."""
        return self.target.secrets()

    def __repr__(self) -> str:
        return f"Presigner({self.target!r})"
