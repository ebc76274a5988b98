"""What the parts of one ``download_version`` call share: the client, the options, the checks of a response.

The cut: :class:`Job` holds what every part's fetcher (:mod:`.files`,
:mod:`.tars`, :mod:`.uids`) needs and nothing part-specific: the shared
:class:`~.http.Http`, the root folder, the served :class:`~.layout.Source`,
the manifest, the options, and where notes go. Its checks run on a first
response (content type, size against the manifest, free space); :meth:`Job.twice`
is the "a checksum mismatch deletes what failed and retries once" rule.

Notes (an unverified version, a stale marker, a retry, waiting for a lock) go
to ``on_note`` when the caller gives one (the CLI prints them), else to this
module's logger as warnings.

Test hook: ``OBJATHOR_FREE_SPACE`` (a size such as ``10M``) replaces the free
disk space figure used by the "will it fit" check.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objathor_release.errors import ChecksumError, TransferError, UsageError
from objathor_release.fetch.http import Http, Info
from objathor_release.fetch.layout import KNOWN_VERSIONS, Source
from objathor_release.fetch.pages import is_page_type, sniff_page
from objathor_release.settings import format_size, parse_size

logger = logging.getLogger(__name__)

Note = Callable[[str], None]


class Stopped(TransferError):
    """A stream given up because another part of the same download failed (its staging is kept)."""


@dataclass
class PartResult:
    """One part of a version: where it is and what this run did about it."""

    what: str
    path: Path
    status: str  # "downloaded", "already there", "not in this version", "not in this slice"
    verified: bool
    bytes: int = 0
    note: str = ""


def free_space(path: Path) -> int:
    """Free bytes on the filesystem of ``path`` (or the OBJATHOR_FREE_SPACE test hook)."""
    hook = os.environ.get("OBJATHOR_FREE_SPACE")
    if hook:
        return parse_size(hook)
    return shutil.disk_usage(path).free


@dataclass
class Job:
    """One ``download_version`` call: the shared client, where versions live, the manifest, the options."""

    http: Http
    root: Path
    source: Source
    manifest: dict[str, Any] | None = None
    require_checksums: bool = False
    show_progress: bool = True
    keep_tar: bool = False
    on_note: Note | None = None
    needed: int | None = None  # bytes the part being fetched needs on disk, once known
    share: int = 1  # tars streamed at once (shards): each gets this share of the connections and buffer
    cancel: threading.Event = field(default_factory=threading.Event)  # set: every stream stops

    @property
    def version(self) -> str:
        return self.source.version

    def note(self, text: str) -> None:
        """Tell the user something while the download goes on."""
        if self.on_note is not None:
            self.on_note(text)
        else:
            logger.warning("%s", text)

    def unknown_version(self, url: str, status: int) -> UsageError:
        known = ", ".join(KNOWN_VERSIONS)
        where = f"; is --base-url {self.source.version_url.rsplit('/', 1)[0]} right?" if self.source.custom \
            else ""
        return UsageError(f"version {self.version} was not found: {url} answered HTTP {status}; "
                          f"known public versions: {known}{where}")

    def check_response(self, url: str, kind: str, expected: int | None = None,
                       need: Callable[[Info], int] | None = None) -> Callable[[Info], None]:
        """A check run on the first response of ``url``: content type, size, free space."""
        def check(info: Info) -> None:
            ctype = info.content_type
            if is_page_type(ctype, kind):
                raise TransferError(f"{url} returned a page of type {ctype} instead of {kind} data: check "
                                    "--base-url and --version (a proxy, captive portal or error page may be "
                                    "answering)")
            if expected is not None and info.size is not None and info.size != expected:
                self.sniff_remote(url, kind, info.size)
                raise ChecksumError(f"{url} is {info.size} bytes on the server but manifest.json says "
                                    f"{expected}: the upload is incomplete or stale; tell the publisher")
            if need is not None and info.size is not None:
                self.check_space(url, need(info))
        return check

    def sniff_remote(self, url: str, kind: str, size: int) -> None:
        """When the server's size is not the manifest's: is it an error page? (its first bytes say)."""
        label = {"tar": "a tar", "gzip": "gzip data"}.get(kind)
        if label is None or size <= 0:
            return
        try:
            head = b"".join(self.http.stream(url, start=0, end=min(size, 512) - 1))
        except TransferError:
            return  # the size mismatch is the error to report
        sniff_page(url, head, label)

    def check_space(self, url: str, needed: int) -> None:
        self.needed = needed
        self.root.mkdir(parents=True, exist_ok=True)
        free = free_space(self.root)
        if needed > free:
            raise UsageError(f"not enough space in {self.root} for {url}: it needs {format_size(needed)}, "
                             f"{format_size(free)} is free; free some space or pass --path on a larger disk")

    def size_of(self, url: str, art: Mapping[str, Any] | None) -> int | None:
        """The size for the progress bar: the manifest's, else the server's (None if it will not say)."""
        if art is not None:
            return int(art["size"])
        if not self.show_progress:
            return None
        return self.http.info(url).size

    def twice(self, name: str, attempt: Callable[[], PartResult], cleanup: Callable[[], None]) -> PartResult:
        """Run ``attempt``; on a checksum mismatch delete what failed and try once more."""
        try:
            return attempt()
        except ChecksumError as exc:
            cleanup()
            self.note(f"{exc}; deleted it, retrying {name} once")
        try:
            return attempt()
        except ChecksumError:
            cleanup()
            raise
