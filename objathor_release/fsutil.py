"""File helpers shared by every job: atomic writes, hashing and opening input safely.

Nothing is ever half-written under its final name: output goes to a temporary
name in the same directory (so the rename is atomic on one filesystem) and is
renamed into place only when complete; on any error the temporary is removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from objathor_release.errors import UsageError

CHUNK = 1024 * 1024


def temp_path_for(target: Path) -> Path:
    """A unique hidden temporary name beside ``target``."""
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it to ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_write(target: str | Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temporary file beside ``target`` for writing; fsync and rename on success."""
    with atomic_path(target) as tmp, open(tmp, mode) as fh:  # noqa: SIM117
        yield fh  # type: ignore[misc]
        fh.flush()
        os.fsync(fh.fileno())


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    """Lower-case hex sha256 of a file, read in chunks (flat memory)."""
    with open(path, "rb") as fh:
        return sha256_stream(fh, chunk=chunk)


def sha256_stream(fh: BinaryIO, *, chunk: int = CHUNK,
                  on_bytes: Callable[[int], object] | None = None) -> str:
    """Lower-case hex sha256 of what is left to read in ``fh``; ``on_bytes(n)`` after each chunk."""
    h = hashlib.sha256()
    while block := fh.read(chunk):
        h.update(block)
        if on_bytes is not None:
            on_bytes(len(block))
    return h.hexdigest()


# --------------------------------------------------------------------------- reading input safely

_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def describe_mode(mode: int) -> str:
    """What a non-regular file is, for a message: ``a FIFO``, ``a directory``, ..."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class NotRegularFileError(OSError):
    """``open_regular`` refused something that is not a regular file; ``strerror`` says what it is."""

    def __init__(self, path: str | Path, what: str) -> None:
        super().__init__(errno.EINVAL, what, str(path))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def open_regular(path: str | Path, *, dir_fd: int | None = None, buffering: int = -1) -> BinaryIO:
    """Open an existing regular file for reading, never following a final symlink nor blocking.

    The name is checked with lstat before it is opened (so a device is never
    opened) and the descriptor with fstat after (so a swap in between is
    caught); a FIFO, socket, device, folder or symlink raises
    NotRegularFileError (an OSError) whose ``strerror`` names what it is.
    """
    st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise NotRegularFileError(path, f"is a symlink (to {os.readlink(path, dir_fd=dir_fd)})")
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(path, f"is {describe_mode(st.st_mode)}")
    try:
        fd = os.open(path, _OPEN_READ, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFileError(path, "is a symlink") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(path, f"is {describe_mode(st.st_mode)}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


def _blocker(folder: Path) -> tuple[Path, str] | None:
    """The first component of ``folder`` that exists but is not a folder, and what it is."""
    for p in [*reversed(folder.parents), folder]:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            if os.path.lexists(p):
                return p, "a dangling symlink"
            return None
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return p, describe_mode(st.st_mode) if not stat.S_ISREG(st.st_mode) else "a file"
    return None


def prepare_output(target: str | Path, what: str = "output") -> Path:
    """Make sure a file can be written at ``target``: its folder exists (created if need be) and
    ``target`` is not a folder. Raises UsageError naming the component in the way."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        found = _blocker(target.parent)
        if found is not None:
            raise UsageError(
                f"{what} {target}: cannot be written: {found[0]} is {found[1]}, not a folder: "
                "choose another path or move it away"
            ) from None
        raise UsageError(
            f"{what} {target}: cannot create its folder {target.parent} ({exc.strerror}): choose another path"
        ) from None
    if os.path.isdir(target):
        raise UsageError(f"{what} {target}: is a directory: name the file to write inside it")
    return target


# --------------------------------------------------------------------------- file operations of a download

_DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def remove_path(path: Path) -> None:
    """Delete ``path`` whatever it is (a folder tree, a file, a link); nothing there is fine.

    Folders are removed without recursion (``shutil.rmtree`` recurses once per level and fails on
    a tree deeper than Python's recursion limit) and without following any link: a link is
    removed, never what it points to.
    """
    if path.is_dir() and not path.is_symlink():
        _remove_tree(os.fspath(path))
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_tree(root: str) -> None:
    """Depth-first removal with an explicit stack of folder paths."""
    stack = [root]
    while stack:
        top = stack[-1]
        try:
            entries = list(os.scandir(top))
        except FileNotFoundError:
            stack.pop()
            continue
        subdirs = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.path)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        if subdirs:
            stack.extend(subdirs)
            continue
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(top)
        stack.pop()


def replace_dir(src: Path, dst: Path, trash: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is moved to ``trash`` first, then deleted."""
    if dst.exists() or dst.is_symlink():
        remove_path(trash)
        os.replace(dst, trash)
    os.replace(src, dst)
    remove_path(trash)
