"""Read any tar back (ours, GNU tar's, Python's) in one streaming pass.

``scan_tar`` gives what ``build_tar`` records while writing: the archive's size
and sha256 and every regular member's path, size, sha256 and data offset. The
manifest and ``verify --members`` use it for tars without a current sidecar;
``iter_headers`` alone walks the members (the annotation step reads per-asset
tars with it). Headers are decoded by :mod:`.tarformat`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from objathor_release.build import tarformat as tf
from objathor_release.build.etags import UploadDigests
from objathor_release.errors import InputError
from objathor_release.fsutil import open_regular

SCAN_CHUNK = 256 * 1024
MAX_EXTENSION = 1024 * 1024  # bytes of one long name or pax header: far beyond any real one
_ZERO_BLOCK = bytes(tf.BLOCK)
_DIGITS = re.compile(r"[0-9]{1,20}")
_NO_DATA = (tf.HARDLINK, tf.SYMLINK, tf.DIRECTORY)


class TarFormatError(Exception):
    """A tar that cannot be read: ``str()`` says what is wrong, ``hint`` what to do about it."""

    def __init__(self, what: str, hint: str = "rebuild it with `objathor-release tar`") -> None:
        super().__init__(what)
        self.hint = hint


@dataclass(frozen=True)
class TarHeader:
    """One member as ``iter_headers`` reads it."""

    name: str  # long name or pax path applied; a folder's ends with "/"
    kind: bytes
    size: int  # bytes of data after the header
    offset: int  # where they start


class TarReader(Protocol):
    pos: int

    def read(self, n: int) -> bytes: ...

    def skip(self, n: int) -> None: ...


@dataclass
class ScanResult:
    """A tar read back in one pass: its size and sha256 and every regular file's figures."""

    size: int
    sha256: str
    members: list[dict[str, Any]] = field(default_factory=list)


class _HashingReader:
    """Reads a file sequentially, hashing every byte consumed."""

    def __init__(self, fh: BinaryIO, on_bytes: Callable[[int], None],
                 digests: UploadDigests | None = None) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.pos = 0
        self.on_bytes = on_bytes
        self.digests = digests

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
        if self.digests is not None:
            self.digests.update(data)
        self.pos += len(data)
        self.on_bytes(len(data))
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            got = len(self.read(min(n, SCAN_CHUNK)))
            if not got:
                raise EOFError("data")
            n -= got


class SeekingReader:
    """Reads a regular file of known size, skipping data by seeking (nothing is hashed)."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size
        self.pos = 0

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise EOFError("data")
        self.fh.seek(n, os.SEEK_CUR)
        self.pos += n


def _exact(r: TarReader, n: int, what: str) -> bytes:
    data = r.read(n)
    if len(data) != n:
        raise EOFError(what)
    return data


def _bad(what: str, at: int) -> TarFormatError:
    return TarFormatError(f"not a valid tar archive ({what} at byte {at})")


def _text(raw: bytes) -> str:
    return tf.cstring(raw).decode("utf-8", "surrogateescape")


def _pax(data: bytes, at: int) -> dict[str, str]:
    try:
        records = tf.parse_pax(data)
    except tf.HeaderError:
        raise _bad("malformed pax header", at) from None
    return {k: v.decode("utf-8", "surrogateescape") for k, v in records.items()}


def _member_name(name: str, at: int) -> str:
    if not name.strip("/"):
        raise _bad("a member with an empty name", at)
    if "\x00" in name:
        raise _bad(f"member name {name!r} holding a NUL byte", at)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"member name {name!r} that is not valid UTF-8", at) from None
    return name


def iter_headers(r: TarReader) -> Iterator[TarHeader]:
    """Every member of the tar that ``r`` reads, in order (ustar, GNU long names and pax headers).

    After each header the caller may read any part of the member's data from
    ``r``; the rest and the padding are skipped before the next header. Any
    malformation raises TarFormatError: a bad checksum or number, a negative
    size, an extended header over MAX_EXTENSION bytes, a malformed pax record,
    a sparse member, an empty or non-UTF-8 name or one holding NUL, or an archive that ends early.
    """
    long_name: str | None = None
    pax: dict[str, str] = {}
    try:
        while True:
            start = r.pos
            block = r.read(tf.BLOCK)
            if start == 0 and len(block) < tf.BLOCK:
                raise TarFormatError("empty or too short to be a tar archive", "rebuild it")
            if len(block) < tf.BLOCK or block == _ZERO_BLOCK:
                return
            try:
                h = tf.decode_header(block, start)
            except tf.HeaderError as exc:
                raise TarFormatError(f"not a valid tar archive (bad header at byte {start}: {exc})") from None
            size = h.size
            if "size" in pax:
                if not _DIGITS.fullmatch(pax["size"]):
                    raise _bad("bad pax size", start)
                size = int(pax["size"])
            if size < 0:
                raise _bad("negative size", start)
            kind = h.kind
            if kind in tf.EXTENSION_TYPES:
                if size > MAX_EXTENSION:
                    raise _bad(f"an extended header of {size} bytes, more than {MAX_EXTENSION}", start)
                data = _exact(r, size, "extended header")
                _exact(r, -size % tf.BLOCK, "padding")
                if kind == tf.LONG_NAME:
                    long_name = _text(data)
                elif kind == tf.PAX:
                    pax = _pax(data, start)
                continue
            header_name = h.name.decode("utf-8", "surrogateescape")
            if kind == b"\x00" and header_name.endswith("/"):  # old V7 tar: a folder is a file named "x/"
                kind = tf.DIRECTORY
            if kind == tf.DIRECTORY:
                header_name = header_name.rstrip("/")
            if kind == tf.SPARSE or "GNU.sparse.major" in pax:
                raise TarFormatError(f"holds sparse member {header_name}", "rebuild it without --sparse")
            name = pax.get("path") or long_name or header_name
            if kind == tf.DIRECTORY and not name.endswith("/"):
                name += "/"
            long_name, pax = None, {}
            name = _member_name(name, start)
            data_size = 0 if kind in _NO_DATA else size
            offset = r.pos
            yield TarHeader(name, kind, data_size, offset)
            left = offset + data_size + (-data_size % tf.BLOCK) - r.pos
            if left < 0:
                raise AssertionError(f"read {-left} bytes past member {name}")
            if left:
                try:
                    r.skip(left)
                except EOFError:
                    raise EOFError(name) from None
    except EOFError as exc:
        raise TarFormatError(f"truncated tar archive (ends inside {exc})", "rebuild or download it again") \
            from None


def _display(path: str | Path) -> str:
    """A path fit for a one-line message, even when it holds bytes that are not UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def scan_tar(path: str | Path, *, on_bytes: Callable[[int], None] = lambda n: None,
             digests: UploadDigests | None = None) -> ScanResult:
    """Read a tar in one streaming pass: whole-file sha256 plus every regular member's figures
    (and every byte fed to ``digests``, when given, for the artifact's ETag fields).

    Understands ustar, GNU (long names) and pax headers. ``members`` holds
    ``{"path", "size", "sha256", "offset"}`` for each regular file, ``offset``
    being where its data starts. A file that is not a tar, or not a regular
    file, raises InputError.
    """
    members: list[dict[str, Any]] = []
    try:
        raw = open_regular(path, buffering=SCAN_CHUNK)
    except OSError as exc:
        raise InputError(f"{_display(path)}: cannot be read ({exc.strerror}): replace it with the "
                         "archive, or remove it") from None
    with raw:
        r = _HashingReader(raw, on_bytes, digests)
        try:
            for h in iter_headers(r):
                if h.kind not in tf.REGULAR_TYPES:
                    continue
                sha = hashlib.sha256()
                left = h.size
                while left:
                    chunk = r.read(min(left, SCAN_CHUNK))
                    if not chunk:
                        raise TarFormatError(f"truncated tar archive (ends inside {h.name})",
                                             "rebuild or download it again")
                    sha.update(chunk)
                    left -= len(chunk)
                members.append({"path": h.name, "size": h.size, "sha256": sha.hexdigest(),
                                "offset": h.offset})
            while r.read(SCAN_CHUNK):
                pass
        except TarFormatError as exc:
            raise InputError(f"{_display(path)}: {exc}: {exc.hint}") from None
        except OSError as exc:
            raise InputError(f"{_display(path)}: cannot be read ({exc.strerror}): check the disk") \
                from None
    return ScanResult(size=r.pos, sha256=r.sha.hexdigest(), members=members)
