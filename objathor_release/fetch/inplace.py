"""A part already on disk without our marker (objathor's own downloader put it there): is it the release?

The cut: compare a folder with the manifest's member list, file by file, by
size and then sha256, without the network. ``~/.objathor-assets/V/assets``
that objathor 0.0.8 extracted holds exactly the tar's members below its one
top-level folder (renamed ``assets``); features are flattened to their file
names. When every member is there with its bytes and nothing else is, the
download is not needed; anything else (a missing, extra, changed or
non-regular file) means download as usual, the folder being replaced only once
the new one is verified.

Files are opened with ``O_NOFOLLOW`` and walked without following links: a
link where a member should be is a difference, never a way to read elsewhere.
So is a file with a second name (a hard link: whoever holds the other name
could change the bytes later), a file that vanishes or changes type while it
is checked, and a folder nested deeper than any member (the walk stops there).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from objathor_release.fetch.extract import ExpectedMember, expected_members, member_parts
from objathor_release.fsutil import sha256_stream
from objathor_release.progress import progress

CHUNK = 4 * 1024 * 1024


def expected_in_place(artifact: Mapping[str, Any], flatten: bool) -> dict[str, ExpectedMember] | None:
    """``{path below the part's folder: member}`` as it lands on disk (None when it cannot be said)."""
    members = artifact.get("members") or []
    if not members:
        return None
    out: dict[str, ExpectedMember] = {}
    for path, member in expected_members(members).items():
        try:
            parts = member_parts(path)
        except ValueError:
            return None
        if flatten:
            if not parts[-1].endswith(".pkl") or parts[-1] in out:
                continue  # objathor keeps only *.pkl; a duplicate name cannot be checked in place
            out[parts[-1]] = member
        elif len(parts) >= 2:
            out["/".join(parts[1:])] = member
        else:
            return None  # a file at the tar's top level: not objathor's assets layout
    return out


def difference(folder: Path, expected: Mapping[str, ExpectedMember], *, show_progress: bool = False,
               within: Collection[str] | None = None) -> str:
    """How ``folder`` differs from ``expected`` ("" when it holds exactly those files with those bytes).

    ``within`` (a shard's asset folders) limits the check to those folders of ``folder``: the other
    folders there are other shards', and not this check's business."""
    found: dict[str, int] = {}
    depth = max((k.count("/") for k in expected), default=0)
    roots = [folder] if within is None else [folder / name for name in sorted(within)]
    for root in roots:
        if root is not folder and (root.is_symlink() or not root.is_dir()):
            return f"{root.name} is not a folder"
        why = _walk(folder, root, expected, depth, found)
        if why:
            return why
    missing = sorted(set(expected) - set(found))
    if missing:
        return f"{len(missing)} file(s) of the release are missing (first: {missing[0]})"
    for rel, size in found.items():
        if size != expected[rel].size:
            return f"{rel} is {size} bytes, the release's is {expected[rel].size}"
    total = sum(found.values())
    with progress(total, f"check {folder.name} in place", unit="B", enabled=show_progress) as bar:
        for rel in sorted(found):
            try:
                digest = _sha256(folder / rel, bar.update)
            except OSError as exc:
                return f"{rel} cannot be read ({exc.strerror or exc})"
            if digest != expected[rel].sha256:
                return f"{rel} has other bytes than the release's (sha256 {digest[:12]}...)"
    return ""


def _walk(folder: Path, root: Path, expected: Mapping[str, ExpectedMember], depth: int,
          found: dict[str, int]) -> str:
    """Walk ``root`` (``folder`` or one of its folders), noting each file's size below ``folder`` in
    ``found``; the first thing that cannot be the release's is returned ("" when none)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, folder)
        if rel_dir != "." and rel_dir.count("/") >= depth:  # before os.walk goes deeper than any member
            return f"{rel_dir} is a folder deeper than any file of the release"
        for name in [*filenames, *(d for d in dirnames if os.path.islink(os.path.join(dirpath, d)))]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError as exc:  # removed or replaced while we look
                return f"{rel} cannot be read ({exc.strerror or exc})"
            if not stat.S_ISREG(st.st_mode):
                return f"{rel} is not a regular file"
            if st.st_nlink != 1:
                return f"{rel} has another name (a hard link), so other paths can change it"
            if rel not in expected:
                return f"{rel} is not in the release"
            found[rel] = st.st_size
    return ""


def _sha256(path: Path, on_bytes: Any) -> str:
    """The file's sha256; OSError when it is no longer a plain file (a link, a FIFO put there since)."""
    # O_NONBLOCK: a FIFO put there since the walk must not block the open
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise OSError(errno.EINVAL, "no longer a plain file")
        return sha256_stream(fh, chunk=CHUNK, on_bytes=on_bytes)
