"""The release dir on disk, opened so that what was checked is what is read.

Release files are opened once through :class:`ReleaseDir` with ``O_NOFOLLOW``
and ``O_NONBLOCK`` on every component and checked with ``fstat`` on the open
descriptor: a symlink, FIFO, socket, device or folder is refused with one line
naming it, and every later read is a ``pread`` of that descriptor
(:class:`LocalFile`), so a rename over the name during the upload changes nothing.

``RELEASE_DIR/.upload-state/`` (:class:`StateDir`) is a real folder used through
its descriptor, never followed through a symlink; its records are read the same
way and written to a fresh temporary name, then renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from pathlib import Path, PurePosixPath

from objathor_release.errors import InputError
from objathor_release.fsutil import describe_mode

__all__ = ["STATE_DIR", "LocalFile", "ReleaseDir", "StateDir", "open_in_dir"]

STATE_DIR = ".upload-state"
STATE_LIMIT = 8 * 1024 * 1024  # a record of 10,000 parts is about 500 kB
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


