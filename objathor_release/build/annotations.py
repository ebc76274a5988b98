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

Each asset is found and read, strictly, by :mod:`.asset_reader`; every problem
is one line naming the uid and the file, reported as it is found.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from objathor_release.build.asset_reader import (
    DEFAULT_MAX_SIZE,
    AssetSource,
    Problem,
    load_batch,
    load_one,
    scan_assets,
)
from objathor_release.build.validation import schema_validator
from objathor_release.errors import InputError, ReleaseError
from objathor_release.fsutil import atomic_path, atomic_write, prepare_output
from objathor_release.progress import progress

logger = logging.getLogger(__name__)

BATCH = 128
INPROCESS_BELOW = 256  # fewer assets than this: no worker processes


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


# --------------------------------------------------------------------------- driver


def _batches(sources: list[AssetSource], size: int) -> Iterator[list[AssetSource]]:
    for i in range(0, len(sources), size):
        yield sources[i : i + size]


Result = tuple[str, bytes | None, list[Problem]]
#: ``map(fn, batches)`` in order, elsewhere: a process pool's ``map``, or Ray tasks (the ray executor)
BatchMap = Callable[[Callable[[list[AssetSource]], list[Result]], Iterable[list[AssetSource]]],
                    Iterable[list[Result]]]


def _results(sources: list[AssetSource], workers: int, limit: int,
             batch_map: BatchMap | None = None) -> Iterator[Result]:
    """Every asset's result, in uid order (``batch_map``: the batches validated where it runs them)."""
    if batch_map is not None:
        for batch in batch_map(functools.partial(load_batch, limit=limit), _batches(sources, BATCH)):
            yield from batch
        return
    if workers <= 1 or len(sources) < INPROCESS_BELOW:
        for src in sources:
            yield load_one(src, limit)
        return
    schema_validator("annotation")  # build it once here, so forked workers inherit it
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for batch in pool.map(functools.partial(load_batch, limit=limit), _batches(sources, BATCH)):
                yield from batch
    except BrokenProcessPool:
        raise ReleaseError(
            "a worker process died (killed, perhaps for lack of memory): run again with fewer --workers "
            "or a lower --max-annotation-size"
        ) from None


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


def _warn(line: str) -> None:
    logger.warning("%s", line)


def prepare_annotations(
    save_dir: str | Path,
    output_file: str | Path,
    *,
    skip_invalid: bool = False,
    report: str | Path | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    compresslevel: int = 6,
    max_size: int = DEFAULT_MAX_SIZE,
    on_problem: Callable[[str], None] | None = None,
    batch_map: BatchMap | None = None,
) -> PrepareResult:
    """Validate and merge every asset's annotation into ``output_file``.

    Every problem is reported as it is found, as one line naming the uid, the
    file and the JSON path: to ``on_problem`` if given, else as a warning of
    this module's logger. Without ``skip_invalid`` any problem raises InputError and
    nothing is written; with it the invalid assets are left out. ``max_size``
    bounds each annotation (decompressed), thor_metadata.json and tar member.
    ``batch_map`` runs the validation of each batch of assets elsewhere (``--executor ray``: one Ray
    task per batch), returning the batches' results in order; by default ``workers`` processes do.
    """
    save_dir = Path(save_dir)
    report_line = on_problem if on_problem is not None else _warn
    output = prepare_output(output_file, "--output-file")
    if report is not None:
        prepare_output(report, "--report")
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
            for uid, body, problems in _results(sources, workers, max_size, batch_map):
                bar.update(1)
                if problems:
                    result.problems.extend(problems)
                    for p in problems:
                        report_line(p.line())
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
