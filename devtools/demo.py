"""The demo: release a generated sample to an embedded local S3 endpoint, download it back, compare.

Lives in devtools because it needs moto (a development dependency) and the sample generator;
``python -m devtools demo`` (and ``make demo``) run it. ``open_bucket`` is also the local
trial's ``python -m devtools open-bucket``.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from objathor_release.errors import InputError, TransferError, UsageError
from objathor_release.pipeline import Summary, build_local, check_settings, publish
from objathor_release.settings import ReleaseConfig, validate_version

logger = logging.getLogger(__name__)

DEMO_BUCKET = "objathor-demo"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: the credentials open-bucket uses on a loopback endpoint when the environment has none
LOCAL_CREDENTIALS = ("test", "test")


def files_below(root: Path) -> set[str]:
    """The relative paths of every file below ``root`` (folders aside; no symlink followed)."""
    found: set[str] = set()
    for folder, _, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        found.update((rel / name).as_posix() for name in files)
    return found


def compare_trees(source: Path, copy: Path, keep: Callable[[str], bool]) -> list[str]:
    """Differences between the files of ``source`` that ``keep`` accepts and all files of ``copy``."""
    want = {rel for rel in files_below(source) if keep(rel)}
    have = files_below(copy)
    problems = [f"missing {rel}" for rel in sorted(want - have)]
    problems += [f"unexpected {rel}" for rel in sorted(have - want)]
    problems += [f"differs {rel}" for rel in sorted(want & have)
                 if not filecmp.cmp(source / rel, copy / rel, shallow=False)]
    return problems


def make_public_bucket(client: Any, bucket: str) -> bool:
    """Create ``bucket`` (unless this account has it) and let anyone read its objects, as an r2.dev
    bucket does: the download uses plain HTTP GETs. True when it was created now."""
    try:
        client.create_bucket(Bucket=bucket)
        created = True
    except client.exceptions.BucketAlreadyOwnedByYou:
        created = False
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                       "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    return created


def open_bucket(bucket: str, endpoint_url: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Create a publicly readable ``bucket`` on a local S3 endpoint (e.g. ``moto_server -p 9000``).

    The endpoint is ``endpoint_url``, else ``$AWS_ENDPOINT_URL_S3`` or ``$AWS_ENDPOINT_URL``; the
    credentials come from the environment, or are test/test on a loopback endpoint without any.
    Returns the line to show.
    """
    import boto3
    import botocore.exceptions

    env = os.environ if env is None else env
    url = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if not url:
        raise UsageError("open-bucket needs the local S3 endpoint: pass --endpoint-url URL "
                         "(e.g. http://127.0.0.1:9000) or set $AWS_ENDPOINT_URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--endpoint-url {url}: not an http(s) URL")
    local = parts.hostname in LOOPBACK_HOSTS and not (env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE"))
    region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
    client = boto3.client("s3", endpoint_url=url, region_name=region,  # None: boto3's own credential chain
                          aws_access_key_id=LOCAL_CREDENTIALS[0] if local else None,
                          aws_secret_access_key=LOCAL_CREDENTIALS[1] if local else None)
    try:
        created = make_public_bucket(client, bucket)
    except botocore.exceptions.ParamValidationError as exc:
        raise UsageError(f"bucket {bucket!r}: {exc}") from None
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise TransferError(f"cannot open bucket {bucket} at {url}: {exc}") from None
    how = "created" if created else "already there"
    return f"bucket {bucket} {how} at {url}, readable by anyone"


@dataclass
class DemoResult:
    version: str
    summary: Summary
    downloaded: Path
    files: int

    def ok_line(self) -> str:
        return (f"demo: OK: released {self.version} to a local S3 endpoint, downloaded {self.files} files "
                f"back into {self.downloaded}, every byte verified and equal to the source")


def run_demo(workdir: str | Path = "demo", n_assets: int = 50, version: str = "2024_02_01", *,
             show_progress: bool = True) -> DemoResult:
    """Release a generated sample to an embedded moto server, download it back, compare."""
    from devtools.locals3 import DUMMY_CREDENTIALS, LocalS3
    from devtools.sample import make_sample_dataset
    from objathor_release.build.excludes import DEFAULT_EXCLUDES, compile_excludes
    from objathor_release.fetch.download import download_version

    version = validate_version(version)
    work = Path(workdir)
    if work.exists():
        shutil.rmtree(work)
    assets, features = work / "assets", work / "features"
    logger.info("demo: generating %d sample assets in %s", n_assets, assets)
    make_sample_dataset(assets, n_assets, seed=2024, asset_bytes=256 * 1024, features_dir=features)
    os.environ.update(DUMMY_CREDENTIALS)  # the local server takes any keys; never real ones
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "R2_ACCOUNT_ID",
                "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"):
        os.environ.pop(var, None)
    with LocalS3(log=work / "s3-server.log") as s3:
        logger.info("demo: local S3 endpoint at %s (moto), bucket %s", s3.endpoint_url, DEMO_BUCKET)
        import boto3

        make_public_bucket(boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1"),
                           DEMO_BUCKET)
        cfg = ReleaseConfig(version=version, assets_dir=str(assets), features_dir=str(features),
                            release_dir=str(work / "release" / version), bucket=DEMO_BUCKET,
                            endpoint_url=s3.endpoint_url, chunk_size="5M")
        check_settings(cfg)
        build_local(cfg, show_progress=show_progress)
        summary = publish(cfg, show_progress=show_progress)
        logger.info("demo: downloading the version back with 'objathor-release download all'")
        result = download_version("all", version, path=work / "download",
                                  base_url=f"{s3.endpoint_url}/{DEMO_BUCKET}", show_progress=show_progress)
    excluded = compile_excludes(DEFAULT_EXCLUDES)
    got = work / "download" / version
    problems = compare_trees(assets, got / "assets", lambda rel: not excluded(f"assets/{rel}"))
    problems += compare_trees(features, got / "features", lambda rel: True)
    if not filecmp.cmp(work / "release" / version / "annotations.json.gz", got / "annotations.json.gz",
                       shallow=False):
        problems.append("differs annotations.json.gz")
    if problems or not result.verified:
        for p in problems:
            logger.info("demo: %s", p)
        raise InputError(f"demo: the downloaded copy differs from the source in {len(problems)} places")
    return DemoResult(version, summary, got, len(files_below(got)))
