"""The upload's per-request tasks and their one retry policy, against a scripted client: no server,
no sleeping (the policy's clock is injected)."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import botocore.exceptions as bx
import pytest

from objathor_release.errors import InputError, TransferError, UsageError
from objathor_release.publish import tasks
from objathor_release.publish.context import Context, Exists, PartMismatch, retryable
from objathor_release.publish.localfiles import ReleaseDir
from objathor_release.publish.parts import Job, SequentialSha256
from objathor_release.publish.upload import upload_release
from objathor_release.publish.upload_state import UploadState
from objathor_release.retry import RetryPolicy
from objathor_release.settings import UploadConfig
from tests.support.fixtures_upload import PART, VERSION, make_release, random_bytes


def client_error(code: str, status: int, op: str = "UploadPart") -> bx.ClientError:
    return bx.ClientError({"Error": {"Code": code, "Message": f"{code} said the server"},
                           "ResponseMetadata": {"HTTPStatusCode": status}}, op)


class ScriptedClient:
    """Answers ``upload_part``/``put_object`` from a script: an exception is raised, a dict returned."""

    def __init__(self, answers: list[Any]) -> None:
        self.meta = SimpleNamespace(endpoint_url="http://127.0.0.1:9")
        self.answers = answers
        self.calls: list[dict[str, Any]] = []

    def _answer(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(kwargs)
        return answer

    upload_part = put_object = _answer


class Waits:
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)


@pytest.fixture
def one_file(tmp_path: Path) -> Iterator[tuple[Job, bytes]]:
    data = random_bytes(2 * PART + 100, seed=3)
    (tmp_path / "big.bin").write_bytes(data)
    with ReleaseDir(tmp_path) as rd:
        file = rd.open("big.bin")
        assert file is not None
        job = Job.of("big.bin", file, f"{VERSION}/big.bin", len(data), hashlib.sha256(data).hexdigest(),
                     UploadConfig(chunk_size=PART, multipart_threshold=PART))
        yield job, data
        file.close()


def context(client: Any, waits: Waits, attempts: int = 3, **kw: Any) -> Context:
    policy = RetryPolicy(attempts=attempts, base=0.5, cap=20.0, jitter=0.0, sleep=waits)
    return Context(client, "b", VERSION, VERSION, None, policy, **kw)


def etag_of(data: bytes) -> Callable[[dict[str, Any]], dict[str, str]]:
    return lambda _kw: {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}


def send_part_1(ctx: Context, job: Job) -> tuple[bytes, bool]:
    state = UploadState(None, "big.bin.json", {})
    return tasks.upload_part(ctx, job, "u1", 1, state, SequentialSha256(str(job.path)), None)


# --------------------------------------------------------------------------- which errors are retried


@pytest.mark.parametrize(("error", "retried"), [
    (client_error("ServiceUnavailable", 503), True), (client_error("SlowDown", 503), True),
    (client_error("InternalError", 500), True), (client_error("TooManyRequests", 429), True),
    (client_error("BadDigest", 400), True), (client_error("RequestTimeout", 400), True),
    (bx.ConnectionClosedError(endpoint_url="http://x"), True), (bx.ReadTimeoutError(endpoint_url="http://x"), True),
    (PartMismatch("part ETag x != local md5 y"), True),
    (client_error("AccessDenied", 403), False), (client_error("NoSuchBucket", 404), False),
    (client_error("InvalidArgument", 400), False), (ValueError("garbled"), False),
    (Exists("412"), False), (InputError("changed"), False),
])
def test_only_transient_failures_are_retried(error: BaseException, retried: bool) -> None:
    assert retryable(error) is retried


def test_a_part_is_retried_with_the_policys_waits_then_sent(one_file: tuple[Job, bytes]) -> None:
    job, data = one_file
    part = data[:PART]
    client = ScriptedClient([client_error("ServiceUnavailable", 503), bx.ConnectionClosedError(endpoint_url="x"),
                             etag_of(part)])
    waits = Waits()
    ctx = context(client, waits, attempts=3)
    md5, sent = send_part_1(ctx, job)
    assert (md5, sent) == (hashlib.md5(part).digest(), True)
    assert waits.seconds == [0.5, 1.0]  # base, then doubled; no jitter in this policy
    assert ctx.counters.part_uploads == 3 and ctx.counters.bytes_sent == PART
    assert [c["PartNumber"] for c in client.calls] == [1, 1, 1]
    assert all(c["ContentLength"] == PART for c in client.calls)


def test_a_part_etag_that_is_not_the_md5_sent_is_retried(one_file: tuple[Job, bytes]) -> None:
    job, data = one_file
    client = ScriptedClient([{"ETag": '"0123456789abcdef0123456789abcdef"'}, etag_of(data[:PART])])
    waits = Waits()
    assert send_part_1(context(client, waits), job)[1] is True
    assert len(client.calls) == 2 and waits.seconds == [0.5]


def test_the_last_failure_is_one_resumable_line(one_file: tuple[Job, bytes]) -> None:
    job, _ = one_file
    client = ScriptedClient([client_error("ServiceUnavailable", 503)] * 2)
    waits = Waits()
    with pytest.raises(TransferError) as err:
        send_part_1(context(client, waits, attempts=2), job)
    assert str(err.value) == ("uploading part 1 of 3 of big.bin failed after 2 attempts (An error occurred "
                              "(ServiceUnavailable) when calling the UploadPart operation: ServiceUnavailable "
                              "said the server): run the same command again to resume")
    assert len(client.calls) == 2 and waits.seconds == [0.5]  # no wait after the last attempt


def test_other_failures_are_not_retried(one_file: tuple[Job, bytes]) -> None:
    job, _ = one_file
    client = ScriptedClient([client_error("AccessDenied", 403)])
    waits = Waits()
    with pytest.raises(UsageError, match=r"refused the request \(AccessDenied\) while uploading part 1 of 3"):
        send_part_1(context(client, waits, attempts=5), job)
    assert len(client.calls) == 1 and waits.seconds == []


def test_a_stopped_run_does_not_retry(one_file: tuple[Job, bytes]) -> None:
    job, _ = one_file

    def another_file_fails_meanwhile(_kw: dict[str, Any]) -> None:
        ctx.abort.set()
        raise client_error("ServiceUnavailable", 503)

    client = ScriptedClient([another_file_fails_meanwhile])
    waits = Waits()
    ctx = context(client, waits, attempts=5)
    with pytest.raises(TransferError, match="failed after 1 attempts"):  # its first failure is its last
        send_part_1(ctx, job)
    assert len(client.calls) == 1 and waits.seconds == []
    with pytest.raises(TransferError, match="^big.bin: stopped$"):  # and a stopped run sends nothing more
        send_part_1(ctx, job)
    assert len(client.calls) == 1


def test_a_part_already_on_the_server_is_not_sent(one_file: tuple[Job, bytes]) -> None:
    job, data = one_file
    client = ScriptedClient([])
    ctx = context(client, Waits())
    state = UploadState(None, "big.bin.json", {})
    md5, sent = tasks.upload_part(ctx, job, "u1", 1, state, SequentialSha256(str(job.path)),
                                  hashlib.md5(data[:PART]).hexdigest())
    assert sent is False and client.calls == [] and state.md5s == {1: md5}
    assert ctx.counters.part_uploads == 0


def test_single_put_retries_and_a_taken_key_is_exists(tmp_path: Path) -> None:
    data = random_bytes(3000, seed=8)
    (tmp_path / "a.gz").write_bytes(data)
    with ReleaseDir(tmp_path) as rd:
        file = rd.open("a.gz")
        assert file is not None
        job = Job.of("a.gz", file, f"{VERSION}/a.gz", len(data), hashlib.sha256(data).hexdigest(), UploadConfig())
        client = ScriptedClient([client_error("InternalError", 500, "PutObject"), etag_of(data),
                                 client_error("PreconditionFailed", 412, "PutObject")])
        waits = Waits()
        ctx = context(client, waits)
        body, md5 = tasks.read_whole(ctx, job)
        assert tasks.put_object(ctx, job, body, md5) == hashlib.md5(data).hexdigest()
        assert client.calls[-1]["IfNoneMatch"] == "*" and client.calls[-1]["Metadata"] == {"sha256": job.sha256}
        with pytest.raises(Exists):
            tasks.put_object(ctx, job, body, md5)
        assert ctx.counters.put_uploads == 3 and waits.seconds == [0.5]
        file.close()


# --------------------------------------------------------------------------- where notes go


def test_verbose_notes_are_info_else_debug(one_file: tuple[Job, bytes], caplog: pytest.LogCaptureFixture) -> None:
    job, data = one_file
    caplog.set_level(logging.DEBUG, logger="objathor_release")
    for verbose in (False, True):
        caplog.clear()
        client = ScriptedClient([client_error("SlowDown", 503), etag_of(data[:PART])])
        send_part_1(context(client, Waits(), verbose=verbose), job)
        level = logging.INFO if verbose else logging.DEBUG
        assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
            (level, "uploading part 1 of 3 of big.bin: ClientError, retrying in 0.5 s"),
            (level, "big.bin: part 1/3 (5.0 MiB) uploaded")]


def test_upload_notes_go_to_logging_and_nothing_is_printed(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rel = make_release(tmp_path / "rel", {"small.bin": b"x" * 100})
    with open(rel / "big.bin", "wb") as fh:
        fh.truncate(60 * 1024**3)  # sparse: 12,288 parts of 5 MiB, so the part size grows
    import json

    manifest = json.loads((rel / "manifest.json").read_text())
    manifest["artifacts"].append({"name": "big.bin", "size": 60 * 1024**3, "sha256": "0" * 64, "members": []})
    (rel / "manifest.json").write_text(json.dumps(manifest))
    (rel / "SHA256SUMS").write_text("".join(f"{a['sha256']}  {a['name']}\n" for a in manifest["artifacts"]))
    config = UploadConfig(chunk_size=PART, multipart_threshold=PART)
    caplog.set_level(logging.INFO, logger="objathor_release")
    report = upload_release(None, rel, ("b", None), config, dry_run=True)
    note = "big.bin: 60.0 GiB would need more than 10,000 parts of 5.0 MiB: using 7.0 MiB parts"
    assert report.notes == [note]
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("objathor_release.publish.upload", logging.INFO, note)]
    assert capsys.readouterr() == ("", "")
    # a caller's own log function gets the same lines instead
    caplog.clear()
    lines: list[str] = []
    upload_release(None, rel, ("b", None), config, dry_run=True, log=lines.append)
    assert lines == [note] and caplog.records == []


def test_counters_add_up_across_threads() -> None:
    from objathor_release.publish.context import Counters

    counters = Counters()

    def work() -> None:
        for _ in range(1000):
            counters.add(part_uploads=1, bytes_sent=5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (counters.part_uploads, counters.put_uploads, counters.bytes_sent) == (4000, 0, 20000)
