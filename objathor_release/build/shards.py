"""Split an asset tree into shards: ``assets-00000.tar``, ``assets-00001.tar``, ...

A shard holds a contiguous run of whole asset folders (the entries of the
assets directory in GNU tar's ``--sort=name`` order, the exclude list applied),
each shard at most ``shard_size`` bytes unless one asset alone is larger.
Each is byte-identical to what GNU tar writes for exactly its folders::

    tar --sort=name --mtime=@EPOCH --owner=0 --group=0 --numeric-owner \\
        --mode=go=rX,u+rw,a-s --format=gnu --hard-dereference --exclude=... \\
        -C PARENT -cf assets-00003.tar assets/<uid> assets/<uid> ...

(``shard_command``), so it has no entry for ``assets/`` itself; extracting every
shard into one folder gives the tree the single assets.tar gives.

:func:`plan_shards` walks the tree once (names and sizes, nothing read) and
computes every shard's exact size from the tar format, so the plan is known
before anything is written and the same on every machine that sees the same
tree: a CI matrix job or a Ray task builds shard K alone (:func:`build_shard`)
and its ``fingerprint`` tells whether two machines planned the same thing.
:func:`build_shards` builds all of them here, in worker processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objathor_release.build import tarformat as tf
from objathor_release.build.epoch import source_date_epoch as source_date_epoch_of
from objathor_release.build.excludes import compile_excludes, exclude_list
from objathor_release.build.tarball import TarResult, build_tar, gnu_tar_command, sidecar_path
from objathor_release.errors import InputError, UsageError
from objathor_release.settings import format_size, parse_size

logger = logging.getLogger(__name__)

PLAN_FORMAT = 1
DIGITS = 5
MAX_SHARDS = 10 ** DIGITS
MIN_SHARD_SIZE = 1024 * 1024
MAX_SHARD_SIZE = int(4.995 * 1024 ** 4)  # R2's (and S3's) largest object, in whole bytes
MAX_DEPTH = 400


def shard_name(stem: str, index: int) -> str:
    """``assets-00003.tar`` for ``("assets", 3)``."""
    return f"{stem}-{index:0{DIGITS}d}.tar"


def shard_pattern(stem: str) -> re.Pattern[str]:
    """Matches the shard names of ``stem`` (group 1: the index)."""
    return re.compile(rf"{re.escape(stem)}-([0-9]{{{DIGITS}}})\.tar")


def parse_shard_size(text: str | int) -> int:
    """``--shard-size``: a size such as 2G, between 1 MiB and R2's largest object (4.995 TiB)."""
    size = parse_size(text)
    if not MIN_SHARD_SIZE <= size <= MAX_SHARD_SIZE:
        raise UsageError(f"--shard-size {text}: must be between 1M and {format_size(MAX_SHARD_SIZE)} "
                         "(R2's largest object): pass e.g. --shard-size 2G")
    return size


@dataclass(frozen=True)
class Shard:
    """One shard of a plan: its index and file name, its asset folders (in order), its exact size,
    its number of regular files and their bytes."""

    index: int
    name: str
    units: tuple[str, ...]
    size: int
    files: int
    data: int

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "size": self.size, "files": self.files,
                "data": self.data,
                "assets": len(self.units), "first": self.units[0], "last": self.units[-1]}


@dataclass(frozen=True)
class ShardPlan:
    """Which asset folders go in which shard, computed from names and sizes only."""

    source: Path
    stem: str
    shard_size: int
    excludes: tuple[str, ...]
    shards: tuple[Shard, ...]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.shards]

    @property
    def fingerprint(self) -> str:
        """sha256 of what decides the shards' content: their folders, sizes and the exclude list."""
        sha = hashlib.sha256(json.dumps([self.stem, self.shard_size, list(self.excludes)]).encode())
        for s in self.shards:
            sha.update(json.dumps([s.name, s.size, s.files, s.data, list(s.units)]).encode())
        return sha.hexdigest()

    def shard(self, index: int) -> Shard:
        if not 0 <= index < len(self.shards):
            raise UsageError(f"shard {index}: the plan has shards 0 to {len(self.shards) - 1} "
                             f"(--shard-size {format_size(self.shard_size)}): pass one of those")
        return self.shards[index]

    def to_json(self) -> dict[str, Any]:
        return {"plan_format": PLAN_FORMAT, "source": str(self.source), "stem": self.stem,
                "shard_size": self.shard_size, "excludes": list(self.excludes),
                "fingerprint": self.fingerprint, "shards": [s.to_json() for s in self.shards],
                "size": sum(s.size for s in self.shards), "files": sum(s.files for s in self.shards)}

    def summary(self) -> str:
        total = sum(s.size for s in self.shards)
        return (f"{len(self.shards)} shard{'s' if len(self.shards) != 1 else ''} of at most "
                f"{format_size(self.shard_size)} ({format_size(total)} in all, "
                f"{sum(len(s.units) for s in self.shards)} asset folders)")


# --------------------------------------------------------------------------- sizes, from the tar format


def _header_bytes(name: bytes) -> int:
    """Bytes of one member's header(s): a GNU long-name entry first when the name is over 100 bytes."""
    if len(name) <= 100:
        return tf.BLOCK
    return 2 * tf.BLOCK + len(name) + 1 + (-(len(name) + 1) % tf.BLOCK)


def _encoded(rel: str) -> bytes:
    return rel.encode("utf-8", "surrogateescape")


class _Sizer:
    """The bytes each entry of the tree takes in the archive, with the writer's exclusion rules."""

    def __init__(self, excluded: Callable[[str], bool]) -> None:
        self.excluded = excluded

    def entry(self, path: str, rel: str, entry: os.DirEntry[str], depth: int) -> tuple[int, int, int]:
        """(archive bytes, regular files, their bytes) of ``entry`` and everything below it."""
        try:
            if entry.is_dir(follow_symlinks=False):
                total, files, data = _header_bytes(_encoded(rel) + b"/"), 0, 0
                if depth > MAX_DEPTH:
                    return total, files, data  # the builder names the problem
                for sub in self.entries(path, rel):
                    b, f, d = self.entry(sub.path, f"{rel}/{sub.name}", sub, depth + 1)
                    total += b
                    files += f
                    data += d
                return total, files, data
            if entry.is_file(follow_symlinks=False):
                size = entry.stat(follow_symlinks=False).st_size
                return _header_bytes(_encoded(rel)) + size + (-size % tf.BLOCK), 1, size
        except OSError:
            pass  # unreadable: the builder names the problem with its own message
        return tf.BLOCK, 0, 0  # a symlink or special file: the builder refuses it

    def entries(self, path: str, rel: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as it:
                found = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"{path}: cannot be read ({exc.strerror}): fix its permissions or exclude it") \
                from None
        return [e for e in found if not self.excluded(f"{rel}/{e.name}")]


def plan_shards(src_dir: str | Path, shard_size: int, *, extra_excludes: Iterable[str] = (),
                default_excludes: bool = True, stem: str = "assets") -> ShardPlan:
    """Plan the shards of ``src_dir`` (see the module docstring); raises InputError on a bad tree."""
    src = Path(os.path.abspath(src_dir))
    try:
        st = os.lstat(src)
    except OSError as exc:
        raise InputError(f"{src}: cannot be read ({exc.strerror}): pass the folder of assets") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{src}: is not a directory (or is a symlink): pass the real folder of assets")
    if not MIN_SHARD_SIZE <= shard_size <= MAX_SHARD_SIZE:
        raise UsageError(f"--shard-size {shard_size}: must be between 1M and {format_size(MAX_SHARD_SIZE)}")
    excludes = exclude_list(extra_excludes, defaults=default_excludes)
    sizer = _Sizer(compile_excludes(excludes))
    shards: list[Shard] = []
    units: list[str] = []
    used = files = data = 0

    def close() -> None:
        nonlocal units, used, files, data
        if units:
            shards.append(Shard(len(shards), shard_name(stem, len(shards)), tuple(units),
                                used + tf.end_of_archive(used), files, data))
        units, used, files, data = [], 0, 0, 0

    for entry in sizer.entries(str(src), src.name):
        size, n, d = sizer.entry(entry.path, f"{src.name}/{entry.name}", entry, 1)
        if units and used + size + tf.end_of_archive(used + size) > shard_size:
            close()
        units.append(entry.name)
        used += size
        files += n
        data += d
    close()
    if not any(s.files for s in shards):
        raise InputError(f"{src}: holds no files to archive (empty, or everything excluded): check "
                         "--assets-dir and the exclude list")
    if len(shards) > MAX_SHARDS:
        raise UsageError(f"--shard-size {format_size(shard_size)} makes {len(shards)} shards, more than "
                         f"{MAX_SHARDS - 1}: pass a larger --shard-size")
    return ShardPlan(src, stem, shard_size, tuple(excludes), tuple(shards))


# --------------------------------------------------------------------------- building


def shard_command(plan: ShardPlan, index: int, output: str | Path, source_date_epoch: int = 0) -> list[str]:
    """The GNU tar command line that writes the same bytes as ``build_shard`` for shard ``index``."""
    cmd = gnu_tar_command(plan.source, output, plan.excludes, source_date_epoch)
    return [*cmd[:-1], *(f"{plan.source.name}/{u}" for u in plan.shard(index).units)]


def build_shard(plan: ShardPlan, index: int, output_dir: str | Path, *, source_date_epoch: int | None = None,
                show_progress: bool = False, verbose: bool = False) -> TarResult:
    """Write shard ``index`` of ``plan`` to ``output_dir/NAME`` (atomically, with its sidecar)."""
    return _write(plan.source, plan.excludes, plan.shard(index), Path(output_dir), source_date_epoch,
                  show_progress, verbose)


def _write(source: Path, excludes: Sequence[str], shard: Shard, output_dir: Path, epoch: int | None,
           show_progress: bool = False, verbose: bool = False) -> TarResult:
    result = build_tar(source, output_dir / shard.name, extra_excludes=excludes, default_excludes=False,
                       source_date_epoch=epoch, show_progress=show_progress, verbose=verbose,
                       units=shard.units)
    wrote = (result.size, len(result.members), sum(m["size"] for m in result.members))
    if wrote != (shard.size, shard.files, shard.data):  # the tree changed between planning and writing
        for path in (result.path, sidecar_path(result.path)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise InputError(f"{source}: changed while shard {shard.name} was being built (planned "
                         f"{shard.files} files of {shard.data} bytes, found {wrote[1]} of {wrote[2]}): stop "
                         "whatever writes to the tree and run again")
    return result


def _build_one(args: tuple[Path, tuple[str, ...], Shard, Path, int]) -> TarResult:
    return _write(*args)


def remove_stale(output_dir: str | Path, stem: str, keep: Sequence[str]) -> list[str]:
    """Delete the shards of ``stem`` (and ``stem.tar``) in ``output_dir`` that are not in ``keep``."""
    root = Path(output_dir)
    pattern = shard_pattern(stem)
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for e in os.scandir(root):
            if (pattern.fullmatch(e.name) or e.name == f"{stem}.tar") and e.name not in keep:
                for path in (Path(e.path), sidecar_path(e.path)):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                removed.append(e.name)
    return sorted(removed)


def build_shards(plan: ShardPlan, output_dir: str | Path, *, source_date_epoch: int | None = None,
                 workers: int | None = None, show_progress: bool = True,
                 only: Sequence[int] | None = None) -> list[TarResult]:
    """Build the shards of ``plan`` (``only`` those indexes) in ``workers`` processes (default: the cores).

    Shards of another plan, and a single ``STEM.tar``, are removed from
    ``output_dir`` first, so the directory holds exactly this plan's shards.
    """
    from objathor_release.progress import progress

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in remove_stale(out, plan.stem, plan.names):
        logger.info("removed %s: not part of this shard plan", name)
    epoch = source_date_epoch_of(source_date_epoch)
    indexes = list(range(len(plan.shards))) if only is None else [plan.shard(i).index for i in only]
    jobs = [(plan.source, plan.excludes, plan.shards[i], out, epoch) for i in indexes]
    n = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    results: list[TarResult] = []
    total = sum(plan.shards[i].size for i in indexes)
    with progress(total, f"tar {plan.stem} shards", enabled=show_progress) as bar:
        if n == 1:
            for job in jobs:
                results.append(_build_one(job))
                bar.update(results[-1].size)
        else:
            with ProcessPoolExecutor(n) as pool:
                for result in pool.map(_build_one, jobs):
                    results.append(result)
                    bar.update(result.size)
    return results
