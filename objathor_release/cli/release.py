"""The CLI's release, publish, config, sample-dataset and demo: the whole pipeline."""

from __future__ import annotations

import argparse
from typing import Any

from objathor_release.cli.common import env
from objathor_release.cli.publish import add_s3_options

# --------------------------------------------------------------------------- release / sample


def _add_publish_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE", help="release.toml to read settings from")
    p.add_argument("--version", default=env("VERSION"), metavar="YYYY_MM_DD",
                   help="dataset version (default: $VERSION)")
    p.add_argument("--release-dir", default=env("RELEASE_DIR"), metavar="DIR",
                   help="where the artifacts are built (default: release/VERSION)")
    add_s3_options(p)
    p.add_argument("--prefix", default=None, help="key prefix (default: VERSION)")
    p.add_argument("--chunk-size", default=None, help="part size, 5M to 5G (default 64M)")
    p.add_argument("--upload-concurrency", type=int, default=None,
                   help="parts in flight per file (default 16)")
    p.add_argument("--transfers", type=int, default=None, help="files at once (default 4)")
    p.add_argument("--public-base-url", default=None, metavar="URL",
                   help="public URL the bucket is served from, for the summary")
    p.add_argument("--summary", default=None, metavar="FILE", help="also write the summary as JSON to FILE")
    p.add_argument("--force", action="store_true", help="overwrite a published version")


def add_release(sub: Any) -> None:
    p = sub.add_parser("release", help="the whole pipeline: annotations, tar, manifest, verify, "
                       "upload, remote verify")
    _add_publish_options(p)
    p.add_argument("--assets-dir", default=env("ASSETS_DIR"), metavar="DIR",
                   help="optimized assets (default: $ASSETS_DIR)")
    p.add_argument("--features-dir", default=env("FEATURES_DIR"), metavar="DIR",
                   help="features directory, optional (default: $FEATURES_DIR)")
    p.add_argument("--dry-run", action="store_true",
                   help="do everything local and print what the upload would do")
    p.add_argument("--check-only", action="store_true",
                   help="validate the settings and stop (what `make release` runs first)")
    p.set_defaults(func=_run_release)


def add_publish(sub: Any) -> None:
    p = sub.add_parser("publish", help="upload a built release dir, verify it remotely, print the summary")
    _add_publish_options(p)
    p.add_argument("--dry-run", action="store_true", help="print what the upload would do")
    p.set_defaults(func=_run_publish)


def _run_publish(args: argparse.Namespace) -> int:
    from objathor_release.pipeline import run_publish_command

    return run_publish_command(args)


def _run_release(args: argparse.Namespace) -> int:
    from objathor_release.pipeline import run_release_command

    return run_release_command(args)


def add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="validate a release.toml and show it (or as Make variables)")
    p.add_argument("--config", required=True, metavar="FILE", help="the release.toml to read")
    p.add_argument("--make", action="store_true", help="print it as Make assignments (VAR ?= value)")
    p.add_argument("--output", default=None, metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    from objathor_release.pipeline import run_config_command

    return run_config_command(args)


def add_sample_dataset(sub: Any) -> None:
    p = sub.add_parser("sample-dataset", help="generate a synthetic asset tree for trying things out")
    p.add_argument("dir", metavar="DIR", help="the assets directory to create")
    p.add_argument("--assets", type=int, default=20, help="number of assets (default 20)")
    p.add_argument("--asset-size", default="48K", help="average bytes per asset (default 48K)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--features-dir", default=None, metavar="DIR", help="also write features here")
    p.add_argument("--no-junk", action="store_true", help="leave out .DS_Store, ._* and *.lock files")
    p.set_defaults(func=_run_sample_dataset)


def _run_sample_dataset(args: argparse.Namespace) -> int:
    from devtools.sample import make_sample_dataset
    from objathor_release.settings import parse_size

    uids = make_sample_dataset(
        args.dir, args.assets, seed=args.seed, asset_bytes=parse_size(args.asset_size),
        junk=not args.no_junk, features_dir=args.features_dir,
    )
    print(f"wrote {len(uids)} sample assets to {args.dir}")
    return 0


def add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="release a generated sample to an embedded local S3 endpoint, "
                       "download it back and compare")
    p.add_argument("--workdir", default="demo", metavar="DIR", help="scratch directory (default demo/)")
    p.add_argument("--assets", type=int, default=50, help="number of sample assets (default 50)")
    p.add_argument("--version", default="2024_02_01", help="version to release (default 2024_02_01)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from devtools.demo import run_demo_command

    return run_demo_command(args)


COMMANDS = [add_release, add_publish, add_config, add_sample_dataset, add_demo]
