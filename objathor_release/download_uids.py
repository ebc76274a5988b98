"""``download assets --uids``: fetch only some assets, by HTTP Range, using the manifest's member offsets.

A release's manifest.json lists every member of assets.tar with its size,
sha256 and the byte offset of its data. One asset's members sit next to each
other in the tar, so one Range request from its first member's data to its
last member's end brings the whole asset; the bytes between members (tar
headers and padding) are skipped. Each member is hashed as it is written and
checked; an asset is built in a staging folder and renamed into
``DIR/VERSION/assets/<uid>`` only when all of it is verified. The uids done
are recorded (with the release's sha256) beside the markers, so a later run
fetches only what is missing, and a full download later simply replaces the
folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .download_http import Http
from .errors import ChecksumError, UsageError
from .extract import member_parts
from .fsutil import atomic_write
from .progress import Progress, progress

if TYPE_CHECKING:
    from .download import PartResult, _Downloader


def fetch_uids(d: _Downloader, uids: Sequence[str]) -> PartResult:
    """Fetch the assets ``uids`` of ``d``'s version into its assets folder (the caller holds the lock)."""
    from .download import PartResult, _remove, _replace_dir, _top, _warn

    art = d.artifact("assets")
    if art is None or not art.get("members"):
        raise UsageError(f"--uids needs the release's manifest.json with member offsets, and version "
                         f"{d.version} has none at {d.source.url('manifest.json')}: download all assets "
                         "instead")
    top = _top(art)
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for m in art["members"]:
        parts = member_parts(m["path"])
        if len(parts) >= 3:
            by_uid.setdefault(parts[1], []).append(m)
    unknown = [u for u in uids if u not in by_uid]
    if unknown:
        raise UsageError(f"{len(unknown)} uid(s) are not in version {d.version}'s assets.tar, e.g. "
                         f"{', '.join(unknown[:5])}: check --uids/--uids-file")
    target = d.target("assets")
    record = d.state("assets") / "assets.uids.json"
    sha = art["sha256"].lower()
    have: set[str] = set()
    if d.done("assets") is None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(record.read_text())
            if saved["sha256"] == sha:
                have = {u for u in saved["uids"] if (target / u).is_dir()}
        todo = [u for u in uids if u not in have]
    else:
        todo = []
    if not todo:
        return PartResult("assets", target, "already there", True, 0,
                          note=f"{len(uids)} of {len(by_uid)} assets")
    url = d.url("assets")
    need = sum(m["size"] for u in todo for m in by_uid[u])
    d.check_space(url, need)
    info = d.http.info(url)
    d.check_response(url, "tar", art["size"])(info)
    staging = d.state("assets") / "uids.staging"
    _remove(staging)
    staging.mkdir(parents=True)
    target.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def one(uid: str, bar: Progress) -> None:
        members = sorted(by_uid[uid], key=lambda m: m["offset"])
        for attempt in (1, 2):
            try:
                write_members(d.http, url, info.validator, members, staging, bar)
                break
            except ChecksumError as exc:
                _remove(staging / uid)
                if attempt == 2:
                    raise
                _warn(f"{exc}; deleted it, retrying asset {uid} once")
        _replace_dir(staging / uid, target / uid, staging / f".old-{uid}")
        with lock:
            have.add(uid)
            with atomic_write(record) as fh:
                fh.write(json.dumps({"sha256": sha, "top": top, "uids": sorted(have)}).encode())

    try:
        span = sum(_span(by_uid[u]) for u in todo)
        with progress(span, f"download {len(todo)} assets", enabled=d.show_progress) as bar:
            pool = ThreadPoolExecutor(d.http.config.connections, thread_name_prefix="uid")
            try:
                for future in [pool.submit(one, u, bar) for u in todo]:
                    future.result()
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        _remove(staging)
    return PartResult("assets", target, "downloaded", True, need,
                      note=f"{len(todo)} asset(s) fetched, {len(uids) - len(todo)} already there")


def write_members(http: Http, url: str, validator: str | None, members: list[dict[str, Any]],
                  staging: Path, bar: Progress) -> None:
    """Stream the byte range holding ``members`` (sorted by offset) into files under ``staging``.

    Paths drop the tar's top-level folder: ``assets/<uid>/x`` lands in ``staging/<uid>/x``.
    """
    def path_of(m: Mapping[str, Any]) -> Path:
        return staging.joinpath(*member_parts(m["path"])[1:])

    for m in members:
        path_of(m).parent.mkdir(parents=True, exist_ok=True)
        if m["size"] == 0:
            path_of(m).write_bytes(b"")
            _check(url, m, hashlib.sha256())
    data_members = [m for m in members if m["size"] > 0]
    if not data_members:
        return
    start = data_members[0]["offset"]
    end = data_members[-1]["offset"] + data_members[-1]["size"] - 1
    k, pos, fh, h = 0, start, None, hashlib.sha256()
    try:
        for data in http.stream(url, start=start, end=end, validator=validator):
            view = memoryview(data)
            i = 0
            while i < len(view) and k < len(data_members):
                m = data_members[k]
                if pos < m["offset"]:  # a tar header or padding between two members
                    step = min(m["offset"] - pos, len(view) - i)
                else:
                    if fh is None:
                        fh, h = path_of(m).open("wb"), hashlib.sha256()
                    step = min(m["offset"] + m["size"] - pos, len(view) - i)
                    h.update(view[i:i + step])
                    fh.write(view[i:i + step])
                    if pos + step == m["offset"] + m["size"]:
                        fh.close()
                        fh = None
                        _check(url, m, h)
                        k += 1
                i += step
                pos += step
            bar.update(len(data))
    finally:
        if fh is not None:
            fh.close()


def _span(members: list[dict[str, Any]]) -> int:
    """Bytes of the one Range request that brings these members (headers between them included)."""
    sized = [m for m in members if m["size"] > 0]
    if not sized:
        return 0
    return max(m["offset"] + m["size"] for m in sized) - min(m["offset"] for m in sized)


def _check(url: str, member: Mapping[str, Any], h: Any) -> None:
    digest = h.hexdigest()
    if digest != member["sha256"].lower():
        raise ChecksumError(f"{url}: member {member['path']} has sha256:{digest}, manifest.json says "
                            f"sha256:{member['sha256'].lower()}")
