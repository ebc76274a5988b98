"""The one-pass tar writer: walk a tree in GNU tar's order, write headers and data, hash as it goes.

:func:`write_archive` does the work behind ``build_tar``: the main thread walks
the tree (folders opened with ``O_NOFOLLOW`` and read through their descriptor,
files opened relative to it, so nothing is followed out of the tree), reads
each file straight into a shared buffer and hashes it there; a second thread
(:class:`_Writer`) hashes full buffers for the whole archive's sha256 and
writes them (hashlib releases the GIL). Headers come from
:class:`~.tarformat.GnuHeaders`.
"""

from __future__ import annotations

import hashlib
import operator
import os
import queue
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from objathor_release.build import tarformat as tf
from objathor_release.build.etags import UploadDigests
from objathor_release.errors import InputError, ReleaseError
from objathor_release.fsutil import describe_mode
from objathor_release.progress import progress

# Bytes handed to the writer thread at a time (a multiple of BLOCK). Small enough to stay in a core's
# L2 cache between the read, the two hashes and the write: 4 MiB buffers cost ~70% more CPU here.
BUFFER = 256 * 1024
N_BUFFERS = 16

_ZEROS = bytes(tf.RECORD)


# --------------------------------------------------------------------------- the writer thread


_Item = tuple[bytearray, int] | None


class _Md5(threading.Thread):
    """Feeds written buffers to one md5 of the :class:`~.etags.UploadDigests` (``feed``: the whole
    file's or the parts'), then hands each on (``then``: the next thread's queue, or None when this is
    the last thread and the buffer goes back to ``free``). Two of these, one after the other, so
    each md5 can run on a core of its own beside the reading and the sha256s."""

    def __init__(self, name: str, feed: Callable[[memoryview], None], free: queue.Queue[bytearray],
                 then: queue.Queue[_Item] | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.feed, self.free, self.then = feed, free, then
        self.full: queue.Queue[_Item] = queue.Queue()

    def run(self) -> None:
        while (item := self.full.get()) is not None:
            buf, n = item
            with memoryview(buf) as view:
                self.feed(view[:n])
            if self.then is None:
                self.free.put(buf)
            else:
                self.then.put(item)
        if self.then is not None:
            self.then.put(None)


class _Writer(threading.Thread):
    """Hashes and writes full buffers while the main thread reads and hashes files; the md5
    thread then hashes them once more and frees them."""

    def __init__(self, fh: BinaryIO, digests: UploadDigests, n_buffers: int = N_BUFFERS) -> None:
        super().__init__(name="tar-writer", daemon=True)
        self.fh = fh
        self.sha = hashlib.sha256()
        self.full: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(n_buffers):
            self.free.put(bytearray(BUFFER))
        self.parts = _Md5("tar-md5-parts", digests.update_parts, self.free)
        self.md5 = _Md5("tar-md5", digests.update_whole, self.free, then=self.parts.full)
        self.error: BaseException | None = None
        self.written = 0

    def run(self) -> None:
        self.md5.start()
        self.parts.start()
        try:
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
                if self.error is None:
                    self.md5.full.put((buf, n))
                else:
                    self.free.put(buf)
        finally:
            self.md5.full.put(None)  # passed on to the parts thread when the md5 thread is done
            self.md5.join()
            self.parts.join()

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


# --------------------------------------------------------------------------- the walk


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

    def __init__(self, root: Path, excluded: Callable[[str], bool], headers: tf.GnuHeaders,
                 out: _Out) -> None:
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
        self.out.write(self.h.entry(name, tf.normalize_mode(mode, True), 0, tf.DIRECTORY))
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
            if len(header) == tf.BLOCK and pos < BUFFER:  # fits: the position is always block aligned here
                out.buf[pos:pos + tf.BLOCK] = header
                pos = out.pos = pos + tf.BLOCK
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
        pad = -size % tf.BLOCK
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


def _finish_record(out: _Out) -> None:
    """End the archive as GNU tar does (see ``end_of_archive``)."""
    out.write(bytes(tf.end_of_archive(out.offset)))


def _archive(builder: _Builder, src: Path, desc: str, show_progress: bool,
             units: Sequence[str] | None = None) -> None:
    """The whole archive: the top folder, everything below it, the end-of-archive blocks.

    With ``units`` (names of entries of ``src``, sorted): only those entries and
    what is below them, and no entry for the top folder itself, as GNU tar
    writes for ``tar -C PARENT -cf OUT SRC/unit1 SRC/unit2 ...`` (a shard).
    """
    try:
        top = os.open(src, _OPEN_DIR)
    except OSError as exc:
        raise _cannot_read(str(src), exc) from None
    try:
        if units is None:
            builder.add_dir(str(src), src.name, os.fstat(top).st_mode)
        entries = builder.entries(top, str(src), src.name)
        if units is not None:
            by_name = {e.name: e for e in entries}
            missing = [u for u in units if u not in by_name]
            if missing:
                raise InputError(
                    f"{_display(str(src / missing[0]))}: planned for this shard but no longer in the tree "
                    "(or now excluded): the tree changed since the shard plan; plan again"
                )
            entries = [by_name[u] for u in units]
        with progress(len(entries), desc, unit="entries", enabled=show_progress) as bar:
            builder.add_tree(top, str(src), src.name, tick=bar.update, entries=entries)
        if units is None:
            builder.finish()
        _finish_record(builder.out)
        builder.out.flush()
    finally:
        os.close(top)


def _header_bytes(name: bytes) -> int:
    """The bytes of one member's header block(s) (see ``GnuHeaders.entry``)."""
    if len(name) <= 100:
        return tf.BLOCK
    return 2 * tf.BLOCK + len(name) + 1 + (-(len(name) + 1) % tf.BLOCK)


def estimate_size(src: Path, excluded: Callable[[str], bool], units: Sequence[str] | None = None) -> int:
    """The size the archive of ``src`` will have, from a walk of names and sizes only (no file is read).

    Exact while the tree does not change; anything the walk cannot read counts as nothing (the real
    walk names it). It tells the build which part layout the md5s are for before the first byte.
    """
    total = 0

    def walk(path: str, rel: str, depth: int, only: Sequence[str] | None) -> None:
        nonlocal total
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            return
        wanted = set(only) if only is not None else None
        for e in entries:
            if wanted is not None and e.name not in wanted:
                continue
            child_rel = f"{rel}/{e.name}"
            if excluded(child_rel):
                continue
            name = os.fsencode(child_rel)
            try:
                if e.is_file(follow_symlinks=False):
                    size = e.stat(follow_symlinks=False).st_size
                    total += _header_bytes(name) + size + (-size % tf.BLOCK)
                elif e.is_dir(follow_symlinks=False) and depth < MAX_DEPTH:
                    total += _header_bytes(name + b"/")
                    walk(e.path, child_rel, depth + 1, None)
            except OSError:
                continue

    if units is None:
        total += _header_bytes(os.fsencode(src.name) + b"/")
    walk(str(src), src.name, 1, units)
    return total + tf.end_of_archive(total)


@dataclass
class Written:
    """What ``write_archive`` wrote: the byte count and sha256, every regular file's figures, the counts,
    and the md5s for the expected ETag (``upload``: the fields of :meth:`.UploadDigests.fields`)."""

    size: int
    sha256: str
    members: list[dict[str, Any]]
    directories: int
    excluded: int
    upload: dict[str, Any]


def write_archive(fh: BinaryIO, src: Path, excluded: Callable[[str], bool], mtime: int, *,
                  desc: str, show_progress: bool, units: Sequence[str] | None = None,
                  part_size: int | None = None) -> Written:
    """Write the tar of ``src`` (one top-level folder named after it) to ``fh``; see the module docstring.

    ``units`` writes only those entries of ``src`` (a shard; see ``_archive``). ``part_size`` is the
    part layout the md5s of ``Written.upload`` are for (None: one PUT).

    Bad input (symlink, special file, unreadable or changing file, name that
    is not UTF-8, a tree too deep or with nothing to archive) raises
    InputError naming the path; a failed write raises ReleaseError.
    """
    digests = UploadDigests(part_size)
    writer = _Writer(fh, digests)
    writer.start()
    out = _Out(writer)
    builder = _Builder(src, excluded, tf.GnuHeaders(mtime), out)
    try:
        _archive(builder, src, desc, show_progress, units)
    finally:
        writer.full.put(None)
        writer.join()
    writer.check()
    return Written(size=writer.written, sha256=writer.sha.hexdigest(), members=builder.members,
                   directories=builder.directories, excluded=builder.n_excluded, upload=digests.fields())
