"""The CLI's download: a published version into ~/.objathor-assets."""

from __future__ import annotations

import argparse
from typing import Any

from objathor_release.cli.common import env

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
                   "objathor's table of public versions)")
    p.add_argument("--uids", default=None, metavar="A,B,C", help="fetch only these assets")
    p.add_argument("--uids-file", default=None, metavar="FILE", help="fetch only the uids in FILE")
    p.add_argument("--require-checksums", action="store_true",
                   help="refuse a version that has no manifest.json to verify against")
    p.add_argument("--trusted-key", action="append", default=[], metavar="KEY",
                   help="check manifest.json.sig with this Ed25519 public key (base64, or a file holding "
                   "it; repeatable; added to the package's trusted_keys.txt)")
    p.add_argument("--require-signature", action="store_true",
                   help="refuse a version whose manifest is not signed by a trusted key")
    p.add_argument("--keep-tar", action="store_true", help="keep the .tar beside the extracted folder")
    p.add_argument("--connections", type=int, default=8, metavar="N",
                   help="parallel Range requests per file (default 8)")
    p.set_defaults(func=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from objathor_release.fetch.download import run_download_command

    return run_download_command(args)


COMMANDS = [add_download]
