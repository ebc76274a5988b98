"""Where the bucket is: endpoint, bucket and credentials, from flags, environment and rclone remotes.

``resolve_target`` turns flags, environment variables and (optionally) an rclone
remote into one :class:`S3Target`; :func:`objathor_release.publish.client.make_client` (uploads) or
:class:`objathor_release.s3.presign.Presigner` (downloads)
builds the S3 client from it. Credentials live only inside the target and the
client: ``repr(target)`` names where they came from, never their values, and
:func:`redact` scrubs them from any text.

Endpoint, first match wins: ``--endpoint-url``, the rclone remote's ``endpoint``,
``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``R2_ACCOUNT_ID`` (which gives
``https://<ACCOUNT_ID>.r2.cloudflarestorage.com``, region ``auto``).

Credentials, first match wins: the rclone remote's keys, ``--profile``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``R2_ACCESS_KEY_ID``/
``R2_SECRET_ACCESS_KEY``, then boto3's usual chain (``AWS_PROFILE``, shared files...).

This module knows the target, not the bucket: nothing here sends a request.
"""

from __future__ import annotations

import configparser
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from objathor_release.errors import UsageError

logger = logging.getLogger(__name__)

__all__ = ["CREDENTIALS_HINT", "Keys", "R2_HOST_SUFFIX", "S3Target", "boto_session", "half_pair",
           "normalize_prefix",
           "parse_remote", "rclone_config_path", "read_rclone_remote", "redact", "resolve_target"]

R2_HOST_SUFFIX = ".r2.cloudflarestorage.com"
_ENCRYPTED_RCLONE = "RCLONE_ENCRYPT_V0:"
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

    def session(self) -> Any:
        """A boto3 session with this target's credentials (or profile, or boto3's default chain)."""
        return boto_session(self.profile, self._keys)

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


def boto_session(profile: str | None = None, keys: Keys | None = None) -> Any:
    """A boto3 session from static keys, else a profile (None: boto3's default chain)."""
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


_PAIRS = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"))


def half_pair(env: Mapping[str, str]) -> str | None:
    """One line naming the missing half of a key pair set by half (``AWS_ACCESS_KEY_ID`` without
    ``AWS_SECRET_ACCESS_KEY``, and so on), else None."""
    for key_id, secret in _PAIRS:
        has_id, has_secret = bool(_env(env, key_id)), bool(_env(env, secret))
        if has_id != has_secret:
            present, missing = (key_id, secret) if has_id else (secret, key_id)
            return (f"{present} is set but {missing} is not: set {missing} too "
                    f"(or unset {present} to take the credentials from elsewhere)")
    if _env(env, "AWS_SESSION_TOKEN") and not _env(env, "AWS_ACCESS_KEY_ID"):
        return ("AWS_SESSION_TOKEN is set but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not: "
                "set them too (or unset AWS_SESSION_TOKEN)")
    return None


def _chain_credentials(session: Any, profile: str | None) -> Any:
    """The session's credentials (None when it has none); a broken source is one clear UsageError."""
    import botocore.exceptions as bx

    where = f"profile {profile!r}" if profile else "the AWS credential chain"
    try:
        return session.get_credentials()
    except bx.PartialCredentialsError as exc:
        missing = getattr(exc, "kwargs", {}).get("cred_var", "a key")
        provider = getattr(exc, "kwargs", {}).get("provider", "the configuration")
        raise UsageError(f"{where} has partial credentials in {provider} (missing {missing}): "
                         f"add it, or {CREDENTIALS_HINT}") from None
    except bx.BotoCoreError as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UsageError(f"{where} cannot give credentials ({type(exc).__name__}: {first}): "
                         f"{CREDENTIALS_HINT}") from None


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
    half = half_pair(env)
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
        if half:
            logger.warning("%s; using R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY", half.split(":")[0])
    elif half:
        # botocore would stop with a traceback (or quietly look elsewhere): name what is missing
        raise UsageError(half)

    region = remote_cfg.get("region") or ""
    hidden: tuple[str, ...] = ()
    if keys is None and (require_credentials or use_profile):
        session = boto_session(use_profile)
        creds = _chain_credentials(session, use_profile)
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


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret (longer than 3 characters) replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret and len(secret) > 3:
            text = text.replace(secret, "***")
    return text
