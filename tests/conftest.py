"""Shared fixtures. Area-specific fixtures live in tests/fixtures_*.py, loaded as plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.locals3 import DUMMY_CREDENTIALS, LocalS3
from devtools.sample import make_sample_dataset

REPO = Path(__file__).resolve().parent.parent
# The suite checks the CLI's own wording; a variable saying "run by make" (set by the Makefile on the
# commands it runs) would change the hints, so no test process or child inherits one.
os.environ.pop("OBJATHOR_UNDER_MAKE", None)
pytest_plugins = sorted(
    f"tests.support.{p.stem}" for p in (Path(__file__).parent / "support").glob("fixtures_*.py")
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A real moto server process on a free 127.0.0.1 port, for the whole session."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with LocalS3(log=log) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: LocalS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment (also set in-process) pointing boto3 at the moto server with dummy keys."""
    env = {**DUMMY_CREDENTIALS, "AWS_ENDPOINT_URL": s3_server.endpoint_url}
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "R2_ACCOUNT_ID", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    return env


@pytest.fixture
def s3_client(s3_env: dict[str, str], s3_server: LocalS3):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client) -> str:  # type: ignore[no-untyped-def]
    """A fresh, empty bucket on the moto server."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def sample_assets(tmp_path: Path) -> Path:
    """A small synthetic asset tree (12 assets with junk) at tmp_path/assets."""
    root = tmp_path / "assets"
    make_sample_dataset(root, 12, seed=1, asset_bytes=16 * 1024)
    return root


@pytest.fixture
def tree_src(tmp_path: Path) -> Path:
    """Ten assets of about 300 KB at tmp_path/assets: four or so shards at --shard-size 1M."""
    src = tmp_path / "assets"
    make_sample_dataset(src, 10, seed=3, asset_bytes=300 * 1024)
    return src


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m objathor_release ARGS`` as a real process and capture its output."""
    full_env = {**os.environ, "OBJATHOR_PROGRESS_INTERVAL": "0.5", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "objathor_release", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=timeout,
    )


@pytest.fixture
def cli():  # type: ignore[no-untyped-def]
    """``cli("tar", "--assets-dir", ...)`` -> CompletedProcess (stdout, stderr, returncode)."""
    return run_cli
