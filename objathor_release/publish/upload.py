"""Resumable, verified multipart upload of a release directory to R2 or any S3 API endpoint.

``upload_release`` sends every artifact named in ``RELEASE_DIR/manifest.json`` to
``BUCKET/PREFIX/NAME`` (``holodeck.tar`` to ``holodeck/VERSION.tar`` beside the version folder:
:func:`~.client.artifact_key`), then ``SHA256SUMS``, ``manifest.json.sig`` (when the
release is signed) and ``manifest.json`` last: the manifest's presence marks a
version as published, so nobody sees half a release as complete.

Local files: each is opened once, through the release dir's descriptor, with
``O_NOFOLLOW``/``O_NONBLOCK`` on every component, and must be a regular file of
the manifest's size by ``fstat`` of that descriptor; a symlink, FIFO, device or
folder is refused with one line. Every later read is a ``pread`` of it, so a
rename over the name during the upload changes nothing. SHA256SUMS must list
exactly the manifest's artifacts and sha256.

Integrity: a part is read once to compute its md5 (sent as ``Content-MD5``) and,
in the same pass, the file's sha256: the parts of one file take turns in order
for that pass (then are sent concurrently), so the digest is the file's. An
object whose sha256 is not the manifest's is never completed: a single PUT is
not sent, a multipart upload is aborted, and the run ends with an InputError
naming the file. The part ETag the server returns must equal the local md5;
after completion the object's ETag must equal the one computed locally (md5 of
the parts' binary md5s, then ``-N``), and a HEAD checks size, ETag and the
``sha256`` metadata. Parts of an interrupted upload already on the server are
read and hashed too (in their turn) and kept only if their md5 equals the
server's ETag. An object already on the server is skipped only after the local
file was read in the remote part layout: its sha256 must be the manifest's and
its ETag the remote one.

Where the pieces live: this module is the coordinator (it plans the files with
:mod:`.plan`, runs them through the executors in order and collects the results
and counters into an :class:`~.report.UploadReport`); each request is a task in
:mod:`.tasks`, sharing one :class:`~.context.Context` (client, retry policy,
abort flag, counters); the part layout and ETag math are in :mod:`.parts`, the
safe file layer in :mod:`.localfiles`, the resume records in :mod:`.upload_state`,
reading and checking the bucket in :mod:`.remote`. Notes (a resumed upload, a
grown part size) go to the ``logging`` logger of the module that makes them, or
to the ``log`` function the caller passes; nothing is printed.

Resume: ``RELEASE_DIR/.upload-state/`` (a real folder, never followed through a
symlink) holds one small JSON file per object (upload id, part size, per-part
md5, the local file's size/mtime/sha256). The next run lists the parts already
on the server and uploads only the rest. A stale upload id or a changed local
file starts over. ``cleanup_uploads`` aborts abandoned multipart uploads.

Idempotence and concurrent publishers: an object already on the server with the
same size, ETag and sha256 metadata is skipped; different content under the same
key, or a published version whose manifest differs, is refused without
``force``. Without ``force`` every object is created only if its key is free
(``If-None-Match: *`` on PutObject and CompleteMultipartUpload, which S3 and R2
honour). When another publisher created it first, the same content counts as
done and other content ends the run with PublishedError (exit 3) before
manifest.json: of two publishers of different content, at most one publishes,
and the one whose manifest.json lands has all its own objects (a loser stops at
its first taken key and never overwrites). manifest.json itself is compared byte
for byte when its create is refused. ``force`` writes unconditionally.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from objathor_release.build.manifest import MANIFEST as MANIFEST_NAME
from objathor_release.build.manifest import SIGNATURE as SIGNATURE_NAME
from objathor_release.errors import InputError, PublishedError, TransferError
from objathor_release.progress import progress
from objathor_release.publish import tasks
from objathor_release.publish.client import client_error, object_key
from objathor_release.publish.context import Context, Exists
from objathor_release.publish.localfiles import ReleaseDir, StateDir
from objathor_release.publish.parts import Job, SequentialSha256, multipart_etag
from objathor_release.publish.plan import (
    FINAL_NAMES,
    close_jobs,
    concurrency_plan,
    connections_note,
    open_manifest,
    part_size_note,
    plan_jobs,
)
from objathor_release.publish.remote import published_manifest
from objathor_release.publish.report import FileResult, UploadReport
from objathor_release.publish.slots import Slots
from objathor_release.ramp import Ramp
from objathor_release.retry import RetryPolicy
from objathor_release.s3.target import S3Target, normalize_prefix
from objathor_release.settings import START_CONNECTIONS, UploadConfig

__all__ = ["Coordinator", "FileResult", "UploadReport", "upload_release"]

logger = logging.getLogger(__name__)

Log = Callable[[str], None]


def _first_error(errors: list[BaseException]) -> BaseException:
    """The error to report of several: the first that is not another worker being told to stop."""
    return next((e for e in errors if not str(e).endswith(": stopped")), errors[0])


def _run_parallel(fn: Callable[[Job], Any], jobs: list[Job], workers: int, abort: threading.Event
                  ) -> list[Any]:
    """``fn`` over ``jobs`` on ``workers`` threads, in order; the first error is raised once all settle."""
    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="upload-file") as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        for fut in futures:  # the first failure stops the others at their next part
            fut.add_done_callback(lambda f: abort.set() if not f.cancelled() and f.exception() else None)
        try:
            for fut in futures:
                while not fut.done():
                    time.sleep(0.05)  # short waits keep Ctrl-C responsive in the main thread
        except KeyboardInterrupt:
            abort.set()
            for fut in futures:
                fut.cancel()
            raise
    errors = [e for f in futures if (e := f.exception()) is not None]
    if errors:
        abort.set()
        raise _first_error(errors)
    return [f.result() for f in futures]


class Coordinator:
    """One run of :func:`upload_release`: decides what each file needs, runs the files (and the parts
    of each) through the executors in order, and turns the tasks' answers into results."""

    def __init__(self, ctx: Context, config: UploadConfig, part_executor: Executor,
                 slots: Slots | None = None) -> None:
        self.ctx, self.config, self.parts_pool = ctx, config, part_executor
        self.slots = slots or Slots(Ramp(START_CONNECTIONS, config.connections, config.adaptive, "upload"),
                                    config.per_file)

    def run(self, jobs: list[Job], manifest: dict[str, Any] | None, force: bool, show_progress: bool
            ) -> list[FileResult]:
        """Every job's result, in the jobs' order: artifacts in parallel, then SHA256SUMS,
        manifest.json.sig and manifest.json one after the other. ``manifest`` (None: artifacts
        only, the published manifest is not this run's business) is compared with the published one."""
        ctx = self.ctx
        remote_manifest = None if manifest is None else published_manifest(ctx.client, ctx.bucket, ctx.prefix)
        if manifest is not None and remote_manifest is not None and remote_manifest != manifest:
            if not force:
                raise PublishedError(f"version {manifest.get('version')} is already published at {ctx.where} "
                                     "with a different manifest.json: pass --force to replace it")
            ctx.note(logging.WARNING, f"{ctx.where}: replacing a published version (--force): removing its "
                     "manifest.json first", logger)
            self.unpublish((MANIFEST_NAME, SIGNATURE_NAME))

        decisions = _run_parallel(lambda job: tasks.check_existing(ctx, job), jobs,
                                  max(self.config.files_at_once, 8), ctx.abort)
        conflicts = [f"{j.key} ({why})" for j, (kind, why) in zip(jobs, decisions, strict=True)
                     if kind == "conflict"]
        if conflicts and not force:
            raise PublishedError(f"{len(conflicts)} object(s) on the server differ from the local release: "
                                 f"{', '.join(conflicts)}: pass --force to overwrite")
        results: dict[str, FileResult] = {}
        todo: list[Job] = []
        for job, (kind, etag) in zip(jobs, decisions, strict=True):
            if kind == "skip":
                results[job.name] = FileResult(job.name, job.key, job.size, job.sha256, etag, job.parts,
                                               job.part_size, "skipped", multipart=job.multipart)
                ctx.detail(f"{job.name}: already on the server with the same content: skipped")
            else:
                todo.append(job)
        artifacts = [j for j in todo if j.name not in FINAL_NAMES]
        finals = [j for j in todo if j.name in FINAL_NAMES]
        total = sum(j.size for j in todo)
        with progress(total, f"upload {ctx.where}", enabled=show_progress and total > 0) as bar:
            ctx.bar = bar
            for r in _run_parallel(self.upload, artifacts, self.config.files_at_once, ctx.abort):
                results[r.name] = r
            # SHA256SUMS, manifest.json.sig, then manifest.json, created only if absent (unless --force):
            # the version is published only when all else is there, and by one publisher only.
            for job in finals:
                results[job.name] = self.upload(job)
        return [results[j.name] for j in jobs]

    def unpublish(self, names: tuple[str, ...]) -> None:
        ctx = self.ctx
        for name in names:
            try:
                ctx.client.delete_object(Bucket=ctx.bucket, Key=object_key(ctx.prefix, name))
            except Exception as exc:  # noqa: BLE001 - mapped to one clean line
                raise client_error(ctx.client, exc, f"unpublishing {ctx.where}", ctx.bucket) from None

    def upload(self, job: Job) -> FileResult:
        if self.ctx.abort.is_set():
            raise TransferError(f"{job.name}: stopped")
        return self.multipart(job) if job.multipart else self.put(job)

    def taken(self, job: Job, etag: str, why: Exists) -> FileResult:
        """The key was created meanwhile: skipped if it holds this content (else settle_taken raises)."""
        tasks.settle_taken(self.ctx, job, etag, why)
        self.ctx.bar.update(job.size)
        return FileResult(job.name, job.key, job.size, job.sha256, etag, job.parts, job.part_size, "skipped",
                          multipart=job.multipart)

    def put(self, job: Job) -> FileResult:
        ctx = self.ctx
        body, md5 = tasks.read_whole(ctx, job)
        if not self.slots.acquire(job.name, ctx.abort):
            raise TransferError(f"{job.name}: stopped")
        sent = False
        try:
            etag = tasks.put_object(ctx, job, body, md5)
            sent = True
        except Exists as exc:
            return self.taken(job, md5.hex(), exc)
        finally:
            self.slots.release(job.name, job.size, sent)
        ctx.counters.add(bytes_sent=job.size)
        ctx.bar.update(job.size)
        tasks.verify_object(ctx, job, etag)
        tasks.record_complete(ctx, job, etag)
        return FileResult(job.name, job.key, job.size, job.sha256, etag, 1, job.part_size, "uploaded", 1,
                          multipart=False)

    def multipart(self, job: Job) -> FileResult:
        ctx = self.ctx
        state = ctx.state(job)
        on_server = tasks.resumable_parts(ctx, job, state)
        if on_server is None:
            state.delete()
            state = tasks.create_upload(ctx, job, state)
            on_server = {}
        upload_id = str(state.data["upload_id"])
        sha = SequentialSha256(str(job.path))
        futures: dict[int, Future[tuple[bytes, bool]]] = {}
        done: dict[int, tuple[bytes, bool]] = {}
        slots = self.slots

        def finished(number: int, fut: Future[tuple[bytes, bool]]) -> None:
            failed = fut.cancelled() or fut.exception() is not None
            slots.release(job.name, job.part_range(number)[1], not failed and fut.result()[1])
            if failed:
                ctx.abort.set()

        try:
            for number in range(1, job.parts + 1):
                # one slot of the run's shared connections per part, taken in turn with the other files
                if not slots.acquire(job.name, ctx.abort):
                    break
                if ctx.abort.is_set():
                    slots.release(job.name, sent=False)
                    break
                fut = self.parts_pool.submit(tasks.upload_part, ctx, job, upload_id, number, state, sha,
                                             on_server.get(number))
                fut.add_done_callback(functools.partial(finished, number))
                futures[number] = fut
        finally:
            errors = []
            for number, fut in futures.items():
                try:
                    done[number] = fut.result()
                except BaseException as exc:  # noqa: BLE001 - collected, the first is raised below
                    errors.append(exc)
            state.save()
        if errors:
            first = _first_error(errors)
            if isinstance(first, InputError):
                tasks.abort_upload(ctx, job.key, upload_id)
                state.delete()
            raise first
        if len(done) != job.parts:
            raise TransferError(f"{job.name}: stopped before every part was sent: run the same command again")
        if sha.hexdigest() != job.sha256:
            tasks.abort_upload(ctx, job.key, upload_id)
            state.delete()
            raise tasks.changed_error(job, sha.hexdigest())
        md5s = [done[n][0] for n in range(1, job.parts + 1)]
        sent = sum(1 for n in done if done[n][1])
        try:
            etag = tasks.complete_upload(ctx, job, upload_id, md5s, state)
        except Exists as exc:
            tasks.abort_upload(ctx, job.key, upload_id)
            state.delete()
            return self.taken(job, multipart_etag(md5s), exc)
        tasks.verify_object(ctx, job, etag)
        tasks.record_complete(ctx, job, etag)
        status = "resumed" if sent < job.parts else "uploaded"
        return FileResult(job.name, job.key, job.size, job.sha256, etag, job.parts, job.part_size, status,
                          sent, job.parts - sent)


def _split_target(target: S3Target | tuple[str, str | None], manifest: dict[str, Any]) -> tuple[str, str]:
    if isinstance(target, S3Target):
        bucket, prefix = target.bucket, target.prefix
    else:
        bucket, prefix = target
    prefix = normalize_prefix(prefix)
    return bucket, str(manifest["version"]) if prefix is None else prefix


def upload_release(
    client: Any,
    release_dir: str | Path,
    target_or_bucket_and_prefix: S3Target | tuple[str, str | None],
    config: UploadConfig,
    *,
    force: bool = False,
    dry_run: bool = False,
    show_progress: bool = True,
    executor: Executor | None = None,
    log: Log | None = None,
    verbose: bool = False,
    retry: RetryPolicy | None = None,
    artifacts_only: bool = False,
    elsewhere: Collection[str] = (),
) -> UploadReport:
    """Upload a release directory: every artifact of its manifest, then SHA256SUMS,
    manifest.json.sig (when there is one) and manifest.json.

    ``artifacts_only`` uploads the artifacts and nothing else (one shard of a distributed release,
    whose manifest is published by the finishing run); ``elsewhere`` names artifacts another machine
    uploaded (not local, not uploaded here; the caller verifies them).

    ``executor`` runs the part uploads (it needs ``config.connections`` workers for
    full speed); by default one is made and shut down here. Every file's requests
    share ``config.connections`` slots, let in flight as the :class:`~objathor_release.ramp.Ramp`
    decides unless ``upload_concurrency`` fixes them. ``retry``
    is the policy every request is retried by (default: ``config.max_part_attempts``
    attempts, capped exponential backoff with jitter); pass one with its own
    ``sleep`` to wait differently. Notes go to ``log`` when given, else to this
    package's loggers (``verbose``: each part and retry at INFO rather than DEBUG).
    Raises PublishedError (without ``force``) when the version is published
    with other content, an object differs, or another upload of the version
    created an object first; InputError when a file's bytes are not those of
    the manifest; TransferError when a part still fails after its retries (the
    run is resumable); ChecksumError when the server's copy does not match.
    """
    started = time.monotonic()
    release_dir = Path(release_dir)
    with contextlib.ExitStack() as stack:
        rd = stack.enter_context(ReleaseDir(release_dir))
        manifest_file, _, manifest = open_manifest(rd)
        stack.callback(manifest_file.close)
        bucket, prefix = _split_target(target_or_bucket_and_prefix, manifest)
        endpoint = str(client.meta.endpoint_url) if client is not None else getattr(
            target_or_bucket_and_prefix, "endpoint_url", "")
        report = UploadReport(bucket, prefix, endpoint, dry_run=dry_run)
        jobs = plan_jobs(rd, manifest, manifest_file, prefix, config, finals=not artifacts_only,
                         elsewhere=elsewhere)
        stack.callback(close_jobs, jobs)
        report.notes = [n for n in (part_size_note(j, config) for j in jobs) if n]
        for note in report.notes:
            if log is not None:
                log(note)
            else:
                logger.info("%s", note)
        if dry_run:
            report.results = [FileResult(j.name, j.key, j.size, j.sha256, "", j.parts, j.part_size, "dry-run",
                                         multipart=j.multipart, why=j.why,
                                         concurrency=concurrency_plan(j, config)) for j in jobs]
            report.plan = connections_note(config)
            return report
        states = StateDir.open(rd, create=True)
        if states is not None:
            stack.callback(states.close)
        own_pool = executor is None
        pool = executor or ThreadPoolExecutor(max_workers=config.connections,
                                              thread_name_prefix="upload-part")
        slots = Slots(Ramp(START_CONNECTIONS, config.connections, config.adaptive, "upload"), config.per_file)
        ctx = Context(client, bucket, prefix, str(manifest["version"]), states,
                      retry or RetryPolicy(attempts=config.max_part_attempts), conditional=not force,
                      verbose=verbose, log=log, on_throttle=slots.throttled)
        try:
            report.results = Coordinator(ctx, config, pool, slots).run(
                jobs, None if artifacts_only else manifest, force, show_progress)
        finally:
            if own_pool:
                pool.shutdown(wait=True, cancel_futures=True)
    report.part_uploads, report.put_uploads = ctx.counters.part_uploads, ctx.counters.put_uploads
    report.bytes_sent = ctx.counters.bytes_sent
    report.peak_connections = slots.peak
    report.seconds = time.monotonic() - started
    return report
