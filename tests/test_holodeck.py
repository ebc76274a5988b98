"""Holodeck's base data end to end: built with every file kept, listed in the manifest as holodeck.tar,
published at ``holodeck/VERSION.tar`` beside the version folder (where objathor and the download read
it), checked there by the remote verify, and downloaded back as verified.

Every bucket is on the real moto server process from tests/conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from devtools.sample import make_sample_dataset
from devtools.served_release import expected_tree, tree
from objathor_release.errors import ChecksumError
from objathor_release.fetch.download import download_version
from objathor_release.fetch.http import HttpConfig
from objathor_release.publish.client import artifact_key
from objathor_release.publish.remote import verify_remote
from tests.conftest import REPO

V = "2024_02_01"
QUIET = {"OBJATHOR_PROGRESS": "0", "AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true"}
ONE_PIECE = HttpConfig(attempts=2, backoff=0.01, part_size=1024 * 1024, connections=2)
HOLODECK_FILES = {
    "thor_object_data/annotations.json.gz": b"\x1f\x8b" + bytes(40),
    "thor_object_data/thor_metadata.json": b'{"assetMetadata": {}}',
    "objaverse_holodeck/09_23_combine_scale/thor_metadata.json": b"{}",
    "objaverse_holodeck/README.txt": b"holodeck base data\n",
}


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Path]:
    assets, holodeck = tmp_path / "src" / "assets", tmp_path / "src" / "holodeck_base"
    make_sample_dataset(assets, 4, seed=3, asset_bytes=8 * 1024)
    for rel, data in HOLODECK_FILES.items():
        (holodeck / rel).parent.mkdir(parents=True, exist_ok=True)
        (holodeck / rel).write_bytes(data)
    return {"assets": assets, "holodeck": holodeck, "release": tmp_path / "release" / V}


def keys(s3_client: Any, bucket: str) -> dict[str, bytes]:
    listing = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: s3_client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listing}


def release_argv(sources: dict[str, Path], s3_server: Any, bucket: str, *extra: str) -> list[str]:
    return ["release", "--version", V, "--assets-dir", str(sources["assets"]), "--holodeck-dir",
            str(sources["holodeck"]), "--release-dir", str(sources["release"]), "--bucket", bucket,
            "--endpoint-url", s3_server.endpoint_url, "--chunk-size", "5M", *extra]


def make_public(s3_client: Any, bucket: str) -> None:
    """Public reads, as on r2.dev: the download reads the bucket by path-style GET."""
    s3_client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                "Resource": f"arn:aws:s3:::{bucket}/*"}]}))


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("objathor-release: error:")]
    return line


@pytest.mark.parametrize(("prefix", "key"), [
    (V, f"holodeck/{V}.tar"),  # the default prefix: beside the version folder
    (f"data/{V}", f"data/holodeck/{V}.tar"),
    (f"mirror/{V}/files", f"mirror/holodeck/{V}.tar"),  # as --base-url .../mirror/{version}/files reads it
    ("staging", f"staging/holodeck/{V}.tar"),  # a version at the root of its prefix (--layout root)
    ("", f"holodeck/{V}.tar"),  # the bucket root
])
def test_the_holodeck_base_key_is_where_the_download_reads_it(prefix: str, key: str) -> None:
    assert artifact_key(prefix, "holodeck.tar", V) == key
    assert artifact_key(prefix, "assets.tar", V) == (f"{prefix}/assets.tar" if prefix else "assets.tar")
    # a nested tar a release dir happens to hold is uploaded as it lies, like any other file
    assert artifact_key(V, f"holodeck/{V}.tar", V) == f"{V}/holodeck/{V}.tar"


def test_release_publishes_the_holodeck_base_beside_the_version_and_it_downloads_verified(
        sources: dict[str, Path], s3_server: Any, s3_env: dict[str, str], s3_client: Any, bucket: str,
        tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    rdir = sources["release"]
    first = cli(*release_argv(sources, s3_server, bucket))
    assert first.returncode == 0, first.stderr
    with tarfile.open(rdir / "holodeck.tar") as tf:
        members = [m.name for m in tf.getmembers() if m.isfile()]
    assert sorted(members) == sorted(f"holodeck_base/{rel}" for rel in HOLODECK_FILES)  # every file kept
    manifest = json.loads((rdir / "manifest.json").read_text())
    (art,) = [a for a in manifest["artifacts"] if a["name"] == "holodeck.tar"]
    assert [m["path"] for m in art["members"]] == members
    assert art["sha256"] == hashlib.sha256((rdir / "holodeck.tar").read_bytes()).hexdigest()
    assert manifest["excludes"][:2] == ["annotations.json.gz", "thor_metadata.json"]  # the assets' list

    objects = keys(s3_client, bucket)
    assert set(objects) == {f"{V}/annotations.json.gz", f"{V}/assets.tar", f"{V}/manifest.json",
                            f"{V}/SHA256SUMS", f"holodeck/{V}.tar"}
    assert objects[f"holodeck/{V}.tar"] == (rdir / "holodeck.tar").read_bytes()
    head = s3_client.head_object(Bucket=bucket, Key=f"holodeck/{V}.tar")
    assert head["Metadata"]["sha256"] == art["sha256"]
    (row,) = [x for x in first.stdout.splitlines() if x.startswith("holodeck.tar  ")]
    assert re.split(r"\s{2,}", row)[-1] == "uploaded, verified"
    assert f"  {s3_server.endpoint_url}/{bucket}/holodeck/{V}.tar" in first.stdout.splitlines()
    verified = cli("verify", "--release-dir", str(rdir), "--members", "-q")
    assert verified.returncode == 0, verified.stderr

    again = cli(*release_argv(sources, s3_server, bucket))
    assert again.returncode == 0, again.stderr
    assert "objathor-release: holodeck.tar: up to date" in again.stderr.splitlines()
    (row,) = [x for x in again.stdout.splitlines() if x.startswith("holodeck.tar  ")]
    assert re.split(r"\s{2,}", row)[-1] == "skipped, verified"

    make_public(s3_client, bucket)
    dest = tmp_path / "dl"
    result = download_version("all", V, path=dest, base_url=f"{s3_server.endpoint_url}/{bucket}",
                              show_progress=False, http_config=ONE_PIECE)
    assert [(p.what, p.status, p.verified) for p in result.parts] == [
        ("annotations", "downloaded", True), ("assets", "downloaded", True),
        ("features", "not in this version", True), ("holodeck-base", "downloaded", True)]
    assert result.verified
    assert tree(dest / "holodeck" / V) == tree(sources["holodeck"])
    assert (dest / "holodeck" / V / "thor_object_data" / "annotations.json.gz").read_bytes() == \
        HOLODECK_FILES["thor_object_data/annotations.json.gz"]
    assert tree(dest / V / "assets") == expected_tree(sources["assets"])


def test_the_cli_download_says_the_holodeck_base_is_verified(
        sources: dict[str, Path], s3_server: Any, s3_env: dict[str, str], s3_client: Any, bucket: str,
        tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    assert cli(*release_argv(sources, s3_server, bucket, "--prefix", f"data/{V}")).returncode == 0
    assert f"data/holodeck/{V}.tar" in keys(s3_client, bucket)
    make_public(s3_client, bucket)
    dest = tmp_path / "dl"
    done = cli("download", "holodeck-base", "--version", V, "--path", str(dest), "--base-url",
               f"{s3_server.endpoint_url}/{bucket}/data", "--require-checksums", "-q")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(
        f"holodeck-base: downloaded at {dest / 'holodeck' / V} (verified, ")
    assert tree(dest / "holodeck" / V) == tree(sources["holodeck"])


def test_a_different_holodeck_base_at_its_key_is_not_overwritten_without_force(
        sources: dict[str, Path], s3_server: Any, s3_env: dict[str, str], s3_client: Any, bucket: str,
        cli) -> None:  # type: ignore[no-untyped-def]
    key = f"holodeck/{V}.tar"
    s3_client.put_object(Bucket=bucket, Key=key, Body=b"someone else's holodeck base")
    refused = cli(*release_argv(sources, s3_server, bucket))
    assert refused.returncode == 3
    line = one_error(refused)
    assert f"{key} (" in line and "--force" in line
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"someone else's holodeck base"
    assert f"{V}/manifest.json" not in keys(s3_client, bucket)  # nothing was published
    forced = cli(*release_argv(sources, s3_server, bucket, "--force"))
    assert forced.returncode == 0, forced.stderr
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() == \
        (sources["release"] / "holodeck.tar").read_bytes()


def test_the_remote_verify_checks_the_holodeck_base_at_its_key(
        sources: dict[str, Path], s3_server: Any, s3_env: dict[str, str], s3_client: Any, bucket: str,
        cli) -> None:  # type: ignore[no-untyped-def]
    assert cli(*release_argv(sources, s3_server, bucket)).returncode == 0
    rdir = sources["release"]
    manifest = json.loads((rdir / "manifest.json").read_text())
    checks = {c.name: c for c in verify_remote(s3_client, bucket, V, manifest, release_dir=rdir)}
    assert checks["holodeck.tar"].key == f"holodeck/{V}.tar" and checks["holodeck.tar"].etag_check == "exact"
    s3_client.put_object(Bucket=bucket, Key=f"holodeck/{V}.tar", Body=b"damaged")
    with pytest.raises(ChecksumError, match=rf"holodeck/{V}\.tar \(size 7 != "):
        verify_remote(s3_client, bucket, V, manifest, release_dir=rdir)
    s3_client.delete_object(Bucket=bucket, Key=f"holodeck/{V}.tar")
    with pytest.raises(ChecksumError, match=rf"holodeck/{V}\.tar \(missing\)"):
        verify_remote(s3_client, bucket, V, manifest)


def test_make_release_builds_the_holodeck_base_from_holodeck_dir(
        sources: dict[str, Path], s3_server: Any, s3_env: dict[str, str], s3_client: Any, bucket: str) -> None:
    settings = [f"VERSION={V}", f"ASSETS_DIR={sources['assets']}", f"HOLODECK_DIR={sources['holodeck']}",
                f"RELEASE_DIR={sources['release']}", f"BUCKET={bucket}", f"ENDPOINT_URL={s3_server.endpoint_url}",
                "CHUNK_SIZE=5M"]
    env = {**os.environ, **s3_env, "OBJATHOR_PROGRESS": "0"}
    env.pop("MAKEFLAGS", None)

    def make(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args, *settings],
                              capture_output=True, text=True, env=env, timeout=300)

    def steps(out: str) -> list[str]:
        return re.findall(r"-m objathor_release (prepare-annotations|tar( --holodeck-base)?|manifest|verify|"
                          r"publish)\b", out)

    first = make("release")
    assert first.returncode == 0, first.stdout + first.stderr
    assert [s for s, _ in steps(first.stdout)] == ["prepare-annotations", "tar", "tar --holodeck-base",
                                                   "manifest", "verify", "publish"]
    assert keys(s3_client, bucket)[f"holodeck/{V}.tar"] == (sources["release"] / "holodeck.tar").read_bytes()
    assert steps(make("release").stdout) == []
    changed = sources["holodeck"] / "thor_object_data" / "annotations.json.gz"
    changed.write_bytes(changed.read_bytes() + b"more")
    plan = make("-n", "release")
    assert plan.returncode == 0, plan.stderr
    assert [s for s, _ in steps(plan.stdout)] == ["tar --holodeck-base", "manifest", "verify", "publish"]
