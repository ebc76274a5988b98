"""Where an interrupted tar extraction can continue: the members already in staging, checked again.

The cut: read-only checks on a part's staging folder against the manifest. A
streamed extraction writes members in tar order into ``PART.staging``; when a
run stops (a network failure, Ctrl-C, a kill), the next run asks
:func:`resume_point` how far the staging folder is good. Nothing there is
trusted: the members are taken in the order of their offsets and each one's
file is opened with ``O_NOFOLLOW`` and hashed; the longest run of members from
the first that are all present with the manifest's size and sha256 is kept,
and the stream continues at the tar header that follows the last of them (its
data offset plus its size, rounded up to the 512-byte block). Hashing what is
on the local disk is much cheaper than fetching it again.

Without a manifest that gives every member's offset there is nothing to check
against, and the extraction starts over.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objathor_release.fetch.extract import expected_members, member_parts
from objathor_release.progress import progress

BLOCK = 512
CHUNK = 4 * 1024 * 1024


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
    if any(m.offset is None for m in expected.values()):
        return None
    ordered = sorted(expected.items(), key=lambda item: item[1].offset or 0)
    present: list[tuple[str, int]] = []
    for path, member in ordered:
        size = _regular_size(staging, path)
        if size != member.size:
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
            end = member.offset + -(-member.size // BLOCK) * BLOCK
    if not done:
        return None
    return ResumePoint(end, frozenset(done), len(expected))


def _parts(path: str) -> list[str] | None:
    try:
        parts = member_parts(path)
    except ValueError:
        return None
    return parts or None


def _regular_size(staging: Path, path: str) -> int | None:
    """The size of the regular file at ``path`` under ``staging`` (None: missing, a link, a folder)."""
    parts = _parts(path)
    if parts is None:
        return None
    try:
        st = os.lstat(staging.joinpath(*parts))
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _sha256(staging: Path, path: str, on_bytes: Any) -> str:
    """The file's sha256, opened without following a final link ("" when it cannot be read)."""
    parts = _parts(path)
    if parts is None:
        return ""
    h = hashlib.sha256()
    try:
        fd = os.open(staging.joinpath(*parts), os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
            on_bytes(len(block))
    return h.hexdigest()
