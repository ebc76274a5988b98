"""The upload's automatic plan: the connection ramp (an injected clock), the shared slots, an upload to
moto at the defaults, and files sharing one pool of connections."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from objathor_release import settings
from objathor_release.publish import remote, upload
from objathor_release.publish.client import make_client
from objathor_release.publish.slots import Slots
from objathor_release.ramp import Ramp
from objathor_release.s3.target import resolve_target
from objathor_release.settings import UploadConfig
from tests.conftest import run_cli
from tests.support.faultproxy import PASS, FaultProxy, Request
from tests.support.fixtures_upload import PART, VERSION, expected_etag, make_release, part_puts, random_bytes

MiB = 1024 * 1024
FAST = {"AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true", "OBJATHOR_PROGRESS": "0"}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def finish(ramp: Ramp, clock: Clock, count: int, seconds: float, nbytes: int = 5 * MiB) -> None:
    """``count`` requests of ``nbytes`` finishing evenly over ``seconds``."""
    for _ in range(count):
        clock.now += seconds / count
        ramp.done(nbytes)


# --------------------------------------------------------------------------- the ramp


def test_the_ramp_doubles_while_the_rate_grows_by_a_tenth_and_then_holds() -> None:
    clock = Clock()
    ramp = Ramp(8, 64, clock=clock)
    ramp.begin()
    assert ramp.limit == 8
    finish(ramp, clock, 7, 1.0)  # not yet one request per connection: no decision
    assert (ramp.limit, ramp.steps) == (8, [])
    finish(ramp, clock, 1, 0.0)
    assert ramp.limit == 16  # the first rate is the best so far
    finish(ramp, clock, 16, 1.0)  # twice the rate with twice the connections: grow
    assert ramp.limit == 32
    finish(ramp, clock, 32, 1.9)  # 1.05x the rate: not a tenth more, hold at 32 from now on
    assert ramp.limit == 32 and ramp.frozen
    finish(ramp, clock, 200, 1.0)  # however fast it goes afterwards
    assert ramp.limit == 32
    assert [limit for limit, _ in ramp.steps] == [8, 16, 32]


def test_the_ramp_stops_at_its_cap_and_a_fixed_one_holds_the_cap() -> None:
    clock = Clock()
    ramp = Ramp(8, 20, clock=clock)
    finish(ramp, clock, 8, 1.0)
    finish(ramp, clock, 16, 1.0)
    assert ramp.limit == 20 and not ramp.frozen  # doubled, then capped
    fixed = Ramp(8, 12, adaptive=False, clock=clock)
    assert fixed.limit == 12
    finish(fixed, clock, 50, 0.1)
    assert fixed.limit == 12 and fixed.steps == []
    assert Ramp(8, 3, clock=clock).limit == 3  # never more than the cap, even at the start


def test_the_ramp_halves_when_the_server_throttles() -> None:
    clock = Clock()
    ramp = Ramp(8, 64, clock=clock)
    finish(ramp, clock, 8, 1.0)
    assert ramp.limit == 16
    ramp.throttled()
    assert ramp.limit == 8 and ramp.frozen
    finish(ramp, clock, 100, 0.5)
    assert ramp.limit == 8
    ramp.throttled()
    ramp.throttled()
    ramp.throttled()
    ramp.throttled()
    assert ramp.limit == 1


# --------------------------------------------------------------------------- the shared slots


def wait_until(check: Any) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_slots_take_turns_between_files_so_a_small_one_does_not_wait_behind_a_large_one() -> None:
    slots = Slots(Ramp(1, 1, adaptive=False))
    stop = threading.Event()
    granted: list[str] = []

    def ask(owner: str) -> threading.Thread:
        t = threading.Thread(target=lambda: slots.acquire(owner, stop) and granted.append(owner))
        t.start()
        return t

    assert slots.acquire("large", stop)  # the large file holds the one connection
    waiting = [ask("large")]
    wait_until(lambda: len(slots._queue) == 1)
    waiting.append(ask("small"))  # the small file asks after the large one's next part
    wait_until(lambda: len(slots._queue) == 2)
    slots.release("large", 5 * MiB)
    wait_until(lambda: granted == ["large"])
    waiting.append(ask("large"))  # the large file asks for its next part at once
    wait_until(lambda: len(slots._queue) == 2)
    slots.release("large", 5 * MiB)
    wait_until(lambda: granted == ["large", "small"])  # the small one goes first: it asked first
    slots.release("small", 5 * MiB)
    wait_until(lambda: granted == ["large", "small", "large"])
    assert slots.peak == 1
    stop.set()
    for t in waiting:
        t.join(5)


def test_slots_keep_a_per_file_limit_and_stop_waiting_when_told() -> None:
    slots = Slots(Ramp(4, 4, adaptive=False), per_file=2)
    stop = threading.Event()
    assert slots.acquire("a", stop) and slots.acquire("a", stop)
    assert slots.acquire("b", stop)  # a is at its limit, b is not
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(slots.acquire("a", stop)))
    t.start()
    wait_until(lambda: len(slots._queue) == 1)
    stop.set()
    t.join(5)
    assert result == [False] and slots.running == 3


# --------------------------------------------------------------------------- through moto


def target_for(endpoint: str, bucket: str) -> Any:
    return resolve_target(bucket=bucket, prefix=None, endpoint_url=endpoint, profile=None, remote=None,
                          rclone_config=None)


def test_an_upload_at_the_defaults_is_verified_as_before(s3_env: dict[str, str], s3_server: Any,
                                                          s3_client: Any, bucket: str, release: Path) -> None:
    data = (release / "assets.tar").read_bytes()
    done = run_cli("upload", "--release-dir", str(release), "--bucket", bucket, "--endpoint-url",
                   s3_server.endpoint_url, env=FAST)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    rows = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert "5 x 5.0 MiB" in rows["assets.tar"] and "uploaded" in rows["assets.tar"]  # 21 MiB: 5 MiB parts
    assert "1 x 39.1 KiB" in rows["annotations.json.gz"]  # under 8 MiB: one PUT
    head = s3_client.head_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")
    assert head["ETag"].strip('"') == expected_etag(data, 5 * MiB)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    manifest = remote.published_manifest(s3_client, bucket, VERSION)
    assert manifest is not None
    assert head["ETag"].strip('"') == manifest["artifacts"][1]["etag"]  # the one the build worked out
    checks = remote.verify_remote(s3_client, bucket, VERSION, manifest, config=UploadConfig())
    assert [c.etag_check for c in checks] == ["exact", "exact", "content", "content"]
    again = run_cli("upload", "--release-dir", str(release), "--bucket", bucket, "--endpoint-url",
                    s3_server.endpoint_url, env=FAST)
    assert again.returncode == 0, again.stderr
    assert "0 uploaded, 0 resumed, 4 skipped" in again.stdout


def test_files_share_one_pool_of_connections(s3_env: dict[str, str], s3_server: Any, bucket: str,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two connections in all (the memory bound lowered to 2): the large file's parts and the small
    file's take turns, so the small file is done long before the large one, and never more than two
    requests are in flight."""
    monkeypatch.setattr(settings, "MAX_CONNECTIONS", 2)
    large, small = random_bytes(6 * PART, seed=3), random_bytes(2 * PART, seed=4)
    release = make_release(tmp_path / "rel", {"large.bin": large, "small.bin": small})
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most

    def slow_parts(req: Request) -> Any:
        if req.method == "PUT" and "partNumber=" in req.path:
            with lock:
                in_flight[0] += 1
                in_flight[1] = max(in_flight)
            time.sleep(0.15)  # a long link: each part takes a while
            with lock:
                in_flight[0] -= 1
        return PASS

    config = UploadConfig(chunk_size=PART)
    assert (config.connections, config.per_file) == (2, 2)
    with FaultProxy(s3_server.endpoint_url, slow_parts) as proxy:
        target = target_for(proxy.url, bucket)
        report = upload.upload_release(make_client(target), release, target, config, show_progress=False)
    assert [r.status for r in report.results] == ["uploaded"] * 4
    assert report.peak_connections == 2 and in_flight[1] <= 2
    order = [r.path.split("?")[0].rsplit("/", 1)[1] for r in part_puts(proxy.log)]
    assert sorted(order) == ["large.bin"] * 6 + ["small.bin"] * 2
    last_small = len(order) - 1 - order[::-1].index("small.bin")
    assert "large.bin" in order[last_small + 1:]  # the small file was done before the large one
    assert {r.name: r.etag for r in report.results}["small.bin"] == expected_etag(small)


def test_a_503_or_429_answer_halves_the_requests_in_flight() -> None:
    import botocore.exceptions as bx

    from objathor_release.publish.context import Context
    from objathor_release.retry import RetryPolicy

    slots = Slots(Ramp(8, 64))
    ctx = Context(None, "b", "p", VERSION, None, RetryPolicy(attempts=3, sleep=lambda _s: None),
                  on_throttle=slots.throttled)
    answers = [503, 429, 200]

    def attempt() -> str:
        status = answers.pop(0)
        if status != 200:
            raise bx.ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                                 "UploadPart")
        return "ok"

    assert ctx.call("uploading part 1", attempt) == "ok"
    assert slots.ramp.limit == 2 and slots.ramp.frozen  # 8, halved twice; no more growth this run
