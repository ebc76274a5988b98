"""Before any build step: can these credentials reach this bucket at this endpoint?

:func:`preflight` sends one ListObjectsV2 with ``MaxKeys=1`` under the release's prefix. Not
HeadBucket, for two reasons: a HEAD answer has no body, so a refusal arrives as a bare 403 or 404
where ListObjectsV2 names it (``NoSuchBucket``, ``AccessDenied``, ``InvalidAccessKeyId``,
``SignatureDoesNotMatch``); and the upload needs the list permission anyway (without it S3 answers
a HEAD of a missing key with 403, not 404, and the resume cannot tell "absent" from "refused").
Asking under the prefix keeps it within a key policy scoped to that prefix, and it reads nothing.
It cannot prove write access without writing; the upload's first request does.

Each failure is one line naming the endpoint and bucket, what happened (no such bucket, access
denied, connection refused, host not found, timed out) and the fix.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlsplit

from objathor_release.errors import ReleaseError, TransferError, UsageError
from objathor_release.publish.client import (
    client_error,
    client_secrets,
    connect_failure,
    error_code,
    http_status,
    one_line,
)
from objathor_release.s3.target import CREDENTIALS_HINT, S3Target, resolve_target
from objathor_release.settings import ReleaseConfig

logger = logging.getLogger(__name__)

__all__ = ["PREFLIGHT_REQUEST", "check_release_target", "preflight", "release_target"]

PREFLIGHT_REQUEST = "ListObjectsV2 (MaxKeys=1)"
_WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
           "Unauthorized", "403", "401"}


def preflight(client: Any, target: S3Target) -> str:
    """One read-only request to ``target``'s bucket; a line saying it answered, or one clean error."""
    import botocore.exceptions as bx

    bucket, endpoint = target.bucket, target.endpoint_url
    where = f"s3://{bucket}/{target.prefix or ''}"
    kwargs: dict[str, Any] = {"Bucket": bucket, "MaxKeys": 1}
    if target.prefix:
        kwargs["Prefix"] = f"{target.prefix}/"
    try:
        client.list_objects_v2(**kwargs)
    except bx.ClientError as exc:
        code, status = error_code(exc), http_status(exc)
        if code == "NoSuchBucket" or (status == 404 and code in ("", "404", "NotFound")):
            raise UsageError(f"bucket {bucket!r} does not exist at {endpoint}: create it, or check --bucket "
                             "and --endpoint-url") from None
        if code in _WRONG_REGION or status == 301:
            raise UsageError(f"bucket {bucket!r} is not in region {target.region!r} at {endpoint} "
                             f"({code or status}): set AWS_REGION to the bucket's region, or use its "
                             "regional endpoint in --endpoint-url") from None
        if code in _DENIED or status in (401, 403):
            raise UsageError(f"access denied to bucket {bucket!r} at {endpoint} ({code or status}): check "
                             f"the credentials and their access to {where}: {CREDENTIALS_HINT}") from None
        raise client_error(client, exc, f"checking {where}", bucket) from None
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ConnectionClosedError) as exc:
        host = urlsplit(endpoint).hostname or endpoint
        raise TransferError(f"cannot connect to the S3 endpoint {endpoint} ({connect_failure(exc)} for "
                            f"{host}): check --endpoint-url (or AWS_ENDPOINT_URL, R2_ACCOUNT_ID) and the "
                            "network") from None
    except ReleaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore, or an answer it could not parse: one clean line
        raise client_error(client, exc, f"checking {where}", bucket) from None
    secrets = client_secrets(client)
    line = f"{endpoint}: bucket {bucket!r} answered {PREFLIGHT_REQUEST} under {where}"
    logger.debug("%s", one_line(line, secrets))
    return line


def release_target(cfg: ReleaseConfig, *, remote: str | None = None, rclone_config: str | None = None,
                   require_credentials: bool = True) -> S3Target:
    """The S3 target a release publishes to, resolved as the publish step resolves it."""
    env = {**os.environ, **({"R2_ACCOUNT_ID": cfg.r2_account_id} if cfg.r2_account_id else {})}
    return resolve_target(bucket=cfg.bucket, prefix=cfg.prefix or cfg.version, endpoint_url=cfg.endpoint_url,
                          profile=cfg.profile, remote=remote, rclone_config=rclone_config,
                          require_credentials=require_credentials, env=env)


def check_release_target(cfg: ReleaseConfig, *, remote: str | None = None, rclone_config: str | None = None,
                         dry_run: bool = False) -> str:
    """Resolve the release's target and, unless ``dry_run``, :func:`preflight` it. Returns what was
    checked, one line; raises one clean ReleaseError before any build step would start."""
    from objathor_release.publish.client import make_client

    target = release_target(cfg, remote=remote, rclone_config=rclone_config, require_credentials=not dry_run)
    where = f"s3://{target.bucket}/{target.prefix or ''} at {target.endpoint_url}"
    if dry_run:
        return f"{where} (dry run: not contacted)"
    preflight(make_client(target, max_pool_connections=2), target)
    return f"{where} (answered {PREFLIGHT_REQUEST})"
