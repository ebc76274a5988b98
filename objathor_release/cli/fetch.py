"""The CLI's download: a published version into ~/.objathor-assets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from objathor_release.cli.common import env
from objathor_release.errors import UsageError

# --------------------------------------------------------------------------- download


def add_download(sub: Any) -> None:
    p = sub.add_parser(
        "download", help="download a dataset version into ~/.objathor-assets",
        description="Download a part of a dataset version (or all it has) into DIR/VERSION/, in "
        "objathor's layout. Tars stream into a safe extractor; with the release's manifest.json every "
        "byte is checked; an interrupted run resumes when run again.",
    )
    p.add_argument("what", choices=["annotations", "assets", "features", "holodeck-base", "all"],
                   help="which part of the version to fetch")
    p.add_argument("--version", default=env("VERSION"), metavar="YYYY_MM_DD",
                   help="dataset version, e.g. 2023_09_23 (default: $VERSION)")
    p.add_argument("--path", default=None, metavar="DIR",
                   help="where versions live (default ~/.objathor-assets)")
    p.add_argument("--base-url", default=None, metavar="URL",
                   help="serve files from {URL}/{VERSION}/... (default: $OBJATHOR_BASE_URL, else "
                   "objathor's table of public versions); s3://BUCKET/PREFIX reads a private bucket over "
                   "the S3 API with credentials")
    p.add_argument("--bucket", default=None, metavar="BUCKET",
                   help="read a private bucket over the S3 API: the same as --base-url s3://BUCKET/PREFIX "
                   "(with --prefix)")
    p.add_argument("--prefix", default=None, metavar="PREFIX", help="with --bucket: the key prefix the "
                   "versions sit under (default: the bucket root)")
    p.add_argument("--endpoint-url", default=None, metavar="URL",
                   help="with --base-url s3://BUCKET/PREFIX: the S3 API endpoint (default: "
                   "$AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else R2 from $R2_ACCOUNT_ID)")
    p.add_argument("--profile", default=None,
                   help="with --base-url s3://BUCKET/PREFIX: the credentials profile (default: "
                   "$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY, or R2_..., or boto3's chain)")
    p.add_argument("--layout", choices=["versioned", "root"], default="versioned",
                   help="versioned (default): files at {URL}/{VERSION}/NAME; root: the version sits at the "
                   "root of its own bucket, files at {URL}/NAME (as 2024_08_16 and 2025_06_10 do). A "
                   "{version} in --base-url puts the version there instead")
    p.add_argument("--uids", default=None, metavar="A,B,C", help="fetch only these assets")
    p.add_argument("--uids-file", default=None, metavar="FILE", help="fetch only the uids in FILE")
    p.add_argument("--slice", default=None, metavar="K/N",
                   help="of a sharded release, fetch only the shards whose index is K mod N (N machines, "
                   "one slice each, together hold every asset; a release of one assets.tar is shard 0)")
    p.add_argument("--require-checksums", action="store_true",
                   help="refuse a version that has no manifest.json to verify against")
    p.add_argument("--trusted-key", action="append", default=[], metavar="KEY",
                   help="check manifest.json.sig with this Ed25519 public key (base64, or a file holding "
                   "it; repeatable; added to the package's trusted_keys.txt)")
    p.add_argument("--require-signature", action="store_true",
                   help="refuse a version whose manifest is not signed by a trusted key")
    p.add_argument("--keep-tar", action="store_true", help="keep the .tar beside the extracted folder")
    p.add_argument("--connections", type=int, default=None, metavar="N",
                   help="parallel Range requests per file (default: adapt, from 4 up to 16, while the rate "
                   "grows; N fixes it)")
    p.set_defaults(func=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    """``objathor-release download WHAT --version V [...]``: notes on stderr as they come (logged by the
    download, shown by :mod:`.output`), the summary on stdout at the end."""
    from objathor_release.fetch.download import download_version

    uids = parse_uids(args.uids, args.uids_file)
    base_url = args.base_url
    if args.bucket:
        if base_url:
            raise UsageError("--bucket and --base-url both say where the version is: pass one of them")
        if "/" in args.bucket or not args.bucket.strip():
            raise UsageError(f"--bucket {args.bucket!r} is not a bucket name: put the key prefix in --prefix")
        prefix = (args.prefix or "").strip("/")
        base_url = f"s3://{args.bucket}" + (f"/{prefix}" if prefix else "")
    elif args.prefix is not None:
        raise UsageError("--prefix goes with --bucket (or put it in --base-url s3://BUCKET/PREFIX)")
    if uids is not None and args.what not in ("assets", "all"):
        raise UsageError("--uids/--uids-file select assets: use them with 'download assets' or "
                         "'download all'")
    shard_slice = None
    if args.slice is not None:
        from objathor_release.fetch.shards import parse_slice

        chosen = parse_slice(args.slice)
        shard_slice = (chosen.index, chosen.count)
    result = download_version(
        args.what, args.version, path=args.path, base_url=base_url, layout=args.layout, uids=uids,
        require_checksums=args.require_checksums, show_progress=not args.quiet,
        keep_tar=args.keep_tar, connections=args.connections, trusted_keys=args.trusted_key or (),
        require_signature=args.require_signature, endpoint_url=args.endpoint_url, profile=args.profile,
        shard_slice=shard_slice,
    )
    print(result.summary())
    return 0


def parse_uids(uids: str | None = None, uids_file: str | None = None) -> list[str] | None:
    """``--uids a,b,c`` and ``--uids-file FILE`` (one uid per line, ``#`` comments) as one list."""
    if not uids and not uids_file:
        return None
    out: list[str] = [u.strip() for u in (uids or "").split(",") if u.strip()]
    if uids_file:
        try:
            text = Path(uids_file).read_text()
        except OSError as exc:
            raise UsageError(f"--uids-file {uids_file}: {exc.strerror or exc}") from None
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(line)
    if not out:
        raise UsageError("--uids/--uids-file gave no uids: list at least one")
    return list(dict.fromkeys(out))


COMMANDS = [add_download]
