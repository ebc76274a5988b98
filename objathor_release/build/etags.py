"""The ETag an artifact will have on the server, worked out at build time, and its whole-file md5.

S3 and R2 give a multipart object the ETag ``md5(md5(part 1) + ... + md5(part N))-N``
and a single-PUT object the md5 of its bytes, so both follow from the bytes and
the part layout. The build records, per artifact, ``md5`` (hex, of the whole
file), ``etag`` (the expected ETag) and, for a multipart layout, ``part_size``:
the part size the default upload uses (:func:`~objathor_release.settings.planned_part_size`).
The upload then lays the object out in those parts, sets ``md5chksum`` (the
base64 whole-file md5 rclone reads, so ``rclone check`` compares multipart
objects by hash) and checks the ETag the server returns against ``etag``.

:class:`UploadDigests` hashes bytes fed in order; :func:`file_digests` reads a
file once for them. The tar writer feeds the same class from its buffers.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

from objathor_release.fsutil import CHUNK, open_regular
from objathor_release.settings import planned_part_size

__all__ = ["ETAG_KEYS", "MD5CHKSUM_META", "UploadDigests", "etag_problem", "file_digests", "md5chksum"]

ETAG_KEYS = ("etag", "md5", "part_size")  # the artifact fields this module writes
MD5CHKSUM_META = "md5chksum"  # rclone's metadata key: base64 of the whole file's binary md5
_MD5 = re.compile(r"[0-9a-f]{32}")
_ETAG = re.compile(r"[0-9a-f]{32}(-[1-9][0-9]{0,4})?")


class UploadDigests:
    """The whole-file md5 and the per-part md5s of bytes fed in order (``part_size`` None: one PUT)."""

    def __init__(self, part_size: int | None) -> None:
        self.part_size = part_size
        self._whole = hashlib.md5(usedforsecurity=False)
        self._part = hashlib.md5(usedforsecurity=False)
        self._in_part = 0
        self._parts: list[bytes] = []
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.update_whole(data)
        self.update_parts(data)

    def update_whole(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the whole-file md5 (with :meth:`update_parts`, from another thread, in the same order)."""
        self._whole.update(data)
        self.size += len(data)

    def update_parts(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the part md5s."""
        if self.part_size is None:
            return
        view = memoryview(data)
        while len(view):
            n = min(len(view), self.part_size - self._in_part)
            self._part.update(view[:n])
            self._in_part += n
            view = view[n:]
            if self._in_part == self.part_size:
                self._parts.append(self._part.digest())
                self._part = hashlib.md5(usedforsecurity=False)
                self._in_part = 0

    def fields(self) -> dict[str, Any]:
        """The artifact fields: ``md5``, ``etag`` and, when multipart, ``part_size``."""
        md5 = self._whole.hexdigest()
        if self.part_size is None:
            return {"md5": md5, "etag": md5}
        parts = list(self._parts)
        if self._in_part or not parts:
            parts.append(self._part.digest())
        etag = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest() + f"-{len(parts)}"
        return {"md5": md5, "etag": etag, "part_size": self.part_size}


def md5chksum(md5_hex: str) -> str:
    """rclone's ``md5chksum`` metadata value for a hex md5: the binary digest in base64."""
    return base64.b64encode(bytes.fromhex(md5_hex)).decode()


def file_digests(path: Path, size: int) -> dict[str, Any]:
    """The artifact fields of the ``size``-byte file at ``path`` (read once, to its end)."""
    digests = UploadDigests(planned_part_size(size))
    with open_regular(path, buffering=0) as fh:
        while block := fh.read(CHUNK):
            digests.update(block)
    if digests.size != size:
        raise OSError(f"{path}: {digests.size} bytes, expected {size}: it changed while being read")
    return digests.fields()


def etag_problem(art: dict[str, Any]) -> str | None:
    """What is wrong with an artifact's ``md5``/``etag``/``part_size`` fields (None: fine or absent).

    All three are optional (manifests older than them have none); when present they must agree with
    each other and the size: a single-PUT ``etag`` is the ``md5``, a multipart one ends in the number
    of parts ``part_size`` gives.
    """
    if not any(k in art for k in ETAG_KEYS):
        return None
    md5, etag, part = art.get("md5"), art.get("etag"), art.get("part_size")
    size = art.get("size")
    if not isinstance(md5, str) or not _MD5.fullmatch(md5):
        return f"md5 {md5!r} is not 32 lower-case hex digits"
    if not isinstance(etag, str) or not _ETAG.fullmatch(etag):
        return f"etag {etag!r} is not an S3 ETag (32 hex digits, then -N for a multipart object)"
    if part is None:
        if etag != md5:
            return f"etag {etag} of a single-PUT object must equal its md5 {md5}"
        return None
    if type(part) is not int or part < 1 or type(size) is not int:
        return f"part_size {part!r} is not a whole number of bytes"
    if size < 1:
        return f"part_size {part} for an empty file (an empty file is one PUT)"
    want = max(1, -(-size // part))
    if not etag.endswith(f"-{want}"):
        return f"etag {etag} does not end in -{want} ({size} bytes in parts of {part})"
    return None
