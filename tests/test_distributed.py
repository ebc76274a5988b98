"""A sharded release built by separate jobs: `plan --json`, `release --only-shard K` per shard, `--finish`.

Each job has its own release directory (as separate CI machines would), the bucket is a real
moto server, and the published version is downloaded back over the S3 API and compared with the
source tree. The hostile cases: a finish before every shard is up, a shard built from another
tree, a malformed entry in the bucket, flags that make no sense together.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from devtools.sample import make_sample_dataset
from devtools.served_release import expected_tree, tree
from objathor_release.fetch.download import download_version
from tests.conftest import run_cli
from tests.support.faultproxy import PASS, Action, FaultProxy, Request, drop

V = "2024_05_05"
SIZE = "1M"


def job(src: Path, rdir: Path, bucket: str, env: dict[str, str], *extra: str) -> Any:
    return run_cli("release", "--version", V, "--assets-dir", str(src), "--release-dir", str(rdir),
                   "--bucket", bucket, "--shard-size", SIZE, "--quiet", *extra,
                   env={**env, "OBJATHOR_PROGRESS": "0"})


def plan_count(src: Path) -> int:
    out = run_cli("plan", "--assets-dir", str(src), "--shard-size", SIZE, "--json")
    assert out.returncode == 0, out.stderr
    return len(json.loads(out.stdout)["shards"])


def keys(client: Any, bucket: str) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def one_line_error(out: Any) -> str:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_shard_jobs_then_finish_publish_a_release_that_downloads_equal_to_the_source(
        tree_src: Path, tmp_path: Path, bucket: str, s3_env: dict[str, str], s3_client: Any) -> None:
    n = plan_count(tree_src)
    assert n >= 3
    for k in range(n):
        out = job(tree_src, tmp_path / f"job{k}", bucket, s3_env, "--only-shard", str(k))
        assert out.returncode == 0, out.stderr
        assert f"shard {k} assets-{k:05d}.tar: uploaded" in out.stdout
        assert not (tmp_path / f"job{k}" / ".shard-work" / f"assets-{k:05d}").exists(), "cleaned up"
    have = keys(s3_client, bucket)
    assert f"{V}/manifest.json" not in have, "no shard job publishes the version"
    assert {f"{V}/.shards/assets-{k:05d}.tar.json" for k in range(n)} <= have

    again = job(tree_src, tmp_path / "job0-again", bucket, s3_env, "--only-shard", "0")
    assert again.returncode == 0 and "already published" in again.stdout, "a re-run skips a finished shard"

    out = job(tree_src, tmp_path / "finish", bucket, s3_env, "--finish")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("uploaded by its shard's run, verified") == n
    assert not list((tmp_path / "finish").glob("assets*.tar")), "the finish builds no shard"
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=f"{V}/manifest.json")["Body"].read())
    assert manifest["shards"] == {"assets.tar": [f"assets-{k:05d}.tar" for k in range(n)]}
    sums = s3_client.get_object(Bucket=bucket, Key=f"{V}/SHA256SUMS")["Body"].read().decode()
    assert all(f"assets-{k:05d}.tar" in sums for k in range(n))

    result = download_version("assets", V, path=tmp_path / "dl", base_url=f"s3://{bucket}",
                              endpoint_url=s3_env["AWS_ENDPOINT_URL"], show_progress=False)
    assert result.verified
    assert tree(tmp_path / "dl" / V / "assets") == expected_tree(tree_src)

    # the same content published by one machine with --shard-size: the same manifest artifacts
    local = job(tree_src, tmp_path / "one", bucket, s3_env, "--dry-run")
    assert local.returncode == 0, local.stderr
    one = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert [(a["name"], a["sha256"]) for a in one["artifacts"]] == [
        (a["name"], a["sha256"]) for a in manifest["artifacts"]]


def test_a_finish_before_every_shard_is_up_names_the_missing_ones_and_publishes_nothing(
        tree_src: Path, tmp_path: Path, bucket: str, s3_env: dict[str, str], s3_client: Any) -> None:
    n = plan_count(tree_src)
    assert job(tree_src, tmp_path / "j1", bucket, s3_env, "--only-shard", "1").returncode == 0
    line = one_line_error(job(tree_src, tmp_path / "finish", bucket, s3_env, "--finish"))
    assert f"{n - 1} of {n} shards are not uploaded" in line and "shard 0, 2" in line, line
    assert "--only-shard K" in line
    assert f"{V}/manifest.json" not in keys(s3_client, bucket)


def test_a_shard_built_from_another_tree_is_refused_at_the_finish(
        tree_src: Path, tmp_path: Path, bucket: str, s3_env: dict[str, str], s3_client: Any) -> None:
    n = plan_count(tree_src)
    for k in range(n):
        assert job(tree_src, tmp_path / f"j{k}", bucket, s3_env, "--only-shard", str(k)).returncode == 0
    uid = sorted(p.name for p in tree_src.iterdir() if p.is_dir())[0]
    victim = next(p for p in sorted((tree_src / uid).rglob("*")) if p.is_file() and p.suffix != ".json")
    victim.write_bytes(victim.read_bytes() + b"grown")  # shard 0's folders changed after its job ran
    line = one_line_error(job(tree_src, tmp_path / "finish", bucket, s3_env, "--finish"))
    assert "shard 0 (assets-00000.tar)" in line and "other asset folders or settings" in line, line
    assert "--only-shard 0" in line
    assert f"{V}/manifest.json" not in keys(s3_client, bucket)


@pytest.mark.parametrize("body", [b"", b"{not json", b'{"entry_format": 1}', b"[]" * 10,
                                  b'{"entry_format": 1, "version": "2024_05_05", "plan": "x", "etag": "e", '
                                  b'"artifact": {"name": "assets-00000.tar", "size": -1, "sha256": "zz", '
                                  b'"members": [{"path": "../../etc/passwd"}]}}'])
def test_a_malformed_entry_in_the_bucket_is_one_line(tree_src: Path, tmp_path: Path, bucket: str,
                                                     s3_env: dict[str, str], s3_client: Any,
                                                     body: bytes) -> None:
    n = plan_count(tree_src)
    for k in range(1, n):
        assert job(tree_src, tmp_path / f"j{k}", bucket, s3_env, "--only-shard", str(k)).returncode == 0
    s3_client.put_object(Bucket=bucket, Key=f"{V}/.shards/assets-00000.tar.json", Body=body)
    line = one_line_error(job(tree_src, tmp_path / "finish", bucket, s3_env, "--finish"))
    assert f"s3://{bucket}/{V}/.shards/assets-00000.tar.json" in line, line
    assert f"{V}/manifest.json" not in keys(s3_client, bucket)


@pytest.mark.parametrize(("flags", "expect"), [
    (("--only-shard", "0", "--finish"), "choose one"),
    (("--only-shard", "99"), "the plan has shards 0 to"),
    (("--only-shard", "-1"), "the plan has shards 0 to"),
    (("--finish", "--dry-run"), "dry run of a sharded release"),
])
def test_flags_that_do_not_fit_are_one_line(tree_src: Path, tmp_path: Path, bucket: str,
                                            s3_env: dict[str, str], flags: tuple[str, ...],
                                            expect: str) -> None:
    assert expect in one_line_error(job(tree_src, tmp_path / "r", bucket, s3_env, *flags))


def test_only_shard_without_a_shard_size_is_one_line(tree_src: Path, tmp_path: Path, bucket: str,
                                                    s3_env: dict[str, str]) -> None:
    out = run_cli("release", "--version", V, "--assets-dir", str(tree_src), "--release-dir",
                  str(tmp_path / "r"), "--bucket", bucket, "--only-shard", "0", env=s3_env)
    assert "pass --shard-size too" in one_line_error(out)


def test_a_shard_job_killed_mid_upload_resumes_from_its_parts(tmp_path: Path, bucket: str,
                                                               s3_env: dict[str, str], s3_client: Any) -> None:
    """One 12 MB shard in 5 MiB parts; the job is killed while part 2 is held by the proxy. The re-run
    reuses the tar it built (same plan) and the part on the server: part 1 is not sent again."""
    src = tmp_path / "big"
    make_sample_dataset(src, 8, seed=9, asset_bytes=1536 * 1024)
    seen, hold = threading.Event(), threading.Event()

    def rule(req: Request) -> Action:
        if req.method == "PUT" and "partNumber=2" in req.path:
            seen.set()
            hold.wait(60)
            return drop()
        return PASS

    argv = [sys.executable, "-m", "objathor_release", "release", "--version", V, "--assets-dir", str(src),
            "--release-dir", str(tmp_path / "job"), "--bucket", bucket, "--shard-size", "64M",
            "--chunk-size", "5M", "--upload-concurrency", "1", "--only-shard", "0", "--quiet"]
    with FaultProxy(s3_env["AWS_ENDPOINT_URL"], rule) as proxy:  # one endpoint for both runs, as a user's
        env = {**os.environ, **s3_env, "AWS_ENDPOINT_URL": proxy.url, "OBJATHOR_PROGRESS": "0"}
        job_proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert seen.wait(60), "part 2 was never sent"
            job_proc.kill()
            job_proc.wait(30)
        finally:
            if job_proc.poll() is None:
                job_proc.kill()
        assert (tmp_path / "job" / ".shard-work" / "assets-00000" / "assets-00000.tar").is_file(), "kept"
        proxy.set_rule(lambda req: PASS)
        hold.set()
        before = len(proxy.log)
        again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        parts = sorted(int(r.path.split("partNumber=")[1].split("&")[0]) for r in proxy.log[before:]
                       if r.method == "PUT" and "partNumber=" in r.path)
    assert again.returncode == 0, again.stderr
    assert "shard 0 assets-00000.tar: uploaded" in again.stdout
    assert parts == [2, 3], f"parts sent again: {parts}"
    head = s3_client.head_object(Bucket=bucket, Key=f"{V}/assets-00000.tar")
    assert head["ETag"].strip('"').endswith("-3")


def test_an_entry_that_does_not_describe_its_planned_shard_is_refused(
        tree_src: Path, tmp_path: Path, bucket: str, s3_env: dict[str, str], s3_client: Any) -> None:
    """Shard 1's valid entry put in place of shard 0's (its name changed, its plan fingerprint kept
    as shard 0's): the size, files and asset folders are not shard 0's, so the finish refuses it."""
    n = plan_count(tree_src)
    for k in range(n):
        assert job(tree_src, tmp_path / f"j{k}", bucket, s3_env, "--only-shard", str(k)).returncode == 0
    read = lambda k: json.loads(s3_client.get_object(  # noqa: E731
        Bucket=bucket, Key=f"{V}/.shards/assets-{k:05d}.tar.json")["Body"].read())
    zero, one = read(0), read(1)
    forged = {**one, "plan": zero["plan"], "artifact": {**one["artifact"], "name": "assets-00000.tar"}}
    s3_client.put_object(Bucket=bucket, Key=f"{V}/.shards/assets-00000.tar.json", Body=json.dumps(forged))
    line = one_line_error(job(tree_src, tmp_path / "finish", bucket, s3_env, "--finish"))
    assert "shard 0 (assets-00000.tar)" in line and "--only-shard 0" in line, line
    assert f"{V}/manifest.json" not in keys(s3_client, bucket)
