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

The work is split by job: :mod:`.tarformat` is the header codec,
:mod:`.excludes` the ``--exclude`` matching, :mod:`.epoch` the timestamp,
:mod:`.tarwriter` the walk and the writer thread; this module checks the
arguments, places the archive atomically and keeps its sidecar. ``scan_tar``
(:mod:`.tarscan`) reads any tar back and gives the same figures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from objathor_release.build.epoch import source_date_epoch as source_date_epoch_of
from objathor_release.build.etags import ETAG_KEYS, etag_problem, file_digests
from objathor_release.build.excludes import compile_excludes, exclude_list
from objathor_release.build.tarwriter import estimate_size, write_archive
from objathor_release.errors import InputError, UsageError
from objathor_release.fsutil import atomic_path, open_regular, prepare_output
from objathor_release.settings import format_size, planned_part_size

logger = logging.getLogger(__name__)

SIDECAR_FORMAT = 1


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
    upload: dict[str, Any] = field(default_factory=dict)  # md5, etag, part_size (see build/etags.py)

    def summary(self) -> str:
        """One line for the CLI."""
        rate = self.size / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (
            f"wrote {self.path}: {len(self.members)} files in {self.directories} folders, "
            f"{format_size(self.size)}, sha256 {self.sha256}, {self.excluded} excluded, "
            f"{self.seconds:.1f} s ({rate:.0f} MB/s)"
        )


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


def build_tar(
    src_dir: str | Path,
    output: str | Path,
    *,
    extra_excludes: Iterable[str] = (),
    default_excludes: bool = True,
    source_date_epoch: int | None = None,
    verbose: bool = False,
    show_progress: bool = True,
    fsync: bool = False,
    on_note: Callable[[str], None] | None = None,
    units: Sequence[str] | None = None,
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

    ``units`` (names of entries of ``src_dir``) archives only those, without
    an entry for ``src_dir`` itself: one shard (:mod:`.shards`).

    ``default_excludes=False`` leaves out only ``extra_excludes``: a Holodeck
    base folder keeps its ``annotations.json.gz`` and ``thor_metadata.json``
    files, which are its data, not per-asset annotations.

    The exclude list in force is logged (INFO with ``verbose``, else DEBUG);
    with ``verbose`` and ``on_note`` each ``exclude: PATTERN`` line goes to
    ``on_note`` instead.
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
    epoch = source_date_epoch_of(source_date_epoch)
    excludes = exclude_list(extra_excludes, defaults=default_excludes)
    for pattern in excludes:
        if verbose and on_note is not None:
            on_note(f"exclude: {pattern}")
        else:
            logger.log(logging.INFO if verbose else logging.DEBUG, "exclude: %s", pattern)
    excluded = compile_excludes(excludes)
    if excluded(src.name):
        raise InputError(f"{src}: its own name matches an exclude pattern: rename it or drop the --exclude")
    sidecar = sidecar_path(out_path)
    part_size = planned_part_size(estimate_size(src, excluded, units))
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb", buffering=0) as fh:
            written = write_archive(fh, src, excluded, epoch, desc=f"tar {out_path.name}",
                                    show_progress=show_progress, units=units, part_size=part_size)
            if fsync:
                os.fsync(fh.fileno())
        if planned_part_size(written.size) != part_size:  # the tree changed between the two walks
            logger.info("%s: reading it once more for its md5s (the tree changed while it was archived)",
                        out_path)
            written.upload = file_digests(tmp, written.size)
        with contextlib.suppress(FileNotFoundError):
            sidecar.unlink()  # a stale sidecar must never describe the new archive
    st = os.stat(out_path)
    result = TarResult(
        path=out_path, size=written.size, sha256=written.sha256, members=written.members,
        excludes=excludes, directories=written.directories, excluded=written.excluded,
        seconds=time.monotonic() - started, source_date_epoch=epoch, upload=written.upload,
    )
    write_sidecar(result, st)
    return result


def write_sidecar(result: TarResult, st: os.stat_result) -> None:
    """Keep ``result``'s figures beside the tar, tied to its current size and mtime."""
    index = {
        "format": SIDECAR_FORMAT, "tar": result.path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
        "sha256": result.sha256, "excludes": result.excludes, "source_date_epoch": result.source_date_epoch,
        "members": result.members, **result.upload,
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
    if etag_problem(index) is not None or index.get("md5") is None:  # absent: written before md5s were
        for key in ETAG_KEYS:
            index.pop(key, None)
    return index


def _sidecar_member(m: Any) -> bool:
    return (type(m) is dict and len(m) == 4 and type(m.get("path")) is str and type(m.get("size")) is int
            and type(m.get("offset")) is int and type(m.get("sha256")) is str)


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
