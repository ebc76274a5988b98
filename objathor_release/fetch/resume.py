"""Where an interrupted tar extraction can continue: the members already in staging, checked again.

The cut: checks on a part's staging folder against the manifest. A streamed
extraction writes members in tar order into ``PART.staging``; when a run stops
(a network failure, Ctrl-C, a kill), the next run asks :func:`resume_point` how
far the staging folder is good. Nothing there is trusted: the members are taken
in the order of their offsets and each one's file is reached from ``staging``
one folder at a time with ``O_NOFOLLOW`` (a link anywhere on its path, not only
at its end, makes it missing) and hashed; a file with another name elsewhere
(a hard link count above one) is missing too. The longest run of members from
the first that are all present with the manifest's size and sha256 is kept,
and the stream continues at the tar header that follows the last of them (its
data offset plus its size, rounded up to the 512-byte block). Hashing what is
on the local disk is much cheaper than fetching it again.

Before the stream continues, :func:`prune` removes everything else from
staging (the files after the resume point, anything some other program put
there, every link), so the finished folder holds only members whose bytes were
checked, and folders.

Without a manifest that gives every member's offset there is nothing to check
against, and the extraction starts over; so it does when the manifest's
offsets cannot be those of one tar (a path listed twice, offsets out of order,
overlapping or off the 512-byte blocks).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objathor_release.fetch.extract import ExpectedMember, expected_members, member_parts
from objathor_release.fsutil import sha256_stream
from objathor_release.progress import progress

BLOCK = 512
CHUNK = 4 * 1024 * 1024
_MAX_DEPTH = 64  # the extractor's limit: no member lies deeper
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: a FIFO put where a member should be must not block the open
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class ResumePoint:
    """Continue the stream at byte ``offset``; ``done`` are the archive paths already in staging."""

    offset: int
    done: frozenset[str]
    members: int  # members in the archive, for the message


def resume_point(staging: Path, artifact: Mapping[str, Any] | None, *,
                 show_progress: bool = False) -> ResumePoint | None:
    """How far ``staging`` already holds the artifact's members, checked; None to start over."""
    if artifact is None or not artifact.get("members") or not staging.is_dir() or staging.is_symlink():
        return None
    expected = expected_members(artifact["members"])
    ordered = _in_tar_order(expected, len(artifact["members"]))
    if ordered is None:
        return None
    present: list[tuple[str, int]] = []
    for path, member in ordered:
        if _regular_size(staging, path) != member.size:
            break
        present.append((path, member.size))
    if not present:
        return None
    done: list[str] = []
    end = 0
    with progress(sum(s for _, s in present), "check what was extracted", enabled=show_progress) as bar:
        for path, _ in present:
            member = expected[path]
            if _sha256(staging, path, bar.update) != member.sha256:
                break
            done.append(path)
            assert member.offset is not None
            end = member.offset + _padded(member.size)
    if not done:
        return None
    return ResumePoint(end, frozenset(done), len(expected))


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _in_tar_order(expected: Mapping[str, ExpectedMember],
                  listed: int) -> list[tuple[str, ExpectedMember]] | None:
    """The members by offset, when the offsets can be one tar's: every one given, on a block
    boundary after a header, each member's data ending before the next header (None otherwise)."""
    if len(expected) != listed or any(m.offset is None for m in expected.values()):
        return None  # a path listed twice, or a member without its offset
    ordered = sorted(expected.items(), key=lambda item: item[1].offset or 0)
    after = BLOCK  # the first member's data follows at least its header
    for _, member in ordered:
        assert member.offset is not None
        if member.offset % BLOCK or member.offset < after:
            return None
        after = member.offset + _padded(member.size) + BLOCK
    return ordered


def _parts(path: str) -> list[str] | None:
    try:
        parts = member_parts(path)
    except ValueError:
        return None
    return parts or None


def _open_member(staging: Path, path: str) -> int | None:
    """A descriptor of the regular file at ``path`` under ``staging``, reached without following a link
    anywhere on the way, and with no other name (None: missing, a link, a folder, a device, linked)."""
    parts = _parts(path)
    if parts is None:
        return None
    opened: list[int] = []
    try:
        fd = os.open(staging, _DIR_FLAGS)
        opened.append(fd)
        for name in parts[:-1]:
            fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            opened.append(fd)
        file_fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fd)
    except OSError:
        return None
    finally:
        for d in opened:
            os.close(d)
    st = os.fstat(file_fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(file_fd)
        return None
    return file_fd


def _regular_size(staging: Path, path: str) -> int | None:
    """The size of the regular file at ``path`` under ``staging`` (None: see :func:`_open_member`)."""
    fd = _open_member(staging, path)
    if fd is None:
        return None
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _sha256(staging: Path, path: str, on_bytes: Any) -> str:
    """The file's sha256, reached as :func:`_open_member` does ("" when it cannot be read)."""
    fd = _open_member(staging, path)
    if fd is None:
        return ""
    with os.fdopen(fd, "rb") as fh:
        try:
            return sha256_stream(fh, chunk=CHUNK, on_bytes=on_bytes)
        except OSError:
            return ""


def prune(staging: Path, done: Collection[str], members: Collection[str]) -> None:
    """Remove from ``staging`` every entry but the ``done`` members' files and real folders: links,
    other files, the members after the resume point, a folder where one of ``members`` (every
    member's archive path) should be a file.

    Walks by folder descriptor with ``O_NOFOLLOW``, so nothing outside ``staging`` is ever touched.
    """
    keep = {"/".join(p) for p in map(_parts, done) if p is not None}
    files = {"/".join(p) for p in map(_parts, members) if p is not None}
    fd = os.open(staging, _DIR_FLAGS)
    try:
        _prune(fd, "", keep, files, 0)
    finally:
        os.close(fd)


def _prune(fd: int, prefix: str, keep: set[str], files: set[str], depth: int) -> None:
    with os.scandir(fd) as it:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in entries:
        rel = f"{prefix}{name}"
        if not is_dir:
            if rel not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
            continue
        if rel in files or depth >= _MAX_DEPTH:
            _remove_tree(fd, name)
            continue
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            continue
        try:
            _prune(sub, f"{rel}/", keep, files, depth + 1)
        finally:
            os.close(sub)


def _remove_tree(parent: int, name: str) -> None:
    """Remove the folder ``name`` of ``parent`` and all it holds, by descriptor, following no link."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in entries:
            if is_dir:
                _remove_tree(fd, child)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)
