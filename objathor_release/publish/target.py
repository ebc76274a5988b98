"""Where to upload: the endpoint, bucket and credentials resolution now lives in
:mod:`objathor_release.s3.target`, shared with the download; its public names stay importable here."""

from __future__ import annotations

from objathor_release.s3.target import (
    CREDENTIALS_HINT,
    R2_HOST_SUFFIX,
    Keys,
    S3Target,
    boto_session,
    half_pair,
    normalize_prefix,
    parse_remote,
    rclone_config_path,
    read_rclone_remote,
    redact,
    resolve_target,
)

__all__ = ["CREDENTIALS_HINT", "Keys", "R2_HOST_SUFFIX", "S3Target", "boto_session", "half_pair",
           "normalize_prefix", "parse_remote", "rclone_config_path", "read_rclone_remote", "redact",
           "resolve_target"]
