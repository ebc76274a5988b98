"""Talking to the bucket: the botocore client, one-line errors, and the small helpers every request uses.

:func:`make_client` builds the S3 client for an :class:`~objathor_release.s3.target.S3Target`,
configured for R2. :func:`describe_error` (and :func:`client_error`, for a client) turns any
botocore failure into one clean line with every secret redacted; :func:`is_transient` says
which failures are worth another attempt. :func:`head_or_none`, :func:`object_key` and
:func:`artifact_key` are the shared pieces of the upload, the remote check and the cleanup.
"""

from __future__ import annotations

import re
from typing import Any

from objathor_release.errors import ReleaseError, TransferError, UsageError
from objathor_release.s3.target import CREDENTIALS_HINT, S3Target, redact

__all__ = ["HOLODECK_ARTIFACT", "RETRY_CODES", "RETRY_STATUS", "artifact_key", "clean_etag", "client_error",
           "client_secrets", "connect_failure", "describe_error", "error_code", "head_or_none", "http_status",
           "is_transient", "make_client", "object_key", "one_line"]

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
    "InvalidClientTokenId", "AuthorizationHeaderMalformed", "Unauthorized", "403",
}


def object_key(prefix: str, name: str) -> str:
    """The key of artifact ``name`` under ``prefix`` (``""`` means the bucket root)."""
    return f"{prefix}/{name}" if prefix else name


#: The release dir's Holodeck base data, which is published beside the version, not in it.
HOLODECK_ARTIFACT = "holodeck.tar"


def artifact_key(prefix: str, name: str, version: str) -> str:
    """The key artifact ``name`` of ``version`` is published at under ``prefix``.

    Every artifact goes under the prefix but ``holodeck.tar``, which becomes ``holodeck/VERSION.tar``
    beside the version's folder, where objathor and ``download holodeck-base`` read it
    (``BASE/holodeck/VERSION.tar``, BASE being the URL up to ``/VERSION``): with prefix
    ``data/2024_02_01`` it is ``data/holodeck/2024_02_01.tar``. A prefix without a ``VERSION``
    folder holds the version at its root (``download --layout root``), and the Holodeck base
    then goes inside it: ``PREFIX/holodeck/VERSION.tar``.
    """
    if name != HOLODECK_ARTIFACT:
        return object_key(prefix, name)
    parts = prefix.split("/") if prefix else []
    if version in parts:
        parts = parts[:len(parts) - 1 - parts[::-1].index(version)]
    return "/".join([*parts, "holodeck", f"{version}.tar"])


def clean_etag(etag: str | None) -> str:
    """An ETag as S3 sends it (``'"abc..."'``) without its quotes and spaces."""
    return (etag or "").strip().strip('"')


def make_client(
    target: S3Target,
    *,
    max_pool_connections: int = 32,
    connect_timeout: float = 10,
    read_timeout: float = 120,
) -> Any:
    """A botocore S3 client for ``target``, configured for R2.

    - ``request_checksum_calculation`` / ``response_checksum_validation`` are
      ``when_required``: boto3 1.36+ otherwise adds CRC headers R2 has rejected.
      The upload sends ``Content-MD5`` on every part itself.
    - ``payload_signing_enabled=False``: the body is not SHA-256 hashed for the
      signature (botocore already skips that over HTTPS when Content-MD5 is sent;
      this makes plain-HTTP endpoints behave the same). Content-MD5 is a signed
      header, so the body still cannot change unnoticed.
    - standard retry mode (``AWS_MAX_ATTEMPTS`` still applies; default 3 attempts).
    """
    from botocore.config import Config

    from objathor_release._version import __version__

    config = Config(
        region_name=target.region,
        signature_version="s3v4",
        retries={"mode": "standard"},
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"payload_signing_enabled": False},
        user_agent_extra=f"objathor-release/{__version__}",
    )
    return target.session().client("s3", endpoint_url=target.endpoint_url, config=config)


# --------------------------------------------------------------------------- errors


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(text: str, secrets: list[str] | None = None, limit: int = 200) -> str:
    """Server-provided ``text`` made safe for a one-line message: secrets redacted (before it is
    cut, so no part of one survives), control characters (newlines, terminal escapes) turned into
    spaces, and cut at ``limit`` characters."""
    return _CONTROL.sub(" ", redact(text, secrets or []))[:limit]


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError (``"NoSuchKey"``, ``"404"``...), else ``""``."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 0


_DNS_MARKS = ("NameResolutionError", "Name or service not known", "nodename nor servname", "getaddrinfo",
              "Temporary failure in name resolution", "No address associated")


def connect_failure(exc: BaseException) -> str:
    """What went wrong under a botocore connection error, in words."""
    import botocore.exceptions as bx

    inner = getattr(exc, "kwargs", {}).get("error")
    text = f"{type(inner).__name__} {inner}" if inner is not None else str(exc)
    if any(m in text for m in _DNS_MARKS):
        return "host not found (DNS)"
    if "Connection refused" in text or "Errno 111" in text or "ConnectionRefused" in text:
        return "connection refused"
    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError) or "timed out" in text.lower():
        return "timed out"
    return one_line(str(inner or exc), [], 120)


def describe_error(exc: BaseException, *, action: str, bucket: str, endpoint_url: str,
                   secrets: list[str] | None = None) -> ReleaseError:
    """One clean, secret-free ReleaseError for a botocore failure while doing ``action``."""
    import botocore.exceptions as bx

    secrets = secrets or []
    if isinstance(exc, ReleaseError):
        return exc
    code = error_code(exc)
    if isinstance(exc, bx.ClientError):
        message = one_line(str(exc.response.get("Error", {}).get("Message") or ""), secrets)
        status = http_status(exc)
        if code == "NoSuchBucket":
            out: ReleaseError = UsageError(
                f"bucket {bucket!r} does not exist at {endpoint_url}: create it or check --bucket"
            )
        elif code in _CREDENTIAL_CODES or status in (401, 403):
            out = UsageError(
                f"{endpoint_url} refused the request ({code or status}) while {action}: "
                f"check the credentials and their access to bucket {bucket!r}: {CREDENTIALS_HINT}"
            )
        else:
            detail = f"{code} {message}".strip() or f"HTTP {status}"
            out = TransferError(f"{action} failed ({detail}) at {endpoint_url}: run the same command again")
    elif isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        out = UsageError(f"no usable S3 credentials: {CREDENTIALS_HINT}")
    elif isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        out = TransferError(
            f"cannot connect to the S3 endpoint {endpoint_url} ({connect_failure(exc)}) while {action}: "
            "check --endpoint-url (or AWS_ENDPOINT_URL, R2_ACCOUNT_ID) and the network"
        )
    elif isinstance(exc, bx.BotoCoreError | OSError):
        text = one_line(str(exc), secrets)
        out = TransferError(f"{action} failed ({type(exc).__name__}: {text}) at {endpoint_url}: "
                            "run the same command again")
    else:  # an answer botocore could not turn into a response (a garbled field, a missing element...)
        text = one_line(str(exc), secrets)
        out = TransferError(f"{action} failed: the answer of {endpoint_url} could not be read "
                            f"({type(exc).__name__}: {text}): run the same command again")
    out.args = (redact(str(out), secrets),)
    return out


# --------------------------------------------------------------------------- client helpers

RETRY_STATUS = {429, 500, 502, 503, 504}
RETRY_CODES = {"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable", "Throttling",
               "BadDigest", "RequestTimeTooSkewed"}


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: connection resets, timeouts, 429, 500, 502, 503, 504."""
    import botocore.exceptions as bx

    if isinstance(exc, bx.ConnectionError | bx.HTTPClientError):
        return True
    if isinstance(exc, bx.ClientError):
        return http_status(exc) in RETRY_STATUS or error_code(exc) in RETRY_CODES
    return False


def client_secrets(client: Any) -> list[str]:
    """The client's credential strings, so error messages can be scrubbed of them."""
    try:
        creds = client._request_signer._credentials.get_frozen_credentials()
        return [s for s in (creds.secret_key, creds.access_key, creds.token) if s]
    except Exception:  # noqa: BLE001 - no credentials (or another botocore) means nothing to hide
        return []


def client_error(client: Any, exc: BaseException, action: str, bucket: str) -> ReleaseError:
    """:func:`describe_error` for a failure of ``client``: names its endpoint, hides its secrets."""
    return describe_error(exc, action=action, bucket=bucket, endpoint_url=str(client.meta.endpoint_url),
                          secrets=client_secrets(client))


def head_or_none(client: Any, bucket: str, key: str, **kwargs: Any) -> dict[str, Any] | None:
    """HEAD ``key``: the response, or None when it does not exist; other failures as one clean error."""
    import botocore.exceptions as bx

    try:
        head: dict[str, Any] = client.head_object(Bucket=bucket, Key=key, **kwargs)
        return head
    except bx.ClientError as exc:
        if http_status(exc) == 404 or error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise client_error(client, exc, f"checking s3://{bucket}/{key}", bucket) from None
    except ReleaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore, or an answer it could not parse: one clean line
        raise client_error(client, exc, f"checking s3://{bucket}/{key}", bucket) from None
