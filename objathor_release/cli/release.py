"""The CLI's release, publish and config: the whole pipeline, its settings and its summary.

``demo`` and ``sample-dataset`` live in the source checkout's devtools (``python -m
devtools ...``); here they only say so.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING, Any

from objathor_release.cli.common import Runner, env
from objathor_release.cli.publish import add_s3_options
from objathor_release.errors import UsageError

if TYPE_CHECKING:  # imported where it is used: the settings module costs ~30 ms at start-up
    from objathor_release.settings import ReleaseConfig

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- release / publish


def _add_publish_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE", help="release.toml to read settings from")
    p.add_argument("--version", default=env("VERSION"), metavar="YYYY_MM_DD",
                   help="dataset version (default: $VERSION)")
    p.add_argument("--release-dir", default=env("RELEASE_DIR"), metavar="DIR",
                   help="where the artifacts are built (default: release/VERSION)")
    add_s3_options(p)
    p.add_argument("--prefix", default=None, help="key prefix (default: VERSION)")
    p.add_argument("--chunk-size", default=None, help="part size, 5M to 5G (default: chosen per file)")
    p.add_argument("--upload-concurrency", type=int, default=None,
                   help="parts in flight per file (default: grows while the rate grows)")
    p.add_argument("--transfers", type=int, default=None,
                   help="files at once (default 8, sharing the connections)")
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
    p.add_argument("--holodeck-dir", default=env("HOLODECK_DIR"), metavar="DIR",
                   help="Holodeck base data folder, optional: built as holodeck.tar with every file kept "
                   "and published as holodeck/VERSION.tar beside the version (default: $HOLODECK_DIR)")
    p.add_argument("--dry-run", action="store_true",
                   help="do everything local and print what the upload would do")
    p.add_argument("--check-only", action="store_true",
                   help="validate the settings, check that the bucket answers (one ListObjectsV2; "
                   "not with --dry-run), and stop (what `make release` runs first)")
    p.add_argument("--shard-size", default=None, metavar="SIZE",
                   help="split assets.tar into shards of at most SIZE, whole asset folders each, e.g. 2G "
                   "(default: one assets.tar)")
    p.add_argument("--executor", default=None, choices=("local", "ray"),
                   help="where shards are built and uploaded: local (processes here; default) or ray")
    p.add_argument("--ray-address", default=env("RAY_ADDRESS"), metavar="ADDR",
                   help="the Ray cluster for --executor ray (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--only-shard", type=int, default=None, metavar="K",
                   help="build and upload shard K only (one job of a CI matrix; see `objathor-release plan`)")
    p.add_argument("--finish", action="store_true",
                   help="merge the shards' entries, publish the rest and the manifest (after the "
                   "--only-shard jobs)")
    p.set_defaults(func=_run_release)


def add_publish(sub: Any) -> None:
    p = sub.add_parser("publish", help="upload a built release dir, verify it remotely, print the summary")
    _add_publish_options(p)
    p.add_argument("--dry-run", action="store_true", help="print what the upload would do")
    p.set_defaults(func=_run_publish)


def settings_from_args(args: argparse.Namespace, *, need_assets: bool = True) -> ReleaseConfig:
    """The release config: ``--config`` file, overridden by flags; validated before any work."""
    from objathor_release.pipeline import check_settings

    overrides = {
        "version": args.version, "release_dir": args.release_dir, "bucket": args.bucket,
        "prefix": args.prefix, "endpoint_url": args.endpoint_url, "profile": args.profile,
        "chunk_size": args.chunk_size, "upload_concurrency": args.upload_concurrency,
        "transfers": args.transfers, "public_base_url": args.public_base_url,
        "assets_dir": args.assets_dir if need_assets else None,
        "features_dir": args.features_dir if need_assets else None,
        "holodeck_dir": args.holodeck_dir if need_assets else None,
        "shard_size": getattr(args, "shard_size", None), "executor": getattr(args, "executor", None),
        "ray_address": getattr(args, "ray_address", None),
    }
    from objathor_release.settings import ReleaseConfig

    cfg = ReleaseConfig.load(args.config, overrides)
    check_settings(cfg, need_assets=need_assets, need_bucket=not args.remote)
    return cfg


def _run_release(args: argparse.Namespace) -> int:
    """``objathor-release release``: every step, skipping what is up to date."""
    from objathor_release.pipeline import build_local, release_dir_of
    from objathor_release.publish.preflight import check_release_target

    cfg = settings_from_args(args)
    mode = _mode(args, cfg)
    if args.check_only and args.dry_run:  # the local steps' check: no bucket, no request
        print(f"settings OK: version {cfg.version}, assets {cfg.assets_dir}, "
              f"release dir {release_dir_of(cfg)}")
        return 0
    # the endpoint, bucket and credentials before any build step (a dry run sends no request)
    checked = check_release_target(cfg, remote=args.remote, rclone_config=args.rclone_config,
                                   dry_run=args.dry_run)
    if args.check_only:
        print(f"settings OK: version {cfg.version}, assets {cfg.assets_dir}, "
              f"release dir {release_dir_of(cfg)}, bucket {checked}")
        return 0
    if mode != "local":
        return _run_distributed(mode, cfg, args)
    build = build_local(cfg, show_progress=not args.quiet, verbose=args.verbose)
    if build.built:
        logger.info("built: %s", ", ".join(build.built))
    else:
        logger.info("every local step is up to date")
    return _publish(cfg, args)


def _mode(args: argparse.Namespace, cfg: ReleaseConfig) -> str:
    """``local`` (the whole release here), ``shard`` (--only-shard), ``finish`` or ``ray``; the
    combinations that make no sense are one line each."""
    chosen = [name for name, on in (("--only-shard", args.only_shard is not None), ("--finish", args.finish),
                                    ("--executor ray", cfg.executor == "ray")) if on]
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} are different ways to run a sharded release: choose one")
    if chosen and not cfg.shard_size:
        raise UsageError(f"{chosen[0]} is for a sharded release: pass --shard-size too "
                         "(make: SHARD_SIZE=...)")
    if chosen and args.dry_run:
        raise UsageError(f"{chosen[0]} --dry-run: a dry run of a sharded release is `release "
                         "--shard-size ... --dry-run` (all shards here), or `objathor-release plan` for the "
                         "shards alone")
    if args.only_shard is not None:
        return "shard"
    return "finish" if args.finish else ("ray" if cfg.executor == "ray" else "local")


def _run_distributed(mode: str, cfg: ReleaseConfig, args: argparse.Namespace) -> int:
    """One shard (--only-shard K), the finishing run (--finish), or every shard on Ray then the finish."""
    from objathor_release.scale.distributed import finish_release, release_shard

    where = {"remote": args.remote, "rclone_config": args.rclone_config, "force": args.force,
             "show_progress": not args.quiet, "verbose": args.verbose}
    if mode == "shard":
        outcome = release_shard(cfg, args.only_shard, **where)
        print(outcome.summary())
        print("then, once every shard is uploaded: objathor-release release --finish (same settings)")
        return 0
    if mode == "ray":
        from objathor_release.scale.ray_executor import release_on_ray

        ran = release_on_ray(cfg, **where)
        for outcome in ran.shards:
            print(outcome.summary())
        finished = ran.finished
    else:
        finished = finish_release(cfg, **where)
    print(finished.summary.text())
    if args.summary:
        from objathor_release.fsutil import atomic_write

        with atomic_write(args.summary) as fh:
            fh.write((json.dumps(finished.summary.to_json(), indent=2) + "\n").encode())
    return 0


def _run_publish(args: argparse.Namespace) -> int:
    """``objathor-release publish``: upload an already built release dir and verify it remotely."""
    from objathor_release.publish.preflight import release_target

    cfg = settings_from_args(args, need_assets=False)
    release_target(cfg, remote=args.remote, rclone_config=args.rclone_config,
                   require_credentials=not args.dry_run)  # settings and credentials first: one line each
    return _publish(cfg, args)


def _publish(cfg: ReleaseConfig, args: argparse.Namespace) -> int:
    """Publish, print the summary, and write it as JSON to ``--summary``."""
    from objathor_release.fsutil import atomic_write
    from objathor_release.pipeline import publish

    summary = publish(cfg, remote=args.remote, rclone_config=args.rclone_config, force=args.force,
                      dry_run=args.dry_run, show_progress=not args.quiet, verbose=args.verbose)
    print(summary.text())
    if args.summary:
        with atomic_write(args.summary) as fh:
            fh.write((json.dumps(summary.to_json(), indent=2) + "\n").encode())
    return 0


# --------------------------------------------------------------------------- config


def add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="validate a release.toml and show it (or as Make variables)")
    p.add_argument("--config", required=True, metavar="FILE", help="the release.toml to read")
    p.add_argument("--make", action="store_true", help="print it as Make assignments (VAR ?= value)")
    p.add_argument("--output", default=None, metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    """``objathor-release config --config FILE [--make]``: validate a release config and show it."""
    if args.make:
        text = config_as_make(args.config)
        if args.output:
            from objathor_release.fsutil import atomic_write

            with atomic_write(args.output) as fh:
                fh.write(text.encode())
        else:
            print(text, end="")
        return 0
    from objathor_release.settings import ReleaseConfig

    cfg = ReleaseConfig.load(args.config)
    print(json.dumps({k: v for k, v in vars(cfg).items() if v not in (None, [])}, indent=2, sort_keys=True))
    return 0


def config_as_make(path: str) -> str:
    """The settings of a release.toml as Make assignments (``?=``: the command line and environment win)."""
    from objathor_release.settings import ReleaseConfig

    cfg = ReleaseConfig.load(path)
    defaults = ReleaseConfig()
    lines = [f"# generated from {path} by objathor-release config --make; do not edit"]
    for key, var in ReleaseConfig.make_variables().items():  # field name -> Make variable
        value = getattr(cfg, key)
        if value is None or value == getattr(defaults, key):
            continue
        text = " ".join(value) if isinstance(value, list) else str(value)
        if any(c in text for c in "$#\n"):
            raise UsageError(f"{path}: {key}: '$', '#' and newlines cannot be passed to make: "
                             "change the value")
        lines.append(f"{var} ?= {text}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- demo / sample-dataset


def add_sample_dataset(sub: Any) -> None:
    p = sub.add_parser("sample-dataset", help="generate a synthetic asset tree (in a source checkout: "
                       "python -m devtools sample-dataset)",
                       description="The sample generator is development tooling: in a source checkout, run "
                       "'python -m devtools sample-dataset DIR' (same options).")
    p.add_argument("dir", nargs="?", metavar="DIR", help="the assets directory to create")
    p.add_argument("--assets", type=int, default=20, help="number of assets (default 20)")
    p.add_argument("--asset-size", default="48K", help="average bytes per asset (default 48K)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--features-dir", default=None, metavar="DIR", help="also write features here")
    p.add_argument("--no-junk", action="store_true", help="leave out .DS_Store, ._* and *.lock files")
    p.set_defaults(func=needs_checkout("sample-dataset", "'python -m devtools sample-dataset DIR'"))


def add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="release a generated sample to an embedded local S3 endpoint, "
                       "download it back and compare (in a source checkout: make demo)",
                       description="The demo is development tooling: in a source checkout, run 'make demo' "
                       "(or 'python -m devtools demo', same options).")
    p.add_argument("--workdir", default="demo", metavar="DIR", help="scratch directory (default demo/)")
    p.add_argument("--assets", type=int, default=50, help="number of sample assets (default 50)")
    p.add_argument("--version", default="2024_02_01", help="version to release (default 2024_02_01)")
    p.set_defaults(func=needs_checkout("demo", "'make demo' (or 'python -m devtools demo')"))


def needs_checkout(command: str, instead: str) -> Runner:
    """A runner for a command that moved to the source checkout's devtools: one line, exit 2."""
    def run(args: argparse.Namespace) -> int:
        raise UsageError(f"{command} needs a source checkout: run {instead} there")
    return run


COMMANDS = [add_release, add_publish, add_config, add_sample_dataset, add_demo]
