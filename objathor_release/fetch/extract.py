"""Safe streaming tar extraction: parse a tar as bytes arrive, check every member, hash as it writes.

``TarStreamExtractor(dest).feed(chunk)`` ... ``finish()`` extracts a tar fed in
pieces of any size (straight from an HTTP response, no copy of the tar on disk).
It reads the headers itself instead of going through :mod:`tarfile`, so a
member's bytes go from the network buffer to ``os.write`` and ``sha256`` without
per-member file objects.

Refused, naming the member (:class:`UnsafeMemberError`, exit 2):

- absolute names, ``..`` components, NUL in a name, anything outside the one
  expected top-level directory, and a top-level entry that is not a directory;
- symbolic links, all of them. Releases contain none, and a link cannot be
  judged by its text: ``a -> ..`` normalizes to a place inside the folder, yet
  ``b -> a/../..`` (or a long ``p/p/p/...`` chain) resolves through ``a`` on
  disk to somewhere else. Only the tree on disk says where a link leads, and a
  tree without links is trivially safe;
- hard links, except to a regular file this extractor itself wrote earlier from
  the same archive (tracked by archive path), and all of them in a resumed
  extraction checked against a manifest (its members are regular files only);
- devices, FIFOs, sparse files and unknown member types;
- a member that changes the type of a path: a file or hard link where a folder
  is, a folder where a file is;
- names longer than the filesystem allows, and paths more than 64 levels deep.

Every folder and file is created relative to an open folder descriptor, walking
from ``dest`` one component at a time with ``O_NOFOLLOW`` (``mkdir``/``open``/
``link`` with ``dir_fd``), so no write follows a link, even one something else
put into ``dest``. Open folder descriptors are cached (a few dozen at most) and
closed by :meth:`close`, which also runs after any error and in ``finish()``.

Headers are decoded by :mod:`objathor_release.build.tarformat` (the one tar
header codec) and checked strictly here: a numeric field that is not octal or
GNU base-256, a value out of range (negative or impossible sizes, mtimes beyond
what ``os.utime`` takes), a PAX record with a bad length, no ``=`` or a
``size``/``mtime`` that is not a plain decimal number, a name that is not UTF-8,
or a bad header checksum is an :class:`~.errors.InputError` naming the byte offset. A
filesystem error while writing a member is an InputError naming the member;
running out of disk space is a :class:`~.errors.DiskFullError`.

Modes lose setuid/setgid/sticky and group/other write bits (owner read/write
added for files); owners are ignored. With ``expect`` (the manifest's members:
path -> size, sha256, offset) every regular file must be listed, have the
listed size, data offset and sha256, and no listed file may be missing.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objathor_release.build import tarformat as tf
from objathor_release.build.tarformat import BLOCK
from objathor_release.errors import ChecksumError, DiskFullError, InputError

_META_LIMIT = 1 << 20  # longest GNU long-name / PAX header we accept
_MAX_SIZE = (1 << 63) - 1  # the largest file offset a filesystem can hold
_MTIME_RANGE = (-(1 << 33), 1 << 33)  # seconds, years 1697-2242: inside what os.utime takes in nanoseconds
_PATH_MAX = 4096
_MAX_DEPTH = 64  # folders in a member's path; deeper trees defeat recursive tools such as shutil.rmtree
_DIR_CACHE = 64  # open folder descriptors kept
_REGULAR = tf.REGULAR_TYPES
_HARDLINK, _DIRECTORY = tf.HARDLINK, tf.DIRECTORY
_META = tf.EXTENSION_TYPES
_REFUSED_TYPES = {
    b"2": "a symbolic link (releases contain none, and a link could lead later members outside the folder)",
    b"3": "a character device", b"4": "a block device", b"6": "a FIFO", b"S": "a sparse file",
    b"V": "a volume header", b"M": "a multi-volume continuation", b"D": "a GNU dump directory",
}
_MODE_CLEAR = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW  # POSIX only, like dir_fd
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_PAX_SIZE = re.compile(rb"[0-9]{1,19}")
_PAX_TIME = re.compile(rb"(-?[0-9]{1,19})(\.[0-9]*)?")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_NOT_TAR_STARTS = (b"{", b"[", b"<")


class UnsafeMemberError(InputError):
    """A member the safe extractor refuses (absolute, ``..``, a link, a device, ...)."""


# A malformed header field (from the codec, or a value out of the range allowed here); the
# extractor reports it with the header's byte offset.
_Corrupt = tf.HeaderError


@dataclass(frozen=True)
class ExpectedMember:
    """One regular file as the manifest lists it."""

    size: int
    sha256: str
    offset: int | None = None


def expected_members(members: list[Mapping[str, Any]]) -> dict[str, ExpectedMember]:
    """Map a manifest artifact's ``members`` list to ``{path: ExpectedMember}``; InputError if malformed."""
    out: dict[str, ExpectedMember] = {}
    for i, m in enumerate(members if isinstance(members, list) else [members]):
        try:
            path, size, sha, offset = m["path"], m["size"], m["sha256"], m.get("offset")
            ok = (isinstance(path, str) and _is_count(size) and isinstance(sha, str)
                  and _SHA256.fullmatch(sha) is not None and (offset is None or _is_count(offset)))
        except (TypeError, KeyError, AttributeError):
            ok = False
        if not ok:
            raise InputError(f"manifest.json: member #{i} of an artifact is malformed (it needs a path, a "
                             "size, a 64-digit sha256, maybe an offset): tell the release's publisher")
        out[path] = ExpectedMember(size, sha.lower(), offset)
    return out


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_SIZE


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


# ---------------------------------------------------------------------- header fields


def _in_range(value: int, what: str, low: int, high: int) -> int:
    """A decoded header number within ``low..high``; _Corrupt otherwise."""
    if not low <= value <= high:
        raise _Corrupt(f"its {what} {value} is out of range")
    return value


def _pax_number(value: bytes, key: str, pattern: re.Pattern[bytes], low: int, high: int) -> int:
    """A PAX ``size`` or ``mtime`` (decimal, an mtime may have a fraction); _Corrupt otherwise."""
    match = pattern.fullmatch(value)
    if match is None:
        raise _Corrupt(f"its PAX {key} {value[:40]!r} is not a decimal number")
    number = int(match.group(1) if match.groups() else match.group(0))
    if not low <= number <= high:
        raise _Corrupt(f"its PAX {key} {number} is out of range")
    return number


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt(f"its {what} {raw[:200]!r} is not UTF-8") from None


def _shown(text: str) -> str:
    """``text`` for a one-line message: control characters (a newline, a terminal escape) escaped."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


# ---------------------------------------------------------------------- the extractor


class TarStreamExtractor:
    """Push parser: ``feed()`` bytes in order, then ``finish()``; extracts into ``dest``.

    ``top`` is the one allowed top-level directory (taken from the first member
    when None). ``one_top=False`` lifts only that rule (features.tar, which
    objathor reads in any layout): several top-level entries, files among them;
    every other refusal stays. ``source`` names the archive in error messages.
    ``start`` and ``done`` resume an extraction: the bytes fed begin at stream
    offset ``start`` (a header boundary) and ``done`` are the archive paths of
    members already in ``dest``, checked by the caller (see :mod:`.resume`).
    """

    def __init__(self, dest: str | Path, *, top: str | None = None,
                 expect: Mapping[str, ExpectedMember] | None = None, source: str = "archive",
                 one_top: bool = True, start: int = 0, done: Iterable[str] = ()) -> None:
        self.dest = Path(dest)
        self._dest_str = os.fspath(self.dest)
        self._dest_len = len(os.fsencode(self._dest_str))
        self.top = top
        self.one_top = one_top
        self.expect = dict(expect) if expect is not None else None
        self.source = source
        self.pos = start  # bytes of the stream consumed so far (``start``: where a resumed stream begins)
        self.files = 0
        self.finished = False
        self._state = "header"
        self._hdr = bytearray()
        self._remaining = 0  # data bytes left in the current entry
        self._pad = 0  # padding bytes after the current entry's data
        self._fd = -1
        self._hash: Any = None
        self._expected: ExpectedMember | None = None
        self._path = ""  # archive path of the entry being placed or written
        self._meta: bytearray | None = None  # collecting a long name / PAX header
        self._meta_kind = b""
        self._long_name: bytes | None = None
        self._long_link: bytes | None = None
        self._pax: dict[str, bytes] = {}
        self._mtime = 0
        self._data_size = 0
        self._zero_blocks = 0
        self._at = 0  # where the header being handled starts
        self._root_fd = -1
        self._dirs: OrderedDict[str, int] = OrderedDict()  # archive path -> open folder descriptor
        self._files: set[str] = set()  # regular files this extractor wrote, by archive path
        self._resumed = bool(start)  # the stream's whole sha256 is not taken: only members are checked
        for path in done:  # a resumed extraction: members an earlier run wrote and a check re-hashed
            if self.expect is not None:
                self.expect.pop(path, None)
            self._files.add(path)
            self.files += 1

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
                    self._header(header, self.pos + i - BLOCK)
                else:  # "end": the zero blocks and record padding after the last member
                    i = n
        except BaseException as exc:
            self.pos += i
            self.close()
            if isinstance(exc, OSError):
                raise self._os_error(exc) from None
            if isinstance(exc, _Corrupt):
                raise InputError(f"{self.source}: corrupt tar header at byte {self._at}: {exc}; the archive "
                                 "is damaged: run the command again, and tell the release's publisher if it "
                                 "persists") from None
            raise
        self.pos += n

    def finish(self) -> None:
        """Check that the archive ended properly and every expected member was seen; closes descriptors."""
        try:
            if self.pos == 0:
                raise InputError(f"{self.source} is empty (0 bytes): expected a tar; run the command again")
            if self.pos < BLOCK:
                self._refuse_page(bytes(self._hdr))
            if self._state != "end" and not (self._state == "header" and not self._hdr and self._zero_blocks):
                raise InputError(f"{self.source} ended in the middle of a member at byte {self.pos}: "
                                 "the download was truncated; run the command again")
            if self.one_top and self.top is None:
                raise InputError(f"{self.source} is empty: expected one top-level directory")
            if not self.one_top and self.files == 0:
                raise InputError(f"{self.source} holds no files")
            if self.expect:
                missing = sorted(self.expect)
                raise ChecksumError(f"{self.source} lacks {len(missing)} member(s) listed in manifest.json, "
                                    f"e.g. {_shown(missing[0])}: the release is incomplete; tell its "
                                    "publisher")
        finally:
            self.close()
        self.finished = True

    def close(self) -> None:
        """Close the member being written and every folder descriptor; the caller deletes ``dest``."""
        fds = [self._fd, self._root_fd, *self._dirs.values()]
        self._fd = self._root_fd = -1
        self._dirs.clear()
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _os_error(self, exc: OSError) -> InputError | DiskFullError:
        where = _shown(os.path.join(self._dest_str, self._path) if self._path else self._dest_str)
        if exc.errno in _DISK_FULL:
            size = f" (the member is {self._data_size} bytes)" if self._data_size else ""
            return DiskFullError(f"{self.source}: the disk is full: writing {where} failed{size}; free space "
                                 "and run the command again, parts already downloaded are kept")
        return InputError(f"{self.source}: cannot extract member {self._path!r} to {where}: "
                          f"{exc.strerror or exc}; the archive's names do not suit this filesystem, or "
                          "the folder is not writable")

    # ------------------------------------------------------------------ headers

    def _header(self, header: bytes, start: int) -> None:
        if header.count(0) == BLOCK:
            self._zero_blocks += 1
            if self._zero_blocks >= 2:
                self._state = "end"
            return
        if self._zero_blocks:
            raise InputError(f"{self.source}: data after an end-of-archive block at byte {start}: "
                             "the archive is corrupt")
        self._at = start
        try:
            h = tf.decode_header(header, start)
        except tf.ChecksumMismatch:
            if start == 0:
                self._refuse_page(header)
            raise InputError(f"{self.source}: bad tar header checksum at byte {start}: the archive is "
                             "corrupt or not a tar file") from None
        self._entry(h)

    def _refuse_page(self, head: bytes) -> None:
        """A stream that starts like a JSON, XML or HTML document is an error page, not a tar."""
        if head.lstrip()[:1] in _NOT_TAR_STARTS:
            raise InputError(f"{self.source} is not a tar file: it starts with {head[:24]!r} (an error "
                             "page?); check --base-url and --version")

    def _entry(self, h: tf.Header) -> None:
        kind = h.kind
        if kind in _META:
            size = _in_range(h.size, "size", 0, _META_LIMIT)
            self._meta, self._meta_kind = bytearray(), kind
            self._begin_data(size)
            return
        pax, self._pax = self._pax, {}
        long_name, long_link = self._long_name, self._long_link
        self._long_name = self._long_link = None
        if "size" in pax:
            size = _pax_number(pax["size"], "size", _PAX_SIZE, 0, _MAX_SIZE)
        else:
            size = _in_range(h.size, "size", 0, _MAX_SIZE)
        if "mtime" in pax:
            self._mtime = _pax_number(pax["mtime"], "mtime", _PAX_TIME, *_MTIME_RANGE)
        else:
            self._mtime = _in_range(h.mtime, "mtime", *_MTIME_RANGE)
        mode = _in_range(h.mode, "mode", 0, 0o7777777)
        if "path" in pax:
            name = _utf8(pax["path"], "PAX path")
        elif long_name is not None:
            name = _utf8(tf.cstring(long_name), "long name")
        else:
            name = _utf8(h.name, "name")
        link = ""
        if kind == _HARDLINK:
            if "linkpath" in pax:
                link = _utf8(pax["linkpath"], "PAX linkpath")
            else:
                link = _utf8(tf.cstring(long_link) if long_link is not None else h.linkname, "link name")
        self._place(name, kind, link, mode, size, h.data_offset)

    def _begin_data(self, size: int) -> None:
        self._remaining = size
        self._pad = -size % BLOCK
        self._state = "data" if size else ("pad" if self._pad else "header")
        if not size:
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
                self._long_name = meta
            elif kind == b"K":
                self._long_link = meta
            elif kind == b"x":
                self._pax = tf.parse_pax(meta)
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
        if self._hash is not None and self._expected is not None:
            digest, exp = self._hash.hexdigest(), self._expected
            self._hash = self._expected = None
            if digest != exp.sha256:
                raise ChecksumError(f"{self.source}: {_shown(self._path)} has sha256:{digest}, manifest.json "
                                    f"says sha256:{exp.sha256}: the download is corrupt")

    # ------------------------------------------------------------------ placing members

    def _refuse(self, name: str, why: str) -> UnsafeMemberError:
        return UnsafeMemberError(f"{self.source}: refused member {name!r}: {why}; nothing was extracted "
                                 "outside the staging directory, which is removed")

    def _place(self, name: str, kind: bytes, link: str, mode: int, size: int, data_offset: int) -> None:
        if kind in _REFUSED_TYPES:
            raise self._refuse(name, f"{_REFUSED_TYPES[kind]} is not allowed")
        if kind not in (*_REGULAR, _HARDLINK, _DIRECTORY):
            raise self._refuse(name, f"unknown member type {kind!r}")
        try:
            parts = member_parts(name)
        except ValueError as exc:
            raise self._refuse(name, str(exc)) from None
        path = self._path = "/".join(parts)
        if not parts:  # "./": the archive root itself
            if kind != _DIRECTORY:
                raise self._refuse(name, "a file or link cannot be the archive's root")
            self._begin_data(size)
            return
        if self.one_top:
            if self.top is None:
                self.top = parts[0]
            if parts[0] != self.top:
                raise self._refuse(name, f"outside the one top-level directory {self.top!r}")
            if len(parts) == 1 and kind != _DIRECTORY:
                raise self._refuse(name, "the top-level entry must be a directory, not a file or link")
        if len(parts) > _MAX_DEPTH:
            raise self._refuse(name, f"its path is {len(parts)} levels deep, more than the {_MAX_DEPTH} "
                                     "allowed")
        if self._dest_len + 1 + len(path.encode("utf-8")) >= _PATH_MAX:
            raise self._refuse(name, f"its path is longer than the {_PATH_MAX} bytes a path may have")
        self._data_size = size
        if kind == _DIRECTORY:
            self._dir(parts, len(parts), name)
        elif kind == _HARDLINK:
            self._hardlink(name, parts, link)
        else:
            self._open_file(name, parts, mode, size, data_offset)
        self._begin_data(size)

    def _dir(self, parts: list[str], n: int, member: str) -> int:
        """An open descriptor of the folder ``parts[:n]``, made if missing; never goes through a link.

        The descriptor stays valid until the next call (the cache may close older ones then).
        """
        if n == 0:
            if self._root_fd < 0:
                self._root_fd = os.open(self._dest_str, _DIR_FLAGS)
            return self._root_fd
        key = "/".join(parts[:n])
        fd = self._dirs.get(key)
        if fd is not None:
            self._dirs.move_to_end(key)
            return fd
        keys = list(itertools.accumulate(parts[:n], lambda a, b: f"{a}/{b}"))
        have = n - 1
        while have > 0 and keys[have - 1] not in self._dirs:
            have -= 1
        fd = self._dir(parts, have, member)
        for i in range(have, n):
            fd = self._open_dir(fd, parts[i], keys[i], member)
            self._dirs[keys[i]] = fd
            while len(self._dirs) > _DIR_CACHE:
                os.close(self._dirs.popitem(last=False)[1])
        return fd

    def _open_dir(self, parent: int, name: str, path: str, member: str) -> int:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o777, dir_fd=parent)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                why = f"{_shown(path)} is already a file or a link, not a folder"
                raise self._refuse(member, why) from None
            raise

    def _make_room(self, parent: int, name: str, member: str) -> None:
        """Remove an earlier file of the same name (a later copy replaces it, like tar); refuse a folder."""
        if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise self._refuse(member, "a file or hard link would replace a folder of the same name")
        os.unlink(name, dir_fd=parent)

    def _open_file(self, member: str, parts: list[str], mode: int, size: int, data_offset: int) -> None:
        path = self._path
        if self.expect is not None:
            self._expected = self._check_expected(path, size, data_offset)
            self._hash = hashlib.sha256()
        parent = self._dir(parts, len(parts) - 1, member)
        mode = (mode & 0o7777 & ~_MODE_CLEAR) | stat.S_IRUSR | stat.S_IWUSR
        try:
            self._fd = os.open(parts[-1], _FILE_FLAGS, mode, dir_fd=parent)
        except FileExistsError:
            self._make_room(parent, parts[-1], member)
            self._fd = os.open(parts[-1], _FILE_FLAGS, mode, dir_fd=parent)
        self._files.add(path)

    def _check_expected(self, path: str, size: int, data_offset: int) -> ExpectedMember:
        assert self.expect is not None
        exp = self.expect.pop(path, None)
        if exp is None:
            raise ChecksumError(f"{self.source}: member {_shown(path)} is not listed in manifest.json (or is "
                                "listed once but appears twice): manifest and archive disagree")
        if size != exp.size:
            raise ChecksumError(f"{self.source}: {_shown(path)} is {size} bytes, manifest.json says "
                                f"{exp.size}: the download is corrupt")
        if exp.offset is not None and exp.offset != data_offset:
            raise ChecksumError(f"{self.source}: {_shown(path)} starts at byte {data_offset}, "
                                f"manifest.json says {exp.offset}: manifest and archive disagree")
        return exp

    def _hardlink(self, member: str, parts: list[str], link: str) -> None:
        try:
            source = member_parts(link)
        except ValueError as exc:
            raise self._refuse(member, f"hard link to {link!r}: {exc}") from None
        source_path = "/".join(source)
        if self._resumed and self.expect is not None:
            raise self._refuse(member, f"hard link to {link!r} after the point an interrupted extraction "
                                       "resumed at: manifest.json lists no hard links, and the rest of the "
                                       "archive cannot be checked as a whole then; run the command again "
                                       "to extract it from the start")
        if source_path not in self._files:
            raise self._refuse(member, f"hard link to {link!r}, which is not a file extracted earlier from "
                                       "this archive")
        if source_path == self._path:
            raise self._refuse(member, "hard link to itself")
        source_dir = os.dup(self._dir(source, len(source) - 1, member))
        try:
            parent = self._dir(parts, len(parts) - 1, member)
            with contextlib.suppress(FileNotFoundError):
                self._make_room(parent, parts[-1], member)
            os.link(source[-1], parts[-1], src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(source_dir)
        self._files.add(self._path)
