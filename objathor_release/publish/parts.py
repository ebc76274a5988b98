"""One object's part layout and its S3 ETag, and reading a part straight from the open file.

:func:`layout_for` is the one place that decides how a file goes up under an
:class:`UploadConfig`: one PUT below the multipart threshold, else parts of the
configured ``--chunk-size`` or, by default, of a size chosen for the file: small
enough that each of the connections the run may open has at least
:data:`~objathor_release.settings.PARTS_PER_CONNECTION` parts, never under 5 MiB,
over :data:`~objathor_release.settings.AUTO_MAX_PART` only to stay within 10,000
parts; :func:`objathor_release.settings.adjust_part_size` then keeps it within the
S3 limits (5 MiB to 5 GiB, at most 10,000 parts; every part but the last the same
size). The :class:`Layout` says why, for ``--dry-run``. :class:`Job` is one file
to put at one key with that layout; its ``identity()`` (size, mtime, sha256, part
size) is what a resume record must match.

ETags: a single-part object's is the md5 of its bytes, a multipart object's the
md5 of the concatenated binary part md5s, then ``-N`` (:func:`multipart_etag`;
:func:`local_etag` computes it for a local file). :class:`PartReader` is a
seekable window of an open file that botocore streams one part from, hashed
just before it is sent: a part is never held in memory. That one hashing pass
also feeds the file's sha256 (:class:`SequentialSha256` keeps the parts in
order), so the bytes sent are the bytes checked against the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from objathor_release.build.manifest import SUMS as SUMS_NAME
from objathor_release.errors import InputError, TransferError, UsageError
from objathor_release.publish.localfiles import LocalFile
from objathor_release.settings import (
    AUTO_MAX_PART,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    PARTS_PER_CONNECTION,
    UploadConfig,
    adjust_part_size,
    auto_part_size,
    format_size,
)

__all__ = ["SHA256_META", "Job", "Layout", "PartReader", "SequentialSha256", "layout_for", "local_digests",
           "local_etag", "manifest_layout", "multipart_etag"]

SHA256_META = "sha256"  # the object metadata key that carries the file's sha256
HASH_BLOCK = 1024 * 1024
CONTENT_TYPES = {".tar": "application/x-tar", ".gz": "application/gzip", ".json": "application/json",
                 ".pkl": "application/octet-stream"}


@dataclass(frozen=True)
class Layout:
    """How one file goes up: ``multipart`` or one PUT, the part size (the whole file for a PUT),
    the number of parts, and why, in words (``--dry-run`` prints it)."""

    multipart: bool
    part_size: int
    parts: int
    why: str


def layout_for(size: int, config: UploadConfig) -> Layout:
    """The layout of a file of ``size`` bytes under ``config`` (see the module docstring).

    UsageError for a file over the 5 TiB S3 object limit."""
    if size > MAX_OBJECT_SIZE:
        raise UsageError(f"a file of {format_size(size)} is larger than the 5 TiB S3 object limit")
    if size < config.threshold or size <= 0:
        return Layout(False, max(size, 1), 1, f"under the {format_size(config.threshold)} multipart "
                      "threshold: one PUT")
    connections = config.per_file
    if config.chunk_size is not None:
        part = adjust_part_size(size, config.chunk_size)
        parts = math.ceil(size / part)
        if part == config.chunk_size:
            return Layout(True, part, parts, f"--chunk-size {format_size(part)}")
        return Layout(True, part, parts, f"--chunk-size {format_size(config.chunk_size)} would need more "
                      f"than {MAX_PARTS:,} parts: {format_size(part)}")
    wanted = connections * PARTS_PER_CONNECTION
    part = auto_part_size(size, connections)
    parts = math.ceil(size / part)
    each = f"each of {connections} connections"
    if part == MIN_PART_SIZE and parts < wanted:
        why = (f"auto: {parts} parts of the 5 MiB minimum (too small a file to give {each} "
               f"{PARTS_PER_CONNECTION})")
    elif part > AUTO_MAX_PART:
        why = f"auto: {parts} parts, the smallest whole MiB that stays within {MAX_PARTS:,} parts"
    else:
        why = f"auto: {parts} parts so that {each} has at least {PARTS_PER_CONNECTION}"
    return Layout(True, part, parts, why)


def manifest_layout(artifact: dict[str, Any], config: UploadConfig) -> Layout | None:
    """The layout the manifest's ``etag`` was worked out for (``part_size``; none: one PUT), when the
    run leaves the part size automatic and that layout is within the S3 limits; else None (the
    caller uses :func:`layout_for`). Uploading in it gives the object the ETag the manifest lists."""
    etag, part, size = artifact.get("etag"), artifact.get("part_size"), int(artifact["size"])
    if not isinstance(etag, str) or config.chunk_size is not None or config.multipart_threshold is not None:
        return None
    if part is None:
        if size > MAX_PART_SIZE:
            return None
        return Layout(False, max(size, 1), 1, "one PUT, as manifest.json lists it (its etag)")
    if type(part) is not int or part < MIN_PART_SIZE or adjust_part_size(size, part) != part:
        return None
    parts = math.ceil(size / part)
    return Layout(True, part, parts, f"{parts} parts of {format_size(part)}, as manifest.json lists them "
                  "(its etag)")


def multipart_etag(md5s: Sequence[bytes]) -> str:
    """S3's ETag of a multipart object: md5 of the concatenated binary part md5s, then ``-N``."""
    return hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest() + f"-{len(md5s)}"


class PartReader:
    """A seekable read-only window ``[offset, offset + length)`` of an open file.

    botocore streams the request body from it (and seeks back to 0 to retry), so
    a part is never held in memory. ``md5()`` hashes the window first, for the
    ``Content-MD5`` header, and feeds the same bytes to ``feed`` (the file's
    sha256) in that one pass. Reads are ``pread``s: parts of one descriptor can
    be read by several threads at once.
    """

    def __init__(self, fh: BinaryIO | LocalFile, offset: int, length: int, name: str = "") -> None:
        self._file = fh if isinstance(fh, LocalFile) else None
        self._fd = self._file.fd if self._file is not None else fh.fileno()  # type: ignore[union-attr]
        self._offset, self._length, self._name = offset, length, name
        self._pos = 0

    def __len__(self) -> int:
        return self._length

    def _shorter(self) -> InputError:
        return InputError(f"{self._name}: the file got shorter while uploading: rebuild the release")

    def md5(self, feed: Callable[[memoryview], None] | None = None) -> bytes:
        digest = hashlib.md5(usedforsecurity=False)
        buf = memoryview(bytearray(min(HASH_BLOCK, max(self._length, 1))))
        pos = self._offset
        left = self._length
        while left:
            chunk = buf[: min(len(buf), left)]
            n = os.preadv(self._fd, [chunk], pos)
            if not n:
                raise self._shorter()
            digest.update(chunk[:n])
            if feed is not None:
                feed(chunk[:n])
            left -= n
            pos += n
        self._pos = 0
        return digest.digest()

    def read(self, amt: int | None = -1) -> bytes:
        left = self._length - self._pos
        if amt is None or amt < 0 or amt > left:
            amt = left
        if amt <= 0:
            return b""
        data = os.pread(self._fd, amt, self._offset + self._pos)
        if not data:
            raise self._shorter()
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, min(self._length, base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


class SequentialSha256:
    """The sha256 of a whole file whose parts are read by several threads: each part's bytes are fed
    in its turn (part 1, then 2, ...), so the digest is that of the file in order.

    ``turn(n)`` waits until parts ``1..n-1`` have been fed; a failure inside a turn breaks the
    sequence, and every later waiter stops.
    """

    def __init__(self, name: str) -> None:
        self._sha = hashlib.sha256()
        self._next = 1
        self._broken = False
        self._cond = threading.Condition()
        self._name = name
        self.bytes = 0

    def update(self, data: memoryview) -> None:
        self._sha.update(data)
        self.bytes += len(data)

    @contextlib.contextmanager
    def turn(self, number: int, abort: threading.Event) -> Iterator[None]:
        with self._cond:
            while self._next != number:
                if self._broken or abort.is_set() or self._next > number:
                    raise TransferError(f"{self._name}: stopped")
                self._cond.wait(0.2)
        try:
            yield
        except BaseException:
            with self._cond:
                self._broken = True
                self._cond.notify_all()
            raise
        with self._cond:
            self._next += 1
            self._cond.notify_all()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def local_etag(path: Path | LocalFile, size: int, part_size: int, multipart: bool) -> str:
    """The ETag S3 gives ``path`` when uploaded with these settings (reads the file once)."""
    return local_digests(path, size, part_size, multipart)[0]


def local_digests(path: Path | LocalFile, size: int, part_size: int, multipart: bool) -> tuple[str, str]:
    """(ETag S3 gives the file with these settings, sha256 of its ``size`` bytes), in one read."""
    with contextlib.ExitStack() as stack:
        fh: BinaryIO | LocalFile = path if isinstance(path, LocalFile) else stack.enter_context(
            open(path, "rb", buffering=0))
        name = str(path.path if isinstance(path, LocalFile) else path)
        sha = hashlib.sha256()
        if not multipart:
            return PartReader(fh, 0, size, name).md5(sha.update).hex(), sha.hexdigest()
        md5s = [PartReader(fh, off, min(part_size, size - off), name).md5(sha.update)
                for off in range(0, size, part_size)]
    return multipart_etag(md5s), sha.hexdigest()


# --------------------------------------------------------------------------- one object


@dataclass
class Job:
    """One file to put at one key, with its part layout."""

    name: str
    path: Path
    key: str
    size: int
    sha256: str
    part_size: int
    multipart: bool
    mtime_ns: int
    file: LocalFile | None = None
    why: str = ""  # how the layout was chosen (Layout.why)
    md5: str | None = None  # the whole file's, from the manifest: the md5chksum metadata rclone reads
    expected_etag: str | None = None  # the manifest's, when this layout is the one it was worked out for

    @property
    def parts(self) -> int:
        return max(1, math.ceil(self.size / self.part_size)) if self.multipart else 1

    def part_range(self, number: int) -> tuple[int, int]:
        offset = (number - 1) * self.part_size
        return offset, min(self.part_size, self.size - offset)

    @property
    def content_type(self) -> str:
        if self.name.endswith(SUMS_NAME):
            return "text/plain; charset=utf-8"
        return CONTENT_TYPES.get(PurePosixPath(self.name).suffix, "application/octet-stream")

    @classmethod
    def of(cls, name: str, file: LocalFile, key: str, size: int, sha256: str, config: UploadConfig,
           artifact: dict[str, Any] | None = None) -> Job:
        """``file`` (of ``size`` bytes, as the manifest says) to put at ``key``, laid out by ``config``,
        or, when ``artifact`` (its manifest entry) lists the layout its ETag is for and no flag fixes
        another, in that layout (see :func:`manifest_layout`)."""
        layout = manifest_layout(artifact, config) if artifact is not None else None
        if layout is None:
            layout = layout_for(size, config)
        md5 = artifact.get("md5") if artifact is not None else None
        expected = artifact.get("etag") if artifact is not None else None
        listed_part = artifact.get("part_size") if artifact is not None else None
        if (layout.part_size if layout.multipart else None) != listed_part:
            expected = None  # --chunk-size laid it out otherwise: the manifest's ETag is not this one's
        return cls(name, file.path, key, size, sha256, layout.part_size, layout.multipart, file.mtime_ns,
                   file, layout.why, md5 if isinstance(md5, str) else None,
                   expected if isinstance(expected, str) else None)

    def identity(self) -> dict[str, Any]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256,
                "part_size": self.part_size}
