"""Safe streaming tar extraction: parse a tar as bytes arrive, check every member, hash as it writes.

``TarStreamExtractor(dest).feed(chunk)`` ... ``finish()`` extracts a tar fed in
pieces of any size (straight from an HTTP response, no copy of the tar on disk).
It reads the headers itself instead of going through :mod:`tarfile`, so a
member's bytes go from the network buffer to ``os.write`` and ``sha256`` without
per-member file objects.

Safety follows PEP 706's ``data`` filter, stricter where the objathor layout
allows: absolute names, ``..`` components, links whose target is absolute or
resolves outside the top-level directory, device files, FIFOs, sparse and other
unknown member types, and anything outside the one expected top-level directory
are refused, naming the member. Modes lose setuid/setgid/sticky and group/other
write bits (owner read/write added for files); owners are ignored. Nothing is
written outside ``dest``: once a symlink exists, every write's parent directory
is resolved and checked, and files are opened with ``O_NOFOLLOW``.

With ``expect`` (the manifest's members: path -> size, sha256, offset) every
regular file must be listed, have the listed size, data offset and sha256, and
no listed file may be missing.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ChecksumError, InputError

BLOCK = 512
_META_LIMIT = 1 << 20  # longest GNU long-name / PAX header we accept
_REGULAR = (b"0", b"\0", b"7")
_REFUSED_TYPES = {
    b"3": "a character device", b"4": "a block device", b"6": "a FIFO", b"S": "a sparse file",
    b"V": "a volume header", b"M": "a multi-volume continuation", b"D": "a GNU dump directory",
}
_MODE_CLEAR = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


class UnsafeMemberError(InputError):
    """A member the safe extractor refuses (absolute, ``..``, link outside, device, ...)."""


@dataclass(frozen=True)
class ExpectedMember:
    """One regular file as the manifest lists it."""

    size: int
    sha256: str
    offset: int | None = None


def expected_members(members: list[Mapping[str, Any]]) -> dict[str, ExpectedMember]:
    """Map a manifest artifact's ``members`` list to ``{path: ExpectedMember}``."""
    return {
        m["path"]: ExpectedMember(int(m["size"]), str(m["sha256"]).lower(), m.get("offset"))
        for m in members
    }


def member_parts(name: str) -> list[str]:
    """The components of an archive path, ``.`` and empty ones dropped; ValueError if unsafe."""
    if "\0" in name:
        raise ValueError("NUL in its name")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ValueError("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("'..' component")
    return parts


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 when the high bit is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] & 0x40:  # negative base-256
            value -= 1 << (8 * (len(field) - 1))
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    return int(text, 8) if text else 0


def _text(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if stored == unsigned:
        return True
    signed = sum(b - 256 if b > 127 else b for b in header[:148] + header[156:]) + 8 * 32
    return stored == signed


def _parse_pax(data: bytes, source: str) -> dict[str, str]:
    """PAX records ``"<len> key=value\\n"``."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise InputError(f"{source}: malformed PAX header: the archive is corrupt") from None
        record = data[space + 1: pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise InputError(f"{source}: malformed PAX header: the archive is corrupt")
        key, _, value = record[:-1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class TarStreamExtractor:
    """Push parser: ``feed()`` bytes in order, then ``finish()``; extracts into ``dest``.

    ``top`` is the one allowed top-level directory (taken from the first member
    when None). ``source`` names the archive in error messages.
    """

    def __init__(self, dest: str | Path, *, top: str | None = None,
                 expect: Mapping[str, ExpectedMember] | None = None, source: str = "archive") -> None:
        self.dest = Path(dest)
        self._dest_str = os.fspath(self.dest)
        self.top = top
        self.expect = dict(expect) if expect is not None else None
        self.source = source
        self.pos = 0  # bytes of the stream consumed so far
        self.files = 0
        self.file_bytes = 0
        self.finished = False
        self._state = "header"
        self._hdr = bytearray()
        self._remaining = 0  # data bytes left in the current entry
        self._pad = 0  # padding bytes after the current entry's data
        self._fd = -1
        self._hash: Any = None
        self._path = ""  # archive path of the entry being written
        self._meta: bytearray | None = None  # collecting a long name / PAX header
        self._meta_kind = b""
        self._long_name: str | None = None
        self._long_link: str | None = None
        self._pax: dict[str, str] = {}
        self._mtime = 0
        self._data_offset = 0
        self._data_size = 0
        self._made_dirs: set[str] = set()
        self._symlinks = False
        self._zero_blocks = 0

    # ------------------------------------------------------------------ feeding

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Consume the next bytes of the tar stream."""
        mv = memoryview(data).cast("B")
        n = len(mv)
        i = 0
        try:
            while i < n:
                state = self._state
                if state == "data":
                    take = min(self._remaining, n - i)
                    self._data(mv[i:i + take])
                    i += take
                    self._remaining -= take
                    if self._remaining == 0:
                        self._end_entry()
                elif state == "pad":
                    take = min(self._pad, n - i)
                    i += take
                    self._pad -= take
                    if self._pad == 0:
                        self._state = "header"
                elif state == "header":
                    if not self._hdr and n - i >= BLOCK:
                        header = bytes(mv[i:i + BLOCK])
                        i += BLOCK
                    else:
                        take = min(BLOCK - len(self._hdr), n - i)
                        self._hdr += mv[i:i + take]
                        i += take
                        if len(self._hdr) < BLOCK:
                            continue
                        header = bytes(self._hdr)
                        self._hdr.clear()
                    self._header(header, self.pos + i)
                else:  # "end": the zero blocks and record padding after the last member
                    i = n
        except BaseException:
            self.pos += i
            self.close()
            raise
        self.pos += n

    def finish(self) -> None:
        """Check that the archive ended properly and every expected member was seen."""
        if self._state != "end" and not (self._state == "header" and not self._hdr and self._zero_blocks):
            self.close()
            raise InputError(f"{self.source} ended in the middle of a member at byte {self.pos}: "
                             "the download was truncated; run the command again")
        if self.top is None:
            raise InputError(f"{self.source} is empty: expected one top-level directory")
        if self.expect:
            missing = sorted(self.expect)
            raise ChecksumError(f"{self.source} lacks {len(missing)} member(s) listed in manifest.json, "
                                f"e.g. {missing[0]}: the release is incomplete; tell its publisher")
        self.finished = True

    def close(self) -> None:
        """Close a half-written member (after an error); the caller deletes ``dest``."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # ------------------------------------------------------------------ entries

    def _header(self, header: bytes, end: int) -> None:
        if header.count(0) == BLOCK:
            self._zero_blocks += 1
            if self._zero_blocks >= 2:
                self._state = "end"
            return
        if self._zero_blocks:
            raise InputError(f"{self.source}: data after an end-of-archive block at byte {end - BLOCK}: "
                             "the archive is corrupt")
        if not _checksum_ok(header):
            raise InputError(f"{self.source}: bad tar header checksum at byte {end - BLOCK}: the archive "
                             "is corrupt or not a tar file")
        kind = header[156:157]
        size = _number(header[124:136])
        if "size" in self._pax:
            size = int(self._pax["size"])
        if size < 0:
            raise InputError(f"{self.source}: negative member size at byte {end - BLOCK}")
        self._remaining = size
        self._pad = -size % BLOCK
        self._data_offset = end
        if kind in (b"L", b"K", b"x", b"g"):
            if size > _META_LIMIT:
                raise InputError(f"{self.source}: a {size}-byte extended header at byte {end - BLOCK} is "
                                 "too large: the archive is corrupt")
            self._meta, self._meta_kind = bytearray(), kind
            self._begin_data()
            return
        name = self._member_name(header)
        link = self._long_link if self._long_link is not None else _text(header[157:257]).decode(
            "utf-8", "surrogateescape")
        link = self._pax.get("linkpath", link)
        self._mtime = int(float(self._pax.get("mtime", _number(header[136:148]))))
        mode = _number(header[100:108])
        self._long_name = self._long_link = None
        self._pax = {}
        self._path = name
        self._place(name, kind, link, mode, size)

    def _member_name(self, header: bytes) -> str:
        if "path" in self._pax:
            return self._pax["path"]
        if self._long_name is not None:
            return self._long_name
        name = _text(header[0:100])
        if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix field may hold the leading part
            prefix = _text(header[345:500])
            if prefix:
                name = prefix + b"/" + name
        return name.decode("utf-8", "surrogateescape")

    def _begin_data(self) -> None:
        self._state = "data" if self._remaining else ("pad" if self._pad else "header")
        if not self._remaining:
            self._end_entry()

    def _data(self, chunk: memoryview) -> None:
        if self._meta is not None:
            self._meta += chunk
            return
        if self._fd < 0:
            return  # data of an entry we do not write (e.g. a directory with a size)
        if self._hash is not None:
            self._hash.update(chunk)
        while chunk:
            written = os.write(self._fd, chunk)
            chunk = chunk[written:]

    def _end_entry(self) -> None:
        self._state = "pad" if self._pad else "header"
        if self._meta is not None:
            meta, kind = bytes(self._meta), self._meta_kind
            self._meta = None
            if kind == b"L":
                self._long_name = _text(meta).decode("utf-8", "surrogateescape")
            elif kind == b"K":
                self._long_link = _text(meta).decode("utf-8", "surrogateescape")
            elif kind == b"x":
                self._pax = _parse_pax(meta, self.source)
            return  # "g" (global PAX) carries nothing we use
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if self._mtime >= 0:
                os.utime(fd, ns=(self._mtime * 10**9, self._mtime * 10**9))
        finally:
            os.close(fd)
        self.files += 1
        if self._hash is not None:
            self._check_expected(self._hash.hexdigest())
            self._hash = None

    def _check_expected(self, digest: str) -> None:
        assert self.expect is not None
        exp = self.expect.pop(self._path)
        size = self._data_size
        if size != exp.size:
            raise ChecksumError(f"{self.source}: {self._path} is {size} bytes, manifest.json says "
                                f"{exp.size}: the download is corrupt")
        if exp.offset is not None and exp.offset != self._data_offset:
            raise ChecksumError(f"{self.source}: {self._path} starts at byte {self._data_offset}, "
                                f"manifest.json says {exp.offset}: manifest and archive disagree")
        if digest != exp.sha256:
            raise ChecksumError(f"{self.source}: {self._path} has sha256:{digest}, manifest.json says "
                                f"sha256:{exp.sha256}: the download is corrupt")

    # ------------------------------------------------------------------ safety and placing

    def _refuse(self, name: str, why: str) -> UnsafeMemberError:
        return UnsafeMemberError(f"{self.source}: refused member {name!r}: {why}; nothing was extracted "
                                 "outside the staging directory, which is removed")

    def _safe_path(self, name: str, original: str) -> str:
        """Normalized archive path inside the top-level directory, or raise."""
        try:
            parts = member_parts(name)
        except ValueError as exc:
            raise self._refuse(original, str(exc)) from None
        if not parts:
            return ""
        if self.top is None:
            self.top = parts[0]
        if parts[0] != self.top:
            raise self._refuse(original, f"outside the one top-level directory {self.top!r}")
        return "/".join(parts)

    def _place(self, name: str, kind: bytes, link: str, mode: int, size: int) -> None:
        if kind in _REFUSED_TYPES:
            raise self._refuse(name, f"{_REFUSED_TYPES[kind]} is not allowed")
        if kind not in (*_REGULAR, b"1", b"2", b"5"):
            raise self._refuse(name, f"unknown member type {kind!r}")
        path = self._safe_path(name, name)
        self._path = path
        if not path:  # "./": the archive root itself
            self._begin_data()
            return
        is_top = "/" not in path
        if is_top and kind != b"5":
            raise self._refuse(name, "the top-level entry must be a directory, not a file or link")
        target = os.path.join(self._dest_str, path)
        if kind == b"5":
            self._mkdirs(path)
        elif kind == b"2":
            self._symlink(name, path, link, target)
        elif kind == b"1":
            self._hardlink(name, link, target)
        else:
            self._open_file(path, target, mode)
            self._data_size = size
        self._begin_data()

    def _mkdirs(self, path: str) -> None:
        if path in self._made_dirs:
            return
        parent = posixpath.dirname(path)
        if parent:
            self._mkdirs(parent)
        full = os.path.join(self._dest_str, path)
        self._check_inside(path, full, is_parent=True)
        try:
            os.mkdir(full)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(full).st_mode):
                raise self._refuse(self._path or path, f"its folder {path} is a link or a file") from None
        self._made_dirs.add(path)

    def _check_inside(self, path: str, full: str, *, is_parent: bool = False) -> None:
        """Once symlinks exist, resolve the real location and insist it is inside the top directory."""
        if not self._symlinks:
            return
        check = full if is_parent else os.path.dirname(full)
        real = os.path.realpath(check)
        top = os.path.realpath(os.path.join(self._dest_str, self.top or ""))
        if real != top and not real.startswith(top + os.sep):
            raise self._refuse(path, "it would be written through a link to outside the top-level directory")

    def _open_file(self, path: str, target: str, mode: int) -> None:
        parent = posixpath.dirname(path)
        self._mkdirs(parent)
        self._check_inside(path, target)
        mode = (mode & 0o7777 & ~_MODE_CLEAR) | stat.S_IRUSR | stat.S_IWUSR
        try:
            self._fd = os.open(target, _OPEN_FLAGS, mode)
        except FileExistsError:  # a later copy of the same member replaces the earlier one, like tar
            if stat.S_ISDIR(os.lstat(target).st_mode):
                raise self._refuse(path, "a file would replace a directory") from None
            os.unlink(target)
            self._fd = os.open(target, _OPEN_FLAGS, mode)
        if self.expect is not None:
            if path not in self.expect:
                raise ChecksumError(f"{self.source}: member {path} is not listed in manifest.json (or is "
                                    "listed once but appears twice): manifest and archive disagree")
            self._hash = hashlib.sha256()

    def _link_target(self, name: str, path: str, link: str) -> str:
        if not link or link.startswith("/"):
            raise self._refuse(name, f"link to absolute path {link!r}")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), link))
        top = self.top or ""
        if resolved != top and not resolved.startswith(top + "/"):
            raise self._refuse(name, f"link target {link!r} is outside the top-level directory")
        return resolved

    def _symlink(self, name: str, path: str, link: str, target: str) -> None:
        self._link_target(name, path, link)
        self._mkdirs(posixpath.dirname(path))
        self._check_inside(path, target)
        if os.path.lexists(target):
            if stat.S_ISDIR(os.lstat(target).st_mode):
                raise self._refuse(name, "a link would replace a directory")
            os.unlink(target)
        os.symlink(link, target)
        self._symlinks = True

    def _hardlink(self, name: str, link: str, target: str) -> None:
        source = self._safe_path(link, name)
        if not source:
            raise self._refuse(name, f"hard link to {link!r}")
        self._mkdirs(posixpath.dirname(self._path))
        self._check_inside(self._path, target)
        source_full = os.path.join(self._dest_str, source)
        self._check_inside(source, source_full)
        try:
            st = os.lstat(source_full)
        except FileNotFoundError:
            raise self._refuse(name, f"hard link to {link!r}, not found earlier in the archive") from None
        if not stat.S_ISREG(st.st_mode):
            raise self._refuse(name, f"hard link to {link!r}, which is not a regular file")
        if os.path.lexists(target):
            os.unlink(target)
        os.link(source_full, target, follow_symlinks=False)
