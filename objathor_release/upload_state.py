"""The local side of an upload: one object's part layout, its S3 ETag, and its resume record.

:class:`Job` is one file to put at one key, with its part layout; its
``identity()`` (size, mtime, sha256, part size) is what a resume record must
match. ETags: a single-part object's is the md5 of its bytes, a multipart
object's the md5 of the concatenated binary part md5s, then ``-N``
(:func:`multipart_etag`; :func:`local_etag` computes it for a local file).
:class:`PartReader` is a seekable window of an open file that botocore streams
one part from, hashed just before it is sent: a part is never held in memory.

Resume: ``RELEASE_DIR/.upload-state/`` holds one small JSON file per object
(upload id, part size, per-part md5, the local file's size/mtime/sha256), read
and written through :class:`UploadState`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from .errors import InputError
from .fsutil import atomic_write

__all__ = ["Job", "PartReader", "UploadState", "local_etag", "multipart_etag"]

MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
STATE_DIR = ".upload-state"
SHA256_META = "sha256"
HASH_BLOCK = 1024 * 1024
STATE_SAVE_INTERVAL = 2.0  # seconds between state-file writes while parts complete
CONTENT_TYPES = {".tar": "application/x-tar", ".gz": "application/gzip", ".json": "application/json",
                 ".pkl": "application/octet-stream"}


# --------------------------------------------------------------------------- ETags and part reading


def multipart_etag(md5s: Sequence[bytes]) -> str:
    """S3's ETag of a multipart object: md5 of the concatenated binary part md5s, then ``-N``."""
    return hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest() + f"-{len(md5s)}"


def _clean_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"')


class PartReader:
    """A seekable read-only window ``[offset, offset + length)`` of an open binary file.

    botocore streams the request body from it (and seeks back to 0 to retry), so
    a part is never held in memory. ``md5()`` hashes the window first, for the
    ``Content-MD5`` header.
    """

    def __init__(self, fh: BinaryIO, offset: int, length: int, name: str = "") -> None:
        self._fh, self._offset, self._length, self._name = fh, offset, length, name
        self._pos = 0

    def __len__(self) -> int:
        return self._length

    def md5(self) -> bytes:
        digest = hashlib.md5(usedforsecurity=False)
        buf = memoryview(bytearray(min(HASH_BLOCK, max(self._length, 1))))
        self._fh.seek(self._offset)
        left = self._length
        while left:
            n = self._fh.readinto(buf[: min(len(buf), left)])  # type: ignore[attr-defined]
            if not n:
                raise InputError(f"{self._name}: the file got shorter while uploading: rebuild the release")
            digest.update(buf[:n])
            left -= n
        self._pos = 0
        return digest.digest()

    def read(self, amt: int | None = -1) -> bytes:
        left = self._length - self._pos
        if amt is None or amt < 0 or amt > left:
            amt = left
        if amt <= 0:
            return b""
        self._fh.seek(self._offset + self._pos)
        data = self._fh.read(amt)
        if not data:
            raise InputError(f"{self._name}: the file got shorter while uploading: rebuild the release")
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


def local_etag(path: Path, size: int, part_size: int, multipart: bool) -> str:
    """The ETag S3 gives ``path`` when uploaded with these settings (reads the file once)."""
    with open(path, "rb", buffering=0) as fh:
        if not multipart:
            return PartReader(fh, 0, size, str(path)).md5().hex()
        md5s = [PartReader(fh, off, min(part_size, size - off), str(path)).md5()
                for off in range(0, size, part_size)]
    return multipart_etag(md5s)


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

    def identity(self) -> dict[str, Any]:
        return {"size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256,
                "part_size": self.part_size}


# --------------------------------------------------------------------------- resume state


class UploadState:
    """The resume record of one object: a small JSON file under ``RELEASE_DIR/.upload-state/``."""

    def __init__(self, path: Path, data: dict[str, Any], unreadable: bool = False) -> None:
        self.path, self.data, self.unreadable = path, data, unreadable
        self._lock = threading.Lock()
        self._last_save = 0.0

    @staticmethod
    def path_for(state_dir: Path, endpoint: str, bucket: str, key: str, name: str) -> Path:
        tag = hashlib.sha1(f"{endpoint}\n{bucket}\n{key}".encode(), usedforsecurity=False).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        return state_dir / f"{slug}.{tag}.json"

    @classmethod
    def load(cls, path: Path) -> UploadState | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return cls(path, {}, unreadable=True)  # treated as foreign, and replaced
        return cls(path, data, unreadable=False) if isinstance(data, dict) else cls(path, {}, unreadable=True)

    def matches(self, target: dict[str, Any], identity: dict[str, Any]) -> bool:
        return all(self.data.get(k) == v for k, v in {**target, **identity}.items())

    @property
    def md5s(self) -> dict[int, bytes]:
        out = {}
        for k, v in (self.data.get("parts") or {}).items():
            with contextlib.suppress(ValueError, TypeError):
                out[int(k)] = bytes.fromhex(v)
        return out

    def record_part(self, number: int, md5: bytes) -> None:
        with self._lock:
            self.data.setdefault("parts", {})[str(number)] = md5.hex()
            if time.monotonic() - self._last_save >= STATE_SAVE_INTERVAL:
                self._save_locked()

    def save(self) -> None:
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path) as fh:
            fh.write(json.dumps(self.data, sort_keys=True).encode())
        self._last_save = time.monotonic()

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
