"""What every request of one upload run shares: the :class:`Context`, and the errors its tasks raise.

The context holds the client and bucket, the retry policy (:class:`objathor_release.retry.RetryPolicy`,
the one the download uses too), the abort flag, the :class:`Counters`, the progress bar, the
resume folder and where notes go. :meth:`Context.call` is the one retry loop of the upload: a
request is tried again on connection errors, timeouts, 429/5xx and a part ETag that is not the
md5 sent (:func:`retryable`), waiting as the policy says and not after the run was told to stop;
any other failure becomes one clean line at once. A conditional create that finds its key taken
raises :class:`Exists` (:func:`raise_if_taken`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from objathor_release.errors import InputError, ReleaseError, TransferError
from objathor_release.progress import Progress, SilentProgress
from objathor_release.publish.client import (
    client_error,
    client_secrets,
    error_code,
    http_status,
    is_transient,
    one_line,
)
from objathor_release.publish.localfiles import LocalFile, StateDir
from objathor_release.publish.parts import Job
from objathor_release.publish.plan import FINAL_NAMES
from objathor_release.publish.upload_state import UploadState
from objathor_release.retry import RetriesExhausted, RetryPolicy

__all__ = ["Context", "Counters", "Exists", "PartMismatch", "changed_error", "job_file", "raise_if_taken",
           "retryable"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PartMismatch(Exception):
    """The server's part ETag is not the md5 we sent: retry the part."""


class Exists(ReleaseError):
    """A conditional create found the key taken (412 PreconditionFailed, 409 ConditionalRequestConflict)."""


def retryable(exc: BaseException) -> bool:
    """Worth another attempt: a transient failure (:func:`~.client.is_transient`) or a part ETag mismatch."""
    return isinstance(exc, PartMismatch) or is_transient(exc)


def raise_if_taken(exc: BaseException) -> None:
    """Turn a failed precondition of a conditional create into :class:`Exists`."""
    code = error_code(exc)
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or http_status(exc) == 412:
        raise Exists(code or "412") from None


@dataclass
class Counters:
    """What a run sent: UploadPart and PutObject attempts, and the bytes of the parts that went up."""

    part_uploads: int = 0
    put_uploads: int = 0
    bytes_sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, part_uploads: int = 0, put_uploads: int = 0, bytes_sent: int = 0) -> None:
        with self._lock:
            self.part_uploads += part_uploads
            self.put_uploads += put_uploads
            self.bytes_sent += bytes_sent


@dataclass
class Context:
    """What every request of one run shares. ``log``, when given, receives every note instead of
    the logger; ``verbose`` notes (each part, each retry) are logged at INFO, else at DEBUG."""

    client: Any
    bucket: str
    prefix: str
    version: str
    states: StateDir | None
    retry: RetryPolicy
    conditional: bool = True
    verbose: bool = False
    log: Callable[[str], None] | None = None
    on_throttle: Callable[[], None] | None = None  # told of each 429/503 answer (fewer at once)
    abort: threading.Event = field(default_factory=threading.Event)
    counters: Counters = field(default_factory=Counters)
    bar: Progress = field(default_factory=SilentProgress)
    # At most one hashing pass per core at a time (each file's parts are hashed in order, one
    # after the other, so that the file's sha256 can be computed in the same pass as the md5s).
    hash_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(max(1, _cpus())))

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def note(self, level: int, text: str, origin: logging.Logger = logger) -> None:
        """Report ``text``: to ``log`` when the caller gave one, else to ``origin`` at ``level``."""
        if self.log is not None:
            self.log(text)
        else:
            origin.log(level, "%s", text)

    def detail(self, text: str) -> None:
        """A note only a verbose run shows."""
        if self.verbose:
            self.note(logging.INFO, text)
        else:
            logger.debug("%s", text)

    def call(self, action: str, fn: Callable[[], T]) -> T:
        """``fn()`` with the policy's retries (and waits) on :func:`retryable` failures; a ReleaseError
        as it is, any other failure as one clean line naming ``action``. Stops retrying on abort."""
        def on_retry(exc: BaseException, attempt: int, wait: float) -> None:
            if self.on_throttle is not None and http_status(exc) in (429, 503):
                self.on_throttle()
            self.detail(f"{action}: {type(exc).__name__}, retrying in {wait:.1f} s")

        try:
            return self.retry.call(fn, retry_if=retryable, on_retry=on_retry, stop=self.abort.is_set)
        except RetriesExhausted as exc:
            detail = one_line(str(exc.error), client_secrets(self.client))
            raise TransferError(f"{action} failed after {exc.attempts} attempts ({detail}): "
                                "run the same command again to resume") from None
        except ReleaseError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore, or an answer it could not parse: one clean line
            raise client_error(self.client, exc, action, self.bucket) from None

    def state(self, job: Job) -> UploadState:
        """The resume record of ``job`` (empty when there is none)."""
        name = UploadState.name_for(self.endpoint, self.bucket, job.key, job.name)
        return UploadState.load(self.states, name)

    def target_fields(self, job: Job) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "bucket": self.bucket, "key": job.key}


def _cpus() -> int:
    return os.cpu_count() or 1


def job_file(job: Job) -> LocalFile:
    """The open file of a planned job."""
    assert job.file is not None, job.name
    return job.file


def changed_error(job: Job, got: str) -> InputError:
    """The error for a file whose bytes (sha256 ``got``) are not those planned."""
    if job.name in FINAL_NAMES:
        return InputError(f"{job.path} changed while it was being uploaded (sha256 {got} != {job.sha256} "
                          "read at the start): nothing was published; run the same command again")
    return InputError(f"{job.path} changed after manifest.json was written (sha256 {got} != manifest "
                      f"{job.sha256}): rebuild the release")
