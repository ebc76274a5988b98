"""The ETag and md5 the build records per artifact: worked out before upload, equal to what the server
gives, checked on the way up, and the md5chksum metadata that lets ``rclone check`` compare a multipart
object by hash."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devtools.locals3 import DUMMY_CREDENTIALS
from objathor_release.build import tarball
from objathor_release.build.etags import UploadDigests, etag_problem
from objathor_release.build.manifest import load_manifest, render_manifest, write_manifest
from objathor_release.build.tarball import build_tar, read_sidecar
from objathor_release.build.tarwriter import estimate_size
from objathor_release.errors import ChecksumError, InputError
from objathor_release.publish import remote
from objathor_release.settings import planned_part_size
from tests.conftest import run_cli
from tests.support.fixtures_upload import VERSION, expected_etag, random_bytes
from tests.support.tarball_helpers import s3_etag_fields

MiB = 1024 * 1024
FAST = {"AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true", "OBJATHOR_PROGRESS": "0"}


# --------------------------------------------------------------------------- the digests


@pytest.mark.parametrize(("size", "part", "feed"), [
    (0, None, 7), (1, None, 1), (5 * MiB, 5 * MiB, 4096), (5 * MiB + 1, 5 * MiB, 999_999),
    (17 * MiB + 3, 5 * MiB, 5 * MiB), (12 * MiB, 6 * MiB, 6 * MiB + 1)])
def test_digests_fed_in_any_pieces_are_the_s3_etag(size: int, part: int | None, feed: int) -> None:
    data = random_bytes(size, seed=size)
    d = UploadDigests(part)
    for i in range(0, len(data), feed):
        d.update(memoryview(data)[i:i + feed])
    fields = d.fields()
    md5 = hashlib.md5(data).hexdigest()
    assert fields["md5"] == md5
    if part is None:
        assert fields == {"md5": md5, "etag": md5}
    else:
        chunks = [data[i:i + part] for i in range(0, max(len(data), 1), part)]
        want = hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest() + f"-{len(chunks)}"
        assert fields == {"md5": md5, "etag": want, "part_size": part}
        assert etag_problem({"size": size, **fields}) is None


def test_the_planned_part_size_follows_the_default_upload() -> None:
    assert planned_part_size(8 * MiB - 1) is None  # one PUT
    assert planned_part_size(8 * MiB) == 5 * MiB
    assert planned_part_size(1280 * MiB) == 5 * MiB
    assert planned_part_size(1536 * MiB) == 6 * MiB  # size // 256 parts, whole MiB
    assert planned_part_size(40 * 1024 * MiB) == 64 * MiB  # at most 64 MiB ...
    assert planned_part_size(1000 * 1024 * MiB) == 103 * MiB  # ... unless 10,000 parts need more


# --------------------------------------------------------------------------- the build records them


def _tree(root: Path) -> Path:
    src = root / "assets"
    for i in range(3):
        d = src / f"{i:04d}" / ("deep-" * 30 + "x")  # names over 100 bytes: GNU long-name entries
        d.mkdir(parents=True)
        (d / "big.bin").write_bytes(random_bytes(4 * MiB + 777 * i, seed=i))
        (d / ("n" * 120 + ".json")).write_text("{}")
        (d / "thumbnail.jpg").write_bytes(b"excluded")
    (src / "empty").mkdir()
    return src


def test_the_estimate_is_the_archives_size(tmp_path: Path) -> None:
    """The part layout is chosen from the estimate before the first byte: it must be exact (long names,
    folders, excludes, the end-of-archive record, a shard's units)."""
    src = _tree(tmp_path)
    for units in (None, ["0001", "empty"]):
        out = tmp_path / f"out-{units is None}.tar"
        result = build_tar(src, out, show_progress=False, extra_excludes=["*.jpg"], units=units)
        excluded = tarball.compile_excludes(tarball.exclude_list(["*.jpg"]))
        assert estimate_size(src, excluded, units) == result.size == out.stat().st_size


def test_a_tar_and_its_manifest_list_the_etag_s3_will_give(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    rel = tmp_path / "rel"
    rel.mkdir()
    result = build_tar(src, rel / "assets.tar", show_progress=False)
    (rel / "annotations.json.gz").write_bytes(random_bytes(9 * MiB, seed=9))  # hashed by the manifest
    want = s3_etag_fields(rel / "assets.tar")
    assert want["part_size"] == 5 * MiB and want["etag"].endswith("-3")
    assert result.upload == want
    side = read_sidecar(rel / "assets.tar")
    assert side is not None and {k: side[k] for k in want} == want
    m = write_manifest(rel, VERSION, show_progress=False)
    arts = {a["name"]: a for a in m["artifacts"]}
    for name in ("assets.tar", "annotations.json.gz"):
        assert {k: arts[name][k] for k in ("md5", "etag", "part_size") if k in arts[name]} == \
            s3_etag_fields(rel / name)
    assert load_manifest(rel) == m


def test_a_tree_that_changes_between_the_walks_is_read_once_more(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An estimate that turns out wrong (the tree changed after it) must not leave md5s of another
    layout: the tar is read again for them."""
    src = _tree(tmp_path)
    monkeypatch.setattr(tarball, "estimate_size", lambda *a, **k: 3 * 1024 * MiB)  # 12 MiB parts
    result = build_tar(src, tmp_path / "a.tar", show_progress=False)
    assert result.upload == s3_etag_fields(tmp_path / "a.tar")


def test_an_old_sidecar_without_md5s_is_completed_by_the_manifest(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    rel = tmp_path / "rel"
    rel.mkdir()
    build_tar(src, rel / "assets.tar", show_progress=False)
    side_path = tarball.sidecar_path(rel / "assets.tar")
    side = json.loads(side_path.read_text())
    for k in ("md5", "etag", "part_size"):
        side.pop(k)
    st = os.stat(rel / "assets.tar")
    side_path.write_text(json.dumps(side))
    os.utime(rel / "assets.tar", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert read_sidecar(rel / "assets.tar") is not None  # still used for the members
    m = write_manifest(rel, VERSION, show_progress=False)
    art = m["artifacts"][0]
    assert {k: art[k] for k in ("md5", "etag", "part_size")} == s3_etag_fields(rel / "assets.tar")


@pytest.mark.parametrize(("fields", "says"), [
    ({"md5": "A" * 32, "etag": "a" * 32}, "artifacts[0].md5"),
    ({"md5": "a" * 32, "etag": "b" * 32}, "must equal its md5"),
    ({"md5": "a" * 32, "etag": "b" * 32 + "-2", "part_size": 5 * MiB}, "does not end in -3"),
    ({"md5": "a" * 32, "etag": "b" * 32 + "-0"}, "artifacts[0].etag"),
    ({"md5": "a" * 32, "etag": "b" * 32 + "-3", "part_size": True}, "part_size"),
    ({"etag": "a" * 32}, "md5 None"),
    ({"part_size": 5 * MiB}, "md5 None"),
    ({"md5": "a" * 32, "etag": "b" * 32 + "-1", "part_size": 5 * MiB, "size": 0}, "an empty file"),
])
def test_a_manifest_with_inconsistent_etag_fields_is_one_line(tmp_path: Path, fields: dict[str, Any],
                                                              says: str) -> None:
    rel = tmp_path / "rel"
    rel.mkdir()
    (rel / "annotations.json.gz").write_bytes(random_bytes(100, seed=1))
    m = write_manifest(rel, VERSION, show_progress=False)
    art = m["artifacts"][0]
    for k in ("md5", "etag", "part_size"):
        art.pop(k, None)
    art.update({"size": 11 * MiB, **fields})
    (rel / "manifest.json").write_text(render_manifest(m))
    with pytest.raises(InputError) as e:
        load_manifest(rel)
    assert "manifest.json: field " in str(e.value) and says in str(e.value) and "\n" not in str(e.value)


def test_a_listed_layout_outside_the_s3_limits_is_not_used(tmp_path: Path) -> None:
    """A manifest may list a part size no upload can use (a hand-made one): the upload then lays the
    file out itself and does not expect the listed ETag."""
    from objathor_release.publish.localfiles import ReleaseDir
    from objathor_release.publish.parts import Job
    from objathor_release.settings import UploadConfig

    (tmp_path / "big.bin").write_bytes(b"x" * (11 * MiB))
    size = 60 * 1024 * MiB  # the size listed: 12,288 parts of 5 MiB would be over the 10,000 limit
    art = {"name": "big.bin", "size": size, "md5": "a" * 32, "etag": "b" * 32 + "-12288",
           "part_size": 5 * MiB}
    assert etag_problem(art) is None  # consistent in itself
    with ReleaseDir(tmp_path) as rd:
        file = rd.open("big.bin")
        assert file is not None
        try:
            job = Job.of("big.bin", file, "k", size, "0" * 64, UploadConfig(), art)
        finally:
            file.close()
    assert job.part_size != 5 * MiB and job.parts <= 10_000
    assert job.expected_etag is None and job.md5 == "a" * 32


# --------------------------------------------------------------------------- on the server


def _rclone_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone fails on it over http
    return {**env, "RCLONE_CONFIG": os.devnull, "RCLONE_CONFIG_MOTO_TYPE": "s3",
            "RCLONE_CONFIG_MOTO_PROVIDER": "Other", "RCLONE_CONFIG_MOTO_ENDPOINT": endpoint,
            "RCLONE_CONFIG_MOTO_ACCESS_KEY_ID": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "RCLONE_CONFIG_MOTO_REGION": "us-east-1"}


def _rclone_check(rel: Path, endpoint: str, bucket: str, prefix: str) -> str:
    done = subprocess.run(
        ["rclone", "check", str(rel), f"moto:{bucket}/{prefix}", "--include", "assets.tar", "--include",
         "annotations.json.gz"], env=_rclone_env(endpoint), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stderr


def _release(tmp_path: Path) -> Path:
    rel = tmp_path / "rel"
    rel.mkdir()
    build_tar(_tree(tmp_path), rel / "assets.tar", show_progress=False)
    (rel / "annotations.json.gz").write_bytes(random_bytes(50_000, seed=5))
    write_manifest(rel, VERSION, show_progress=False)
    return rel


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is installed by make install")
def test_rclone_check_compares_the_multipart_tar_by_hash(s3_env: dict[str, str], s3_server: Any,
                                                         s3_client: Any, bucket: str, tmp_path: Path) -> None:
    rel = _release(tmp_path)
    up = run_cli("upload", "--release-dir", str(rel), "--bucket", bucket, "--endpoint-url",
                 s3_server.endpoint_url, env=FAST)
    assert up.returncode == 0, up.stderr
    assert "as manifest.json lists them" in run_cli(
        "upload", "--release-dir", str(rel), "--bucket", bucket, "--endpoint-url", s3_server.endpoint_url,
        "--dry-run", "--force", env=FAST).stdout
    m = load_manifest(rel)
    tar = next(a for a in m["artifacts"] if a["name"] == "assets.tar")
    head = s3_client.head_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")
    assert head["ETag"].strip('"') == tar["etag"] and tar["etag"].endswith("-3")
    data = (rel / "assets.tar").read_bytes()
    assert head["Metadata"]["md5chksum"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    said = _rclone_check(rel, s3_server.endpoint_url, bucket, VERSION)
    assert "0 differences found" in said and "2 matching files" in said
    assert "could not be checked" not in said

    # the control: the same bytes uploaded by a client that sets no md5chksum are not compared by hash
    s3_client.upload_file(str(rel / "assets.tar"), bucket, "plain/assets.tar")
    s3_client.upload_file(str(rel / "annotations.json.gz"), bucket, "plain/annotations.json.gz")
    assert "-" in s3_client.head_object(Bucket=bucket, Key="plain/assets.tar")["ETag"]
    assert "1 hashes could not be checked" in _rclone_check(rel, s3_server.endpoint_url, bucket, "plain")


def test_an_upload_in_other_parts_still_sets_md5chksum(s3_env: dict[str, str], s3_server: Any,
                                                       s3_client: Any, bucket: str, tmp_path: Path) -> None:
    rel = _release(tmp_path)
    up = run_cli("upload", "--release-dir", str(rel), "--bucket", bucket, "--endpoint-url",
                 s3_server.endpoint_url, "--chunk-size", "6M", env=FAST)
    assert up.returncode == 0, up.stderr
    head = s3_client.head_object(Bucket=bucket, Key=f"{VERSION}/assets.tar")
    data = (rel / "assets.tar").read_bytes()
    assert head["ETag"].strip('"') == expected_etag(data, 6 * MiB)  # not the manifest's 5 MiB parts
    assert head["ETag"].strip('"') != next(a["etag"] for a in load_manifest(rel)["artifacts"]
                                           if a["name"] == "assets.tar")
    assert head["Metadata"]["md5chksum"] == base64.b64encode(hashlib.md5(data).digest()).decode()
    checks = remote.verify_remote(s3_client, bucket, VERSION, load_manifest(rel), artifacts_only=True)
    assert [(c.name, c.etag_check) for c in checks] == [("annotations.json.gz", "exact"),
                                                        ("assets.tar", "part-count")]


def test_a_manifest_whose_md5s_are_not_of_the_bytes_publishes_nothing(
        s3_env: dict[str, str], s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    """sha256 right, md5 fields of other bytes (a hand-edited or damaged manifest): the ETag the server
    gives is not the one listed, so the upload stops before manifest.json."""
    rel = _release(tmp_path)
    m = load_manifest(rel)
    tar = next(a for a in m["artifacts"] if a["name"] == "assets.tar")
    tar["etag"] = hashlib.md5(b"other").hexdigest() + tar["etag"][32:]
    (rel / "manifest.json").write_text(render_manifest(m))
    up = run_cli("upload", "--release-dir", str(rel), "--bucket", bucket, "--endpoint-url",
                 s3_server.endpoint_url, env=FAST)
    assert up.returncode != 0
    assert "manifest.json lists" in up.stderr and "Traceback" not in up.stderr
    assert len(up.stderr.strip().splitlines()) == 1
    assert remote.published_manifest(s3_client, bucket, VERSION) is None


def test_remote_verify_catches_a_wrong_md5chksum(s3_env: dict[str, str], s3_server: Any, s3_client: Any,
                                                 bucket: str, tmp_path: Path) -> None:
    rel = _release(tmp_path)
    up = run_cli("upload", "--release-dir", str(rel), "--bucket", bucket, "--endpoint-url",
                 s3_server.endpoint_url, env=FAST)
    assert up.returncode == 0, up.stderr
    key = f"{VERSION}/annotations.json.gz"
    meta = s3_client.head_object(Bucket=bucket, Key=key)["Metadata"]
    s3_client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                          MetadataDirective="REPLACE",
                          Metadata={**meta, "md5chksum": base64.b64encode(bytes(16)).decode()})
    with pytest.raises(ChecksumError) as e:
        remote.verify_remote(s3_client, bucket, VERSION, load_manifest(rel), artifacts_only=True)
    assert "md5chksum metadata" in str(e.value) and "annotations.json.gz" in str(e.value)
