"""File helpers shared by every job: atomic writes and hashing.

Nothing is ever half-written under its final name: output goes to a temporary
name in the same directory (so the rename is atomic on one filesystem) and is
renamed into place only when complete; on any error the temporary is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

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
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
