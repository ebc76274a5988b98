"""Docker fixtures: a reachable engine, the cached base image, the image built from this checkout.

Tests that need them skip, with the reason, only when no Docker engine answers; with
``OBJATHOR_REQUIRE_DOCKER=1`` (set by .ci/run, because CI has an engine) they fail instead.

The base image ``objathor-release-base:bookworm`` is made once (debootstrap + docker import, well
under a minute) and reused by later runs; where debootstrap cannot run (not root) the pinned
official base is pulled instead. The image under test is built through the same code as
``invoke docker-build``, with a fixed SOURCE_DATE_EPOCH so Docker's layer cache is reused between
runs, and with canary credentials in the environment and a canary credentials file in the build
context, which tests/test_docker.py then looks for in every layer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools import dockerimage
from objathor_release.errors import ReleaseError

REPO = Path(__file__).resolve().parents[2]
TEST_IMAGE = "objathor-release:test"
TEST_EPOCH = 1_700_000_000
REQUIRE_ENV = "OBJATHOR_REQUIRE_DOCKER"

#: Credentials present in the environment and the build context while the image is built.
CANARIES = {
    "AWS_ACCESS_KEY_ID": "AKIACANARY7DOCKERBUILD",
    "AWS_SECRET_ACCESS_KEY": "canary-secret-3f9a1c-never-in-a-layer",
    "R2_ACCESS_KEY_ID": "r2canarykey0b7e5d2c",
    "R2_SECRET_ACCESS_KEY": "r2-canary-secret-8c41e07f-never-in-a-layer",
}


def docker_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def unavailable(reason: str) -> None:
    """Skip with ``reason``; fail instead when CI says an engine must be there."""
    if docker_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: this machine is expected to have a Docker engine)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client; skips (or fails under OBJATHOR_REQUIRE_DOCKER=1) without an engine."""
    reason = dockerimage.engine_unreachable_reason()
    if reason:
        unavailable(f"no Docker engine reachable: {reason}")
    client = dockerimage.connect()
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    """The base image to build on: the cached local one, made now if missing, else the pinned one."""
    if dockerimage.image_id(docker_client, dockerimage.LOCAL_BASE_IMAGE):
        return dockerimage.LOCAL_BASE_IMAGE
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if os.geteuid() == 0 and os.access(debootstrap, os.X_OK):
        dockerimage.build_base_image(client=docker_client)
        return dockerimage.LOCAL_BASE_IMAGE
    try:
        dockerimage.ensure_base_image(docker_client, dockerimage.PINNED_BASE_IMAGE)
    except ReleaseError as exc:
        pytest.fail(f"no base image: {dockerimage.LOCAL_BASE_IMAGE} needs root and debootstrap, and {exc}")
    return dockerimage.PINNED_BASE_IMAGE


@pytest.fixture(scope="session")
def release_image(docker_client: Any, base_image: str) -> str:
    """``objathor-release:test`` built from this checkout on ``base_image`` (cached layers reused)."""
    saved = {name: os.environ.get(name) for name in CANARIES}
    stray = REPO / dockerimage.DOCKER_CONTEXT / "credentials"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text("".join(f"{k}={v}\n" for k, v in CANARIES.items()))
    os.environ.update(CANARIES)
    try:
        dockerimage.build_image(base_image, tags=[TEST_IMAGE], source_date_epoch=TEST_EPOCH,
                                client=docker_client)
    finally:  # the environment first: a canary left set would change every later test
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        stray.unlink()  # it must still be there: the build saw it (and must have left it out)
    return TEST_IMAGE
