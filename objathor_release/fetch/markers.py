"""A part's bookkeeping: its lock, and the ``.done`` marker written only after verification.

The cut: the files in a version's hidden ``.objathor-release`` folder that say
who is working on a part and whether it is finished. Two processes never work
on the same part at once (the second waits, then finds the work done); later
runs trust the marker, never the mere presence of a folder, and a marker for an
earlier release of the version (another sha256 in manifest.json) is stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from objathor_release.fetch.layout import Part
from objathor_release.fsutil import atomic_write


@contextlib.contextmanager
def locked(lock: Path, what: str, note: Callable[[str], None]) -> Iterator[None]:
    """An exclusive lock on ``lock`` (flock); says so when another process holds it and waits."""
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note(f"waiting for another download of {what} to finish (lock {lock})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock; the file stays (deleting lock files races)


def read_done(part: Part, note: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The finished marker, if it is there, its target exists and it matches the manifest.

    ``note`` hears about a marker left by an earlier release (None: quietly).
    """
    try:
        mark: dict[str, Any] = json.loads(part.marker.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(mark, dict) or not part.target.exists():
        return None
    art = part.artifact
    if art is not None and mark.get("sha256") != art["sha256"].lower():
        if note is not None:
            note(f"{part.target} is from an earlier release of {part.version} "
                 f"(sha256 {str(mark.get('sha256'))[:12]}..., manifest.json now says "
                 f"{art['sha256'][:12]}...): downloading it again")
        return None
    return mark


def write_done(part: Part, url: str, sha256: str, size: int, verified: bool, **extra: Any) -> None:
    """Record ``part`` as finished and checked (atomically)."""
    finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record = {"what": part.what, "version": part.version, "url": url, "sha256": sha256, "size": size,
              "verified": verified, "finished": finished, **extra}
    with atomic_write(part.marker) as fh:
        fh.write(json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")
