"""Upload tests: a real moto server over HTTP on 127.0.0.1, faults through tests/faultproxy.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.locals3 import free_port
from objathor_release.errors import ChecksumError, UsageError
from objathor_release.publish import remote, upload
from objathor_release.publish.cleanup import parse_duration
from objathor_release.publish.client import make_client
from objathor_release.s3.target import parse_remote, resolve_target
from objathor_release.settings import UploadConfig
from tests.conftest import run_cli
from tests.support.faultproxy import PASS, FaultProxy, Request, drop, status
from tests.support.fixtures_upload import (
    PART,
    VERSION,
    content_md5,
    expected_etag,
    make_release,
    part_number,
    part_puts,
    random_bytes,
    tar_bytes,
    write_manifest_files,
    writes,
)

CONFIG = UploadConfig(chunk_size=PART, multipart_threshold=PART, upload_concurrency=4, transfers=2)
FAST = {"AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true", "OBJATHOR_PROGRESS": "0"}


def target_for(endpoint: str, bucket: str, prefix: str | None = None) -> Any:
    return resolve_target(bucket=bucket, prefix=prefix, endpoint_url=endpoint, profile=None, remote=None,
                          rclone_config=None)


def run_upload(endpoint: str, bucket: str, release: Path, *extra: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    return run_cli("upload", "--release-dir", str(release), "--bucket", bucket, "--endpoint-url", endpoint,
                   "--chunk-size", "5M", "--upload-concurrency", "4", *extra, env={**FAST, **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error: exactly one line on stderr, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("objathor-release: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def status_of(stdout: str, name: str) -> str:
    """The status column of ``name``'s row in the upload table (columns are two spaces apart)."""
    (row,) = [x for x in stdout.splitlines() if x.startswith(f"{name}  ")]
    return re.split(r"\s{2,}", row)[3]


def manifest_of(release: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((release / "manifest.json").read_text())
    return data


# --------------------------------------------------------------------------- pure functions


def test_parse_duration_and_remote() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("30m") == 1800
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("0") == 0
    with pytest.raises(UsageError, match="--older-than"):
        parse_duration("yesterday")
    assert parse_remote("r2:bucket/2024_02_01/") == ("r2", "bucket", "2024_02_01")
    assert parse_remote("r2:bucket") == ("r2", "bucket", None)
    with pytest.raises(UsageError, match="NAME:BUCKET/PREFIX"):
        parse_remote("no-colon")


# --------------------------------------------------------------------------- endpoint and credentials


CLEAN_ENV = {"AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull,
             "AWS_EC2_METADATA_DISABLED": "true"}


def resolve(env: dict[str, str], **kw: Any) -> Any:
    args = {"bucket": "b1", "prefix": None, "endpoint_url": None, "profile": None, "remote": None,
            "rclone_config": None, **kw}
    return resolve_target(env={**CLEAN_ENV, **env}, **args)


def test_endpoint_order_and_r2(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in CLEAN_ENV.items():
        monkeypatch.setenv(var, value)
    keys = {"R2_ACCESS_KEY_ID": "r2-access-id", "R2_SECRET_ACCESS_KEY": "r2-secret-value-123"}
    all_vars = {**keys, "AWS_ENDPOINT_URL_S3": "http://s3-specific:1", "AWS_ENDPOINT_URL": "http://generic:2",
                "R2_ACCOUNT_ID": "abc123"}
    assert resolve(all_vars, endpoint_url="http://flag:3").endpoint_url == "http://flag:3"
    assert resolve(all_vars).endpoint_url == "http://s3-specific:1"
    del all_vars["AWS_ENDPOINT_URL_S3"]
    assert resolve(all_vars).endpoint_url == "http://generic:2"
    del all_vars["AWS_ENDPOINT_URL"]
    t = resolve(all_vars)
    assert t.endpoint_url == "https://abc123.r2.cloudflarestorage.com"
    assert t.region == "auto"
    assert t.credential_source == "R2_ACCESS_KEY_ID"
    # the secret never shows, however the target is printed
    for text in (repr(t), str(t), f"{t}", repr([t])):
        assert "r2-secret-value-123" not in text and "r2-access-id" not in text
    client = make_client(t)
    cfg = client.meta.config
    assert cfg.request_checksum_calculation == "when_required"
    assert cfg.response_checksum_validation == "when_required"
    assert cfg.retries["mode"] == "standard"
    assert client.meta.region_name == "auto"
    assert client.meta.endpoint_url == "https://abc123.r2.cloudflarestorage.com"


def test_missing_settings_are_one_line_usage_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "R2_ACCOUNT_ID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in CLEAN_ENV.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(UsageError, match="no bucket given: pass --bucket"):
        resolve({}, bucket=None, endpoint_url="http://x:1")
    with pytest.raises(UsageError, match="no S3 endpoint: pass --endpoint-url"):
        resolve({"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    with pytest.raises(UsageError, match="no S3 credentials: set AWS_ACCESS_KEY_ID") as err:
        resolve({}, endpoint_url="http://x:1")
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="not an http"):
        resolve({}, endpoint_url="ftp://x")
    # a dry run needs no credentials
    assert resolve({}, endpoint_url="http://x:1", require_credentials=False).bucket == "b1"


def test_rclone_remote(tmp_path: Path) -> None:
    conf = tmp_path / "rclone.conf"
    conf.write_text("[r2]\ntype = s3\nprovider = Cloudflare\naccess_key_id = rclone-id\n"
                    "secret_access_key = rclone-secret-xyz\nendpoint = https://acc1.r2.cloudflarestorage.com\n"
                    "\n[local]\ntype = local\n")
    t = resolve({}, bucket=None, remote="r2:my-bucket/2024_02_01", rclone_config=str(conf))
    assert (t.bucket, t.prefix, t.endpoint_url, t.region) == (
        "my-bucket", "2024_02_01", "https://acc1.r2.cloudflarestorage.com", "auto")
    assert "rclone-secret-xyz" not in repr(t) and t.credential_source == "rclone remote 'r2'"
    # $RCLONE_CONFIG and RCLONE_CONFIG_<NAME>_<KEY> variables, as rclone reads them
    t = resolve({"RCLONE_CONFIG": str(conf), "RCLONE_CONFIG_R2_ENDPOINT": "http://127.0.0.1:9"},
                bucket=None, remote="r2:b2")
    assert (t.bucket, t.prefix, t.endpoint_url) == ("b2", None, "http://127.0.0.1:9")
    with pytest.raises(UsageError, match="has type 'local', not s3"):
        resolve({}, remote="local:x", rclone_config=str(conf))
    with pytest.raises(UsageError, match="no rclone remote named 'nope'"):
        resolve({}, remote="nope:x", rclone_config=str(conf))
    enc = tmp_path / "enc.conf"
    enc.write_text("# Encrypted rclone configuration File\n\nRCLONE_ENCRYPT_V0:\nAAAA\n")
    with pytest.raises(UsageError, match="encrypted"):
        resolve({}, remote="r2:x", rclone_config=str(enc))


def test_rclone_remote_end_to_end(s3_env: dict[str, str], s3_server: Any, s3_client: Any, bucket: str,
                                  tmp_path: Path) -> None:
    conf = tmp_path / "rclone.conf"
    conf.write_text(f"[moto]\ntype = s3\nprovider = Other\naccess_key_id = k\nsecret_access_key = s\n"
                    f"endpoint = {s3_server.endpoint_url}\n")
    rel = make_release(tmp_path / "rel", {"annotations.json.gz": random_bytes(1000, seed=3)})
    env = {**FAST, "AWS_ENDPOINT_URL": "", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    proc = run_cli("upload", "--release-dir", str(rel), "--remote", f"moto:{bucket}/some/where",
                   "--rclone-config", str(conf), env=env)
    assert proc.returncode == 0, proc.stderr
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["some/where/SHA256SUMS", "some/where/annotations.json.gz", "some/where/manifest.json"]


# --------------------------------------------------------------------------- the upload, through the real server


def test_etag_part_sizes_md5_and_order(s3_env: dict[str, str], s3_server: Any, s3_client: Any, bucket: str,
                                       release: Path) -> None:
    data = (release / "assets.tar").read_bytes()
    with FaultProxy(s3_server.endpoint_url) as proxy:
        target = target_for(proxy.url, bucket)
        report = upload.upload_release(make_client(target), release, target, CONFIG, show_progress=False)
    by_name = {r.name: r for r in report.results}
    parts = -(-len(data) // PART)
    assert parts == 5
    assert by_name["assets.tar"].etag == expected_etag(data)
    assert (by_name["assets.tar"].parts, by_name["assets.tar"].part_size) == (5, PART)
    assert report.part_uploads == 5
    assert [r.status for r in report.results] == ["uploaded"] * 4

    key = f"{VERSION}/assets.tar"
    head = s3_client.head_object(Bucket=bucket, Key=key)
    assert head["ETag"].strip('"') == expected_etag(data)
    assert head["ContentLength"] == len(data)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    # every part but the last has the same size, read back part by part from the server
    sizes = [s3_client.head_object(Bucket=bucket, Key=key, PartNumber=n)["ContentLength"]
             for n in range(1, parts + 1)]
    assert sizes[:-1] == [PART] * (parts - 1) and sizes[-1] == len(data) - (parts - 1) * PART
    # every part carried the Content-MD5 of its bytes
    seen = part_puts(proxy.log)
    assert sorted(part_number(r) for r in seen) == list(range(1, parts + 1))
    for r in seen:
        n = part_number(r)
        md5_header = {k.lower(): v for k, v in r.headers.items()}["content-md5"]
        assert md5_header == content_md5(data[(n - 1) * PART:n * PART])
    # manifest.json is the very last write, SHA256SUMS just before it
    last_two = [r.path.split("?")[0] for r in writes(proxy.log)[-2:]]
    assert last_two == [f"/{bucket}/{VERSION}/SHA256SUMS", f"/{bucket}/{VERSION}/manifest.json"]
    small = s3_client.get_object(Bucket=bucket, Key=f"{VERSION}/annotations.json.gz")
    assert small["Body"].read() == (release / "annotations.json.gz").read_bytes()
    assert small["ContentType"] == "application/gzip"
    assert remote.published_manifest(s3_client, bucket, VERSION) == manifest_of(release)
    # the remote verify agrees, exactly and by part count
    checks = remote.verify_remote(s3_client, bucket, VERSION, manifest_of(release), release_dir=release)
    assert [(c.name, c.etag_check) for c in checks] == [
        ("annotations.json.gz", "exact"), ("assets.tar", "exact"), ("SHA256SUMS", "exact"),
        ("manifest.json", "exact")]
    # without the local files: exact against the ETags the manifest lists (5 MiB parts are also the
    # layout the build worked them out for), by part count for a manifest that lists none
    checks = remote.verify_remote(s3_client, bucket, VERSION, manifest_of(release), config=CONFIG)
    assert [c.etag_check for c in checks] == ["exact", "exact", "content", "content"]
    assert head["Metadata"]["md5chksum"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    older = manifest_of(release)
    for art in older["artifacts"]:
        for k in ("md5", "etag", "part_size"):
            art.pop(k, None)
    checks = remote.verify_remote(s3_client, bucket, VERSION, older, config=CONFIG, artifacts_only=True)
    assert [c.etag_check for c in checks] == ["part-count", "part-count"]


def test_rerun_is_a_noop(s3_env: dict[str, str], s3_server: Any, s3_client: Any, bucket: str,
                         release: Path) -> None:
    first = run_upload(s3_server.endpoint_url, bucket, release)
    assert first.returncode == 0, first.stderr
    assert "4 uploaded" in first.stdout
    with FaultProxy(s3_server.endpoint_url) as proxy:
        again = run_upload(proxy.url, bucket, release)
        assert again.returncode == 0, again.stderr
        assert writes(proxy.log) == []  # no part uploads, no PUT of any kind
    assert "0 uploaded, 0 resumed, 4 skipped" in again.stdout
    assert "0 part uploads" in again.stdout
    # the same holds without the local state (e.g. another machine): ETags are recomputed locally
    for f in (release / ".upload-state").iterdir():
        f.unlink()
    with FaultProxy(s3_server.endpoint_url) as proxy:
        target = target_for(proxy.url, bucket)
        report = upload.upload_release(make_client(target), release, target, CONFIG, show_progress=False)
        assert writes(proxy.log) == []
    assert [r.status for r in report.results] == ["skipped"] * 4 and report.part_uploads == 0


def test_refuses_to_overwrite_different_object(s3_env: dict[str, str], s3_server: Any, s3_client: Any,
                                               bucket: str, release: Path) -> None:
    key = f"{VERSION}/annotations.json.gz"
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"someone else's bytes")
    proc = run_upload(s3_server.endpoint_url, bucket, release)
    assert proc.returncode == 3
    line = one_line_error(proc)
    assert key in line and "--force" in line
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"someone else's bytes"
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{VERSION}/assets.tar")
    # same size, same sha256 metadata claimed, other bytes: still refused (the ETag differs)
    real = (release / "annotations.json.gz").read_bytes()
    fake = bytes(reversed(real))
    sha = hashlib.sha256(real).hexdigest()
    s3_client.put_object(Bucket=bucket, Key=key, Body=fake, Metadata={"sha256": sha})
    proc = run_upload(s3_server.endpoint_url, bucket, release)
    assert proc.returncode == 3 and "ETag differs" in one_line_error(proc)
    forced = run_upload(s3_server.endpoint_url, bucket, release, "--force")
    assert forced.returncode == 0, forced.stderr
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == real


def test_published_version_with_other_content_is_refused(s3_env: dict[str, str], s3_server: Any,
                                                         s3_client: Any, bucket: str, release: Path) -> None:
    assert run_upload(s3_server.endpoint_url, bucket, release).returncode == 0
    published = s3_client.get_object(Bucket=bucket, Key=f"{VERSION}/manifest.json")["Body"].read()
    (release / "annotations.json.gz").write_bytes(random_bytes(40_000, seed=99))
    write_manifest_files(release)
    proc = run_upload(s3_server.endpoint_url, bucket, release)
    assert proc.returncode == 3
    assert "already published" in one_line_error(proc)
    assert s3_client.get_object(Bucket=bucket, Key=f"{VERSION}/manifest.json")["Body"].read() == published
    forced = run_upload(s3_server.endpoint_url, bucket, release, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "replacing a published version" in forced.stderr
    assert remote.published_manifest(s3_client, bucket, VERSION) == manifest_of(release)
    # annotations.json.gz, SHA256SUMS and manifest.json sent again; assets.tar is unchanged
    assert "3 uploaded, 0 resumed, 1 skipped" in forced.stdout
    remote.verify_remote(s3_client, bucket, VERSION, manifest_of(release), release_dir=release)


def test_resume_after_sigkill_uploads_only_missing_parts(s3_env: dict[str, str], s3_server: Any,
                                                         s3_client: Any, bucket: str, tmp_path: Path) -> None:
    data = tar_bytes(7 * PART + 3 * 1024 * 1024, seed=7)
    release = make_release(tmp_path / "rel", {"assets.tar": data})
    parts = -(-len(data) // PART)
    assert parts == 8
    passed_first = 3
    lock = threading.Lock()
    seen: list[int] = []
    gate = threading.Event()

    def rule(req: Request) -> Any:
        if req.method == "PUT" and "partNumber=" in req.path:
            with lock:
                seen.append(part_number(req))
                allowed = len(seen) <= passed_first
            if not allowed:
                gate.wait(60)  # hold the request until the client is dead, then drop it
                return drop()
        return PASS

    with FaultProxy(s3_server.endpoint_url, rule) as proxy:
        proc = subprocess.Popen(
            [sys.executable, "-m", "objathor_release", "upload", "--release-dir", str(release), "--bucket",
             bucket, "--endpoint-url", proxy.url, "--chunk-size", "5M", "--upload-concurrency", "4"],
            env={**os.environ, **FAST}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 60
            on_server: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                if uploads and len(seen) > passed_first:
                    on_server = s3_client.list_parts(Bucket=bucket, Key=uploads[0]["Key"],
                                                     UploadId=uploads[0]["UploadId"]).get("Parts", [])
                    if len(on_server) == passed_first:
                        break
                time.sleep(0.05)
            assert len(on_server) == passed_first, "the upload never reached the middle of the file"
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            gate.set()
        assert proc.returncode == -signal.SIGKILL
        states = list((release / ".upload-state").glob("assets.tar.*.json"))
        assert len(states) == 1
        assert json.loads(states[0].read_text())["upload_id"] == uploads[0]["UploadId"]
        assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)  # nothing published or complete

        # the same command again, through the same (now healthy) endpoint
        proxy.set_rule(lambda r: PASS)
        time.sleep(0.2)  # let the held requests of the dead client be dropped
        start = len(proxy.log)
        again = run_upload(proxy.url, bucket, release)
        assert again.returncode == 0, again.stderr
        sent = sorted(part_number(r) for r in part_puts(proxy.log[start:]))
    done_before = {p["PartNumber"] for p in on_server}
    assert sent == sorted(set(range(1, parts + 1)) - done_before)  # only the missing parts
    assert f"resuming: {passed_first} of {parts} parts already on the server" in again.stderr
    assert "2 uploaded, 1 resumed, 0 skipped" in again.stdout  # assets.tar resumed, then the two lists
    head = s3_client.head_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")
    assert head["ETag"].strip('"') == expected_etag(data)
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_ctrl_c_stops_cleanly_and_resumes(s3_env: dict[str, str], s3_server: Any, s3_client: Any,
                                          bucket: str, release: Path) -> None:
    held = threading.Event()
    gate = threading.Event()

    def rule(req: Request) -> Any:
        if req.method == "PUT" and "partNumber=" in req.path and part_number(req) >= 3:
            held.set()
            gate.wait(60)
            return drop()
        return PASS

    with FaultProxy(s3_server.endpoint_url, rule) as proxy:
        proc = subprocess.Popen(
            [sys.executable, "-m", "objathor_release", "upload", "--release-dir", str(release), "--bucket",
             bucket, "--endpoint-url", proxy.url, "--chunk-size", "5M", "--upload-concurrency", "2"],
            env={**os.environ, **FAST}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # a shell's background job starts with SIGINT ignored, and a child inherits that: Python then
            # installs no KeyboardInterrupt handler. Ctrl-C is what is tested, so give it its default.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert held.wait(60), "no part reached the proxy"
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
            gate.set()  # the held parts now fail; the interrupted run must not retry them
            _, err = proc.communicate(timeout=60)
        finally:
            gate.set()
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert "interrupted: run the same command again to resume" in err
        assert list((release / ".upload-state").glob("assets.tar.*.json"))
        proxy.set_rule(lambda r: PASS)
        start = len(proxy.log)
        again = run_upload(proxy.url, bucket, release)
        assert again.returncode == 0, again.stderr
        assert status_of(again.stdout, "assets.tar") == "resumed"
        assert 1 not in {part_number(r) for r in part_puts(proxy.log[start:])}  # part 1 was kept


def _fail_part_3(req: Request) -> Any:
    if req.method == "PUT" and "partNumber=3&" in req.path + "&":
        return status(503)
    return PASS


def test_part_that_keeps_failing_ends_run_resumably(s3_env: dict[str, str], s3_server: Any, s3_client: Any,
                                                    bucket: str, release: Path) -> None:
    with FaultProxy(s3_server.endpoint_url, _fail_part_3) as proxy:
        proc = run_upload(proxy.url, bucket, release, "--part-attempts", "2")
        tries = [r for r in part_puts(proxy.log) if part_number(r) == 3]
        assert proc.returncode == 1
        line = one_line_error(proc)
        assert "part 3 of 5 of assets.tar" in line and "after 2 attempts" in line
        assert "run the same command again to resume" in line
        assert len(tries) == 2  # bounded: AWS_MAX_ATTEMPTS=1 times --part-attempts 2
        uploads = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]
        on_server = s3_client.list_parts(Bucket=bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"])
        done = {p["PartNumber"] for p in on_server.get("Parts", [])}
        assert 3 not in done
        listed = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
        assert f"{VERSION}/manifest.json" not in [o["Key"] for o in listed]  # not published

        proxy.set_rule(lambda r: PASS)  # the endpoint recovers; the same command again
        start = len(proxy.log)
        again = run_upload(proxy.url, bucket, release)
        assert again.returncode == 0, again.stderr
        assert sorted(part_number(r) for r in part_puts(proxy.log[start:])) == sorted({1, 2, 3, 4, 5} - done)
    assert status_of(again.stdout, "assets.tar") == "resumed"


def test_recovers_from_503s_and_dropped_connections(s3_env: dict[str, str], s3_server: Any, s3_client: Any,
                                                    bucket: str, release: Path) -> None:
    hits: dict[tuple[str, int], int] = {}
    lock = threading.Lock()

    def rule(req: Request) -> Any:
        if req.method != "PUT" or "partNumber=" not in req.path:
            return PASS
        n = part_number(req)
        with lock:
            hits[("part", n)] = hits.get(("part", n), 0) + 1
            first, second = hits[("part", n)] == 1, hits[("part", n)] == 2
        if n == 1 and first:
            return status(503)
        if n == 2 and (first or second):
            return drop()  # the connection dies without an answer, twice
        if n == 4 and first:
            return status(500)
        if n == 5 and first:
            return status(429)
        return PASS

    env = {"AWS_MAX_ATTEMPTS": "2"}
    with FaultProxy(s3_server.endpoint_url, rule) as proxy:
        proc = run_upload(proxy.url, bucket, release, env=env)
        assert proc.returncode == 0, proc.stderr
        counts = {n: sum(part_number(r) == n for r in part_puts(proxy.log)) for n in range(1, 6)}
    assert counts == {1: 2, 2: 3, 3: 1, 4: 2, 5: 2}
    data = (release / "assets.tar").read_bytes()
    head = s3_client.head_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")
    assert head["ETag"].strip('"') == expected_etag(data)
    assert s3_client.get_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")["Body"].read() == data


def test_stale_upload_id_and_changed_file_start_over(s3_env: dict[str, str], s3_server: Any, s3_client: Any,
                                                     bucket: str, release: Path) -> None:
    with FaultProxy(s3_server.endpoint_url, _fail_part_3) as proxy:
        # 1. an interrupted run whose upload was then aborted on the server (R2 does so after 7 days)
        assert run_upload(proxy.url, bucket, release, "--part-attempts", "1").returncode == 1
        (old,) = s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]
        s3_client.abort_multipart_upload(Bucket=bucket, Key=old["Key"], UploadId=old["UploadId"])
        proxy.set_rule(lambda r: PASS)
        start = len(proxy.log)
        proc = run_upload(proxy.url, bucket, release)
        assert proc.returncode == 0, proc.stderr
        assert "no longer exists on the server: starting over" in proc.stderr
        # annotations.json.gz made it in the first run; assets.tar is sent whole again
        assert "3 uploaded, 0 resumed, 1 skipped" in proc.stdout
        assert len(part_puts(proxy.log[start:])) == 5

        # 2. an interrupted run, then the local file changes: the old upload is aborted, the new one sent whole
        bucket2 = bucket + "-2"
        s3_client.create_bucket(Bucket=bucket2)
        proxy.set_rule(_fail_part_3)
        assert run_upload(proxy.url, bucket2, release, "--part-attempts", "1").returncode == 1
        assert len(s3_client.list_multipart_uploads(Bucket=bucket2)["Uploads"]) == 1
        new = tar_bytes(4 * PART + 1_234_567, seed=42)
        (release / "assets.tar").write_bytes(new)
        write_manifest_files(release)
        proxy.set_rule(lambda r: PASS)
        start = len(proxy.log)
        proc = run_upload(proxy.url, bucket2, release)
        assert proc.returncode == 0, proc.stderr
        assert len(part_puts(proxy.log[start:])) == 5
    assert "local file or part size changed" in proc.stderr
    assert s3_client.list_multipart_uploads(Bucket=bucket2).get("Uploads", []) == []
    head = s3_client.head_object(Bucket=bucket2, Key=f"{VERSION}/assets.tar")
    assert head["ETag"].strip('"') == expected_etag(new)


def test_unreadable_state_starts_over(s3_env: dict[str, str], s3_server: Any, s3_client: Any, bucket: str,
                                      release: Path) -> None:
    with FaultProxy(s3_server.endpoint_url, _fail_part_3) as proxy:
        assert run_upload(proxy.url, bucket, release, "--part-attempts", "1").returncode == 1
        (state,) = (release / ".upload-state").glob("assets.tar.*.json")
        state.write_text("{ not json")
        proxy.set_rule(lambda r: PASS)
        start = len(proxy.log)
        proc = run_upload(proxy.url, bucket, release)
        assert proc.returncode == 0, proc.stderr
        assert len(part_puts(proxy.log[start:])) == 5
    assert "is unreadable: starting over" in proc.stderr
    data = (release / "assets.tar").read_bytes()
    assert s3_client.head_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")["ETag"].strip('"') == \
        expected_etag(data)
    assert json.loads(state.read_text())["status"] == "complete"


# --------------------------------------------------------------------------- clean errors


def test_wrong_endpoint(s3_env: dict[str, str], release: Path) -> None:
    started = time.monotonic()
    proc = run_upload(f"http://127.0.0.1:{free_port()}", "some-bucket", release)
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "cannot connect to the S3 endpoint" in line and "--endpoint-url" in line
    assert time.monotonic() - started < 60


def test_missing_bucket(s3_env: dict[str, str], s3_server: Any, release: Path) -> None:
    proc = run_upload(s3_server.endpoint_url, "no-such-bucket-here", release)
    assert proc.returncode == 2
    assert "bucket 'no-such-bucket-here' does not exist" in one_line_error(proc)


def test_bad_credentials_never_leak(auth_s3_server: Any, release: Path) -> None:
    secret = "SuperSecretValue-9f8e7d6c5b4a"
    access = "AKIAEXAMPLEBADKEY123"
    env = {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL": "",
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    proc = run_upload(auth_s3_server.endpoint_url, "any-bucket", release, "--verbose", env=env)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "refused the request (InvalidAccessKeyId)" in line and "AWS_ACCESS_KEY_ID" in line
    shown = [x for x in proc.stderr.splitlines() if x.startswith("objathor-release: target: S3Target(")]
    assert len(shown) == 1  # --verbose printed the target...
    assert secret not in proc.stdout + proc.stderr  # ...without the secret
    assert access not in proc.stdout + proc.stderr
    # the R2_* names the release workflow passes work the same way
    env = {"R2_ACCESS_KEY_ID": access, "R2_SECRET_ACCESS_KEY": secret, "AWS_ACCESS_KEY_ID": "",
           "AWS_SECRET_ACCESS_KEY": "", "AWS_ENDPOINT_URL": "", "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    proc = run_upload(auth_s3_server.endpoint_url, "any-bucket", release, "-v", env=env)
    assert proc.returncode == 2 and "credentials=<from R2_ACCESS_KEY_ID, hidden>" in proc.stderr
    assert secret not in proc.stdout + proc.stderr


@pytest.mark.parametrize(("chunk", "message"), [("1M", "out of range"), ("6G", "out of range"),
                                                ("lots", "not understood")])
def test_part_size_out_of_range(s3_env: dict[str, str], release: Path, chunk: str, message: str) -> None:
    proc = run_cli("upload", "--release-dir", str(release), "--bucket", "b", "--chunk-size", chunk, env=FAST)
    assert proc.returncode == 2
    assert message in one_line_error(proc)


def test_dry_run_and_automatic_part_size(s3_env: dict[str, str], s3_server: Any, bucket: str,
                                         tmp_path: Path) -> None:
    rel = tmp_path / "rel"
    rel.mkdir()
    big = 60 * 1024**3  # sparse: needs 12,288 parts of 5 MiB, so the part size must grow
    with open(rel / "big.bin", "wb") as fh:
        fh.truncate(big)
    (rel / "annotations.json.gz").write_bytes(b"x" * 100)
    manifest = {"version": VERSION, "tool_version": "0.1.0", "excludes": [], "artifacts": [
        {"name": "annotations.json.gz", "size": 100, "sha256": hashlib.sha256(b"x" * 100).hexdigest(),
         "members": []},
        {"name": "big.bin", "size": big, "sha256": "0" * 64, "members": []}]}
    (rel / "manifest.json").write_text(json.dumps(manifest))
    (rel / "SHA256SUMS").write_text("".join(f"{a['sha256']}  {a['name']}\n" for a in manifest["artifacts"]))
    with FaultProxy(s3_server.endpoint_url) as proxy:
        proc = run_upload(proxy.url, bucket, rel, "--dry-run")
        assert proxy.log == []  # the bucket is not contacted
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [  # the one note, as every note is shown: prefixed, one line
        "objathor-release: big.bin: 60.0 GiB would need more than 10,000 parts of 5.0 MiB: using 7.0 MiB parts"]
    rows = {r[0]: r for r in (re.split(r"\s{2,}", x) for x in proc.stdout.splitlines())}
    assert rows["file"] == ["file", "size", "part size", "parts", "concurrency", "requests", "why"]
    assert rows["big.bin"] == ["big.bin", "60.0 GiB", "7.0 MiB", "8778", "4", str(8778 + 4),
                               "--chunk-size 5.0 MiB would need more than 10,000 parts: 7.0 MiB"]
    assert rows["annotations.json.gz"] == ["annotations.json.gz", "100 B", "-", "1", "1", "3",
                                           "under the 5.0 MiB multipart threshold: one PUT"]
    assert ("connections: at most 4 per file (--upload-concurrency), 32 in all; up to 8 files at once share "
            "them, each part taking the next free one") in proc.stdout.splitlines()
    assert "dry run: would upload 4 files" in proc.stdout


def test_dry_run_prints_the_plan_it_chose_and_why(s3_env: dict[str, str], tmp_path: Path) -> None:
    """At the defaults: one PUT under 8 MiB, 5 MiB parts for a file too small to give every connection
    four, four per connection for a larger one; the connections start at 8 and grow to at most 64."""
    rel = tmp_path / "rel"
    rel.mkdir()
    sizes = {"annotations.json.gz": 8 * 1024**2 - 1, "mid.tar": 38 * 1024**2, "big.tar": 2 * 1024**3}
    for name, size in sizes.items():
        with open(rel / name, "wb") as fh:
            fh.truncate(size)  # sparse
    artifacts = [{"name": n, "size": size, "sha256": "0" * 64, "members": []} for n, size in sizes.items()]
    (rel / "manifest.json").write_text(json.dumps({"version": VERSION, "tool_version": "0.1.0", "excludes": [],
                                                   "artifacts": artifacts}))
    (rel / "SHA256SUMS").write_text("".join(f"{a['sha256']}  {a['name']}\n" for a in artifacts))
    proc = run_cli("upload", "--release-dir", str(rel), "--bucket", "b", "--endpoint-url", "http://127.0.0.1:9",
                   "--dry-run", env=FAST)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # a chosen part size needs no note: the plan says why
    lines = proc.stdout.splitlines()
    rows = {r[0]: r for r in (re.split(r"\s{2,}", x) for x in lines[1:6])}
    assert rows["annotations.json.gz"] == ["annotations.json.gz", "8.0 MiB", "-", "1", "1", "3",
                                           "under the 8.0 MiB multipart threshold: one PUT"]
    assert rows["mid.tar"] == ["mid.tar", "38.0 MiB", "5.0 MiB", "8", "8", "12",
                               "auto: 8 parts of the 5 MiB minimum (too small a file to give each of 64 "
                               "connections 4)"]
    assert rows["big.tar"] == ["big.tar", "2.0 GiB", "8.0 MiB", "256", "8 -> 64 (auto)", "260",
                               "auto: 256 parts so that each of 64 connections has at least 4"]
    assert lines[6] == ("connections: 8 at first, doubled while the total rate grows by a tenth or more, at "
                        "most 64 in all (the memory bound); up to 8 files at once share them, each part "
                        "taking the next free one")
    fixed = run_cli("upload", "--release-dir", str(rel), "--bucket", "b", "--endpoint-url",
                    "http://127.0.0.1:9", "--dry-run", "--chunk-size", "16M", "--upload-concurrency", "3",
                    "--transfers", "2", env=FAST)
    assert fixed.returncode == 0, fixed.stderr
    rows = {r[0]: r for r in (re.split(r"\s{2,}", x) for x in fixed.stdout.splitlines())}
    assert rows["big.tar"] == ["big.tar", "2.0 GiB", "16.0 MiB", "128", "3", "132", "--chunk-size 16.0 MiB"]
    assert rows["mid.tar"][1:5] == ["38.0 MiB", "16.0 MiB", "3", "3"]
    assert ("connections: at most 3 per file (--upload-concurrency), 6 in all; up to 2 files at once share "
            "them, each part taking the next free one") in fixed.stdout.splitlines()


# --------------------------------------------------------------------------- verify and cleanup


def test_verify_remote_names_every_mismatch(s3_env: dict[str, str], s3_server: Any, s3_client: Any,
                                            bucket: str, release: Path) -> None:
    target = target_for(s3_server.endpoint_url, bucket)
    client = make_client(target)
    report = upload.upload_release(client, release, target, CONFIG, show_progress=False)
    manifest = manifest_of(release)
    remote.verify_remote(client, bucket, VERSION, manifest, expected_etags=report.etags())
    real = (release / "annotations.json.gz").read_bytes()
    tampered = real[:-1] + bytes([real[-1] ^ 1])
    s3_client.put_object(Bucket=bucket, Key=f"{VERSION}/annotations.json.gz", Body=tampered,
                         Metadata={"sha256": hashlib.sha256(real).hexdigest()})
    s3_client.delete_object(Bucket=bucket, Key=f"{VERSION}/SHA256SUMS")
    with pytest.raises(ChecksumError) as err:
        remote.verify_remote(client, bucket, VERSION, manifest, release_dir=release)
    text = str(err.value)
    assert f"{VERSION}/annotations.json.gz (ETag" in text and f"{VERSION}/SHA256SUMS (missing)" in text
    assert "assets.tar" not in text and "\n" not in text


def test_etag_mismatch_on_completion_is_an_error(tmp_path: Path) -> None:
    """One precise server answer (a wrong ETag from CompleteMultipartUpload), via a botocore Stubber."""
    import boto3
    from botocore.stub import ANY, Stubber

    rel = make_release(tmp_path / "rel", {"big.bin": random_bytes(PART + 10, seed=4)})
    client = boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                          aws_access_key_id="a", aws_secret_access_key="b")
    data = (rel / "big.bin").read_bytes()
    md5s = [hashlib.md5(data[:PART]).hexdigest(), hashlib.md5(data[PART:]).hexdigest()]
    with Stubber(client) as stub:
        stub.add_client_error("get_object", "NoSuchKey", http_status_code=404)
        for _ in range(3):
            stub.add_client_error("head_object", "404", http_status_code=404)
        stub.add_response("create_multipart_upload", {"UploadId": "u1"}, {"Bucket": "b", "Key": ANY,
                          "ContentType": ANY, "Metadata": ANY})
        stub.add_response("upload_part", {"ETag": f'"{md5s[0]}"'})
        stub.add_response("upload_part", {"ETag": f'"{md5s[1]}"'})
        stub.add_response("complete_multipart_upload", {"ETag": '"0123456789abcdef0123456789abcdef-2"'})
        stub.add_response("delete_object", {})
        config = UploadConfig(chunk_size=PART, multipart_threshold=PART, upload_concurrency=1, transfers=1)
        with pytest.raises(ChecksumError, match="is not the local .*-2: the object was deleted"):
            upload.upload_release(client, rel, ("b", None), config, show_progress=False)
        stub.assert_no_pending_responses()


def test_cleanup_aborts_abandoned_uploads(s3_env: dict[str, str], s3_server: Any, s3_client: Any,
                                          bucket: str) -> None:
    for key in ("2024_02_01/assets.tar", "2024_02_01/features.tar", "other/x.tar"):
        s3_client.create_multipart_upload(Bucket=bucket, Key=key)
    base = ["cleanup", "--bucket", bucket, "--endpoint-url", s3_server.endpoint_url]
    young = run_cli(*base, "--older-than", "36500d", env=FAST)  # nothing is 100 years old
    assert young.returncode == 0, young.stderr
    assert "aborted 0 incomplete multipart upload(s)" in young.stdout
    listed = run_cli(*base, "--prefix", "2024_02_01/", "--dry-run", env=FAST)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("would abort") == 2 and "found 2 incomplete" in listed.stdout
    assert len(s3_client.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 3
    done = run_cli(*base, "--older-than", "24h", env=FAST)  # moto dates every upload in 2010
    assert done.returncode == 0, done.stderr
    assert "aborted 3 incomplete multipart upload(s) older than 24h" in done.stdout
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_report_table_and_summary(s3_env: dict[str, str], s3_server: Any, bucket: str, release: Path) -> None:
    target = target_for(s3_server.endpoint_url, bucket, prefix="custom/prefix")
    out = io.StringIO()
    report = upload.upload_release(make_client(target), release, target, CONFIG, show_progress=False,
                                   log=lambda s: out.write(s + "\n"))
    assert out.getvalue() == ""  # a first upload at the configured part size has nothing to note
    assert report.prefix == "custom/prefix"
    assert all(r.key.startswith("custom/prefix/") for r in report.results)
    table = report.table().splitlines()
    assert table[0].split() == ["file", "size", "parts", "status", "etag"]
    assert any(x.startswith("assets.tar") and "5 x 5.0 MiB" in x and "uploaded" in x for x in table)
    assert report.summary().startswith(f"s3://{bucket}/custom/prefix/: 4 uploaded, 0 resumed, 0 skipped")
