"""``download assets --uids``: fetch only some assets, by HTTP Range, using the manifest's member offsets.

A release's manifest.json lists every member of assets.tar with its size,
sha256 and the byte offset of its data. One asset's members sit next to each
other in the tar, so one Range request from its first member's data to its
last member's end brings the whole asset; the bytes between members (tar
headers and padding) are skipped. Assets close together in the tar share one
request (:func:`coalesce`), and the requests run on ``--connections`` at once.
Each member is hashed as it is written and checked; an asset is built in a staging folder and renamed into
``DIR/VERSION/assets/<uid>`` only when all of it is verified. The uids done
are recorded (with the release's sha256) beside the markers, so a later run
fetches only what is missing, and a full download later simply replaces the
folder.

The manifest is checked before any byte is fetched: the chosen members must be
listed once each, lie inside assets.tar and not overlap. Files are created the
way the extractor creates them: component by component from the staging
folder with ``O_NOFOLLOW`` (never through a link), ``O_EXCL`` (never over an
existing file), and a member that cannot be created (a file where a folder
must be, a name too long for the filesystem) is one line naming it.

The cut: some members of the assets tar, by byte range, into their folders;
the part's lock, and the choice to fetch only some uids, are :mod:`.download`'s.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from objathor_release.errors import ChecksumError, InputError, UsageError
from objathor_release.fetch.extract import member_parts
from objathor_release.fetch.http import Http
from objathor_release.fetch.job import Job, PartResult
from objathor_release.fetch.layout import Part, top_folder
from objathor_release.fetch.markers import read_done
from objathor_release.fsutil import atomic_write, remove_path, replace_dir
from objathor_release.progress import Progress, progress


def fetch_uids(job: Job, part: Part, uids: Sequence[str]) -> PartResult:
    """Fetch the assets ``uids`` into ``part`` (the assets folder); the caller holds its lock."""
    art = part.artifact
    if art is None:
        raise UsageError(f"--uids needs the release's manifest.json with member offsets, and version "
                         f"{job.version} has none at {job.source.url('manifest.json')}: download all assets "
                         "instead")
    top = top_folder(art)
    by_uid: dict[str, list[dict[str, Any]]] = {}
    for m in art["members"]:
        parts = member_parts(m["path"])
        if len(parts) >= 3:
            by_uid.setdefault(parts[1], []).append(m)
    unknown = [u for u in uids if u not in by_uid]
    if unknown:
        raise UsageError(f"{len(unknown)} uid(s) are not in version {job.version}'s assets.tar, e.g. "
                         f"{', '.join(unknown[:5])}: check --uids/--uids-file")
    for uid in uids:
        _check_members(job.source.url("manifest.json"), by_uid[uid], int(art["size"]))
    target = part.target
    record = part.state / f"{part.key}.uids.json"  # one per shard of a sharded release
    sha = art["sha256"].lower()
    have: set[str] = set()
    if read_done(part, job.note) is None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(record.read_text())
            if saved["sha256"] == sha:
                have = {u for u in saved["uids"] if (target / u).is_dir()}
        todo = [u for u in uids if u not in have]
    else:
        todo = []
    if not todo:
        return PartResult(part.what, target, "already there", True, 0,
                          note=f"{len(uids)} of {len(by_uid)} assets")
    url = part.url
    need = sum(m["size"] for u in todo for m in by_uid[u])
    job.check_space(url, need)
    info = job.http.info(url)
    job.check_response(url, "tar", art["size"])(info)
    staging = part.state / "uids.staging"
    remove_path(staging)
    staging.mkdir(parents=True)
    target.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    stop = threading.Event()
    groups = coalesce({u: by_uid[u] for u in todo}, COALESCE_GAP, MAX_RANGE)
    for group in groups:  # members of assets fetched together must not overlap either
        _check_members(job.source.url("manifest.json"), [m for u in group for m in by_uid[u]],
                       int(art["size"]))

    def one(group: list[str], bar: Progress) -> None:
        members = sorted((m for u in group for m in by_uid[u]), key=lambda m: m["offset"])
        what = f"asset {group[0]}" if len(group) == 1 else f"the {len(group)} assets from {group[0]}"
        for attempt in (1, 2):
            try:
                write_members(job.http, url, info.validator, members, staging, bar, stop=stop, size=info.size)
                break
            except ChecksumError as exc:
                for uid in group:
                    remove_path(staging / uid)
                if attempt == 2:
                    raise
                job.note(f"{exc}; deleted it, retrying {what} once")
        if stop.is_set():
            return  # another request failed: this one may be incomplete
        for uid in group:
            replace_dir(staging / uid, target / uid, staging / f".old-{uid}")
        with lock:
            have.update(group)
            with atomic_write(record) as fh:
                fh.write(json.dumps({"sha256": sha, "top": top, "uids": sorted(have)}).encode())

    try:
        span = sum(_span([m for u in g for m in by_uid[u]]) for g in groups)
        with progress(span, f"download {len(todo)} assets", enabled=job.show_progress) as bar:
            pool = ThreadPoolExecutor(job.http.config.connections, thread_name_prefix="uid")
            try:
                for future in [pool.submit(one, g, bar) for g in groups]:
                    future.result()
            except BaseException:
                stop.set()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        remove_path(staging)
    return PartResult(part.what, target, "downloaded", True, need,
                      note=f"{len(todo)} asset(s) fetched, {len(uids) - len(todo)} already there")


# Assets that sit close together in the tar come in one Range request: a gap of up to COALESCE_GAP
# bytes of other assets is fetched and skipped (cheaper than a round trip over a long link), and a
# request grows to at most MAX_RANGE bytes so that a large selection still spreads over connections.
COALESCE_GAP = 256 * 1024
MAX_RANGE = 32 * 1024 * 1024


def coalesce(members_of: Mapping[str, list[dict[str, Any]]], gap: int, most: int) -> list[list[str]]:
    """The uids of ``members_of`` in groups fetched by one request each, in tar order: consecutive
    assets whose data lie at most ``gap`` bytes apart, while the group spans at most ``most`` bytes.
    An asset of empty files only is a group of its own (it needs no request)."""
    spans = []
    for uid, members in members_of.items():
        sized = [m for m in members if m["size"] > 0]
        if not sized:
            spans.append((-1, -1, uid))
            continue
        spans.append((min(m["offset"] for m in sized), max(m["offset"] + m["size"] for m in sized), uid))
    spans.sort()
    groups: list[list[str]] = []
    start = end = -1
    for lo, hi, uid in spans:
        if lo >= 0 and start >= 0 and 0 <= lo - end <= gap and hi - start <= most:
            groups[-1].append(uid)
            end = max(end, hi)
            continue
        groups.append([uid])
        start, end = lo, hi
    return groups


def write_members(http: Http, url: str, validator: str | None, members: list[dict[str, Any]],
                  staging: Path, bar: Progress, *, stop: threading.Event | None = None,
                  size: int | None = None) -> None:
    """Stream the byte range holding ``members`` (sorted by offset) into files under ``staging``.

    Paths drop the tar's top-level folder: ``assets/<uid>/x`` lands in
    ``staging/<uid>/x``. Returns early, with files incomplete, once ``stop`` is set. ``size``
    is the tar's size on the server (a range announcing another total is refused).
    """
    for m in members:
        if m["size"] == 0:
            os.close(_create(staging, m))
            _check(url, m, hashlib.sha256())
    data_members = [m for m in members if m["size"] > 0]
    if not data_members:
        return
    start = data_members[0]["offset"]
    end = data_members[-1]["offset"] + data_members[-1]["size"] - 1
    k, pos, fd, h = 0, start, -1, hashlib.sha256()
    try:
        for data in http.stream(url, start=start, end=end, validator=validator, stop=stop, size=size):
            view = memoryview(data)
            i = 0
            while i < len(view) and k < len(data_members):
                m = data_members[k]
                if pos < m["offset"]:  # a tar header or padding between two members
                    step = min(m["offset"] - pos, len(view) - i)
                else:
                    if fd < 0:
                        fd, h = _create(staging, m), hashlib.sha256()
                    step = min(m["offset"] + m["size"] - pos, len(view) - i)
                    h.update(view[i:i + step])
                    _write_all(fd, view[i:i + step])
                    if pos + step == m["offset"] + m["size"]:
                        os.close(fd)
                        fd = -1
                        _check(url, m, h)
                        k += 1
                i += step
                pos += step
            bar.update(len(data))
    finally:
        if fd >= 0:
            os.close(fd)


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _create(staging: Path, member: Mapping[str, Any]) -> int:
    """A new file for ``member`` under ``staging`` (its top-level folder dropped); returns its fd.

    Each folder is made and opened relative to its parent's descriptor with
    ``O_NOFOLLOW``, so nothing is created through a link, whatever is planted.
    """
    path = member["path"]
    parts = member_parts(path)[1:]
    fd = os.open(staging, _DIR_FLAGS)
    try:
        for name in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=fd)
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _member_error(path, exc, f"its folder {name!r} is a file or a link") from None
            os.close(fd)
            fd = sub
        try:
            return os.open(parts[-1], _FILE_FLAGS, 0o644, dir_fd=fd)
        except OSError as exc:
            raise _member_error(path, exc, "it is listed twice, or a folder of that name exists") from None
    finally:
        os.close(fd)


def _member_error(path: str, exc: OSError, in_the_way: str) -> OSError | InputError:
    """The one line for a member that cannot be created (a full disk stays an OSError for the caller)."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return exc
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.ELOOP, errno.EISDIR):
        why = in_the_way
    elif exc.errno == errno.ENAMETOOLONG:
        why = "its name is too long for this filesystem"
    else:
        why = exc.strerror or str(exc)
    return InputError(f"manifest.json: cannot create member {path!r} ({why}): the release's manifest is "
                      "malformed; tell its publisher")


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data):]


def _check_members(url: str, members: list[dict[str, Any]], tar_size: int) -> None:
    """One asset's members, as the manifest lists them: each once, inside the tar, not overlapping."""
    def bad(why: str) -> InputError:
        return InputError(f"{url}: {why}: the release's manifest is malformed; tell its publisher")

    seen: set[str] = set()
    for m in members:
        if m["path"] in seen:
            raise bad(f"member {m['path']!r} is listed twice")
        seen.add(m["path"])
        if m["offset"] + m["size"] > tar_size:
            raise bad(f"member {m['path']!r} ends at byte {m['offset'] + m['size']}, past the end of "
                      f"assets.tar ({tar_size} bytes)")
    ordered = sorted(members, key=lambda m: m["offset"])
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b["offset"] < a["offset"] + a["size"] + 512:  # a tar header sits between two members
            raise bad(f"members {a['path']!r} and {b['path']!r} overlap in assets.tar (offsets "
                      f"{a['offset']} and {b['offset']})")


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
