"""The demo: release a generated sample to an embedded local S3 endpoint, download it back, compare.

Lives in devtools because it needs moto (a development dependency) and the sample generator.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from objathor_release.errors import InputError
from objathor_release.pipeline import _say, _walk, build_local, check_settings, publish
from objathor_release.settings import ReleaseConfig, validate_version


def compare_trees(source: Path, copy: Path, keep: Callable[[str], bool]) -> list[str]:
    """Differences between the files of ``source`` that ``keep`` accepts and all files of ``copy``."""
    want = {rel for rel, _ in _walk(source) if keep(rel)}
    have = {rel for rel, _ in _walk(copy)}
    problems = [f"missing {rel}" for rel in sorted(want - have)]
    problems += [f"unexpected {rel}" for rel in sorted(have - want)]
    problems += [f"differs {rel}" for rel in sorted(want & have)
                 if not filecmp.cmp(source / rel, copy / rel, shallow=False)]
    return problems


def run_demo_command(args: argparse.Namespace) -> int:
    """Release a generated sample to an embedded moto server, download it back, compare."""
    from devtools.locals3 import DUMMY_CREDENTIALS, LocalS3
    from devtools.sample import make_sample_dataset
    from objathor_release.build.excludes import DEFAULT_EXCLUDES, compile_excludes
    from objathor_release.fetch.download import download_version

    version = validate_version(args.version)
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    assets, features = work / "assets", work / "features"
    _say(f"demo: generating {args.assets} sample assets in {assets}")
    make_sample_dataset(assets, args.assets, seed=2024, asset_bytes=256 * 1024, features_dir=features)
    os.environ.update(DUMMY_CREDENTIALS)  # the local server takes any keys; never real ones
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "R2_ACCOUNT_ID",
                "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"):
        os.environ.pop(var, None)
    with LocalS3(log=work / "s3-server.log") as s3:
        _say(f"demo: local S3 endpoint at {s3.endpoint_url} (moto), bucket objathor-demo")
        import boto3

        client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1")
        client.create_bucket(Bucket="objathor-demo")
        # Public reads, like an R2 bucket served on r2.dev: the download uses plain HTTPS GETs.
        client.put_bucket_policy(Bucket="objathor-demo", Policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                           "Resource": "arn:aws:s3:::objathor-demo/*"}]}))
        cfg = ReleaseConfig(version=version, assets_dir=str(assets), features_dir=str(features),
                            release_dir=str(work / "release" / version), bucket="objathor-demo",
                            endpoint_url=s3.endpoint_url, chunk_size="5M")
        check_settings(cfg)
        build_local(cfg, show_progress=not args.quiet)
        summary = publish(cfg, show_progress=not args.quiet)
        print(summary.text())
        _say("demo: downloading the version back with 'objathor-release download all'")
        result = download_version("all", version, path=work / "download",
                                  base_url=f"{s3.endpoint_url}/objathor-demo", show_progress=not args.quiet)
    excluded = compile_excludes(DEFAULT_EXCLUDES)
    got = work / "download" / version
    problems = compare_trees(assets, got / "assets", lambda rel: not excluded(f"assets/{rel}"))
    problems += compare_trees(features, got / "features", lambda rel: True)
    if not filecmp.cmp(work / "release" / version / "annotations.json.gz", got / "annotations.json.gz",
                       shallow=False):
        problems.append("differs annotations.json.gz")
    if problems or not result.verified:
        for p in problems:
            _say(f"demo: {p}")
        raise InputError(f"demo: the downloaded copy differs from the source in {len(problems)} places")
    files = sum(1 for _ in _walk(got))
    print(f"demo: OK: released {version} to a local S3 endpoint, downloaded {files} files back into "
          f"{got}, every byte verified and equal to the source")
    return 0
