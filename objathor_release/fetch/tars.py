"""Tar parts (assets, features, holodeck-base): streamed into the safe extractor, verified, put in place.

The cut: one tar from its URL to its extracted folder. The tar streams from the
server straight into :class:`~.extract.TarStreamExtractor` while a reader
thread downloads and hashes the whole stream (no copy of the tar on disk); the
folder is extracted into the part's staging directory, checked, and renamed to
its objathor name only then. ``--keep-tar`` fetches the tar as a single file
(:mod:`.files`) and extracts it from disk instead. An interrupted extraction
(a network failure, Ctrl-C, a kill) continues after the last member still good
in staging (:mod:`.resume`); refused or corrupt bytes leave nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from objathor_release.errors import ChecksumError, DiskFullError, InputError, TransferError
from objathor_release.fetch.extract import TarStreamExtractor, expected_members
from objathor_release.fetch.files import fetch_into
from objathor_release.fetch.inplace import difference, expected_in_place
from objathor_release.fetch.job import Job, PartResult, Stopped
from objathor_release.fetch.layout import Part, asset_folders, top_folder
from objathor_release.fetch.markers import write_done
from objathor_release.fetch.pages import is_html_type, sniff_page
from objathor_release.fetch.parallel import parallel_stream
from objathor_release.fetch.ranges import part_paths
from objathor_release.fetch.resume import ResumePoint, prune, resume_point
from objathor_release.fsutil import atomic_write, remove_path, replace_dir
from objathor_release.progress import progress

#: Pieces handed on but not yet fed to the extractor. They count against the stream's buffer, so
#: the whole download holds at most ``stream_buffer`` bytes of the tar (256 MiB by default).
QUEUED = 2


def fetch_tar(job: Job, part: Part) -> PartResult:
    """Stream ``part``'s tar into the safe extractor, verify it, rename the folder into place."""
    found = _already_in_place(job, part)
    if found is not None:
        return found
    part = _with_fallback(job, part)
    url, art, name, staging = part.url, part.artifact, part.name, part.staging
    kept = part.keep_as if job.keep_tar else None

    def cleanup() -> None:
        remove_path(staging)
        remove_path(_flat_path(part))
        if kept is not None:
            for p in (kept, *part_paths(kept), part.state / f"{kept.name}.done"):
                remove_path(p)

    def attempt() -> PartResult:
        resume = None
        if staging.exists() or staging.is_symlink():  # a dangling link there is removed like any other
            resume = resume_point(staging, art, show_progress=job.show_progress) if kept is None else None
            if resume is not None and art is not None:
                try:  # keep only the checked members: nothing else of the earlier run reaches the folder
                    prune(staging, resume.done, expected_members(art["members"]))
                except (OSError, RecursionError):
                    resume = None
            if resume is None:
                job.note(f"restarting the interrupted extraction of {name} (removing {staging})")
                remove_path(staging)
            else:
                job.note(f"resuming the interrupted extraction of {name} after {len(resume.done)} of "
                         f"{resume.members} members (each checked again), at byte {resume.offset}")
        staging.mkdir(parents=True, exist_ok=True)
        if kept is not None:
            digest, size = _extract_kept(job, part, kept)
        else:
            digest, size = _extract_stream(job, url, art, staging, name, part.flatten, resume)
        top = _place(part)
        extra = {"resumed_at": resume.offset} if resume is not None else {}
        write_done(part, url, digest, size, art is not None, top=top, **extra)
        remove_path(staging)
        fetched = size - (resume.offset if resume is not None else 0)
        return PartResult(part.what, part.target, "downloaded", art is not None, fetched)

    try:
        return job.twice(name, attempt, cleanup)
    except DiskFullError:
        remove_path(staging)  # give the space back: a full disk is no place to keep a partial extraction
        remove_path(_flat_path(part))
        raise
    except TransferError:
        remove_path(_flat_path(part))  # the network failed: keep what was extracted for the next run
        if art is None or not _holds_a_file(staging):  # without a manifest there is nothing to resume by
            remove_path(staging)
        raise
    except Exception:
        remove_path(staging)  # refused or corrupt: nothing of it is kept (Ctrl-C and kill keep it, to resume)
        remove_path(_flat_path(part))
        raise


def _holds_a_file(folder: Path) -> bool:
    """Whether an interrupted extraction left anything a next run could keep."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    return any(files for _, _, files in os.walk(folder))


def _already_in_place(job: Job, part: Part) -> PartResult | None:
    """A folder another tool (objathor's downloader) left at the part's place: when it holds exactly
    the manifest's members, mark it done instead of fetching the tar again."""
    art = part.artifact
    if art is None or not part.target.is_dir() or part.target.is_symlink():
        return None
    expected = expected_in_place(art, part.flatten)
    if expected is None:
        return None
    within = None
    if part.merge:  # a shard: its own asset folders, when every one is there (else it was never fetched)
        within = asset_folders(art)
        if not all((part.target / uid).is_dir() for uid in within):
            return None
    why = difference(part.target, expected, show_progress=job.show_progress, within=within)
    if why:
        job.note(f"{part.target} is there but is not this release ({why}): downloading {part.name}; the "
                 "folder is replaced once the new one is verified")
        return None
    write_done(part, part.url, art["sha256"].lower(), int(art["size"]), True,
               top="" if part.flatten else top_folder(art),
               checked_in_place=True)
    return PartResult(part.what, part.target, "already there", True,
                      note="checked file by file against manifest.json")


def _with_fallback(job: Job, part: Part) -> Part:
    """objathor's rule for features.tar: when the versioned URL answers an HTML page, read
    ``BASE/features.tar`` instead. The fallback's bytes are checked like any others (against
    the manifest's entry when there is one)."""
    if part.fallback_url is None:
        return part
    if not is_html_type(job.http.info(part.url).content_type):
        return part
    job.note(f"{part.url} answered an HTML page; reading {part.fallback_url} instead, as objathor does")
    return dataclasses.replace(part, url=part.fallback_url, fallback_url=None)


def _extractor(art: Mapping[str, Any] | None, staging: Path, name: str, flatten: bool,
               resume: ResumePoint | None = None) -> TarStreamExtractor:
    """The safe extractor for one tar part; features (``flatten``) may have any layout, as objathor reads
    every ``*.pkl`` wherever it is, so only they may hold several top-level entries."""
    expect = expected_members(art["members"]) if art is not None and art.get("members") else None
    start, done = (resume.offset, resume.done) if resume is not None else (0, frozenset())
    if flatten:
        return TarStreamExtractor(staging, expect=expect, source=name, one_top=False, start=start, done=done)
    return TarStreamExtractor(staging, top=top_folder(art), expect=expect, source=name, start=start,
                              done=done)


def _extract_stream(job: Job, url: str, art: Mapping[str, Any] | None, staging: Path,
                    name: str, flatten: bool, resume: ResumePoint | None = None) -> tuple[str, int]:
    """Stream ``url`` into the extractor; a reader thread downloads and hashes the whole stream.

    ``resume`` continues an interrupted extraction at its offset: the whole stream's sha256 cannot
    be taken then, so the check is every member's own sha256, size and offset against the manifest
    (the members already in staging were hashed again by :func:`.resume.resume_point`), and every
    member listed being present. Returns (the manifest's sha256 when resumed, the tar's size)."""
    start = resume.offset if resume is not None else 0
    extractor = _extractor(art, staging, name, flatten, resume)
    # the space needed: what is still to come (staging holds what an earlier run extracted)
    check = job.check_response(url, "tar", art["size"] if art else None,
                               need=lambda info: max(0, (info.size or 0) - start))
    chunks: queue.Queue[Any] = queue.Queue(maxsize=QUEUED)
    stop = threading.Event()
    digest = hashlib.sha256()
    total = 0
    end = object()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def reader() -> None:
        nonlocal total
        head: bytearray | None = bytearray()  # the first block, held back until it is sniffed
        try:
            config = job.http.config
            piece = config.stream_piece  # several shards at once share the connections and the buffer
            buffer = max(2 * piece, config.stream_buffer // job.share - QUEUED * piece)
            for data in parallel_stream(job.http, url, on_open=check, stop=stop, adaptive=config.adaptive,
                                        connections=max(1, config.connections // job.share),
                                        piece=piece, buffer=buffer,
                                        size_hint=art["size"] if art else None, start=start):
                digest.update(data)
                total += len(data)
                if head is not None:
                    head += data
                    if len(head) < 512:
                        continue
                    sniff_page(url, bytes(head))
                    data, head = bytes(head), None
                put(data)
            if head:
                sniff_page(url, bytes(head))
                put(bytes(head))
            put(end)
        except BaseException as exc:  # handed to the main thread, which raises it
            put(exc)

    thread = threading.Thread(target=reader, name="download-reader", daemon=True)
    with progress(job.size_of(url, art), f"download {name}", enabled=job.show_progress) as bar:
        bar.update(start)
        thread.start()
        try:
            while True:
                try:
                    item = chunks.get(timeout=0.2)
                except queue.Empty:
                    if job.cancel.is_set():
                        raise Stopped(f"{url}: stopped, as another part of this download failed") from None
                    continue
                if item is end:
                    break
                if isinstance(item, BaseException):
                    raise item
                extractor.feed(item)
                bar.update(len(item))
            extractor.finish()
        finally:
            stop.set()
            extractor.close()
            thread.join(timeout=5)  # it stops at its next read; do not wait out a read timeout
    if resume is not None:
        assert art is not None  # a resume point needs the manifest's members
        if start + total != art["size"]:
            raise ChecksumError(f"{url}: the stream ended at byte {start + total}, manifest.json says "
                                f"{art['size']} bytes")
        return art["sha256"].lower(), start + total
    sha = digest.hexdigest()
    if art is not None and (total != art["size"] or sha != art["sha256"].lower()):
        raise ChecksumError(f"{url}: the stream was {total} bytes with sha256:{sha}, manifest.json says "
                            f"{art['size']} bytes with sha256:{art['sha256'].lower()}")
    return sha, total


def _extract_kept(job: Job, part: Part, kept: Path) -> tuple[str, int]:
    """``--keep-tar``: fetch the tar like a single file (verified), then extract it from disk.

    The kept tar has its own marker, so a later run neither fetches it again
    nor trusts a same-named file some other tool left half-written.
    """
    art = part.artifact
    tar_mark = part.state / f"{kept.name}.done"
    digest: str | None = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, RecursionError):
        saved = json.loads(tar_mark.read_text())
        if kept.exists() and kept.stat().st_size == saved["size"] and (
                art is None or saved["sha256"] == art["sha256"].lower()):
            digest, size = saved["sha256"], saved["size"]
    if digest is None:
        remove_path(tar_mark)
        digest, size = fetch_into(job, part.url, kept, art, "tar")
        with atomic_write(tar_mark) as fh:
            fh.write(json.dumps({"url": part.url, "sha256": digest, "size": size}).encode())
    extractor = _extractor(art, part.staging, kept.name, part.flatten)
    with open(kept, "rb") as fh:
        while block := fh.read(4 * 1024 * 1024):
            extractor.feed(block)
    extractor.finish()
    return digest, size


def _place(part: Part) -> str:
    """Rename the extracted top-level folder to its objathor name; returns the tar's folder name.

    Features are objathor's way: every ``*.pkl`` anywhere in the tar, flat in one folder, whatever
    the tar's layout (one folder, several, or the files at its top level)."""
    staging = part.staging
    entries = sorted(staging.iterdir())
    part.target.parent.mkdir(parents=True, exist_ok=True)
    if part.merge:
        return _merge(part, entries)
    if part.flatten:
        flat = _flat_path(part)
        remove_path(flat)
        _flatten_pkl(staging, flat)
        replace_dir(flat, part.target, part.trash)
        return entries[0].name if len(entries) == 1 and entries[0].is_dir() else ""
    if len(entries) != 1 or not entries[0].is_dir():
        raise InputError(f"{part.url} holds {len(entries)} top-level entries: expected one folder")
    replace_dir(entries[0], part.target, part.trash)
    return entries[0].name


def _merge(part: Part, entries: list[Path]) -> str:
    """A shard: move each extracted asset folder into the assets folder, replacing only that folder.

    The manifest gives every asset folder to one shard, so this never touches another shard's; a folder
    the shard's manifest entry does not list may only be empty, and never replaces one that is there."""
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
        raise InputError(f"{part.url} holds {len(entries)} top-level entries: expected one folder")
    listed = set(asset_folders(part.artifact or {}))
    part.target.mkdir(exist_ok=True)
    for folder in sorted(entries[0].iterdir()):
        dest = part.target / folder.name
        if folder.name not in listed:
            if folder.is_symlink() or not folder.is_dir() or any(folder.iterdir()):
                raise InputError(f"{part.url} holds {folder.name}, which manifest.json does not list among "
                                 f"{part.name}'s asset folders: the release is malformed; tell its publisher")
            if dest.exists() or dest.is_symlink():
                continue  # an empty folder: never in place of another shard's asset
        replace_dir(folder, dest, part.trash)
    return entries[0].name


def _flat_path(part: Part) -> Path:
    """Where the flattened features gather before they are renamed into place (beside the staging)."""
    return part.state / f"{part.key}.flat"


def _flatten_pkl(folder: Path, out: Path) -> Path:
    """objathor's features layout: every ``*.pkl`` of the tar, flat in one folder."""
    out.mkdir()
    found = 0
    for pkl in sorted(folder.rglob("*.pkl")):
        if not pkl.is_file() or pkl.is_symlink():
            continue
        dest = out / pkl.name
        if dest.exists():
            raise InputError(f"features.tar holds two files named {pkl.name}: objathor's layout keeps them "
                             "in one folder, so the names must differ")
        os.replace(pkl, dest)
        found += 1
    if not found:
        raise InputError("features.tar holds no *.pkl files: expected CLIP/SBERT feature files")
    return out
