"""One whole file by parallel Range requests into a preallocated ``NAME.part``, resumable.

The cut: :func:`download_file` owns a file's ``.part`` and its record; the
requests and the single-stream reader it uses are :mod:`.http`'s. Pieces of
``part_size`` bytes, ``connections`` at a time, are written with ``os.pwrite``;
``NAME.part.json`` beside the ``.part`` records the finished pieces and the
validator, so an interrupted run continues where it stopped. A server without
usable Range support gets one plain stream. A full disk is one line
(:func:`disk_full`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import urllib3

from objathor_release.errors import DiskFullError
from objathor_release.fetch.http import Http, Info, RangeRefused, ResourceChanged, check_range, response_info
from objathor_release.fetch.transport import RETRYABLE, RateMeter, discard, read_some
from objathor_release.fsutil import is_disk_full
from objathor_release.progress import Progress
from objathor_release.settings import format_size


def disk_full(path: Path | str, needed: int | None) -> DiskFullError:
    """The one line for ENOSPC: the path, the space needed (when known), what to do."""
    need = f" ({format_size(needed)} needed in all)" if needed else ""
    return DiskFullError(f"no space left on the disk of {path}{need}: free some space or pass --path on a "
                         "larger disk, then run the command again")



@dataclass
class _PartState:
    url: str
    size: int
    validator: str | None
    part_size: int
    done: set[int]

    def dump(self) -> str:
        return json.dumps({"url": self.url, "size": self.size, "validator": self.validator,
                           "part_size": self.part_size, "done": sorted(self.done)})


def _load_state(path: Path, url: str) -> _PartState | None:
    try:
        raw = json.loads(path.read_text())
        state = _PartState(raw["url"], int(raw["size"]), raw["validator"], int(raw["part_size"]),
                           {int(i) for i in raw["done"]})
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if state.size < 0 or state.part_size < 1 or not isinstance(state.validator, str):
        return None
    return state if state.url == url and state.validator else None


def part_paths(target: Path) -> tuple[Path, Path]:
    """``NAME.part`` and ``NAME.part.json`` beside ``target``."""
    return target.with_name(target.name + ".part"), target.with_name(target.name + ".part.json")


def download_file(http: Http, url: str, target: Path, *, check: Callable[[Info], None] | None = None,
                  bar: Progress | None = None) -> Info:
    """Fetch ``url`` into ``target``'s ``.part`` file (not renamed: the caller verifies, then renames).

    Parallel Range requests of ``part_size`` bytes, ``connections`` at a time,
    write into a preallocated file with ``os.pwrite``. ``check(info)`` runs on
    the first response, before anything is written (content type, free space).
    A ``.part`` left by an earlier run continues if the file is unchanged on the
    server (same size and validator, and the server honours If-Range). A full
    disk removes the ``.part`` (and its state) and raises :class:`DiskFullError`.
    """
    part, state_path = part_paths(target)
    sizes: list[int] = []

    def checked(info: Info) -> None:
        if info.size is not None:
            sizes.append(info.size)
        if check is not None:
            check(info)

    try:
        return _download_file(http, url, target, checked, bar)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        for p in (part, state_path):
            with contextlib.suppress(OSError):
                p.unlink()
        raise disk_full(target.parent, sizes[0] if sizes else None) from None


def _download_file(http: Http, url: str, target: Path, check: Callable[[Info], None] | None,
                   bar: Progress | None) -> Info:
    part, state_path = part_paths(target)
    state = _load_state(state_path, url) if part.exists() else None
    if state is None:
        for p in (part, state_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    else:
        todo = [i for i in range(_pieces(state.size, state.part_size)) if i not in state.done]
        if not todo:
            return Info(url, state.size, state.validator, "", True)
    piece = state.part_size if state else http.config.part_size
    first = todo[0] if state else 0

    def open_probe() -> tuple[urllib3.BaseHTTPResponse, Info]:
        """The first piece still needed: it also tells the size, the validator and Range support."""
        try:
            r = http.request(url, start=first * piece, end=(first + 1) * piece - 1,
                             validator=state.validator if state else None)
        except RangeRefused:
            if state is None:
                raise
            raise ResourceChanged(f"{url} is shorter than in the last run") from None
        try:
            if r.status == 206:
                check_range(url, r, first * piece, state.validator if state else None,
                             state.size if state else None)
            info = response_info(url, r)
            if state and (r.status != 206 or info.validator != state.validator or info.size != state.size):
                raise ResourceChanged(f"{url} changed since the last run")
            if check is not None:
                check(info)
        except BaseException:
            discard(r)
            raise
        return r, info

    try:
        resp, info = http.retrying(url, open_probe)
    except ResourceChanged:
        if state is None:
            raise
        for p in (part, state_path):
            p.unlink()
        return _download_file(http, url, target, check, bar)
    if resp.status == 200 or info.size is None or not info.validator:
        _sequential(http, url, part, resp, info, bar)  # no usable Range support: one plain stream
        return info
    size = info.size
    if state is None:
        state = _PartState(url, size, info.validator, piece, set())
        with open(part, "wb") as fh:
            _preallocate(fh.fileno(), size)
        state_path.write_text(state.dump())
        todo = list(range(_pieces(size, piece)))
    elif bar is not None:
        bar.update(sum(min(piece, size - i * piece) for i in state.done))
    _parallel(http, url, part, state_path, state, todo, resp, bar)
    return info


def _parallel(http: Http, url: str, part: Path, state_path: Path, state: _PartState, todo: list[int],
              first_resp: urllib3.BaseHTTPResponse, bar: Progress | None) -> None:
    """Fetch the pieces in ``todo`` (the first from ``first_resp``) into ``part``, recording each."""
    lock = threading.Lock()
    stop = threading.Event()
    size, piece = state.size, state.part_size
    fd = os.open(part, os.O_WRONLY)

    def fetch(index: int, resp: urllib3.BaseHTTPResponse | None) -> None:
        start = index * piece
        end = min(start + piece, size) - 1
        pos = _copy_body(http, resp, fd, start, end, bar) if resp is not None else start
        if pos <= end:
            for data in http.stream(url, start=pos, end=end, validator=state.validator, stop=stop,
                                    size=size):
                _pwrite_all(fd, data, pos)
                pos += len(data)
                if bar is not None:
                    bar.update(len(data))
        if stop.is_set():
            return
        with lock:
            state.done.add(index)
            tmp = state_path.with_name(state_path.name + ".tmp")
            tmp.write_text(state.dump())
            os.replace(tmp, state_path)

    try:
        with ThreadPoolExecutor(max_workers=http.config.connections, thread_name_prefix="range") as pool:
            futures = [pool.submit(fetch, i, first_resp if n == 0 else None) for n, i in enumerate(todo)]
            wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.done() and f.exception() for f in futures):
                stop.set()
                for f in futures:
                    f.cancel()
            for f in futures:
                if not f.cancelled():
                    f.result()
        os.fsync(fd)
    finally:
        stop.set()
        os.close(fd)
        discard(first_resp)


def _pieces(size: int, piece: int) -> int:
    return max(1, -(-size // piece))


def _copy_body(http: Http, resp: urllib3.BaseHTTPResponse, fd: int, pos: int, end: int,
               bar: Progress | None) -> int:
    """Write what an already-open response delivers up to ``end``; stop quietly at a cut or when it is
    too slow (the caller resumes from the returned position)."""
    meter = RateMeter(http.config)
    try:
        while pos <= end:
            data = read_some(resp, min(http.config.read_size, end + 1 - pos))
            if not data:
                break
            meter.add(len(data))
            _pwrite_all(fd, data, pos)
            pos += len(data)
            if bar is not None:
                bar.update(len(data))
    except RETRYABLE:
        pass
    finally:
        discard(resp)
    return pos


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def _preallocate(fd: int, size: int) -> None:
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if is_disk_full(exc):
                raise
            # e.g. a filesystem without fallocate: a sparse file is fine
    os.ftruncate(fd, size)


def _sequential(http: Http, url: str, part: Path, resp: urllib3.BaseHTTPResponse, info: Info,
                bar: Progress | None) -> None:
    """One plain stream into ``part`` from the start, for a server without usable Range support."""
    with open(part, "wb") as fh:
        pos = _copy_body(http, resp, fh.fileno(), 0, (info.size or 1 << 62) - 1, bar)
        if info.size is None or pos < info.size:
            for data in http.stream(url, start=pos, end=None if info.size is None else info.size - 1,
                                    validator=info.validator, size=info.size):
                _pwrite_all(fh.fileno(), data, pos)
                pos += len(data)
                if bar is not None:
                    bar.update(len(data))
        fh.flush()
        os.fsync(fh.fileno())
