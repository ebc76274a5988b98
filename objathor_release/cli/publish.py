"""The CLI's upload and cleanup: the S3 side."""

from __future__ import annotations

import argparse
from typing import Any

from objathor_release.cli.common import env

# --------------------------------------------------------------------------- upload / cleanup


def add_s3_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", default=env("BUCKET"), help="bucket name (default: $BUCKET)")
    p.add_argument("--endpoint-url", default=None, metavar="URL",
                   help="S3 API endpoint (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, "
                   "else R2 from $R2_ACCOUNT_ID)")
    p.add_argument("--profile", default=None, help="credentials profile")
    p.add_argument("--remote", default=None, metavar="NAME:BUCKET/PREFIX",
                   help="an rclone S3 remote to take the endpoint, keys and bucket from")
    p.add_argument("--rclone-config", default=None, metavar="FILE",
                   help="rclone config file (default: $RCLONE_CONFIG or ~/.config/rclone/rclone.conf)")


def add_upload(sub: Any) -> None:
    p = sub.add_parser("upload", help="resumable, verified multipart upload of a release to R2/S3")
    p.add_argument("--release-dir", required=True, metavar="DIR", help="the release directory")
    add_s3_options(p)
    p.add_argument("--prefix", default=None, metavar="VERSION",
                   help="key prefix (default: the manifest's version)")
    p.add_argument("--chunk-size", default="64M", help="part size, 5M to 5G (default 64M)")
    p.add_argument("--upload-concurrency", type=int, default=16,
                   help="parts of one file in flight at once (default 16)")
    p.add_argument("--transfers", type=int, default=4, help="files at once (default 4)")
    p.add_argument("--part-attempts", type=int, default=5, metavar="N",
                   help="attempts per part, each with botocore's own retries, before the run stops "
                   "resumably (default 5)")
    p.add_argument("--force", action="store_true",
                   help="overwrite objects or a published version whose content differs")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded and stop")
    p.set_defaults(func=_run_upload)


def _run_upload(args: argparse.Namespace) -> int:
    from objathor_release.publish.upload import run_upload_command

    return run_upload_command(args)


def add_cleanup(sub: Any) -> None:
    p = sub.add_parser("cleanup", help="list and abort abandoned multipart uploads")
    add_s3_options(p)
    p.add_argument("--prefix", default=None, help="only uploads under this key prefix")
    p.add_argument("--older-than", default="24h", metavar="AGE",
                   help="only uploads started longer ago than this (e.g. 30m, 24h, 7d; default 24h)")
    p.add_argument("--dry-run", action="store_true", help="list only; abort nothing")
    p.set_defaults(func=_run_cleanup)


def _run_cleanup(args: argparse.Namespace) -> int:
    from objathor_release.publish.upload import run_cleanup_command

    return run_cleanup_command(args)


COMMANDS = [add_upload, add_cleanup]
