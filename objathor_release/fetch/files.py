"""Single-file parts (annotations.json.gz, and a tar kept by ``--keep-tar``): fetched, verified, renamed.

The cut: one file from its URL to its final name. :func:`fetch_into` fetches
into ``NAME.part`` with parallel Range requests (:mod:`.ranges`), refuses an
error page, checks size and sha256 against the manifest and only then renames
it into place; :func:`fetch_file` is the whole part, marker included, with
the one retry after a checksum mismatch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from objathor_release.errors import ChecksumError, TransferError
from objathor_release.fetch.job import Job, PartResult
from objathor_release.fetch.layout import Part
from objathor_release.fetch.markers import write_done
from objathor_release.fetch.pages import sniff_page
from objathor_release.fetch.ranges import download_file, part_paths
from objathor_release.fsutil import remove_path, sha256_file
from objathor_release.progress import progress


def fetch_file(job: Job, part: Part) -> PartResult:
    """A single-file part: parallel Range requests into a ``.part``, verified, renamed into place."""
    url, target, art = part.url, part.target, part.artifact
    partial, state_json = part_paths(target)

    def cleanup() -> None:
        for p in (partial, state_json):
            remove_path(p)

    def attempt() -> PartResult:
        digest, size = fetch_into(job, url, target, art, "gzip" if target.suffix == ".gz" else "file")
        write_done(part, url, digest, size, art is not None)
        return PartResult(part.what, target, "downloaded", art is not None, size)

    # A file some other tool (objathor's downloader) left under the final name: keep it only if it
    # is exactly the listed one.
    if (art is not None and target.is_file() and target.stat().st_size == art["size"]
            and sha256_file(target) == art["sha256"].lower()):
        write_done(part, url, art["sha256"].lower(), art["size"], True)
        return PartResult(part.what, target, "already there", True, note="checked against manifest.json")
    return job.twice(target.name, attempt, cleanup)


def fetch_into(job: Job, url: str, target: Path, art: Mapping[str, Any] | None, kind: str) -> tuple[str, int]:
    """Download into ``target``'s ``.part``, verify, rename to ``target``; returns (sha256, size)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial, state_json = part_paths(target)
    have = partial.stat().st_size if partial.exists() else 0  # preallocated: already reserved on disk
    copies = 2 if kind == "tar" else 1  # a kept tar is extracted beside itself
    check = job.check_response(url, kind, art["size"] if art else None,
                               need=lambda info: copies * (info.size or 0) - have)
    with progress(job.size_of(url, art), f"download {target.name}", enabled=job.show_progress) as bar:
        info = download_file(job.http, url, target, check=check, bar=bar)
    if kind in ("gzip", "tar"):
        with open(partial, "rb") as fh:
            sniff_page(url, fh.read(512), "gzip data" if kind == "gzip" else "a tar")
    digest = sha256_file(partial)
    size = partial.stat().st_size
    if art is not None:
        if size != art["size"] or digest != art["sha256"].lower():
            raise ChecksumError(f"{url}: downloaded {size} bytes with sha256:{digest}, manifest.json "
                                f"says {art['size']} bytes with sha256:{art['sha256'].lower()}")
    elif kind == "gzip":
        with open(partial, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                raise TransferError(f"{url} is not gzip data (an error page?): check --base-url and "
                                    "--version")
    if info.size is not None and size != info.size:
        raise TransferError(f"{url}: got {size} bytes, the server announced {info.size}; run again")
    os.replace(partial, target)
    remove_path(state_json)
    return digest, size
