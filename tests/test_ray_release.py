"""`release --executor ray` on a local Ray (2 CPUs, no dashboard) against a real moto server.

Kept to two runs of a small tree (each Ray start costs seconds): a sharded release through Ray,
downloaded back and compared with the source; and a driver killed while two shards are still
uploading (held by a proxy), after which a second run skips the two finished shards without
building them and publishes the version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.sample import make_sample_dataset
from devtools.served_release import expected_tree, tree
from objathor_release.build.annotations import prepare_annotations
from objathor_release.fetch.download import download_version
from tests.support.faultproxy import PASS, Action, FaultProxy, Request, drop

pytest.importorskip("ray", reason="Ray is the optional extra objathor-release[ray] (in the dev lock)")

V = "2024_06_06"
RAY_ENV = {"RAY_ADDRESS": "", "OBJATHOR_PROGRESS": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def ray_release(src: Path, rdir: Path, bucket: str, env: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "objathor_release", "release", "--version", V, "--assets-dir", str(src),
            "--release-dir", str(rdir), "--bucket", bucket, "--shard-size", "1M", "--executor", "ray"]


def entries(client: Any, bucket: str) -> set[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{V}/.shards/").get("Contents", [])
    return {o["Key"].rsplit("/", 1)[1] for o in listed}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "assets"
    make_sample_dataset(root, 10, seed=5, asset_bytes=300 * 1024)
    return root


def test_a_sharded_release_on_ray_downloads_equal_to_the_source(src: Path, tmp_path: Path, bucket: str,
                                                                 s3_env: dict[str, str], s3_client: Any) -> None:
    out = subprocess.run(ray_release(src, tmp_path / "rel", bucket, s3_env), capture_output=True, text=True,
                         env={**os.environ, **s3_env, **RAY_ENV}, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=f"{V}/manifest.json")["Body"].read())
    names = manifest["shards"]["assets.tar"]
    assert len(names) >= 3
    assert out.stdout.count(": uploaded (") == len(names)
    assert entries(s3_client, bucket) == {f"{n}.json" for n in names}
    assert not list((tmp_path / "rel").glob("assets*.tar")), "the shards were built in the Ray tasks"
    result = download_version("assets", V, path=tmp_path / "dl", base_url=f"s3://{bucket}",
                              endpoint_url=s3_env["AWS_ENDPOINT_URL"], show_progress=False)
    assert result.verified
    assert tree(tmp_path / "dl" / V / "assets") == expected_tree(src)
    # the annotations, validated in batches as Ray tasks, are byte for byte what one machine writes
    prepare_annotations(src, tmp_path / "here.json.gz", show_progress=False, workers=1)
    published = s3_client.get_object(Bucket=bucket, Key=f"{V}/annotations.json.gz")["Body"].read()
    assert published == (tmp_path / "here.json.gz").read_bytes()


def test_a_killed_driver_resumes_skipping_the_shards_already_published(
        src: Path, tmp_path: Path, bucket: str, s3_env: dict[str, str], s3_client: Any) -> None:
    held = threading.Event()

    def hold_late_shards(req: Request) -> Action:
        if req.method in ("PUT", "POST") and any(f"assets-0000{k}.tar" in req.path for k in (2, 3)):
            held.wait(90)  # shards 2 and 3 never get their bytes up while the driver lives
            return drop()  # nor after it was killed
        return PASS

    with FaultProxy(s3_env["AWS_ENDPOINT_URL"], hold_late_shards) as proxy:
        env = {**os.environ, **s3_env, **RAY_ENV, "AWS_ENDPOINT_URL": proxy.url}
        driver = subprocess.Popen(ray_release(src, tmp_path / "rel", bucket, env), env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while entries(s3_client, bucket) != {"assets-00000.tar.json", "assets-00001.tar.json"}:
                assert driver.poll() is None, "the driver ended before it was killed"
                assert time.monotonic() < deadline, entries(s3_client, bucket)
                time.sleep(0.2)
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(30)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
            held.set()
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix=f"{V}/manifest.json").get("KeyCount") == 0

    again = subprocess.run(ray_release(src, tmp_path / "rel", bucket, s3_env), capture_output=True,
                           text=True, env={**os.environ, **s3_env, **RAY_ENV}, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "shard 0 assets-00000.tar: already published" in again.stdout
    assert "shard 1 assets-00001.tar: already published" in again.stdout
    assert "shard 2 assets-00002.tar: uploaded" in again.stdout
    result = download_version("assets", V, path=tmp_path / "dl", base_url=f"s3://{bucket}",
                              endpoint_url=s3_env["AWS_ENDPOINT_URL"], show_progress=False)
    assert result.verified and tree(tmp_path / "dl" / V / "assets") == expected_tree(src)
