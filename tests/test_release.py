"""The release as people run it: `make release`, `objathor-release release`, `make demo`, invoke.

Every test talks to the real moto server process from tests/conftest.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.sample import make_sample_dataset
from tests.conftest import REPO, run_cli

VERSION = "2024_02_01"


def make(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OBJATHOR_PROGRESS_INTERVAL": "60", **env}
    full_env.pop("MAKEFLAGS", None)
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)


def keys(s3_client: Any, bucket: str) -> dict[str, Any]:
    listing = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: o for o in listing}


def sha256_of(s3_client: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    assets, features = tmp_path / "assets", tmp_path / "features"
    make_sample_dataset(assets, 8, seed=11, asset_bytes=8 * 1024, features_dir=features)
    return {"assets": assets, "features": features, "release": tmp_path / "release" / VERSION}


def settings(tree: dict[str, Path], s3_server: Any, bucket: str, **extra: str) -> list[str]:
    base = {"VERSION": VERSION, "ASSETS_DIR": str(tree["assets"]), "FEATURES_DIR": str(tree["features"]),
            "RELEASE_DIR": str(tree["release"]), "BUCKET": bucket, "ENDPOINT_URL": s3_server.endpoint_url,
            "CHUNK_SIZE": "5M", **extra}
    return [f"{k}={v}" for k, v in base.items()]


STEP_RE = re.compile(r"-m objathor_release (prepare-annotations|tar|manifest|verify|publish)\b")


def steps_run(output: str) -> list[str]:
    return STEP_RE.findall(output)


# --------------------------------------------------------------------------- make release


def test_make_release_uploads_verifies_and_then_does_nothing(tree, s3_server, s3_env, s3_client, bucket) -> None:
    first = make("release", *settings(tree, s3_server, bucket), env=s3_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert steps_run(first.stdout) == ["prepare-annotations", "tar", "tar", "manifest", "verify", "publish"]
    objects = keys(s3_client, bucket)
    expected = {f"{VERSION}/{n}" for n in ("annotations.json.gz", "assets.tar", "features.tar",
                                            "manifest.json", "SHA256SUMS")}
    assert set(objects) == expected
    for name in ("annotations.json.gz", "assets.tar", "features.tar", "manifest.json"):
        local = hashlib.sha256((tree["release"] / name).read_bytes()).hexdigest()
        assert sha256_of(s3_client, bucket, f"{VERSION}/{name}") == local
    head = s3_client.head_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")
    assert head["Metadata"]["sha256"] == hashlib.sha256((tree["release"] / "assets.tar").read_bytes()).hexdigest()
    assert "uploaded, verified" in first.stdout
    assert f"{s3_server.endpoint_url}/{bucket}/{VERSION}/assets.tar" in first.stdout

    assert "up to date" not in first.stdout
    second = make("release", *settings(tree, s3_server, bucket), env=s3_env)
    assert second.returncode == 0, second.stderr
    assert steps_run(second.stdout) == []
    assert f"release {VERSION}: up to date: published to {bucket} and no input or setting changed since" \
        in second.stdout.splitlines()
    after = keys(s3_client, bucket)
    assert {k: v["LastModified"] for k, v in after.items()} == {k: v["LastModified"] for k, v in objects.items()}


def test_touching_one_asset_rebuilds_only_what_depends_on_it(tree, s3_server, s3_env, s3_client, bucket) -> None:
    assert make("release", *settings(tree, s3_server, bucket), env=s3_env).returncode == 0
    uid = sorted(p.name for p in tree["assets"].iterdir() if p.is_dir())[0]
    texture = tree["assets"] / uid / "albedo.jpg"
    texture.write_bytes(texture.read_bytes() + b"changed")
    annotations_before = (tree["release"] / "annotations.json.gz").stat().st_mtime_ns

    refused = make("release", *settings(tree, s3_server, bucket), env=s3_env)
    assert refused.returncode != 0
    assert steps_run(refused.stdout) == ["tar", "manifest", "verify", "publish"]
    assert f"version {VERSION} is already published" in refused.stderr
    assert "pass FORCE=1" in refused.stderr and "--force" not in refused.stderr  # make's words, not the flag
    assert (tree["release"] / "annotations.json.gz").stat().st_mtime_ns == annotations_before

    forced = make("release", *settings(tree, s3_server, bucket, FORCE="1"), env=s3_env)
    assert forced.returncode == 0, forced.stderr
    assert steps_run(forced.stdout) == ["publish"]
    local = hashlib.sha256((tree["release"] / "assets.tar").read_bytes()).hexdigest()
    assert sha256_of(s3_client, bucket, f"{VERSION}/assets.tar") == local


@pytest.mark.parametrize(("change", "message"), [
    ({"VERSION": ""}, "VERSION is required"),
    ({"VERSION": "2024_02_30"}, "version '2024_02_30' is not a real date"),
    ({"VERSION": "2024-02-01"}, "version '2024-02-01' is not of the form YYYY_MM_DD"),
    ({"ASSETS_DIR": "/nonexistent/assets"}, "/nonexistent/assets: assets directory not found"),
    ({"BUCKET": ""}, "BUCKET is not set"),
    ({"CHUNK_SIZE": "1M"}, "--chunk-size 1.0 MiB is out of range"),
])
def test_bad_settings_stop_before_any_work(change, message, tree, s3_server, s3_env, s3_client, bucket) -> None:
    env = {k: v for k, v in s3_env.items()}
    env.pop("BUCKET", None)
    result = make("release", *settings(tree, s3_server, bucket, **change), env=env)
    assert result.returncode == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("objathor-release: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert steps_run(result.stdout) == []
    assert not tree["release"].exists()
    assert keys(s3_client, bucket) == {}


def test_dry_run_builds_locally_and_leaves_the_bucket_alone(tree, s3_server, s3_env, s3_client, bucket) -> None:
    result = make("release", *settings(tree, s3_server, bucket, DRY_RUN="1"), env=s3_env)
    assert result.returncode == 0, result.stderr
    assert "dry run: would upload 5 files" in result.stdout
    assert re.search(r"assets\.tar\s+[\d.]+ KiB\s+-\s+1\s+\d+", result.stdout), result.stdout  # size, part size, parts, requests
    assert "part size" in result.stdout and "requests" in result.stdout
    assert "the bucket was not contacted" in result.stdout
    assert (tree["release"] / "manifest.json").exists()
    assert keys(s3_client, bucket) == {}
    assert not list(tree["release"].glob(".published-*"))


def test_config_file_is_read_and_variables_override_it(tree, s3_server, s3_env, s3_client, bucket,
                                                       tmp_path: Path) -> None:
    config = tmp_path / "release.toml"
    config.write_text(
        f'[release]\nversion = "{VERSION}"\nassets_dir = "{tree["assets"]}"\n'
        f'release_dir = "{tree["release"]}"\nbucket = "not-this-bucket"\n'
        f'endpoint_url = "{s3_server.endpoint_url}"\nchunk_size = "5M"\n')
    result = make("release", f"CONFIG={config}", f"BUCKET={bucket}", env=s3_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{VERSION}/assets.tar" in keys(s3_client, bucket)
    assert "features.tar" not in str(list(keys(s3_client, bucket)))


@pytest.mark.parametrize(("body", "message"), [
    ('version = "2024_02_01"\nbucket = "bkt"\ncolour = "red"\n', "$: Additional properties are not allowed"),
    ('version = "2024_02_01"\nsecret_access_key = "hunter2"\n', "credentials do not belong in the config file"),
    ("version = [", "not valid TOML"),
])
def test_bad_config_file(body: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "release.toml"
    config.write_text(body)
    result = run_cli("config", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith(f"objathor-release: error: {config}: ")
    assert message in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


# --------------------------------------------------------------------------- make and the package agree


STEP_ARTIFACT = {"prepare-annotations": "annotations.json.gz", "tar": "assets.tar"}


def rebuilt_by_make(tree: dict[str, Path]) -> list[str]:
    """What `make manifest` rebuilds (no bucket is contacted before publish)."""
    result = make("manifest", f"VERSION={VERSION}", f"ASSETS_DIR={tree['assets']}",
                  f"RELEASE_DIR={tree['release']}", "BUCKET=unused-bucket", env={})
    assert result.returncode == 0, result.stdout + result.stderr
    return sorted(STEP_ARTIFACT[s] for s in steps_run(result.stdout) if s in STEP_ARTIFACT)


def rebuilt_by_the_release_command(tree: dict[str, Path]) -> list[str]:
    """What `objathor-release release --dry-run` rebuilds in a release dir of its own."""
    result = run_cli("release", "--dry-run", "--version", VERSION, "--assets-dir", str(tree["assets"]),
                     "--release-dir", str(tree["release"].parent / "by-command"), "--bucket", "unused-bucket",
                     "--endpoint-url", "http://127.0.0.1:9")
    assert result.returncode == 0, result.stdout + result.stderr
    built = re.findall(r"^(?:objathor-release: )?built: (.*)$", result.stderr, re.M)
    return sorted(n for n in (built[0].split(", ") if built else []) if n in STEP_ARTIFACT.values())


def touch(path: Path, tree: dict[str, Path]) -> None:
    """Set ``path``'s mtime to now, which is after the last build (never in the future: make would
    then rebuild on every run)."""
    built = max(p.stat().st_mtime_ns for p in tree["release"].parent.rglob("*.tar"))
    while time.time_ns() <= built:
        time.sleep(0.01)
    os.utime(path)


def test_make_and_the_release_command_rebuild_on_the_same_changes(tree) -> None:
    assets = tree["assets"]
    assert rebuilt_by_make(tree) == rebuilt_by_the_release_command(tree) == ["annotations.json.gz", "assets.tar"]
    uids = sorted(p.name for p in assets.iterdir() if p.is_dir())
    junk = assets / uids[0] / ".DS_Store"
    junk.write_bytes(b"junk")  # an excluded file, new in its folder
    touch(junk, tree)
    (assets / uids[0] / ".Trashes").mkdir()
    (assets / uids[0] / ".Trashes" / "deleted.glb").write_bytes(b"inside an excluded folder")
    assert rebuilt_by_make(tree) == rebuilt_by_the_release_command(tree) == []
    texture = assets / uids[1] / "albedo.jpg"
    texture.write_bytes(texture.read_bytes() + b"changed")
    touch(texture, tree)
    assert rebuilt_by_make(tree) == rebuilt_by_the_release_command(tree) == ["assets.tar"]
    spaced = assets / uids[1] / "with space $#.bin"
    spaced.write_bytes(b"new")
    assert rebuilt_by_make(tree) == rebuilt_by_the_release_command(tree) == ["assets.tar"]
    touch(spaced, tree)
    assert rebuilt_by_make(tree) == rebuilt_by_the_release_command(tree) == ["assets.tar"]
    spaced.unlink()  # a deleted input
    assert rebuilt_by_make(tree) == rebuilt_by_the_release_command(tree) == ["assets.tar"]
    new_uid = "f" * 32
    shutil.copytree(assets / uids[2], assets / new_uid)  # mtimes kept: older than the artifacts
    ann = assets / new_uid / "annotations.json.gz"
    import gzip
    import json

    record = json.loads(gzip.decompress(ann.read_bytes()))
    record["uid"] = new_uid
    ann.write_bytes(gzip.compress(json.dumps(record).encode(), mtime=0))
    os.utime(ann, ((assets / uids[2] / "annotations.json.gz").stat().st_mtime,) * 2)
    assert rebuilt_by_make(tree) == rebuilt_by_the_release_command(tree) == ["annotations.json.gz", "assets.tar"]
    assert rebuilt_by_make(tree) == rebuilt_by_the_release_command(tree) == []


def test_make_n_on_a_fresh_tree_plans_every_step_and_builds_nothing(tree, s3_server, bucket) -> None:
    result = make("-n", "release", *settings(tree, s3_server, bucket), env={})
    assert result.returncode == 0, result.stdout + result.stderr
    assert steps_run(result.stdout) == ["prepare-annotations", "tar", "tar", "manifest", "verify", "publish"]
    assert not (tree["release"] / "assets.tar").exists()


def test_make_rebuilds_the_tars_when_the_excludes_change_and_sees_a_features_dir_added_later(tree) -> None:
    base = [f"VERSION={VERSION}", f"ASSETS_DIR={tree['assets']}", f"RELEASE_DIR={tree['release']}",
            "BUCKET=unused-bucket"]
    assert make("manifest", *base, env={}).returncode == 0
    result = make("manifest", *base, "EXCLUDES=*.jpg", env={})
    assert result.returncode == 0, result.stderr
    assert steps_run(result.stdout) == ["tar", "manifest", "verify"]
    assert steps_run(make("manifest", *base, "EXCLUDES=*.jpg", env={}).stdout) == []
    with_features = [*base, "EXCLUDES=*.jpg", f"FEATURES_DIR={tree['features']}"]
    assert steps_run(make("manifest", *with_features, env={}).stdout) == ["tar", "manifest", "verify"]
    feature = next(p for p in tree["features"].rglob("*") if p.is_file())
    touch(feature, tree)
    assert steps_run(make("manifest", *with_features, env={}).stdout) == ["tar", "manifest", "verify"]
    assert (tree["release"] / "features.tar").exists()


# --------------------------------------------------------------------------- the package command


def test_release_command_is_idempotent_on_its_own(tree, s3_server, s3_env, s3_client, bucket, cli) -> None:
    argv = ["release", "--version", VERSION, "--assets-dir", str(tree["assets"]), "--release-dir",
            str(tree["release"]), "--bucket", bucket, "--endpoint-url", s3_server.endpoint_url,
            "--chunk-size", "5M", "--summary", str(tree["release"].parent / "summary.json")]
    first = cli(*argv)
    assert first.returncode == 0, first.stderr
    assert "4 uploaded, 0 resumed, 0 skipped" in first.stdout
    second = cli(*argv)
    assert second.returncode == 0, second.stderr
    for step in ("annotations.json.gz", "assets.tar", "manifest.json", "verify"):
        assert f"{step}: up to date" in second.stderr
    assert "0 uploaded, 0 resumed, 4 skipped" in second.stdout
    assert "0 part uploads" in second.stdout or "part uploads" not in second.stdout
    import json

    summary = json.loads((tree["release"].parent / "summary.json").read_text())
    assert summary["version"] == VERSION and summary["bucket"] == bucket
    assert {a["name"] for a in summary["artifacts"]} == {"annotations.json.gz", "assets.tar",
                                                         "manifest.json", "SHA256SUMS"}


def test_make_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = make("demo", f"DEMO_DIR={tmp_path / 'demo'}", env={}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-m devtools demo --workdir" in result.stdout  # the checkout's devtools, not the installed CLI
    assert "release 2024_02_01 -> s3://objathor-demo/2024_02_01/ at http://127.0.0.1:" in result.stdout
    assert "manifest.json        " in result.stdout and "uploaded, verified" in result.stdout
    assert "demo: OK: released 2024_02_01 to a local S3 endpoint" in result.stdout
    assert "every byte verified and equal to the source" in result.stdout
    assert (tmp_path / "demo" / "download" / "2024_02_01" / "annotations.json.gz").exists()
    err = result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    assert "demo: downloading the version back with 'objathor-release download all'" in err  # the demo's lines
    assert any(ln.startswith("objathor-release: ") and ln.endswith("manifest.json: not signed "
                                                                    "($OBJATHOR_SIGNING_KEY is not set)")
               for ln in err), result.stderr  # the package's log lines, as the CLI shows them


def test_invoke_demo_runs_from_anywhere_in_the_checkout(tmp_path: Path) -> None:
    invoke = Path(sys.executable).parent / "invoke"
    result = subprocess.run([str(invoke), "demo", "--workdir", str(tmp_path / "demo"), "--assets", "3"],
                            cwd=REPO / "tests", capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OBJATHOR_PROGRESS": "0"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo: OK: released 2024_02_01 to a local S3 endpoint" in result.stdout
    assert (tmp_path / "demo" / "download" / "2024_02_01" / "assets").is_dir()


# --------------------------------------------------------------------------- invoke


def test_invoke_lists_every_task_with_a_docstring() -> None:
    invoke = Path(sys.executable).parent / "invoke"
    listing = subprocess.run([str(invoke), "--list"], cwd=REPO, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    for task in ("prepare-annotations", "tar", "manifest", "verify", "upload", "release", "download",
                 "cleanup", "demo"):
        line = next((ln for ln in listing.stdout.splitlines() if ln.strip().startswith(task + " ")), "")
        assert len(line.split()) > 1, f"task {task} has no docstring in `invoke --list`"


@pytest.mark.parametrize("task", ["release", "download", "upload", "tar", "prepare-annotations"])
def test_every_invoke_parameter_has_help(task: str) -> None:
    invoke = Path(sys.executable).parent / "invoke"
    out = subprocess.run([str(invoke), "--help", task], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    options = [ln for ln in out.stdout.splitlines() if ln.strip().startswith("-")]
    assert options
    for ln in options:
        assert len(re.split(r"\s{2,}", ln.strip())) >= 2, f"no help text: {ln!r}"


def test_invoke_release_runs_the_package(tree, s3_server, s3_env, s3_client, bucket) -> None:
    invoke = Path(sys.executable).parent / "invoke"
    result = subprocess.run(
        [str(invoke), "release", "--version", VERSION, "--assets-dir", str(tree["assets"]),
         "--release-dir", str(tree["release"]), "--bucket", bucket, "--endpoint-url", s3_server.endpoint_url,
         "--chunk-size", "5M"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, **s3_env}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{VERSION}/manifest.json" in keys(s3_client, bucket)
