"""Prepare a release's annotations.json.gz: validate every asset, merge, write deterministically.

Input: ASSETS_DIR/<uid>/annotations.json.gz (+ thor_metadata.json), or objathor's
per-asset form ASSETS_DIR/<uid>.tar holding <uid>/annotations.json.gz and
<uid>/thor_metadata.json. Output: one gzip JSON object {uid: annotation}, each
annotation with ``thor_metadata`` (its ``objectMetadata`` dropped; {} if absent),
keys sorted, gzip mtime 0 and no file name: the same input gives the same bytes.

Parsing and validating JSON is bound by the interpreter, so assets are read in
worker processes, in batches, in uid order; the main process streams their
serialized JSON straight into the gzip file (memory stays flat) under a
temporary name that is renamed into place only when every asset was good.
"""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import os
import re
import sys
import tarfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import schema_validator
from .errors import InputError
from .fsutil import atomic_path, atomic_write
from .progress import progress

ANNOTATION = "annotations.json.gz"
THOR_METADATA = "thor_metadata.json"
UID_TAR_RE = re.compile(r"^[0-9a-f]{32}\.tar$")
BATCH = 128
INPROCESS_BELOW = 256  # fewer assets than this: no worker processes
MAX_MESSAGE = 240


@dataclass(frozen=True)
class Problem:
    uid: str
    file: str
    path: str  # JSON path of the failing field, "$" for the whole file
    message: str

    def line(self) -> str:
        return f"{self.uid}: {self.file}: {self.path}: {self.message}"


@dataclass
class PrepareResult:
    output: Path | None
    assets: int
    written: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def invalid_uids(self) -> list[str]:
        return sorted({p.uid for p in self.problems})

    def summary(self) -> str:
        text = f"wrote {self.written} annotations to {self.output}"
        if self.problems:
            text += f" ({len(self.invalid_uids)} invalid assets left out, listed above)"
        return text


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class _Source:
    uid: str
    folder: str | None  # ASSETS_DIR/<uid>
    tar: str | None  # ASSETS_DIR/<uid>.tar


def scan_assets(save_dir: Path) -> list[_Source]:
    """The assets under ``save_dir``, sorted by uid. Junk at the top level is ignored."""
    if not save_dir.is_dir():
        raise InputError(f"{save_dir}: assets directory not found: pass the folder of optimized assets")
    folders: dict[str, str] = {}
    tars: dict[str, str] = {}
    try:
        entries = list(os.scandir(save_dir))
    except OSError as exc:
        raise InputError(f"{save_dir}: cannot list the assets directory ({exc.strerror})") from None
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.endswith(".lock"):
            continue  # .DS_Store, ._*, .Spotlight-V100, .Trashes, ..., *.lock
        if entry.is_dir(follow_symlinks=False):
            folders[name] = entry.path
        elif UID_TAR_RE.match(name) and entry.is_file(follow_symlinks=False):
            tars[name[:-4]] = entry.path
    uids = sorted(set(folders) | set(tars))
    if not uids:
        raise InputError(f"{save_dir}: no asset folders or <uid>.tar files found: check --save-dir")
    return [_Source(uid, folders.get(uid), tars.get(uid)) for uid in uids]


# --------------------------------------------------------------------------- one asset (in workers)

def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _parse_annotation(data: bytes) -> Any:
    return json.loads(gzip.decompress(data))


def _choose(src: _Source) -> tuple[str, bool]:
    """(path of the file to read, whether it is a per-asset tar). A folder wins over a tar."""
    if src.folder is not None:
        ann_path = os.path.join(src.folder, ANNOTATION)
        if src.tar is None or os.path.lexists(ann_path):
            return ann_path, False
    assert src.tar is not None
    return src.tar, True


def _read_sources(src: _Source, path: str, is_tar: bool) -> tuple[bytes | None, bytes | None]:
    """(annotation bytes, or None if missing; thor_metadata bytes, or None if missing)."""
    if not is_tar:
        try:
            with open(path, "rb") as fh:
                ann = fh.read()
        except FileNotFoundError:
            return None, None
        try:
            with open(os.path.join(os.path.dirname(path), THOR_METADATA), "rb") as fh:
                meta: bytes | None = fh.read()
        except FileNotFoundError:
            meta = None
        return ann, meta
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r:") as tf:
        for member in tf:
            for wanted in (ANNOTATION, THOR_METADATA):
                if member.isfile() and member.name.lstrip("./") == f"{src.uid}/{wanted}":
                    member_fh = tf.extractfile(member)
                    assert member_fh is not None
                    found[wanted] = member_fh.read()
    return found.get(ANNOTATION), found.get(THOR_METADATA)


def load_one(src: _Source) -> tuple[str, bytes | None, list[Problem]]:
    """Read, check and serialize one asset: (uid, JSON bytes or None, problems)."""
    uid = src.uid
    label, is_tar = _choose(src)
    try:
        raw, meta_raw = _read_sources(src, label, is_tar)
    except (OSError, tarfile.TarError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return uid, None, [Problem(uid, label, "$", _short(f"cannot read ({reason}): check the file"))]
    if raw is None:
        if is_tar:
            label = f"{label}:{uid}/{ANNOTATION}"
        return uid, None, [Problem(uid, label, "$", f"missing {ANNOTATION}: re-run objathor's annotation "
                                   "step for this asset, or remove it from the assets directory")]
    try:
        ann = _parse_annotation(raw)
    except (OSError, EOFError, zlib.error):
        return uid, None, [Problem(uid, label, "$", "not a gzip file: it must be gzip-compressed JSON")]
    except (ValueError, UnicodeDecodeError) as exc:
        return uid, None, [Problem(uid, label, "$", _short(f"not valid JSON ({exc})"))]
    problems = [
        Problem(uid, label, err.json_path, _short(err.message))
        for err in schema_validator("annotation").iter_errors(ann)
    ]
    if isinstance(ann, dict) and isinstance(ann.get("uid"), str) and ann["uid"] != uid:
        problems.append(Problem(uid, label, "$.uid", f"uid {ann['uid']!r} differs from its folder name "
                                f"{uid!r}: fix the uid or rename the folder"))
    thor: Any = {}
    if meta_raw is not None:
        folder = os.path.dirname(label)
        meta_label = f"{label}:{uid}/{THOR_METADATA}" if is_tar else os.path.join(folder, THOR_METADATA)
        try:
            thor = json.loads(meta_raw)
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(Problem(uid, meta_label, "$", _short(f"not valid JSON ({exc})")))
        else:
            if not isinstance(thor, dict):
                problems.append(Problem(uid, meta_label, "$", "must be a JSON object"))
            else:
                thor.pop("objectMetadata", None)
    if problems:
        problems.sort(key=lambda p: (p.file, p.path, p.message))
        return uid, None, problems
    ann["thor_metadata"] = thor
    return uid, json.dumps(ann, sort_keys=True, separators=(",", ":")).encode(), []


def _load_batch(batch: list[_Source]) -> list[tuple[str, bytes | None, list[Problem]]]:
    return [load_one(src) for src in batch]


# --------------------------------------------------------------------------- driver


def _batches(sources: list[_Source], size: int) -> Iterator[list[_Source]]:
    for i in range(0, len(sources), size):
        yield sources[i : i + size]


def _results(sources: list[_Source], workers: int) -> Iterator[tuple[str, bytes | None, list[Problem]]]:
    """Every asset's result, in uid order."""
    if workers <= 1 or len(sources) < INPROCESS_BELOW:
        for src in sources:
            yield load_one(src)
        return
    schema_validator("annotation")  # build it once here, so forked workers inherit it
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for batch in pool.map(_load_batch, _batches(sources, BATCH)):
            yield from batch


def _write_report(report: str | Path, save_dir: Path, result: PrepareResult) -> None:
    data = {
        "save_dir": str(save_dir),
        "assets": result.assets,
        "valid": result.assets - len(result.invalid_uids),
        "invalid": len(result.invalid_uids),
        "problems": [asdict(p) for p in result.problems],
    }
    with atomic_write(report) as fh:
        fh.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def prepare_annotations(
    save_dir: str | Path,
    output_file: str | Path,
    *,
    skip_invalid: bool = False,
    report: str | Path | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    compresslevel: int = 6,
) -> PrepareResult:
    """Validate and merge every asset's annotation into ``output_file``.

    Every problem is printed to stderr as one line naming the uid, the file and
    the JSON path. Without ``skip_invalid`` any problem raises InputError and
    nothing is written; with it the invalid assets are left out.
    """
    save_dir = Path(save_dir)
    output = Path(output_file)
    sources = scan_assets(save_dir)
    workers = workers or os.cpu_count() or 1
    result = PrepareResult(output=None, assets=len(sources), written=0)
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(
            filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=compresslevel
        ) as gz, progress(len(sources), "annotations", unit="assets", enabled=show_progress) as bar:
            out = io.BufferedWriter(gz, buffer_size=1 << 20)
            out.write(b"{")
            first = True
            for uid, body, problems in _results(sources, workers):
                bar.update(1)
                if problems:
                    result.problems.extend(problems)
                    for p in problems:
                        print(p.line(), file=sys.stderr)
                    continue
                assert body is not None
                if not first:
                    out.write(b",")
                first = False
                out.write(json.dumps(uid).encode() + b":" + body)
                result.written += 1
            out.write(b"}")
            out.flush()
            out.detach()
        if report is not None:
            _write_report(report, save_dir, result)
        if result.problems and not skip_invalid:
            n = len(result.invalid_uids)
            raise InputError(
                f"{len(result.problems)} problems in {n} of {result.assets} assets under {save_dir} "
                f"(listed above): fix them, or pass --skip-invalid to leave them out; "
                f"{output} was not written"
            )
        if result.written == 0:
            raise InputError(f"{save_dir}: no valid assets: nothing to write to {output}")
    result.output = output
    return result


def load_annotations(path: str | Path) -> dict[str, Any]:
    """Read a merged annotations.json.gz back (for verification and tests)."""
    with gzip.open(path, "rb") as fh:
        data: dict[str, Any] = json.load(fh)
    return data
