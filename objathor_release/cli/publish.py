"""The CLI's upload and cleanup: the S3 side. Flags in, a typed call to ``objathor_release.publish``,
the table and summary out on stdout; notes arrive on stderr through the log handler ``main`` installs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from objathor_release.cli.common import PROG, env

if TYPE_CHECKING:  # pragma: no cover
    from objathor_release.s3.target import S3Target

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
    p.add_argument("--chunk-size", default=None,
                   help="part size, 5M to 5G (default: chosen per file, so that every connection has "
                   "several parts)")
    p.add_argument("--upload-concurrency", type=int, default=None,
                   help="parts of one file in flight at once (default: starts at 8 and grows while the "
                   "total rate grows, at most 64 requests in all)")
    p.add_argument("--transfers", type=int, default=None,
                   help="files at once (default 8, sharing the connections)")
    p.add_argument("--part-attempts", type=int, default=5, metavar="N",
                   help="attempts per part, each with botocore's own retries, before the run stops "
                   "resumably (default 5)")
    p.add_argument("--force", action="store_true",
                   help="overwrite objects or a published version whose content differs")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded and stop")
    p.set_defaults(func=_run_upload)


def target_from_args(args: argparse.Namespace, require_credentials: bool) -> S3Target:
    """The S3 target the flags name (bucket, prefix, endpoint, profile, rclone remote)."""
    from objathor_release.s3.target import resolve_target

    return resolve_target(bucket=args.bucket, prefix=args.prefix, endpoint_url=args.endpoint_url,
                          profile=args.profile, remote=args.remote, rclone_config=args.rclone_config,
                          require_credentials=require_credentials)


def _show_target(args: argparse.Namespace, target: S3Target) -> None:
    if args.verbose:
        print(f"{PROG}: target: {target!r}", file=sys.stderr, flush=True)


def _run_upload(args: argparse.Namespace) -> int:
    """``objathor-release upload``: resolve the target, upload, print the table and summary."""
    from objathor_release.errors import ReleaseError, UsageError
    from objathor_release.publish.client import make_client
    from objathor_release.publish.upload import upload_release
    from objathor_release.s3.target import redact
    from objathor_release.settings import UploadConfig

    config = UploadConfig.of(args.chunk_size, args.upload_concurrency, args.transfers, args.part_attempts)
    release_dir = Path(args.release_dir)
    if not release_dir.is_dir():
        raise UsageError(f"{release_dir}: release directory not found: check --release-dir")
    target = target_from_args(args, require_credentials=not args.dry_run)
    _show_target(args, target)
    client = None if args.dry_run else make_client(
        target, max_pool_connections=config.connections + 8)
    try:
        report = upload_release(client, release_dir, target, config, force=args.force, dry_run=args.dry_run,
                                show_progress=not args.quiet, verbose=args.verbose)
    except ReleaseError as exc:
        exc.args = (redact(str(exc), target.secrets()),)
        raise
    print(report.table())
    print(report.summary())
    return 0


def add_cleanup(sub: Any) -> None:
    p = sub.add_parser("cleanup", help="list and abort abandoned multipart uploads")
    add_s3_options(p)
    p.add_argument("--prefix", default=None, help="only uploads under this key prefix")
    p.add_argument("--older-than", default="24h", metavar="AGE",
                   help="only uploads started longer ago than this (e.g. 30m, 24h, 7d; default 24h)")
    p.add_argument("--dry-run", action="store_true", help="list only; abort nothing")
    p.set_defaults(func=_run_cleanup)


def _run_cleanup(args: argparse.Namespace) -> int:
    """``objathor-release cleanup``: list and abort abandoned multipart uploads."""
    from objathor_release.publish.cleanup import cleanup_uploads, format_age, parse_duration
    from objathor_release.publish.client import make_client

    older = parse_duration(args.older_than)
    target = target_from_args(args, require_credentials=True)
    _show_target(args, target)
    found = cleanup_uploads(make_client(target), target.bucket, target.prefix, older_than=older,
                            dry_run=args.dry_run)
    for p in found:
        action = "aborted" if p.aborted else "would abort"
        age = format_age(p.age_seconds)
        print(f"{action}  {p.key}  started {p.initiated:%Y-%m-%d %H:%M} UTC ({age} ago)"
              f"  upload id {p.upload_id[:16]}...")
    verb = "found" if args.dry_run else "aborted"
    print(f"{verb} {len(found)} incomplete multipart upload(s) older than {args.older_than} "
          f"in s3://{target.bucket}/{target.prefix or ''}")
    return 0


COMMANDS = [add_upload, add_cleanup]
