"""Build a byte-for-byte reproducible tar of a directory in one pass, hashing as it goes.

The archive is exactly what GNU tar 1.34 writes for::

    tar --sort=name --mtime=@EPOCH --owner=0 --group=0 --numeric-owner \\
        --mode=go=rX,u+rw,a-s --format=gnu --hard-dereference \\
        --exclude=PATTERN ... -C PARENT -cf OUTPUT BASENAME

(see ``gnu_tar_command``): one top-level folder named after DIR, members in
GNU tar's ``--sort=name`` order, GNU headers written by hand from a template
(the slow part of ``tarfile.add`` is skipped), 10240-byte records.

While writing, every regular file's sha256, size and data offset are recorded
and the whole archive is hashed in a second thread (hashlib releases the GIL),
so the manifest never has to read the archive again: the figures are kept in
a hidden sidecar (``.NAME.index.json``) beside the tar.

``scan_tar`` reads any tar (ours, GNU tar's, Python's) in one streaming pass
and gives the same figures; the manifest and ``verify --members`` use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import queue
import re
import stat
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from objathor_release.errors import InputError, ReleaseError, UsageError
from objathor_release.fsutil import atomic_path, describe_mode, open_regular, prepare_output
from objathor_release.progress import progress
from objathor_release.settings import format_size

#: The seed release process's exclude list, exact and in its order.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "annotations.json.gz",
    "thor_metadata.json",
    ".DS_Store",
    "._*",
    ".Spotlight-V100",
    ".Trashes",
    ".fseventsd",
    ".VolumeIcon.icns",
    ".apdisk",
    ".TemporaryItems",
    "*.lock",
)

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar's default blocking factor
# Bytes handed to the writer thread at a time (a multiple of BLOCK). Small enough to stay in a core's
# L2 cache between the read, the two hashes and the write: 4 MiB buffers cost ~70% more CPU here.
BUFFER = 256 * 1024
N_BUFFERS = 16
SCAN_CHUNK = 256 * 1024
MAX_OCTAL_11 = 8**11  # first value that no longer fits 11 octal digits
SIDECAR_FORMAT = 1

_ZEROS = bytes(RECORD)
_GNU_MAGIC = b"ustar  \x00"
_UID_GID = b"0000000\x00" * 2
_AFTER_TYPE = bytes(100) + _GNU_MAGIC + bytes(32 + 32 + 8 + 8 + 167)  # linkname .. end of block
_CHK_BLANK = b" " * 8
_NUL100 = bytes(100)
_EXTENSION_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE)


# --------------------------------------------------------------------------- results


@dataclass
class TarResult:
    """What ``build_tar`` wrote: the archive's size and sha256 and every regular file in it."""

    path: Path
    size: int
    sha256: str
    members: list[dict[str, Any]]
    excludes: list[str]
    directories: int = 0
    excluded: int = 0
    seconds: float = 0.0
    source_date_epoch: int = 0

    def summary(self) -> str:
        """One line for the CLI."""
        rate = self.size / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (
            f"wrote {self.path}: {len(self.members)} files in {self.directories} folders, "
            f"{format_size(self.size)}, sha256 {self.sha256}, {self.excluded} excluded, "
            f"{self.seconds:.1f} s ({rate:.0f} MB/s)"
        )


# --------------------------------------------------------------------------- patterns


def _translate(pattern: str) -> str:
    """A GNU fnmatch pattern (no flags: ``*`` also matches ``/``, backslash escapes) as a regex."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            j = i
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            if j >= n:  # no closing bracket: a literal '['
                out.append("\\[")
                continue
            body = pattern[i:j]
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            chars = []
            k = 0
            while k < len(body):
                ch = body[k]
                if ch == "\\" and k + 1 < len(body):
                    k += 1
                    ch = body[k]
                chars.append("\\" + ch if ch in "\\^]-[" else ch)
                if k + 2 < len(body) and body[k + 1] == "-":
                    chars.append("-")
                    k += 1
                k += 1
            out.append(("[^" if negate else "[") + "".join(chars) + "]")
        else:
            out.append(re.escape(c))
    return "".join(out)


_META = frozenset("*?[\\")


def _literal(text: str) -> bool:
    return bool(text) and not _META.intersection(text)


def compile_excludes(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A predicate: is this archive path excluded, matched the way GNU tar's ``--exclude`` does.

    A pattern matches the whole path (``assets/<uid>/x.lock``) or any tail of
    it that starts after a ``/``; for a pattern without ``/`` that is simply a
    file or folder name anywhere in the tree. ``*`` and ``?`` match any
    character, dots and ``/`` included (GNU tar's defaults).

    The usual shapes are tested without a regex (the tar calls this once per
    file): ``NAME`` and ``*SUFFIX`` by the path's ending, ``PREFIX*`` by a
    component's start; anything else by one combined regex.
    """
    ends: list[str] = []  # "/NAME" for a literal, or SUFFIX for *SUFFIX: tested on "/" + path
    starts: list[str] = []  # "/PREFIX" for PREFIX*: tested on "/" + path
    complex_: list[str] = []
    for p in patterns:
        if _literal(p):
            ends.append("/" + p)
        elif p.startswith("*") and _literal(p[1:]) and not p[1:].startswith("/"):
            ends.append(p[1:])
        elif p.endswith("*") and _literal(p[:-1]):
            starts.append("/" + p[:-1])
        else:
            complex_.append(p)
    end_tuple = tuple(ends)
    search = None
    if complex_:
        alternatives = "|".join(_translate(p) for p in complex_)
        search = re.compile("(?:\\A|(?<=/))(?:" + alternatives + ")\\Z", re.DOTALL).search

    def excluded(path: str) -> bool:
        slashed = "/" + path
        if end_tuple and slashed.endswith(end_tuple):
            return True
        if any(s in slashed for s in starts):
            return True
        return search is not None and search(path) is not None

    return excluded


# --------------------------------------------------------------------------- headers


def normalize_mode(mode: int, is_dir: bool) -> int:
    """The permission bits GNU tar stores with ``--mode=go=rX,u+rw,a-s``.

    Group and other get read, plus execute for a directory or when anyone could
    execute; the owner keeps its bits and gains read and write; set-user-ID,
    set-group-ID and sticky bits are dropped.
    """
    x = is_dir or bool(mode & 0o111)
    return (mode & 0o700) | 0o600 | (0o055 if x else 0o044)


def _number(value: int, width: int) -> bytes:
    """A numeric header field as GNU tar writes it: octal with a NUL, or base-256 when too big."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    if value < 0 or value >= 256 ** (width - 1):
        raise UsageError(f"value {value} does not fit a tar header field")
    return b"\x80" + value.to_bytes(width - 1, "big")


class _Headers:
    """Builds GNU headers from a template; the checksum is summed from precomputed parts."""

    def __init__(self, mtime: int) -> None:
        self.mtime_field = _number(mtime, 12)
        self._const = sum(_UID_GID) + sum(self.mtime_field) + sum(_CHK_BLANK) + sum(_AFTER_TYPE)
        self._modes: dict[int, tuple[bytes, int]] = {}
        self._files: dict[int, tuple[bytes, int]] = {}  # raw st_mode -> normalized mode field, its sum

    def _mode(self, mode: int) -> tuple[bytes, int]:
        got = self._modes.get(mode)
        if got is None:
            f = _number(mode, 8)
            got = self._modes[mode] = (f, sum(f))
        return got

    def file(self, name: bytes, st_mode: int, size: int) -> bytes:
        """A regular file's header block(s), with a fast path for the usual short name."""
        got = self._files.get(st_mode)
        if got is None:
            got = self._files[st_mode] = self._mode(normalize_mode(st_mode, False))
        if len(name) > 100 or size >= MAX_OCTAL_11:
            return self.entry(name, normalize_mode(st_mode, False), size, b"0")
        size_field = b"%011o\x00" % size
        chk = self._const + sum(name) + got[1] + sum(size_field) + 48  # 48: typeflag b"0"
        return b"".join((name, _NUL100[len(name):], got[0], _UID_GID, size_field, self.mtime_field,
                         b"%06o\x00 " % chk, b"0", _AFTER_TYPE))

    def header(self, name: bytes, mode: int, size: int, typeflag: bytes, mtime: bytes | None = None) -> bytes:
        """One 512-byte header (``name`` already fits 100 bytes)."""
        mode_field, mode_sum = self._mode(mode)
        size_field = _number(size, 12)
        mtime_field = self.mtime_field if mtime is None else mtime
        chk = self._const + sum(name) + mode_sum + sum(size_field) + typeflag[0]
        if mtime is not None:
            chk += sum(mtime) - sum(self.mtime_field)
        return b"".join((
            name, bytes(100 - len(name)), mode_field, _UID_GID, size_field, mtime_field,
            b"%06o\x00 " % chk, typeflag, _AFTER_TYPE,
        ))

    def entry(self, name: bytes, mode: int, size: int, typeflag: bytes) -> bytes:
        """The header block(s) of one member: a GNU ``././@LongLink`` first when the name is long."""
        if len(name) <= 100:
            return self.header(name, mode, size, typeflag)
        data = name + b"\x00"
        pad = -len(data) % BLOCK
        long = self.header(b"././@LongLink", 0o644, len(data), b"L", mtime=_number(0, 12))
        return long + data + bytes(pad) + self.header(name[:100], mode, size, typeflag)


# --------------------------------------------------------------------------- the writer thread


class _Writer(threading.Thread):
    """Hashes and writes full buffers while the main thread reads and hashes files."""

    def __init__(self, fh: BinaryIO, n_buffers: int = N_BUFFERS) -> None:
        super().__init__(name="tar-writer", daemon=True)
        self.fh = fh
        self.sha = hashlib.sha256()
        self.full: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(n_buffers):
            self.free.put(bytearray(BUFFER))
        self.error: BaseException | None = None
        self.written = 0

    def run(self) -> None:
        while (item := self.full.get()) is not None:
            buf, n = item
            if self.error is None:
                try:
                    view = memoryview(buf)[:n]
                    self.sha.update(view)
                    self.fh.write(view)
                    self.written += n
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self.error = exc
            self.free.put(buf)

    def check(self) -> None:
        if self.error is not None:
            raise ReleaseError(
                f"cannot write {getattr(self.fh, 'name', 'the archive')}: {self.error}: "
                "free some space or choose another --output"
            )


class _Out:
    """The archive being written: a current buffer, its position and the bytes already handed off."""

    def __init__(self, writer: _Writer) -> None:
        self.writer = writer
        self.buf = writer.free.get()
        self.view = memoryview(self.buf)
        self.pos = 0
        self.flushed = 0

    @property
    def offset(self) -> int:
        return self.flushed + self.pos

    def flush(self) -> None:
        self.writer.check()
        self.view.release()
        self.writer.full.put((self.buf, self.pos))
        self.flushed += self.pos
        self.buf = self.writer.free.get()
        self.view = memoryview(self.buf)
        self.pos = 0

    def write(self, data: bytes) -> None:
        start = 0
        while start < len(data):
            if self.pos == BUFFER:
                self.flush()
            n = min(len(data) - start, BUFFER - self.pos)
            self.buf[self.pos:self.pos + n] = data[start:start + n]
            self.pos += n
            start += n


# --------------------------------------------------------------------------- building


def _display(path: str) -> str:
    """A path fit for a one-line message, even when it holds bytes that are not UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _encode(path: str, rel: str) -> bytes:
    try:
        return rel.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{_display(path)}: file name is not valid UTF-8: rename it (archive names must be UTF-8)"
        ) from None


def _special(path: str) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return f"is {describe_mode(mode)}"


def resolve_epoch(source_date_epoch: int | None) -> int:
    """``source_date_epoch``, else ``$SOURCE_DATE_EPOCH``, else 0; checked to fit a tar header."""
    if source_date_epoch is None:
        text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
        if not text:
            return 0
        try:
            source_date_epoch = int(text)
        except ValueError:
            raise UsageError(
                f"SOURCE_DATE_EPOCH={text!r} is not a whole number of seconds: set e.g. 1700000000"
            ) from None
    if not 0 <= source_date_epoch < MAX_OCTAL_11:
        raise UsageError(
            f"source date epoch {source_date_epoch} is out of range: use seconds since 1970, >= 0"
        )
    return source_date_epoch


def sidecar_path(tar_path: str | Path) -> Path:
    """Where ``build_tar`` keeps a tar's one-pass figures: ``.NAME.index.json`` beside it."""
    p = Path(tar_path)
    return p.with_name(f".{p.name}.index.json")


def _check_source(src: Path) -> None:
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        raise InputError(f"{src}: no such directory: pass the folder of assets to archive") from None
    except OSError as exc:
        raise InputError(
            f"{src}: cannot be read ({exc.strerror}): check the path and its permissions"
        ) from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(
            f"{src}: is a symlink (to {os.readlink(src)}): pass the real directory, whose name becomes "
            "the archive's top-level folder"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{src}: is not a directory: pass the folder of assets to archive")


_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
_BY_NAME = operator.attrgetter("name")
MAX_DEPTH = 400  # folders inside folders; far beyond any asset tree, well within Python's recursion limit
RECHECK = 1024 * 1024  # files at least this big are fstat-ed again after reading (mtime check)


def _cannot_read(path: str, exc: OSError) -> InputError:
    return InputError(f"{_display(path)}: cannot be read ({exc.strerror}): fix its permissions or exclude it")


def _changed(path: str, how: str) -> InputError:
    return InputError(
        f"{_display(path)}: changed while being archived ({how}): stop whatever writes to the tree "
        "and run again"
    )


class _Builder:
    """One archive being built: the walk, the headers and the member records.

    Directories are opened with O_NOFOLLOW and read through their descriptor,
    and files opened relative to it, so nothing is followed out of the tree
    and the kernel does not walk the whole path again for every file.
    """

    def __init__(self, root: Path, excluded: Callable[[str], bool], headers: _Headers, out: _Out) -> None:
        self.root = root
        self.excluded = excluded
        self.h = headers
        self.out = out
        self.members: list[dict[str, Any]] = []
        self.directories = 0
        self.n_excluded = 0
        self._one = bytearray(1)  # catches a file that grew: read one byte more than its size

    def add_dir(self, path: str, rel: str, mode: int) -> None:
        name = _encode(path, rel) + b"/"
        self.out.write(self.h.entry(name, normalize_mode(mode, True), 0, b"5"))
        self.directories += 1

    def entries(self, dfd: int, path: str, rel: str) -> list[os.DirEntry[str]]:
        """One directory's entries not excluded, sorted by name (bytewise, as GNU ``--sort=name``)."""
        try:
            with os.scandir(dfd) as it:
                entries = sorted(it, key=_BY_NAME)
        except OSError as exc:
            raise _cannot_read(path, exc) from None
        excluded = self.excluded
        kept = [e for e in entries if not excluded(f"{rel}/{e.name}")]
        self.n_excluded += len(entries) - len(kept)
        return kept

    def add_tree(self, dfd: int, path: str, rel: str, depth: int = 1,
                 tick: Callable[[int], None] | None = None,
                 entries: list[os.DirEntry[str]] | None = None) -> None:
        """Archive what is in the open directory ``dfd`` (``rel`` in the archive), depth first.

        ``entries`` may be given when already read; ``tick(1)`` is called after each one.
        """
        if depth > MAX_DEPTH:
            raise InputError(f"{_display(path)}: folders nested more than {MAX_DEPTH} deep: flatten the tree")
        for e in self.entries(dfd, path, rel) if entries is None else entries:
            name = e.name
            child = f"{path}/{name}"
            child_rel = f"{rel}/{name}"
            if e.is_file(follow_symlinks=False):
                self.add_file(dfd, name, child, child_rel)
            elif e.is_dir(follow_symlinks=False):
                try:
                    sub = os.open(name, _OPEN_DIR, dir_fd=dfd)
                except OSError as exc:
                    raise _cannot_read(child, exc) from None
                try:
                    self.add_dir(child, child_rel, os.fstat(sub).st_mode)
                    self.add_tree(sub, child, child_rel, depth + 1, None)
                finally:
                    os.close(sub)
            elif e.is_symlink():
                raise InputError(
                    f"{_display(child)}: is a symlink (to {_display(os.readlink(name, dir_fd=dfd))}): "
                    "symlinks are not archived; copy the file in or --exclude it"
                )
            else:
                raise InputError(f"{_display(child)}: {_special(child)}: remove it or --exclude it")
            if tick is not None:
                tick(1)

    def add_file(self, dfd: int, name: str, path: str, rel: str) -> None:
        """Write one regular file's header and data; record its size, sha256 and data offset."""
        name_b = _encode(path, rel)
        try:
            fd = os.open(name, _OPEN_FILE, dir_fd=dfd)
        except OSError as exc:
            raise _cannot_read(path, exc) from None
        out = self.out
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{_display(path)}: {_special(path)}: remove it or --exclude it")
            size = st.st_size
            header = self.h.file(name_b, st.st_mode, size)
            pos = out.pos
            if len(header) == BLOCK and pos < BUFFER:  # fits: the position is always block aligned here
                out.buf[pos:pos + BLOCK] = header
                pos = out.pos = pos + BLOCK
            else:
                out.write(header)
                pos = out.pos
            offset = out.flushed + pos
            if size < BUFFER - pos:  # the usual case: all of it fits in the current buffer
                view = out.view
                got = os.readv(fd, [view[pos:pos + size], self._one])
                if got < size:  # a short read: carry on until the size or the end of the file
                    while got < size and (n := os.readv(fd, [view[pos + got:pos + size]])):
                        got += n
                    if got < size:
                        raise _changed(path, f"shrank by {size - got} bytes")
                    got += os.readv(fd, [self._one])
                if got > size:
                    raise _changed(path, "grew")
                digest = hashlib.sha256(view[pos:pos + size]).hexdigest()
                out.pos = pos + size
            else:
                digest = self._copy_big(fd, path, size)
            if size >= RECHECK:
                after = os.fstat(fd)
                if after.st_size != size or after.st_mtime_ns != st.st_mtime_ns:
                    raise _changed(path, "modified")
        except OSError as exc:
            raise _cannot_read(path, exc) from None
        finally:
            os.close(fd)
        pad = -size % BLOCK
        if pad:
            out.buf[out.pos:out.pos + pad] = _ZEROS[:pad]  # pos + pad <= BUFFER: both are block aligned
            out.pos += pad
        self.members.append({"path": rel, "size": size, "sha256": digest, "offset": offset})

    def _copy_big(self, fd: int, path: str, size: int) -> str:
        """Read a file that spans buffers straight into them, hashing as it goes."""
        out = self.out
        sha = hashlib.sha256()
        remaining = size
        while remaining:
            if out.pos == BUFFER:
                out.flush()
            n = min(remaining, BUFFER - out.pos)
            got = os.readv(fd, [out.view[out.pos:out.pos + n]])
            if got == 0:
                raise _changed(path, f"shrank by {remaining} bytes")
            sha.update(out.view[out.pos:out.pos + got])
            out.pos += got
            remaining -= got
        if os.readv(fd, [self._one]):
            raise _changed(path, "grew")
        return sha.hexdigest()

    def finish(self) -> None:
        if not self.members:
            raise InputError(
                f"{self.root}: holds no files to archive (empty, or everything excluded): "
                "check --assets-dir and the exclude list"
            )


def end_of_archive(offset: int) -> int:
    """How many zero bytes GNU tar writes after data ending at ``offset``: two zero blocks, then
    zeros up to a whole 10240-byte record (more than one record when the data ends in a record's
    last block)."""
    return 2 * BLOCK + (-(offset + 2 * BLOCK) % RECORD)


def _finish_record(out: _Out) -> None:
    """End the archive as GNU tar does (see ``end_of_archive``)."""
    out.write(bytes(end_of_archive(out.offset)))


def _archive(builder: _Builder, src: Path, desc: str, show_progress: bool) -> None:
    """The whole archive: the top folder, everything below it, the end-of-archive blocks."""
    try:
        top = os.open(src, _OPEN_DIR)
    except OSError as exc:
        raise _cannot_read(str(src), exc) from None
    try:
        builder.add_dir(str(src), src.name, os.fstat(top).st_mode)
        entries = builder.entries(top, str(src), src.name)
        with progress(len(entries), desc, unit="entries", enabled=show_progress) as bar:
            builder.add_tree(top, str(src), src.name, tick=bar.update, entries=entries)
        builder.finish()
        _finish_record(builder.out)
        builder.out.flush()
    finally:
        os.close(top)


def build_tar(
    src_dir: str | Path,
    output: str | Path,
    *,
    extra_excludes: Iterable[str] = (),
    source_date_epoch: int | None = None,
    verbose: bool = False,
    show_progress: bool = True,
    fsync: bool = False,
) -> TarResult:
    """Archive ``src_dir`` to ``output`` (atomically) and return its figures; see the module docstring.

    ``source_date_epoch=None`` means ``$SOURCE_DATE_EPOCH``, else 0. The
    figures are also saved in ``sidecar_path(output)`` for ``write_manifest``.
    Bad input (symlink, special file, unreadable or changing file, name that is
    not UTF-8, empty or missing directory) raises InputError naming the path;
    nothing is left under ``output`` then. The archive appears under its name
    only when complete; ``fsync`` also waits for it to reach the disk first
    (that costs as long again as GNU tar takes, so it is off by default: the
    manifest and ``verify`` catch an archive a crash damaged).
    """
    started = time.monotonic()
    src = Path(os.path.abspath(src_dir))
    out_path = Path(os.path.abspath(output))
    _check_source(src)
    if not src.name:
        raise UsageError(f"{src}: has no name for the archive's top-level folder: pass a folder below it")
    real_src, real_out = Path(os.path.realpath(src)), Path(os.path.realpath(out_path))
    if real_out == real_src or real_src in real_out.parents:
        raise UsageError(f"--output {output} is inside {src_dir}: write the archive outside the tree")
    if out_path.is_dir():
        raise UsageError(f"--output {output} is a directory: name the archive file, e.g. {output}/assets.tar")
    prepare_output(out_path, "--output")
    epoch = resolve_epoch(source_date_epoch)
    excludes = list(DEFAULT_EXCLUDES) + [p for p in extra_excludes if p not in DEFAULT_EXCLUDES]
    if verbose:
        for pattern in excludes:
            print(f"exclude: {pattern}", file=sys.stderr)
    excluded = compile_excludes(excludes)
    if excluded(src.name):
        raise InputError(f"{src}: its own name matches an exclude pattern: rename it or drop the --exclude")
    sidecar = sidecar_path(out_path)
    headers = _Headers(epoch)
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb", buffering=0) as fh:
            writer = _Writer(fh)
            writer.start()
            out = _Out(writer)
            builder = _Builder(src, excluded, headers, out)
            try:
                _archive(builder, src, f"tar {out_path.name}", show_progress)
            finally:
                writer.full.put(None)
                writer.join()
            writer.check()
            if fsync:
                os.fsync(fh.fileno())
        with contextlib.suppress(FileNotFoundError):
            sidecar.unlink()  # a stale sidecar must never describe the new archive
    st = os.stat(out_path)
    result = TarResult(
        path=out_path, size=writer.written, sha256=writer.sha.hexdigest(), members=builder.members,
        excludes=excludes, directories=builder.directories, excluded=builder.n_excluded,
        seconds=time.monotonic() - started, source_date_epoch=epoch,
    )
    write_sidecar(result, st)
    return result


def write_sidecar(result: TarResult, st: os.stat_result) -> None:
    """Keep ``result``'s figures beside the tar, tied to its current size and mtime."""
    index = {
        "format": SIDECAR_FORMAT, "tar": result.path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "sha256": result.sha256, "excludes": result.excludes, "source_date_epoch": result.source_date_epoch,
        "members": result.members,
    }
    # No fsync: after a crash a sidecar is at worst empty or unreadable, and then simply not used.
    with atomic_path(sidecar_path(result.path)) as tmp:
        tmp.write_bytes(json.dumps(index, separators=(",", ":")).encode())


def read_sidecar(tar_path: str | Path) -> dict[str, Any] | None:
    """The sidecar of ``tar_path`` if it still describes the file on disk (same size and mtime), else None."""
    side = sidecar_path(tar_path)
    try:
        with open_regular(side) as fh:
            index: dict[str, Any] = json.loads(fh.read())
        st = os.stat(tar_path)
    except (OSError, ValueError, RecursionError):
        return None
    if (
        not isinstance(index, dict) or index.get("format") != SIDECAR_FORMAT
        or index.get("size") != st.st_size or index.get("mtime_ns") != st.st_mtime_ns
        or not isinstance(index.get("members"), list) or not isinstance(index.get("sha256"), str)
        or not all(_sidecar_member(m) for m in index["members"])
    ):
        return None
    return index


def _sidecar_member(m: Any) -> bool:
    return (type(m) is dict and len(m) == 4 and type(m.get("path")) is str and type(m.get("size")) is int
            and type(m.get("offset")) is int and type(m.get("sha256")) is str)


# --------------------------------------------------------------------------- reading any tar back

MAX_EXTENSION = 1024 * 1024  # bytes of one long name or pax header: far beyond any real one
_ZERO_BLOCK = bytes(BLOCK)
_DIGITS = re.compile(r"[0-9]{1,20}")


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

    def __init__(self, fh: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.pos = 0
        self.on_bytes = on_bytes

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        self.sha.update(data)
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


def _pax_records(data: bytes, at: int) -> dict[str, str]:
    """Parse a pax extended header's ``LEN key=value\\n`` records (TarFormatError when malformed)."""
    out: dict[str, str] = {}
    pos, n = 0, len(data)
    while pos < n and data[pos] != 0:
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise _bad("malformed pax header", at)
        end = pos + int(digits)
        if end < space + 3 or end > n or data[end - 1] != 0x0A:
            raise _bad("malformed pax header", at)
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise _bad("malformed pax header", at)
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return out


def _cstr(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


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
            block = r.read(BLOCK)
            if start == 0 and len(block) < BLOCK:
                raise TarFormatError("empty or too short to be a tar archive", "rebuild it")
            if len(block) < BLOCK or block == _ZERO_BLOCK:
                return
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except (tarfile.HeaderError, ValueError) as exc:
                raise TarFormatError(f"not a valid tar archive (bad header at byte {start}: {exc})") from None
            size = info.size
            if "size" in pax:
                if not _DIGITS.fullmatch(pax["size"]):
                    raise _bad("bad pax size", start)
                size = int(pax["size"])
            if size < 0:
                raise _bad("negative size", start)
            kind = info.type
            if kind in _EXTENSION_TYPES:
                if size > MAX_EXTENSION:
                    raise _bad(f"an extended header of {size} bytes, more than {MAX_EXTENSION}", start)
                data = _exact(r, size, "extended header")
                _exact(r, -size % BLOCK, "padding")
                if kind == tarfile.GNUTYPE_LONGNAME:
                    long_name = _cstr(data)
                elif kind == tarfile.XHDTYPE:
                    pax = _pax_records(data, start)
                continue
            if kind == tarfile.GNUTYPE_SPARSE or "GNU.sparse.major" in pax:
                raise TarFormatError(f"holds sparse member {info.name}", "rebuild it without --sparse")
            name = pax.get("path") or long_name or info.name
            if info.isdir() and not name.endswith("/"):
                name += "/"
            long_name, pax = None, {}
            if not name.strip("/"):
                raise _bad("a member with an empty name", start)
            if "\x00" in name:
                raise _bad(f"member name {name!r} holding a NUL byte", start)
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise _bad(f"member name {name!r} that is not valid UTF-8", start) from None
            data_size = 0 if kind in (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE) else size
            offset = r.pos
            yield TarHeader(name, kind, data_size, offset)
            left = offset + data_size + (-data_size % BLOCK) - r.pos
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


def scan_tar(path: str | Path, *, on_bytes: Callable[[int], None] = lambda n: None) -> ScanResult:
    """Read a tar in one streaming pass: whole-file sha256 plus every regular member's figures.

    Understands ustar, GNU (long names) and pax headers. ``members`` holds
    ``{"path", "size", "sha256", "offset"}`` for each regular file, ``offset``
    being where its data starts. A file that is not a tar, or not a regular
    file, raises InputError.
    """
    members: list[dict[str, Any]] = []
    try:
        raw = open_regular(path, buffering=SCAN_CHUNK)
    except OSError as exc:
        raise InputError(f"{_display(str(path))}: cannot be read ({exc.strerror}): replace it with the "
                         "archive, or remove it") from None
    with raw:
        r = _HashingReader(raw, on_bytes)
        try:
            for h in iter_headers(r):
                if h.kind not in tarfile.REGULAR_TYPES:
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
            raise InputError(f"{_display(str(path))}: {exc}: {exc.hint}") from None
        except OSError as exc:
            raise InputError(f"{_display(str(path))}: cannot be read ({exc.strerror}): check the disk") \
                from None
    return ScanResult(size=r.pos, sha256=r.sha.hexdigest(), members=members)


def gnu_tar_command(src_dir: str | Path, output: str | Path, excludes: Iterable[str],
                    source_date_epoch: int = 0) -> list[str]:
    """The GNU tar command line that writes the same bytes as ``build_tar`` (for tests and docs)."""
    src = Path(os.path.abspath(src_dir))
    return [
        "tar", "--sort=name", f"--mtime=@{source_date_epoch}", "--owner=0", "--group=0", "--numeric-owner",
        "--mode=go=rX,u+rw,a-s", "--format=gnu", "--hard-dereference",
        *(f"--exclude={p}" for p in excludes),
        "-C", str(src.parent), "-cf", str(output), src.name,
    ]
