"""Where to upload: endpoint, bucket, credentials and a botocore client configured for R2.

``resolve_target`` turns flags, environment variables and (optionally) an rclone
remote into one :class:`S3Target`; ``make_client`` builds the S3 client from it.
Credentials live only inside the target and the client: ``repr(target)`` names
where they came from, never their values, and :func:`describe_error` turns any
botocore failure into one clean line with every secret redacted.

Endpoint, first match wins: ``--endpoint-url``, the rclone remote's ``endpoint``,
``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``R2_ACCOUNT_ID`` (which gives
``https://<ACCOUNT_ID>.r2.cloudflarestorage.com``, region ``auto``).

Credentials, first match wins: the rclone remote's keys, ``--profile``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``R2_ACCESS_KEY_ID``/
``R2_SECRET_ACCESS_KEY``, then boto3's usual chain (``AWS_PROFILE``, shared files...).
"""

from __future__ import annotations

import configparser
import datetime as _dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from objathor_release.errors import ReleaseError, TransferError, UsageError

R2_HOST_SUFFIX = ".r2.cloudflarestorage.com"
_ENCRYPTED_RCLONE = "RCLONE_ENCRYPT_V0:"
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
    "InvalidClientTokenId", "AuthorizationHeaderMalformed", "Unauthorized", "403",
}
CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY), "
    "or pass --profile or --remote"
)


@dataclass(frozen=True)
class Keys:
    """Static credentials. Never printed: ``repr`` shows nothing of them."""

    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:
        return "Keys(<hidden>)"


@dataclass(frozen=True)
class S3Target:
    """A bucket (and optional key prefix) on an S3 API endpoint, with the credentials to use."""

    bucket: str
    prefix: str | None
    endpoint_url: str
    region: str
    credential_source: str = "boto3 default chain"
    profile: str | None = None
    _keys: Keys | None = field(default=None, repr=False, compare=False)
    _hidden: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __repr__(self) -> str:
        return (
            f"S3Target(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r}, "
            f"region={self.region!r}, credentials=<from {self.credential_source}, hidden>)"
        )

    __str__ = __repr__

    def with_prefix(self, prefix: str | None) -> S3Target:
        """The same target under another key prefix."""
        return S3Target(self.bucket, prefix, self.endpoint_url, self.region, self.credential_source,
                        self.profile, self._keys, self._hidden)

    def secrets(self) -> list[str]:
        """Every secret string this target knows, for :func:`redact`."""
        k = self._keys
        found = [k.secret_key, k.access_key, k.token or ""] if k else []
        return [s for s in (*found, *self._hidden) if s]


def normalize_prefix(prefix: str | None) -> str | None:
    """``"/2024_02_01/"`` -> ``"2024_02_01"``; ``""`` or ``"/"`` -> ``""`` (bucket root); None stays None."""
    if prefix is None:
        return None
    return prefix.strip("/")


def object_key(prefix: str, name: str) -> str:
    """The key of artifact ``name`` under ``prefix`` (``""`` means the bucket root)."""
    return f"{prefix}/{name}" if prefix else name


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value and value.strip() else None


# --------------------------------------------------------------------------- rclone remotes


def rclone_config_path(explicit: str | None, env: Mapping[str, str]) -> Path:
    """Where rclone keeps its config: ``--rclone-config``, ``$RCLONE_CONFIG``, else the XDG default."""
    if explicit:
        return Path(explicit).expanduser()
    if _env(env, "RCLONE_CONFIG"):
        return Path(env["RCLONE_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if _env(env, "XDG_CONFIG_HOME") else Path.home() / ".config"
    path = base / "rclone" / "rclone.conf"
    legacy = Path.home() / ".rclone.conf"
    return legacy if not path.exists() and legacy.exists() else path


def parse_remote(spec: str) -> tuple[str, str | None, str | None]:
    """``"r2:bucket/2024_02_01"`` -> ``("r2", "bucket", "2024_02_01")``."""
    name, sep, path = spec.partition(":")
    if not sep or not name or not re.fullmatch(r"[\w.\- ]+", name):
        raise UsageError(
            f"--remote {spec!r} is not of the form NAME:BUCKET/PREFIX: e.g. r2:my-bucket/2024_02_01"
        )
    path = path.strip("/")
    bucket, _, prefix = path.partition("/")
    return name, bucket or None, prefix or None


def read_rclone_remote(name: str, config_file: Path, env: Mapping[str, str]) -> dict[str, str]:
    """The settings of rclone remote ``name`` (file section plus ``RCLONE_CONFIG_<NAME>_<KEY>`` variables)."""
    section: dict[str, str] = {}
    if config_file.exists():
        try:
            text = config_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{config_file}: cannot read the rclone config ({exc.strerror})") from None
        if _ENCRYPTED_RCLONE in text:
            raise UsageError(
                f"{config_file}: the rclone config is encrypted: "
                "pass --endpoint-url and keys instead of --remote"
            )
        parser = configparser.RawConfigParser(strict=False)
        try:
            parser.read_string(text, source=str(config_file))
        except configparser.Error as exc:
            first = str(exc).splitlines()[0]
            raise UsageError(f"{config_file}: not a valid rclone config ({first})") from None
        if parser.has_section(name):
            section = {k.lower(): v.strip() for k, v in parser.items(name)}
    env_prefix = f"RCLONE_CONFIG_{name.upper().replace('-', '_')}_"
    for key, value in env.items():
        if key.startswith(env_prefix) and value:
            section[key[len(env_prefix):].lower()] = value
    if not section:
        raise UsageError(f"{config_file}: no rclone remote named {name!r}: check --remote or --rclone-config")
    if section.get("type") != "s3":
        raise UsageError(
            f"{config_file}: rclone remote {name!r} has type {section.get('type')!r}, not s3: "
            "use an S3 (or R2) remote"
        )
    return section


# --------------------------------------------------------------------------- resolution


def _is_r2(endpoint_url: str) -> bool:
    host = urlsplit(endpoint_url).hostname or ""
    return host.endswith(R2_HOST_SUFFIX)


def _check_endpoint(url: str, origin: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{origin} {url!r} is not an http(s) URL: e.g. https://<ACCOUNT_ID>{R2_HOST_SUFFIX}")
    return url.rstrip("/")


def _session(profile: str | None = None, keys: Keys | None = None) -> Any:
    import boto3
    import botocore.exceptions

    try:
        if keys is not None:
            return boto3.session.Session(
                aws_access_key_id=keys.access_key, aws_secret_access_key=keys.secret_key,
                aws_session_token=keys.token,
            )
        return boto3.session.Session(profile_name=profile)
    except botocore.exceptions.ProfileNotFound:
        raise UsageError(
            f"credentials profile {profile!r} not found: check --profile or AWS_PROFILE"
        ) from None


def resolve_target(
    *,
    bucket: str | None,
    prefix: str | None,
    endpoint_url: str | None,
    profile: str | None,
    remote: str | None,
    rclone_config: str | None,
    require_credentials: bool = True,
    env: Mapping[str, str] | None = None,
) -> S3Target:
    """Work out the bucket, prefix, endpoint, region and credentials to use (see the module docstring).

    Raises UsageError, with one line saying what to set, when the bucket, the
    endpoint or (with ``require_credentials``) the credentials are missing.
    """
    env = os.environ if env is None else env
    remote_cfg: dict[str, str] = {}
    remote_name = None
    if remote:
        remote_name, remote_bucket, remote_prefix = parse_remote(remote)
        remote_cfg = read_rclone_remote(remote_name, rclone_config_path(rclone_config, env), env)
        bucket = bucket or remote_bucket
        prefix = prefix if prefix is not None else remote_prefix
    if not bucket:
        raise UsageError("no bucket given: pass --bucket (or set BUCKET), or --remote NAME:BUCKET/PREFIX")

    if endpoint_url:
        endpoint = _check_endpoint(endpoint_url, "--endpoint-url")
    elif remote_cfg.get("endpoint"):
        ep = remote_cfg["endpoint"]
        origin = f"rclone remote {remote_name!r} endpoint"
        endpoint = _check_endpoint(ep if "://" in ep else f"https://{ep}", origin)
    elif _env(env, "AWS_ENDPOINT_URL_S3"):
        endpoint = _check_endpoint(env["AWS_ENDPOINT_URL_S3"], "AWS_ENDPOINT_URL_S3")
    elif _env(env, "AWS_ENDPOINT_URL"):
        endpoint = _check_endpoint(env["AWS_ENDPOINT_URL"], "AWS_ENDPOINT_URL")
    elif _env(env, "R2_ACCOUNT_ID"):
        account = env["R2_ACCOUNT_ID"].strip()
        if not re.fullmatch(r"[0-9A-Za-z]+", account):
            raise UsageError("R2_ACCOUNT_ID is not an account id (letters and digits): check the variable")
        endpoint = f"https://{account}{R2_HOST_SUFFIX}"
    else:
        raise UsageError(
            "no S3 endpoint: pass --endpoint-url, "
            "or set AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or R2_ACCOUNT_ID"
        )

    keys: Keys | None = None
    source = "boto3 default chain"
    use_profile: str | None = None
    env_auth = remote_cfg.get("env_auth", "false").lower() == "true"
    if remote_cfg.get("access_key_id") and remote_cfg.get("secret_access_key") and not env_auth:
        keys = Keys(remote_cfg["access_key_id"], remote_cfg["secret_access_key"],
                    remote_cfg.get("session_token") or None)
        source = f"rclone remote {remote_name!r}"
    elif profile:
        use_profile, source = profile, f"profile {profile!r}"
    elif _env(env, "AWS_ACCESS_KEY_ID") and _env(env, "AWS_SECRET_ACCESS_KEY"):
        keys = Keys(env["AWS_ACCESS_KEY_ID"].strip(), env["AWS_SECRET_ACCESS_KEY"].strip(),
                    _env(env, "AWS_SESSION_TOKEN"))
        source = "AWS_ACCESS_KEY_ID"
    elif _env(env, "R2_ACCESS_KEY_ID") and _env(env, "R2_SECRET_ACCESS_KEY"):
        keys = Keys(env["R2_ACCESS_KEY_ID"].strip(), env["R2_SECRET_ACCESS_KEY"].strip())
        source = "R2_ACCESS_KEY_ID"

    region = remote_cfg.get("region") or ""
    hidden: tuple[str, ...] = ()
    if keys is None and (require_credentials or use_profile):
        session = _session(use_profile)
        creds = session.get_credentials()
        if creds is None and require_credentials:
            where = f"profile {use_profile!r} has no credentials" if use_profile else "no S3 credentials"
            raise UsageError(f"{where}: {CREDENTIALS_HINT}")
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            hidden = tuple(s for s in (frozen.secret_key, frozen.access_key, frozen.token) if s)
            if use_profile is None:
                source = f"boto3 {creds.method}"
        region = region or (session.region_name or "")
    if _is_r2(endpoint):
        region = "auto"
    region = region or _env(env, "AWS_REGION") or _env(env, "AWS_DEFAULT_REGION") or "us-east-1"
    return S3Target(bucket, normalize_prefix(prefix), endpoint, region, source, use_profile, keys, hidden)


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
    session = _session(target.profile, target._keys)
    return session.client("s3", endpoint_url=target.endpoint_url, config=config)


# --------------------------------------------------------------------------- errors


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(text: str, secrets: list[str] | None = None, limit: int = 200) -> str:
    """Server-provided ``text`` made safe for a one-line message: secrets redacted (before it is
    cut, so no part of one survives), control characters (newlines, terminal escapes) turned into
    spaces, and cut at ``limit`` characters."""
    return _CONTROL.sub(" ", redact(text, secrets or []))[:limit]


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret (longer than 3 characters) replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret and len(secret) > 3:
            text = text.replace(secret, "***")
    return text


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
            f"cannot connect to the S3 endpoint {endpoint_url} while {action}: check --endpoint-url "
            "(or AWS_ENDPOINT_URL, R2_ACCOUNT_ID) and the network"
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


# --------------------------------------------------------------------------- abandoned uploads

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
        for page in client.get_paginator("list_multipart_uploads").paginate(**kwargs):
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
