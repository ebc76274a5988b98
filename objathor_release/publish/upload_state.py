"""The local side of an upload: one object's part layout, its S3 ETag, and its resume record.

:class:`Job` is one file to put at one key, with its part layout; its
``identity()`` (size, mtime, sha256, part size) is what a resume record must
match. ETags: a single-part object's is the md5 of its bytes, a multipart
object's the md5 of the concatenated binary part md5s, then ``-N``
(:func:`multipart_etag`; :func:`local_etag` computes it for a local file).
:class:`PartReader` is a seekable window of an open file that botocore streams
one part from, hashed just before it is sent: a part is never held in memory.
That one hashing pass also feeds the file's sha256 (:class:`SequentialSha256`
keeps the parts in order), so the bytes sent are the bytes checked against the
manifest.

Release files are opened once through :class:`ReleaseDir` with ``O_NOFOLLOW``
and ``O_NONBLOCK`` on every component and checked with ``fstat`` on the open
descriptor: a symlink, FIFO, socket, device or folder is refused with one line
naming it, and every later read is a ``pread`` of that descriptor.

Resume: ``RELEASE_DIR/.upload-state/`` holds one small JSON file per object
(upload id, part size, per-part md5, the local file's size/mtime/sha256), read
and written through :class:`UploadState` via :class:`StateDir` (a real folder
opened by descriptor; records written to a temporary name and renamed).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from objathor_release.build.manifest import SUMS as SUMS_NAME
from objathor_release.errors import InputError, TransferError
from objathor_release.fsutil import describe_mode

__all__ = ["Job", "LocalFile", "PartReader", "ReleaseDir", "SequentialSha256", "StateDir", "UploadState",
           "local_digests", "local_etag", "multipart_etag", "open_in_dir"]

STATE_DIR = ".upload-state"
SHA256_META = "sha256"
HASH_BLOCK = 1024 * 1024
STATE_SAVE_INTERVAL = 2.0  # seconds between state-file writes while parts complete
STATE_LIMIT = 8 * 1024 * 1024  # a record of 10,000 parts is about 500 kB
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CONTENT_TYPES = {".tar": "application/x-tar", ".gz": "application/gzip", ".json": "application/json",
                 ".pkl": "application/octet-stream"}


# --------------------------------------------------------------------------- ETags and part reading


def multipart_etag(md5s: Sequence[bytes]) -> str:
    """S3's ETag of a multipart object: md5 of the concatenated binary part md5s, then ``-N``."""
    return hashlib.md5(b"".join(md5s), usedforsecurity=False).hexdigest() + f"-{len(md5s)}"


def _clean_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"')


class LocalFile:
    """A release file opened once, by descriptor: every later read is a ``pread`` of that descriptor.

    ``size`` and ``mtime_ns`` come from ``fstat`` on the open descriptor, so the file
    that was checked is the file that is read, whatever happens to its name later.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path
        st = os.fstat(fd)
        self.size, self.mtime_ns = st.st_size, st.st_mtime_ns

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def preadinto(self, buf: memoryview, offset: int) -> int:
        return os.preadv(self.fd, [buf], offset)

    def read_all(self, limit: int) -> bytes:
        """The whole file (at most ``limit`` bytes, else InputError)."""
        if self.size > limit:
            raise InputError(f"{self.path}: {self.size} bytes, more than the {limit} expected: "
                             "rebuild the release")
        data = self.pread(self.size, 0)
        if len(data) != self.size:
            raise InputError(f"{self.path}: the file got shorter while uploading: rebuild the release")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


_REAL_FILE_HINT = "not a regular file inside the release dir: put the real file there (rebuild the release)"


def _refusal(path: Path, what: str, hint: str) -> InputError:
    return InputError(f"{path}: {what}, {hint}")


def _kind(mode: int) -> str:
    return describe_mode(mode) if not stat.S_ISREG(mode) else "a file"


def open_in_dir(dir_fd: int, name: str, shown: Path, hint: str = _REAL_FILE_HINT) -> int:
    """A descriptor of ``name`` (a relative path) under the folder ``dir_fd``, opened component by
    component without following any symlink and without blocking on a FIFO; InputError naming
    ``shown`` for a symlink, FIFO, socket, device or folder, or a folder component that is not one."""
    parts = PurePosixPath(name).parts
    fd = dir_fd
    opened: list[int] = []
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = _OPEN_FILE if last else _OPEN_DIR
            try:
                fd = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as exc:  # ELOOP (a symlink), ENOTDIR, EACCES...
                where = shown if last else shown.parents[len(parts) - 2 - i]
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    raise InputError(f"{where}: cannot be opened ({exc.strerror}): check the release dir") \
                        from None
                if stat.S_ISLNK(st.st_mode):
                    raise _refusal(where, "a symlink", hint) from None
                if not last:
                    raise _refusal(where, f"{_kind(st.st_mode)} where a folder should be", hint) from None
                raise InputError(f"{where}: cannot be opened ({exc.strerror}): check the release dir") \
                    from None
            opened.append(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refusal(shown, describe_mode(st.st_mode), hint)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        opened.pop()
        return fd
    finally:
        for other in opened:
            os.close(other)


class ReleaseDir:
    """The release directory, opened once; files in it are opened relative to that descriptor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise InputError(f"{path}: the release dir cannot be opened ({exc.strerror}): "
                             "check --release-dir") from None

    def open(self, name: str) -> LocalFile | None:
        """``name`` opened safely (see :func:`open_in_dir`); None when it does not exist."""
        try:
            fd = open_in_dir(self.fd, name, self.path / name)
        except FileNotFoundError:
            return None
        return LocalFile(fd, self.path / name)

    def state_dir(self, create: bool) -> StateDir | None:
        """``.upload-state`` (made if ``create``); None when absent and not created."""
        return StateDir.open(self, create)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> ReleaseDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


class StateDir:
    """``RELEASE_DIR/.upload-state``, a real folder (never a symlink) used through its descriptor.

    Records are read with ``O_NOFOLLOW`` (a symlink, FIFO or other non-file is refused)
    and written to a fresh temporary name in the same folder, then renamed.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd, self.path = fd, path

    @classmethod
    def open(cls, release: ReleaseDir, create: bool) -> StateDir | None:
        path = release.path / STATE_DIR
        for _ in range(2):
            try:
                return cls(os.open(STATE_DIR, _OPEN_DIR, dir_fd=release.fd), path)
            except FileNotFoundError:
                if not create:
                    return None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(STATE_DIR, 0o700, dir_fd=release.fd)
            except OSError as exc:
                try:
                    st = os.stat(STATE_DIR, dir_fd=release.fd, follow_symlinks=False)
                except OSError:
                    st = None
                what = _kind(st.st_mode) if st is not None and not stat.S_ISLNK(st.st_mode) else "a symlink"
                if st is None:
                    raise InputError(f"{path}: cannot be opened ({exc.strerror}): remove it") from None
                raise InputError(f"{path}: the upload's resume folder is {what}, not a folder: "
                                 "remove it and run the same command again") from None
        raise InputError(f"{path}: the upload's resume folder keeps disappearing: run the same command again")

    def read(self, name: str) -> bytes | None:
        """A record's bytes; None when absent. InputError for anything but a regular file."""
        try:
            fd = open_in_dir(self.fd, name, self.path / name,
                             "not a resume record: remove it and run the same command again")
        except FileNotFoundError:
            return None
        try:
            return LocalFile(fd, self.path / name).read_all(STATE_LIMIT)
        finally:
            os.close(fd)

    def write(self, name: str, data: bytes) -> None:
        tmp = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.fd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class UploadState:
    """The resume record of one object: a small JSON file under ``RELEASE_DIR/.upload-state/``."""

    def __init__(self, folder: StateDir | None, name: str, data: dict[str, Any],
                 unreadable: bool = False) -> None:
        self.folder, self.name, self.data, self.unreadable = folder, name, data, unreadable
        self._lock = threading.Lock()
        self._last_save = 0.0

    @property
    def path(self) -> Path:
        return (self.folder.path if self.folder is not None else Path(STATE_DIR)) / self.name

    @staticmethod
    def name_for(endpoint: str, bucket: str, key: str, name: str) -> str:
        tag = hashlib.sha1(f"{endpoint}\n{bucket}\n{key}".encode(), usedforsecurity=False).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", name)
        return f"{slug}.{tag}.json"

    @classmethod
    def load(cls, folder: StateDir | None, name: str) -> UploadState:
        """The record (empty when absent; ``unreadable`` when it is not a JSON object)."""
        raw = folder.read(name) if folder is not None else None
        if raw is None:
            return cls(folder, name, {})
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return cls(folder, name, {}, unreadable=True)  # treated as foreign, and replaced
        return cls(folder, name, data)

    def matches(self, target: dict[str, Any], identity: dict[str, Any]) -> bool:
        return all(self.data.get(k) == v for k, v in {**target, **identity}.items())

    @property
    def md5s(self) -> dict[int, bytes]:
        out = {}
        parts = self.data.get("parts")
        for k, v in (parts.items() if isinstance(parts, dict) else ()):
            with contextlib.suppress(ValueError, TypeError):
                md5 = bytes.fromhex(v)
                if len(md5) == 16:
                    out[int(k)] = md5
        return out

    def record_part(self, number: int, md5: bytes) -> None:
        with self._lock:
            parts = self.data.get("parts")
            if not isinstance(parts, dict):
                parts = self.data["parts"] = {}
            parts[str(number)] = md5.hex()
            if time.monotonic() - self._last_save >= STATE_SAVE_INTERVAL:
                self._save_locked()

    def save(self) -> None:
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        if self.folder is not None:
            self.folder.write(self.name, json.dumps(self.data, sort_keys=True).encode())
        self._last_save = time.monotonic()

    def delete(self) -> None:
        if self.folder is not None:
            self.folder.delete(self.name)
