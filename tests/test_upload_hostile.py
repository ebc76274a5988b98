"""Upload and publish against hostile input and hostile servers: a real moto server over HTTP on
127.0.0.1, answers rewritten by tests/s3proxy.py.

Every failure must be one line (no traceback), name what is wrong, keep the secrets out, never
say "verified", and leave the version unpublished.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from objathor_release.cli import main
from objathor_release.errors import ChecksumError, InputError, PublishedError, ReleaseError, TransferError
from objathor_release.publish import remote, upload
from objathor_release.publish.client import make_client
from objathor_release.publish.upload_state import UploadState
from objathor_release.s3.target import resolve_target
from objathor_release.settings import UploadConfig
from tests.support.fixtures_upload import PART, VERSION, expected_etag, make_release, random_bytes, tar_bytes
from tests.support.s3proxy import Exchange, Reply, S3Proxy, set_xml, xml_error

ACCESS = "hostile-access-Kp2Lm9Qx"
SECRET = "hostile-secret-Zq8Wv3Rt7Yu"
MANIFEST_KEY = f"{VERSION}/manifest.json"
CONFIG = UploadConfig(chunk_size=PART, multipart_threshold=PART, upload_concurrency=2, transfers=2,
                      max_part_attempts=2)


@pytest.fixture
def env(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_MAX_ATTEMPTS": "1",
                       "OBJATHOR_PROGRESS": "0", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)


def small_release(root: Path, seed: int = 1) -> Path:
    """assets.tar in 2 parts of 5 MiB (the second short), and a small annotations file."""
    return make_release(root, {"assets.tar": tar_bytes(PART, seed=seed),
                               "annotations.json.gz": random_bytes(3000, seed=seed + 100)})


def cli(capsys: pytest.CaptureFixture[str], endpoint: str, bucket: str, release: Path, *extra: str
        ) -> tuple[int, str, str]:
    code = main(["upload", "--release-dir", str(release), "--bucket", bucket, "--endpoint-url", endpoint,
                 "--chunk-size", "5M", "--upload-concurrency", "2", "--part-attempts", "2", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def failure(code: int, out: str, err: str, exit_code: int) -> str:
    """The one error line of a failed run (checked: exit code, no traceback, no secret, no 'verified')."""
    assert code == exit_code, (code, out, err)
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("objathor-release: error:")]
    assert len(lines) == 1, err
    assert SECRET not in out + err and ACCESS not in out + err
    assert "verified" not in out + err
    assert "\n" not in lines[0]
    return lines[0]


def keys(s3_client: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def pending(s3_client: Any, bucket: str) -> list[Any]:
    uploads: list[Any] = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def flip(path: Path, offset: int) -> None:
    """Change one byte in place: same size, same mtime."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def manifest_of(release: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((release / "manifest.json").read_text())
    return data


def fail_part(number: int) -> Callable[[Exchange], Reply | None]:
    def rule(ex: Exchange) -> Reply | None:
        if ex.op == "UploadPart" and ex.query.get("partNumber") == str(number):
            return xml_error("ServiceUnavailable", status=503)
        return None
    return rule


# --------------------------------------------------------------------------- bytes that are not the manifest's


@pytest.mark.parametrize(("name", "offset"), [("assets.tar", 0), ("assets.tar", PART + 700),
                                              ("assets.tar", -1), ("annotations.json.gz", 1500)])
def test_file_changed_after_the_manifest_is_refused(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    name: str, offset: int) -> None:
    rel = small_release(tmp_path / "rel")
    want = manifest_of(rel)
    flip(rel / name, offset)
    got = hashlib.sha256((rel / name).read_bytes()).hexdigest()
    line = failure(*cli(capsys, s3_server.endpoint_url, bucket, rel), exit_code=2)
    sha = next(a["sha256"] for a in want["artifacts"] if a["name"] == name)
    assert f"{rel / name} changed after manifest.json was written (sha256 {got} != manifest {sha}): " \
           "rebuild the release" in line
    listed = keys(s3_client, bucket)
    assert MANIFEST_KEY not in listed and f"{VERSION}/SHA256SUMS" not in listed
    assert f"{VERSION}/{name}" not in listed
    # the multipart upload of wrong bytes was aborted (another file's may stay, resumable)
    assert f"{VERSION}/{name}" not in [u["Key"] for u in pending(s3_client, bucket)]


def test_single_put_of_changed_bytes_sends_nothing(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rel = make_release(tmp_path / "rel", {"annotations.json.gz": random_bytes(3000, seed=5)})
    flip(rel / "annotations.json.gz", 0)
    with S3Proxy(s3_server.endpoint_url) as proxy:
        line = failure(*cli(capsys, proxy.url, bucket, rel), exit_code=2)
    assert "annotations.json.gz changed after manifest.json was written" in line
    assert proxy.ops("PutObject") == []  # refused before sending
    assert keys(s3_client, bucket) == []


def test_resumed_upload_hashes_the_parts_already_on_the_server(env: None, s3_server: Any, s3_client: Any,
                                                               bucket: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    rel = make_release(tmp_path / "rel", {"assets.tar": tar_bytes(2 * PART, seed=3)})  # 3 parts
    with S3Proxy(s3_server.endpoint_url, before=fail_part(3)) as proxy:
        failure(*cli(capsys, proxy.url, bucket, rel), exit_code=1)
        (upload_id,) = [u["UploadId"] for u in pending(s3_client, bucket)]
        on_server = s3_client.list_parts(Bucket=bucket, Key=f"{VERSION}/assets.tar", UploadId=upload_id)
        assert sorted(p["PartNumber"] for p in on_server["Parts"]) == [1, 2]
        flip(rel / "assets.tar", 10)  # inside part 1, which this run will not send again if it matches
        proxy.set_rules()
        start = len(proxy.log)
        code, out, err = cli(capsys, proxy.url, bucket, rel)
        sent = [ex.query["partNumber"] for ex in proxy.log[start:] if ex.op == "UploadPart"]
    line = failure(code, out, err, exit_code=2)
    assert f"{rel / 'assets.tar'} changed after manifest.json was written" in line
    assert "1" in sent  # part 1's md5 no longer matched the server's part: it was read, and sent again
    assert keys(s3_client, bucket) == [] and pending(s3_client, bucket) == []
    assert not list((rel / ".upload-state").glob("assets.tar.*.json"))  # the resume record is gone


def test_skipping_an_object_already_uploaded_reads_the_local_file(env: None, s3_server: Any, s3_client: Any,
                                                                   bucket: str, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rel = small_release(tmp_path / "rel")
    code, out, err = cli(capsys, s3_server.endpoint_url, bucket, rel)
    assert code == 0, err
    published = s3_client.get_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")["Body"].read()
    flip(rel / "assets.tar", PART + 3)  # same size, same mtime: the resume record still "matches"
    for drop_state in (False, True):
        if drop_state:
            for f in (rel / ".upload-state").iterdir():
                f.unlink()
        with S3Proxy(s3_server.endpoint_url) as proxy:
            line = failure(*cli(capsys, proxy.url, bucket, rel), exit_code=2)
            assert [ex for ex in proxy.log if ex.method in ("PUT", "POST", "DELETE")] == []
        assert "assets.tar changed after manifest.json was written" in line
    assert s3_client.get_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")["Body"].read() == published


@pytest.mark.parametrize("case", ["wrong sha", "extra line", "missing line", "empty", "not utf-8"])
def test_sha256sums_must_match_the_manifest(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    rel = small_release(tmp_path / "rel")
    sums = rel / "SHA256SUMS"
    lines = sums.read_text().splitlines(keepends=True)
    text = {"wrong sha": lines[0].replace(lines[0][:8], "00000000") + lines[1],
            "extra line": "".join(lines) + f"{'0' * 64}  features.tar\n",
            "missing line": lines[0], "empty": ""}.get(case)
    sums.write_bytes(text.encode() if text is not None else b"\xff\xfe" + sums.read_bytes())
    line = failure(*cli(capsys, s3_server.endpoint_url, bucket, rel), exit_code=2)
    assert f"{sums}: does not list exactly the artifacts and sha256 of manifest.json" in line
    assert keys(s3_client, bucket) == []


def test_sha256sums_in_another_order_is_fine(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rel = small_release(tmp_path / "rel")
    sums = rel / "SHA256SUMS"
    sums.write_text("".join(reversed(sums.read_text().splitlines(keepends=True))))
    code, out, err = cli(capsys, s3_server.endpoint_url, bucket, rel)
    assert code == 0, err
    assert "every object verified" in out
    assert MANIFEST_KEY in keys(s3_client, bucket)


# --------------------------------------------------------------------------- files that are not regular files


def _outside_copy(tmp_path: Path, rel: Path, name: str) -> Path:
    copy = tmp_path / "outside" / name
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes((rel / name).read_bytes())
    return copy


def _make_hostile(case: str, rel: Path, tmp_path: Path) -> tuple[Path, str]:
    """Turn one file of ``rel`` into ``case``; (the path the message must name, what it must say)."""
    if case == "symlinked artifact, same bytes":
        copy = _outside_copy(tmp_path, rel, "assets.tar")
        (rel / "assets.tar").unlink()
        (rel / "assets.tar").symlink_to(copy)
        return rel / "assets.tar", "a symlink"
    if case == "SHA256SUMS to /etc/passwd":
        (rel / "SHA256SUMS").unlink()
        (rel / "SHA256SUMS").symlink_to("/etc/passwd")
        return rel / "SHA256SUMS", "a symlink"
    if case == "symlinked manifest":
        copy = _outside_copy(tmp_path, rel, "manifest.json")
        (rel / "manifest.json").unlink()
        (rel / "manifest.json").symlink_to(copy)
        return rel / "manifest.json", "a symlink"
    if case == "FIFO":
        (rel / "annotations.json.gz").unlink()
        os.mkfifo(rel / "annotations.json.gz")
        return rel / "annotations.json.gz", "a FIFO"
    if case == "folder":
        (rel / "annotations.json.gz").unlink()
        (rel / "annotations.json.gz").mkdir()
        return rel / "annotations.json.gz", "a directory"
    if case == "device":
        (rel / "annotations.json.gz").unlink()
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(rel / "annotations.json.gz", 0o600 | 0o020000, os.makedev(1, 3))  # like /dev/null
        return rel / "annotations.json.gz", "a character device"
    if case == "SHA256SUMS FIFO":
        (rel / "SHA256SUMS").unlink()
        os.mkfifo(rel / "SHA256SUMS")
        return rel / "SHA256SUMS", "a FIFO"
    if case == "manifest folder":
        (rel / "manifest.json").unlink()
        (rel / "manifest.json").mkdir()
        return rel / "manifest.json", "a directory"
    if case == "symlinked folder on the way":
        copy = tmp_path / "outside-features"
        (rel / "features").rename(copy)
        (rel / "features").symlink_to(copy)
        return rel / "features", "a symlink"
    if case == "file where a folder should be":
        data = (rel / "features" / "clip.pkl").read_bytes()
        (rel / "features" / "clip.pkl").unlink()
        (rel / "features").rmdir()
        (rel / "features").write_bytes(data)
        return rel / "features", "a file where a folder should be"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["symlinked artifact, same bytes", "SHA256SUMS to /etc/passwd",
                                  "symlinked manifest", "FIFO", "folder", "device",
                                  "symlinked folder on the way", "file where a folder should be",
                                  "SHA256SUMS FIFO", "manifest folder"])
def test_artifacts_must_be_regular_files_inside_the_release(env: None, s3_server: Any, s3_client: Any,
                                                            bucket: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str], case: str) -> None:
    rel = make_release(tmp_path / "rel", {"assets.tar": tar_bytes(1000, seed=1),
                                          "annotations.json.gz": random_bytes(3000, seed=2),
                                          "features/clip.pkl": random_bytes(500, seed=3)})
    named, what = _make_hostile(case, rel, tmp_path)
    started = time.monotonic()
    with S3Proxy(s3_server.endpoint_url) as proxy:
        line = failure(*cli(capsys, proxy.url, bucket, rel), exit_code=2)
        assert proxy.log == []  # refused before the bucket was contacted
    assert time.monotonic() - started < 10  # a FIFO never blocks the run
    assert f"{named}: {what}" in line, line
    assert keys(s3_client, bucket) == []
    assert not (rel / ".upload-state").exists()


@pytest.mark.parametrize("case", ["folder is a symlink", "folder is a file", "record is a symlink",
                                  "record is a FIFO"])
def test_the_resume_folder_and_records_are_not_followed(env: None, s3_server: Any, s3_client: Any,
                                                        bucket: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str], case: str) -> None:
    rel = small_release(tmp_path / "rel")
    outside = tmp_path / "outside"
    outside.mkdir()
    state = rel / ".upload-state"
    record = state / UploadState.name_for(s3_server.endpoint_url, bucket, f"{VERSION}/assets.tar",
                                          "assets.tar")
    if case == "folder is a symlink":
        state.symlink_to(outside)
        named, what = state, "the upload's resume folder is a symlink"
    elif case == "folder is a file":
        state.write_text("{}")
        named, what = state, "the upload's resume folder is a file"
    else:
        state.mkdir()
        if case == "record is a symlink":
            record.symlink_to(outside / "elsewhere.json")
            named, what = record, "a symlink, not a resume record"
        else:
            os.mkfifo(record)
            named, what = record, "a FIFO, not a resume record"
    line = failure(*cli(capsys, s3_server.endpoint_url, bucket, rel), exit_code=2)
    assert f"{named}: {what}" in line, line
    assert list(outside.iterdir()) == []  # nothing written through the link
    assert MANIFEST_KEY not in keys(s3_client, bucket)


def test_resume_records_are_written_by_rename(env: None, s3_server: Any, bucket: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rel = small_release(tmp_path / "rel")
    code, _, err = cli(capsys, s3_server.endpoint_url, bucket, rel)
    assert code == 0, err
    records = sorted(p.name for p in (rel / ".upload-state").iterdir())
    assert len(records) == 4 and all(n.endswith(".json") and not n.startswith(".") for n in records)
    for p in (rel / ".upload-state").iterdir():
        assert json.loads(p.read_text())["status"] == "complete"


# --------------------------------------------------------------------------- two publishers of one version


class _Serialize:
    """Hold the first request of ``op`` for ``key`` from each of two clients until both arrived, then
    forward them one at a time: two publishers reach the same conditional create together."""

    def __init__(self, op: str, key: str) -> None:
        self.op, self.key = op, key
        self.barrier = threading.Barrier(2)
        self.lock = threading.Lock()
        self.seen = 0

    def hold(self, ex: Exchange) -> bool:
        if ex.op != self.op or ex.key != self.key:
            return False
        with self.lock:
            self.seen += 1
            first_two = self.seen <= 2
        if first_two:
            self.barrier.wait(timeout=30)
        return True


class _OneAtATime(S3Proxy):
    """S3Proxy whose matching requests are forwarded one at a time, after both clients sent theirs."""

    def __init__(self, upstream: str, gate: _Serialize) -> None:
        super().__init__(upstream)
        lock = threading.Lock()

        def before(ex: Exchange) -> Reply | None:
            if gate.hold(ex):
                with lock:
                    return self.forward(ex)
            return None

        self.set_rules(before=before)


def _publish_in_threads(endpoint: str, bucket: str, releases: list[Path], logs: list[str] | None = None
                        ) -> list[BaseException | None]:
    results: list[BaseException | None] = [None, None]
    logs = [] if logs is None else logs

    def run(i: int) -> None:
        target = resolve_target(bucket=bucket, prefix=None, endpoint_url=endpoint, profile=None, remote=None,
                                rclone_config=None)
        try:
            upload.upload_release(make_client(target), releases[i], target, CONFIG, show_progress=False,
                                  log=logs.append)
        except BaseException as exc:  # noqa: BLE001 - collected for the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_two_publishes_of_one_version_race_for_an_artifact(env: None, s3_server: Any, s3_client: Any,
                                                          bucket: str, tmp_path: Path) -> None:
    a = make_release(tmp_path / "a", {"assets.tar": tar_bytes(PART, seed=1)})
    b = make_release(tmp_path / "b", {"assets.tar": tar_bytes(PART, seed=2)})
    gate = _Serialize("CompleteMultipartUpload", f"{VERSION}/assets.tar")
    with _OneAtATime(s3_server.endpoint_url, gate) as proxy:
        results = _publish_in_threads(proxy.url, bucket, [a, b])
    assert sum(r is None for r in results) == 1, results
    loser = next(r for r in results if r is not None)
    winner = [a, b][results.index(None)]
    assert isinstance(loser, PublishedError) and loser.exit_code == 3
    assert f"another upload wrote s3://{bucket}/{VERSION}/assets.tar first, with other content" in str(loser)
    assert "--force" in str(loser)
    # what is published is exactly the winner's release, and the remote check agrees
    assert remote.published_manifest(s3_client, bucket, VERSION) == manifest_of(winner)
    remote.verify_remote(s3_client, bucket, VERSION, manifest_of(winner), release_dir=winner)
    data = s3_client.get_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")["Body"].read()
    assert data == (winner / "assets.tar").read_bytes()
    assert pending(s3_client, bucket) == []  # the loser's upload was aborted


def test_two_publishes_race_for_the_manifest(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                             tmp_path: Path) -> None:
    files = {"annotations.json.gz": random_bytes(3000, seed=4)}
    a = make_release(tmp_path / "a", files)
    b = make_release(tmp_path / "b", files)
    other = manifest_of(b)
    other["tool_version"] = "9.9.9"  # same artifacts, another manifest.json
    (b / "manifest.json").write_text(json.dumps(other, indent=1) + "\n")
    gate = _Serialize("PutObject", MANIFEST_KEY)
    with _OneAtATime(s3_server.endpoint_url, gate) as proxy:
        results = _publish_in_threads(proxy.url, bucket, [a, b])
    assert sum(r is None for r in results) == 1, results
    loser = next(r for r in results if r is not None)
    winner, lost = ([a, b][results.index(None)], [a, b][1 - results.index(None)])
    assert isinstance(loser, PublishedError) and loser.exit_code == 3
    assert f"another publish of version {VERSION} won at s3://{bucket}/{VERSION}/: its manifest.json " \
           f"differs from {lost / 'manifest.json'}" in str(loser)
    body = s3_client.get_object(Bucket=bucket, Key=MANIFEST_KEY)["Body"].read()
    assert body == (winner / "manifest.json").read_bytes()
    remote.verify_remote(s3_client, bucket, VERSION, manifest_of(winner), release_dir=winner)


def test_two_identical_publishes_both_succeed(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                              tmp_path: Path) -> None:
    files = {"assets.tar": tar_bytes(PART, seed=6), "annotations.json.gz": random_bytes(3000, seed=7)}
    a = make_release(tmp_path / "a", files)
    b = tmp_path / "b"
    b.mkdir()
    for f in a.iterdir():
        if f.is_file():
            (b / f.name).write_bytes(f.read_bytes())
    gate = _Serialize("CompleteMultipartUpload", f"{VERSION}/assets.tar")
    logs: list[str] = []
    with _OneAtATime(s3_server.endpoint_url, gate) as proxy:
        results = _publish_in_threads(proxy.url, bucket, [a, b], logs)
    assert results == [None, None]
    assert "assets.tar: already there, identical (written meanwhile by another upload of the same release)" \
        in logs
    remote.verify_remote(s3_client, bucket, VERSION, manifest_of(a), release_dir=a)
    assert pending(s3_client, bucket) == []


def test_two_processes_publish_different_content_at_once(s3_env: dict[str, str], s3_server: Any,
                                                         s3_client: Any, bucket: str, tmp_path: Path) -> None:
    releases = [make_release(tmp_path / n, {"assets.tar": tar_bytes(PART, seed=s)}) for n, s in (("a", 1),
                                                                                               ("b", 2))]
    env = {**os.environ, "AWS_MAX_ATTEMPTS": "1", "OBJATHOR_PROGRESS": "0"}
    procs = [subprocess.Popen([sys.executable, "-m", "objathor_release", "upload", "--release-dir", str(r),
                               "--bucket", bucket, "--endpoint-url", s3_server.endpoint_url, "--chunk-size",
                               "5M"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in releases]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = [p.returncode for p in procs]
    # 3: the loser's conditional create was refused. 1: moto's conditional create is a check, then a
    # write (S3's and R2's is atomic), so both creates can succeed; the loser's own check after the
    # upload then finds the object is not its own and publishes nothing.
    assert sorted(codes) in ([0, 1], [0, 3]), outs
    winner = releases[codes.index(0)]
    _, err = outs[1 - codes.index(0)]
    assert "Traceback" not in err and "objathor-release: error:" in err and "--force" in err
    assert remote.published_manifest(s3_client, bucket, VERSION) == manifest_of(winner)
    stored = s3_client.get_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")["Body"].read()
    if stored == (winner / "assets.tar").read_bytes():
        remote.verify_remote(s3_client, bucket, VERSION, manifest_of(winner), release_dir=winner)
    else:  # only possible through moto's non-atomic create: the remote verify must catch the mix
        with pytest.raises(ChecksumError, match="assets.tar"):
            remote.verify_remote(s3_client, bucket, VERSION, manifest_of(winner), release_dir=winner)


def test_remote_verify_catches_a_mixed_release(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = small_release(tmp_path / "a", seed=1)
    b = small_release(tmp_path / "b", seed=2)
    assert cli(capsys, s3_server.endpoint_url, bucket, a)[0] == 0
    # another publisher's assets.tar lands over the published one (e.g. a --force run of the other release)
    data = (b / "assets.tar").read_bytes()
    s3_client.put_object(Bucket=bucket, Key=f"{VERSION}/assets.tar", Body=data,
                         Metadata={"sha256": hashlib.sha256(data).hexdigest()})
    with pytest.raises(ChecksumError) as err:
        remote.verify_remote(s3_client, bucket, VERSION, manifest_of(a), release_dir=a)
    assert f"{VERSION}/assets.tar (size" in str(err.value) or f"{VERSION}/assets.tar (ETag" in str(err.value)
    with pytest.raises(ChecksumError, match="assets.tar"):
        remote.verify_remote(s3_client, bucket, VERSION, manifest_of(a), config=CONFIG)
    line = failure(*cli(capsys, s3_server.endpoint_url, bucket, a), exit_code=3)
    assert f"{VERSION}/assets.tar" in line and "--force" in line


# --------------------------------------------------------------------------- servers that lie


def _release_and_run(capsys: pytest.CaptureFixture[str], s3_server: Any, bucket: str, tmp_path: Path,
                     before: Callable[[Exchange], Reply | None] | None = None,
                     after: Callable[[Exchange, Reply], Reply] | None = None) -> tuple[int, str, str, S3Proxy]:
    rel = small_release(tmp_path / "rel")
    with S3Proxy(s3_server.endpoint_url, before=before, after=after) as proxy:
        code, out, err = cli(capsys, proxy.url, bucket, rel)
    return code, out, err, proxy


def _rewrite(op: str, change: Callable[[Reply], Reply], key_part: str = "") -> Callable[[Exchange, Reply], Reply]:
    def after(ex: Exchange, reply: Reply) -> Reply:
        return change(reply) if ex.op == op and key_part in ex.key else reply
    return after


OTHER_MD5 = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("etag", [f'"{OTHER_MD5}"', None, '"not-an-etag"', '""'])
def test_upload_part_with_a_wrong_etag(env: None, s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str], etag: str | None) -> None:
    code, out, err, proxy = _release_and_run(
        capsys, s3_server, bucket, tmp_path, after=_rewrite("UploadPart", lambda r: r.set_header("ETag", etag)))
    line = failure(code, out, err, exit_code=1)
    assert "uploading part" in line and "failed after 2 attempts" in line and "!= local md5" in line
    assert MANIFEST_KEY not in keys(s3_client, bucket)
    assert f"{VERSION}/assets.tar" not in keys(s3_client, bucket)


@pytest.mark.parametrize("change", [
    lambda r: Reply(r.status, r.headers, set_xml(r.body, "ETag", f"&quot;{OTHER_MD5}-2&quot;")),
    lambda r: Reply(r.status, r.headers, set_xml(r.body, "ETag", None)),
    lambda r: Reply(r.status, r.headers, set_xml(r.body, "ETag", "&quot;zz-2&quot;")),
], ids=["other etag", "no etag", "garbled etag"])
def test_complete_with_a_wrong_etag(env: None, s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], change: Callable[[Reply], Reply]) -> None:
    code, out, err, _ = _release_and_run(capsys, s3_server, bucket, tmp_path,
                                         after=_rewrite("CompleteMultipartUpload", change))
    line = failure(code, out, err, exit_code=1)
    assert f"s3://{bucket}/{VERSION}/assets.tar: the server's ETag" in line and "the object was deleted" in line
    assert MANIFEST_KEY not in keys(s3_client, bucket)
    assert f"{VERSION}/assets.tar" not in keys(s3_client, bucket)


@pytest.mark.parametrize(("header", "value", "why"), [
    ("Content-Length", "12", "size 12 != "),
    ("x-amz-meta-sha256", "0" * 64, "sha256 metadata 000"),
    ("x-amz-meta-sha256", None, "sha256 metadata missing"),
    ("ETag", f'"{OTHER_MD5}"', f"ETag {OTHER_MD5} != "),
])
def test_head_that_lies_after_the_upload(env: None, s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], header: str, value: str | None,
                                         why: str) -> None:
    uploaded: set[str] = set()

    def after(ex: Exchange, reply: Reply) -> Reply:
        if ex.op in ("PutObject", "CompleteMultipartUpload") and reply.status == 200:
            uploaded.add(ex.key)
        if ex.op == "HeadObject" and ex.key in uploaded and "annotations" in ex.key:
            reply.set_header(header, value)
        return reply

    code, out, err, _ = _release_and_run(capsys, s3_server, bucket, tmp_path, after=after)
    line = failure(code, out, err, exit_code=1)
    assert f"s3://{bucket}/{VERSION}/annotations.json.gz: " in line and why in line and "after upload" in line
    assert MANIFEST_KEY not in keys(s3_client, bucket)


@pytest.mark.parametrize(("header", "value", "exit_code", "why"), [
    ("Content-Length", "12", 3, f"{VERSION}/annotations.json.gz (size 12 != local"),
    ("x-amz-meta-sha256", "0" * 64, 3, f"{VERSION}/annotations.json.gz (sha256 metadata differs"),
    ("ETag", '"0123"', 3, f"{VERSION}/annotations.json.gz (ETag differs"),
    ("Content-Length", "garbage", 1, "could not be read (ValueError"),
])
def test_head_that_invents_an_object_before_the_upload(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       header: str, value: str, exit_code: int, why: str) -> None:
    def before(ex: Exchange) -> Reply | None:
        if ex.op == "HeadObject" and ex.key.endswith("annotations.json.gz"):
            sha = hashlib.sha256(random_bytes(3000, seed=101)).hexdigest()
            headers = {"ETag": f'"{OTHER_MD5}"', "Content-Length": "3000", "x-amz-meta-sha256": sha}
            headers[header] = value
            return Reply(200, headers)
        return None

    code, out, err, _ = _release_and_run(capsys, s3_server, bucket, tmp_path, before=before)
    line = failure(code, out, err, exit_code=exit_code)
    assert why in line and f"{VERSION}/annotations.json.gz" in line
    assert keys(s3_client, bucket) == []


def _interrupted(capsys: pytest.CaptureFixture[str], proxy: S3Proxy, s3_client: Any, bucket: str,
                 tmp_path: Path) -> Path:
    """A release whose first run (through ``proxy``) stopped with parts 1 and 2 of 3 on the server;
    the proxy's rules are then reset."""
    rel = make_release(tmp_path / "rel", {"assets.tar": tar_bytes(2 * PART, seed=8)})
    proxy.set_rules(before=fail_part(3))
    failure(*cli(capsys, proxy.url, bucket, rel), exit_code=1)
    assert len(pending(s3_client, bucket)) == 1
    proxy.set_rules()
    return rel


def _parts_xml(reply: Reply, parts: list[tuple[int, str, int]]) -> Reply:
    body = reply.body
    start, end = body.find(b"<Part>"), body.rfind(b"</Part>") + len(b"</Part>")
    listed = b"".join(f"<Part><PartNumber>{n}</PartNumber><ETag>&quot;{e}&quot;</ETag><Size>{s}</Size>"
                      f"<LastModified>2024-01-01T00:00:00.000Z</LastModified></Part>".encode()
                      for n, e, s in parts)
    if start < 0:
        start = end = body.find(b"</ListPartsResult>")
    return Reply(reply.status, reply.headers, body[:start] + listed + body[end:])


@pytest.mark.parametrize("lie", ["parts missing", "wrong etags", "wrong sizes", "numbers out of range"])
def test_list_parts_that_lies_about_real_parts(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str], lie: str) -> None:
    with S3Proxy(s3_server.endpoint_url) as proxy:
        rel = _interrupted(capsys, proxy, s3_client, bucket, tmp_path)
        data = (rel / "assets.tar").read_bytes()
        md5 = [hashlib.md5(data[i:i + PART]).hexdigest() for i in range(0, len(data), PART)]
        listed = {"parts missing": [],
                  "wrong etags": [(1, OTHER_MD5, PART), (2, OTHER_MD5, PART)],
                  "wrong sizes": [(1, md5[0], PART - 1), (2, md5[1], 7)],
                  "numbers out of range": [(0, md5[0], PART), (99, md5[1], PART)]}[lie]
        proxy.set_rules(after=_rewrite("ListParts", lambda r: _parts_xml(r, listed)))
        start = len(proxy.log)
        code, out, err = cli(capsys, proxy.url, bucket, rel)
        sent = sorted(int(ex.query["partNumber"]) for ex in proxy.log[start:] if ex.op == "UploadPart")
        listings = [ex for ex in proxy.log[start:] if ex.op == "ListParts"]
    assert code == 0, err
    assert len(listings) == 1 and "resuming: 0 of 3 parts already on the server" in err
    assert sent == [1, 2, 3]  # nothing the listing claimed was trusted: every part was sent
    head = s3_client.head_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")
    assert head["ETag"].strip('"') == expected_etag(data)
    assert "every object verified" in out


def test_list_parts_that_claims_a_part_the_server_lacks(env: None, s3_server: Any, s3_client: Any,
                                                         bucket: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with S3Proxy(s3_server.endpoint_url) as proxy:
        rel = _interrupted(capsys, proxy, s3_client, bucket, tmp_path)
        data = (rel / "assets.tar").read_bytes()
        md5 = [hashlib.md5(data[i:i + PART]).hexdigest() for i in range(0, len(data), PART)]
        claim = [(1, md5[0], PART), (2, md5[1], PART), (3, md5[2], len(data) - 2 * PART)]
        proxy.set_rules(after=_rewrite("ListParts", lambda r: _parts_xml(r, claim)))
        start = len(proxy.log)
        code, out, err = cli(capsys, proxy.url, bucket, rel)
        assert [ex for ex in proxy.log[start:] if ex.op == "UploadPart"] == []  # part 3 looked done
        line = failure(code, out, err, exit_code=1)
        assert "the server lacks parts it listed (InvalidPart)" in line and "starts over" in line
        assert MANIFEST_KEY not in keys(s3_client, bucket) and pending(s3_client, bucket) == []
        proxy.set_rules()
        code, out, err = cli(capsys, proxy.url, bucket, rel)  # the next run starts over and works
    assert code == 0, err
    assert s3_client.head_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")["ETag"].strip('"') == \
        expected_etag(data)


GARBAGE: dict[str, Callable[[Reply], Reply]] = {
    "truncated xml": lambda r: Reply(200, r.headers, r.body[: len(r.body) // 2]),
    "not xml": lambda r: Reply(200, {"Content-Type": "application/xml"}, b"\x00\xffhello, this is not xml"),
    "html": lambda r: Reply(200, {"Content-Type": "text/html"}, b"<html><body>Welcome to nginx</body></html>"),
}


@pytest.mark.parametrize("op", ["CreateMultipartUpload", "CompleteMultipartUpload"])
@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbled_answers(env: None, s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str], op: str, kind: str) -> None:
    code, out, err, _ = _release_and_run(capsys, s3_server, bucket, tmp_path, after=_rewrite(op, GARBAGE[kind]))
    line = failure(code, out, err, exit_code=1)
    assert "assets.tar" in line and "run the same command again" in line
    assert MANIFEST_KEY not in keys(s3_client, bucket)


@pytest.mark.parametrize("kind", ["truncated xml", "not xml"])
def test_garbled_list_parts(env: None, s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str], kind: str) -> None:
    with S3Proxy(s3_server.endpoint_url) as proxy:
        rel = _interrupted(capsys, proxy, s3_client, bucket, tmp_path)
        proxy.set_rules(after=_rewrite("ListParts", GARBAGE[kind]))
        start = len(proxy.log)
        line = failure(*cli(capsys, proxy.url, bucket, rel), exit_code=1)
        assert [ex for ex in proxy.log[start:] if ex.op == "UploadPart"] == []
    assert f"listing the parts of {VERSION}/assets.tar failed" in line
    assert MANIFEST_KEY not in keys(s3_client, bucket)


@pytest.mark.parametrize(("code_name", "exit_code", "says"), [
    ("InternalError", 1, "failed after 2 attempts"),
    ("AccessDenied", 1, "failed after 2 attempts (An error occurred (AccessDenied)"),
    ("NoSuchUpload", 1, "vanished before it was completed"),
])
def test_complete_answering_200_with_an_error_body(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   code_name: str, exit_code: int, says: str) -> None:
    def before(ex: Exchange) -> Reply | None:
        if ex.op == "CompleteMultipartUpload":
            auth = ex.headers.get("Authorization", "")
            error = xml_error(code_name, f"we were sent {auth}", status=200)  # S3's 200 OK with an <Error>
            return error
        return None

    code, out, err, _ = _release_and_run(capsys, s3_server, bucket, tmp_path, before=before)
    line = failure(code, out, err, exit_code=exit_code)
    assert says in line and "assets.tar" in line
    if code_name != "NoSuchUpload":
        assert "we were sent AWS4-HMAC-SHA256 Credential=***/" in line  # the key id echoed back is hidden
    assert MANIFEST_KEY not in keys(s3_client, bucket) and f"{VERSION}/assets.tar" not in keys(s3_client, bucket)


def test_manifest_get_returning_another_manifest(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = small_release(tmp_path / "other", seed=9)
    fake = (other / "manifest.json").read_bytes()
    cases: list[tuple[bytes, int, str]] = [
        (fake, 3, "is already published at"),
        (b"[1, 2, 3]", 1, "manifest.json is not a JSON object"),
        (fake[: len(fake) // 2], 1, "manifest.json is not a JSON object"),
        (b"\xff\xfe\x00garbage", 1, "manifest.json is not a JSON object"),
    ]
    rel = small_release(tmp_path / "rel")
    for body, exit_code, says in cases:
        def before(ex: Exchange, body: bytes = body) -> Reply | None:
            if ex.op == "GetObject" and ex.key == MANIFEST_KEY:
                return Reply(200, {"Content-Type": "application/json"}, body)
            return None

        with S3Proxy(s3_server.endpoint_url, before=before) as proxy:
            line = failure(*cli(capsys, proxy.url, bucket, rel), exit_code=exit_code)
        assert says in line
        assert keys(s3_client, bucket) == []


def test_manifest_race_answer_that_lies(env: None, s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The manifest's conditional create is refused (412) and the GET returns a manifest with our
    metadata but other bytes: not claimed as published."""
    rel = small_release(tmp_path / "rel")
    ours = (rel / "manifest.json").read_bytes()
    sha = hashlib.sha256(ours).hexdigest()
    md5 = hashlib.md5(ours).hexdigest()

    def before(ex: Exchange) -> Reply | None:
        if ex.key != MANIFEST_KEY:
            return None
        if ex.op == "PutObject":
            return xml_error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                             status=412)
        if ex.op == "HeadObject" and any(e.op == "PutObject" and e.key == MANIFEST_KEY for e in proxy.log):
            return Reply(200, {"ETag": f'"{md5}"', "Content-Length": str(len(ours)), "x-amz-meta-sha256": sha})
        if ex.op == "GetObject" and any(e.op == "PutObject" and e.key == MANIFEST_KEY for e in proxy.log):
            return Reply(200, {"Content-Type": "application/json"}, ours[:-2] + b" }")
        return None

    with S3Proxy(s3_server.endpoint_url, before=before) as proxy:
        line = failure(*cli(capsys, proxy.url, bucket, rel), exit_code=3)
    assert f"another publish of version {VERSION} won at s3://{bucket}/{VERSION}/" in line
    assert MANIFEST_KEY not in keys(s3_client, bucket)


def test_slow_answers_end_in_bounded_time(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                          tmp_path: Path) -> None:
    rel = small_release(tmp_path / "rel")

    def before(ex: Exchange) -> Reply | None:
        if ex.op == "UploadPart":
            return Reply(200, {"ETag": '"x"'}, delay=3.0)  # far slower than the client waits
        return None

    with S3Proxy(s3_server.endpoint_url, before=before) as proxy:
        target = resolve_target(bucket=bucket, prefix=None, endpoint_url=proxy.url, profile=None, remote=None,
                                rclone_config=None)
        client = make_client(target, read_timeout=0.5, connect_timeout=0.5)
        started = time.monotonic()
        with pytest.raises(TransferError) as err:
            upload.upload_release(client, rel, target, CONFIG, show_progress=False, log=lambda s: None)
        assert time.monotonic() - started < 20
    text = str(err.value)
    assert "uploading part" in text and "failed after 2 attempts" in text and "timeout" in text.lower()
    assert SECRET not in text and ACCESS not in text and "\n" not in text
    assert MANIFEST_KEY not in keys(s3_client, bucket)


def test_library_errors_are_release_errors(env: None, s3_server: Any, bucket: str, tmp_path: Path) -> None:
    """Through the library, each hostile case above is a ReleaseError of the documented class."""
    rel = small_release(tmp_path / "rel")
    flip(rel / "assets.tar", 5)
    target = resolve_target(bucket=bucket, prefix=None, endpoint_url=s3_server.endpoint_url, profile=None,
                            remote=None, rclone_config=None)
    with pytest.raises(InputError) as err:
        upload.upload_release(make_client(target), rel, target, CONFIG, show_progress=False, log=lambda s: None)
    assert isinstance(err.value, ReleaseError) and err.value.exit_code == 2


# --------------------------------------------------------------------------- the manifest's signature


SIG_KEY = f"{VERSION}/manifest.json.sig"


def test_signature_goes_up_right_before_the_manifest(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rel = small_release(tmp_path / "rel")
    sig = random_bytes(64, seed=11)
    (rel / "manifest.json.sig").write_bytes(sig)
    with S3Proxy(s3_server.endpoint_url) as proxy:
        code, out, err = cli(capsys, proxy.url, bucket, rel)
        assert code == 0, err
        created = [ex.key for ex in proxy.log if ex.op in ("PutObject", "CompleteMultipartUpload")]
        assert created[-3:] == [f"{VERSION}/SHA256SUMS", SIG_KEY, MANIFEST_KEY]
        start = len(proxy.log)
        code, out, err = cli(capsys, proxy.url, bucket, rel)  # again: nothing is written
        assert code == 0, err
        assert [ex for ex in proxy.log[start:] if ex.method in ("PUT", "POST", "DELETE")] == []
    assert "0 uploaded, 0 resumed, 5 skipped" in out
    assert s3_client.get_object(Bucket=bucket, Key=SIG_KEY)["Body"].read() == sig
    checks = remote.verify_remote(s3_client, bucket, VERSION, manifest_of(rel), release_dir=rel)
    assert [c.name for c in checks][-3:] == ["SHA256SUMS", "manifest.json.sig", "manifest.json"]
    # another signature on the server: the remote check and a new upload both say so
    s3_client.put_object(Bucket=bucket, Key=SIG_KEY, Body=random_bytes(64, seed=12),
                         Metadata={"sha256": hashlib.sha256(sig).hexdigest()})
    with pytest.raises(ChecksumError, match=f"{SIG_KEY} \\(ETag"):
        remote.verify_remote(s3_client, bucket, VERSION, manifest_of(rel), release_dir=rel)
    line = failure(*cli(capsys, s3_server.endpoint_url, bucket, rel), exit_code=3)
    assert f"{SIG_KEY} (ETag differs)" in line


def test_signature_must_be_a_regular_file(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rel = small_release(tmp_path / "rel")
    (rel / "manifest.json.sig").symlink_to("/etc/passwd")
    line = failure(*cli(capsys, s3_server.endpoint_url, bucket, rel), exit_code=2)
    assert f"{rel / 'manifest.json.sig'}: a symlink" in line
    assert keys(s3_client, bucket) == []


def test_replacing_a_signed_release_with_an_unsigned_one_drops_the_old_signature(
        env: None, s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    a = small_release(tmp_path / "a", seed=1)
    (a / "manifest.json.sig").write_bytes(random_bytes(64, seed=13))
    assert cli(capsys, s3_server.endpoint_url, bucket, a)[0] == 0
    b = small_release(tmp_path / "b", seed=2)
    line = failure(*cli(capsys, s3_server.endpoint_url, bucket, b), exit_code=3)
    assert "already published" in line
    code, out, err = cli(capsys, s3_server.endpoint_url, bucket, b, "--force")
    assert code == 0, err
    assert SIG_KEY not in keys(s3_client, bucket)
    remote.verify_remote(s3_client, bucket, VERSION, manifest_of(b), release_dir=b)
    # a stale signature left on the server beside an unsigned release is reported
    s3_client.put_object(Bucket=bucket, Key=SIG_KEY, Body=b"x" * 64)
    with pytest.raises(ChecksumError, match="on the server but not in the local release"):
        remote.verify_remote(s3_client, bucket, VERSION, manifest_of(b), release_dir=b)


# --------------------------------------------------------------------------- files that change during the upload


def _hold_first_part(changed: Callable[[], None]) -> Callable[[Exchange], Reply | None]:
    """Before part 1 is forwarded, run ``changed`` (once)."""
    done = threading.Event()

    def before(ex: Exchange) -> Reply | None:
        if ex.op == "UploadPart" and ex.query.get("partNumber") == "1" and not done.is_set():
            done.set()
            changed()
        return None
    return before


def test_file_rewritten_in_place_during_the_upload(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rel = make_release(tmp_path / "rel", {"assets.tar": tar_bytes(PART, seed=21)})
    rule = _hold_first_part(lambda: flip(rel / "assets.tar", PART + 9))  # in part 2, not yet read
    with S3Proxy(s3_server.endpoint_url, before=rule) as proxy:
        code, out, err = cli(capsys, proxy.url, bucket, rel, "--upload-concurrency", "1")
        assert [ex.query["partNumber"] for ex in proxy.ops("UploadPart")] == ["1", "2"]
    line = failure(code, out, err, exit_code=2)
    assert f"{rel / 'assets.tar'} changed after manifest.json was written" in line
    assert keys(s3_client, bucket) == [] and pending(s3_client, bucket) == []


def test_file_replaced_by_rename_during_the_upload(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The file opened at the start is the file sent: a rename over its name changes nothing."""
    original = tar_bytes(PART, seed=22)
    rel = make_release(tmp_path / "rel", {"assets.tar": original})

    def swap() -> None:
        other = rel / "other.tmp"
        other.write_bytes(tar_bytes(PART, seed=23))
        os.replace(other, rel / "assets.tar")

    with S3Proxy(s3_server.endpoint_url, before=_hold_first_part(swap)) as proxy:
        code, out, err = cli(capsys, proxy.url, bucket, rel, "--upload-concurrency", "1")
    assert code == 0, err
    assert s3_client.get_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")["Body"].read() == original
    assert remote.published_manifest(s3_client, bucket, VERSION) == manifest_of(rel)


def test_conditional_create_conflict_with_nothing_there(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """409 ConditionalRequestConflict (two creates of one key at once, as S3 and R2 answer): retry later."""
    rel = small_release(tmp_path / "rel")

    def before(ex: Exchange) -> Reply | None:
        if ex.op == "PutObject" and ex.key == MANIFEST_KEY:
            return xml_error("ConditionalRequestConflict", "A conflicting operation occurred", status=409)
        return None

    with S3Proxy(s3_server.endpoint_url, before=before) as proxy:
        line = failure(*cli(capsys, proxy.url, bucket, rel), exit_code=1)
        assert len(proxy.ops("PutObject")) == 3  # annotations, SHA256SUMS, then the refused manifest
    assert f"another upload of s3://{bucket}/{MANIFEST_KEY} was being completed at the same moment" in line
    assert MANIFEST_KEY not in keys(s3_client, bucket)
    code, out, err = cli(capsys, s3_server.endpoint_url, bucket, rel)
    assert code == 0, err
    assert "every object verified" in out


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/passwd", "manifest.json.sig", "SHA256SUMS",
                                  ".upload-state/x.json", "./assets.tar", "a\\b"])
def test_artifact_names_outside_the_release_are_refused(env: None, s3_server: Any, s3_client: Any,
                                                        bucket: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str], name: str) -> None:
    rel = small_release(tmp_path / "rel")
    manifest = manifest_of(rel)
    manifest["artifacts"][0]["name"] = name
    (rel / "manifest.json").write_text(json.dumps(manifest))
    with S3Proxy(s3_server.endpoint_url) as proxy:
        line = failure(*cli(capsys, proxy.url, bucket, rel), exit_code=2)
        assert proxy.log == []
    assert f"{rel / 'manifest.json'}: " in line and (name in line or repr(name) in line)
    assert keys(s3_client, bucket) == []


def test_server_text_cannot_leak_a_secret_or_break_the_line() -> None:
    from objathor_release.publish.client import one_line

    for pad in range(180, 201):
        text = "x" * pad + f"Credential={ACCESS}/20240101" + "\x1b[2J\r\nobjathor-release: error: fake"
        line = one_line(text, [ACCESS])
        assert len(line) <= 200 and "\n" not in line and "\r" not in line and "\x1b" not in line
        assert not any(ACCESS[:k] in line[-k:] for k in range(4, len(ACCESS)))  # not even a piece of it


def test_hostile_error_text_from_the_server(env: None, s3_server: Any, s3_client: Any, bucket: str,
                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def before(ex: Exchange) -> Reply | None:
        if ex.op == "CompleteMultipartUpload":
            auth = ex.headers.get("Authorization", "")
            return xml_error("InternalError", f"\u009b2J&#13;&#10;objathor-release: error: fake, verified {auth}",
                             status=500)
        return None

    code, out, err, _ = _release_and_run(capsys, s3_server, bucket, tmp_path, before=before)
    assert code == 1 and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("objathor-release: error:")]
    assert len(lines) == 1 and "\u009b" not in err and "\r" not in err  # the server's text stays inside
    assert lines[0].startswith("objathor-release: error: completing the upload of assets.tar failed")
    assert "error: fake, verified" in lines[0]
    assert ACCESS not in err and SECRET not in err
    assert MANIFEST_KEY not in keys(s3_client, bucket)


# --------------------------------------------------------------------------- publish


def _publish(capsys: pytest.CaptureFixture[str], endpoint: str, bucket: str, release: Path, *extra: str
             ) -> tuple[int, str, str]:
    code = main(["publish", "--version", VERSION, "--release-dir", str(release), "--bucket", bucket,
                 "--endpoint-url", endpoint, "--chunk-size", "5M", "--upload-concurrency", "2", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_publish_signed_release_then_refuse_a_changed_one(env: None, s3_server: Any, s3_client: Any,
                                                          bucket: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = random_bytes(32, seed=31)
    monkeypatch.setenv("OBJATHOR_SIGNING_KEY", base64.b64encode(raw).decode())
    rel = small_release(tmp_path / "rel")
    code, out, err = _publish(capsys, s3_server.endpoint_url, bucket, rel)
    assert code == 0, err
    assert "manifest.json.sig" in out and "verified" in out
    sig = s3_client.get_object(Bucket=bucket, Key=SIG_KEY)["Body"].read()
    manifest = s3_client.get_object(Bucket=bucket, Key=MANIFEST_KEY)["Body"].read()
    Ed25519PrivateKey.from_private_bytes(raw).public_key().verify(sig, manifest)  # raises if wrong
    assert (rel / f".published-{bucket}").exists()

    other = small_release(tmp_path / "other")
    flip(other / "assets.tar", PART + 1)
    bucket2 = bucket + "-2"
    s3_client.create_bucket(Bucket=bucket2)
    line = failure(*_publish(capsys, s3_server.endpoint_url, bucket2, other), exit_code=2)
    assert f"{other / 'assets.tar'} changed after manifest.json was written" in line
    listed = keys(s3_client, bucket2)
    assert f"{VERSION}/assets.tar" not in listed and MANIFEST_KEY not in listed and SIG_KEY not in listed
    assert pending(s3_client, bucket2) == []
    assert not (other / f".published-{bucket2}").exists()
