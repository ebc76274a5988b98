"""Fixtures and helpers for the upload tests: small release dirs, an auth-checking S3 server, counters."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.locals3 import LocalS3

MiB = 1024 * 1024
PART = 5 * MiB
VERSION = "2024_02_01"


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def tar_bytes(payload_size: int, seed: int, top: str = "assets") -> bytes:
    """A real tar holding one top-level folder with one member of ``payload_size`` random bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        d = tarfile.TarInfo(top)
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        data = random_bytes(payload_size, seed)
        info = tarfile.TarInfo(f"{top}/{seed:032x}/model.bin")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_manifest_files(root: Path, version: str = VERSION) -> dict[str, Any]:
    """manifest.json + SHA256SUMS for ``root``, written by the real manifest module."""
    from objathor_release.build.manifest import write_manifest

    return write_manifest(root, version, show_progress=False)


def make_release(root: Path, files: dict[str, bytes], version: str = VERSION) -> Path:
    """Write ``files`` (name -> bytes) under ``root`` and their manifest."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    write_manifest_files(root, version)
    return root


def expected_etag(data: bytes, part_size: int = PART) -> str:
    """Independent reference: the S3 multipart ETag of ``data`` in ``part_size`` parts."""
    digests = [hashlib.md5(data[i:i + part_size]).digest() for i in range(0, len(data), part_size)]
    return hashlib.md5(b"".join(digests)).hexdigest() + f"-{len(digests)}"


def content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def part_puts(log: list[Any]) -> list[Any]:
    """The UploadPart requests in a FaultProxy log."""
    return [r for r in log if r.method == "PUT" and "partNumber=" in r.path]


def part_number(request: Any) -> int:
    from urllib.parse import parse_qs, urlsplit

    return int(parse_qs(urlsplit(request.path).query)["partNumber"][0])


def writes(log: list[Any]) -> list[Any]:
    """Requests in a FaultProxy log that change the bucket."""
    return [r for r in log if r.method in ("PUT", "POST", "DELETE")]


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A release dir: assets.tar of 4 full 5 MiB parts and a partial one, plus a small annotations file."""
    return make_release(tmp_path / "release", {
        "assets.tar": tar_bytes(4 * PART + 1_234_567, seed=1),
        "annotations.json.gz": random_bytes(40_000, seed=2),
    })


@pytest.fixture(scope="module")
def auth_s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A moto server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0): every unknown key is refused."""
    log = tmp_path_factory.mktemp("moto-auth") / "moto.log"
    saved = os.environ.get("INITIAL_NO_AUTH_ACTION_COUNT")
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    try:
        server = LocalS3(log=log).start()
    finally:
        if saved is None:
            del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
        else:
            os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = saved
    try:
        yield server
    finally:
        server.stop()
