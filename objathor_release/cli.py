"""The ``objathor-release`` command line: argument parsing and wiring only.

Each subcommand has an ``_add_<name>`` function that declares its flags and a
``_run_<name>`` function that calls the package. Heavy modules are imported
inside the runners so ``--help`` stays fast. A ReleaseError becomes one line
on stderr and its exit code; no stack trace for user errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .errors import ReleaseError

PROG = "objathor-release"

Runner = Callable[[argparse.Namespace], int]

ENVIRONMENT_HELP = """\
environment variables:
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   S3/R2 credentials (also R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY)
  AWS_PROFILE                                credentials profile (or --profile)
  AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL      S3 API endpoint (or --endpoint-url)
  R2_ACCOUNT_ID                              gives https://<ACCOUNT_ID>.r2.cloudflarestorage.com
  BUCKET, VERSION                            defaults for --bucket and --version
  OBJATHOR_BASE_URL                          download base URL (or --base-url)
  SOURCE_DATE_EPOCH                          timestamp for reproducible tars and manifests
  OBJATHOR_PROGRESS=0                        no progress output
  OBJATHOR_PROGRESS_INTERVAL                 seconds between progress lines when not on a terminal
  OBJATHOR_SIGNING_KEY                       Ed25519 private key publish signs manifest.json with
  OBJATHOR_REGISTRY, OBJATHOR_TRUSTED_KEYS   other files for the manifest pins and trusted keys
"""


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


# --------------------------------------------------------------------------- prepare-annotations


def _add_prepare_annotations(sub: Any) -> None:
    p = sub.add_parser(
        "prepare-annotations",
        help="merge and validate every asset's annotations into annotations.json.gz",
        description="Validate each ASSETS_DIR/<uid>/annotations.json.gz (or <uid>.tar) against "
        "schemas/annotation.schema.json and merge them, with thor_metadata, into one "
        "deterministic gzip JSON file.",
    )
    p.add_argument("--save-dir", "--assets-dir", dest="save_dir", required=True, metavar="ASSETS_DIR",
                   help="directory of optimized assets, one folder (or .tar) per uid")
    p.add_argument("--output-file", required=True, metavar="FILE",
                   help="where to write annotations.json.gz")
    p.add_argument("--skip-invalid", action="store_true",
                   help="leave invalid assets out (and say how many) instead of failing")
    p.add_argument("--report", metavar="FILE", help="write a JSON report of every problem found")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: every core)")
    p.add_argument("--max-annotation-size", default="64M", metavar="SIZE",
                   help="largest annotation (decompressed), thor_metadata.json or tar member read per "
                   "asset, e.g. 64M (default 64M; real ones are a few KB)")
    p.set_defaults(func=_run_prepare_annotations)


def _run_prepare_annotations(args: argparse.Namespace) -> int:
    from .annotations import prepare_annotations
    from .config import parse_size

    result = prepare_annotations(
        args.save_dir, args.output_file, skip_invalid=args.skip_invalid, report=args.report,
        workers=args.workers, show_progress=not args.quiet, max_size=parse_size(args.max_annotation_size),
    )
    print(result.summary())
    return 0


# --------------------------------------------------------------------------- tar


def _add_tar(sub: Any) -> None:
    p = sub.add_parser(
        "tar",
        help="build a byte-for-byte reproducible tar (assets.tar or features.tar)",
        description="Archive DIR as one top-level folder, leaving out the exclude list, "
        "identical to GNU tar with the reproducible-builds flags, hashing every member on the way.",
    )
    p.add_argument("--assets-dir", "--dir", dest="assets_dir", required=True, metavar="DIR",
                   help="directory to archive (its base name becomes the top-level folder)")
    p.add_argument("--output", required=True, metavar="FILE", help="the .tar to write")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="another name pattern to leave out (repeatable)")
    p.add_argument("--source-date-epoch", type=int, default=None, metavar="SECONDS",
                   help="mtime of every member (default: $SOURCE_DATE_EPOCH, else 0)")
    p.add_argument("--fsync", action="store_true",
                   help="wait for the archive to reach the disk before renaming it into place (slower)")
    p.set_defaults(func=_run_tar)


def _run_tar(args: argparse.Namespace) -> int:
    from .tarball import build_tar

    result = build_tar(
        args.assets_dir, args.output, extra_excludes=args.exclude,
        source_date_epoch=args.source_date_epoch, verbose=args.verbose, show_progress=not args.quiet,
        fsync=args.fsync,
    )
    print(result.summary())
    return 0


# --------------------------------------------------------------------------- manifest / verify


def _add_manifest(sub: Any) -> None:
    p = sub.add_parser("manifest", help="write manifest.json and SHA256SUMS for a release directory",
                       description="List every file of the release directory (hidden ones aside) with its "
                       "size and sha256, and every member of each tar with its data offset, in "
                       "manifest.json (schemas/manifest.schema.json) and SHA256SUMS (sha256sum -c format).")
    p.add_argument("--release-dir", required=True, metavar="DIR", help="the release directory")
    p.add_argument("--version", default=_env("VERSION"), metavar="YYYY_MM_DD",
                   help="dataset version (default: $VERSION)")
    p.set_defaults(func=_run_manifest)


def _run_manifest(args: argparse.Namespace) -> int:
    from .config import validate_version
    from .manifest import write_manifest

    manifest = write_manifest(args.release_dir, validate_version(args.version), show_progress=not args.quiet)
    arts = manifest["artifacts"]
    members = sum(len(a["members"]) for a in arts)
    print(f"wrote {args.release_dir}/manifest.json and SHA256SUMS: {len(arts)} artifacts, "
          f"{members} tar members")
    return 0


def _add_verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="re-hash a release directory against its manifest",
                       description="Re-hash every artifact against manifest.json and name every mismatch, "
                       "missing or extra file (one per line on stderr); exit 1 if there is any.")
    p.add_argument("--release-dir", required=True, metavar="DIR", help="the release directory")
    p.add_argument("--members", action="store_true", help="also re-hash every member of every tar")
    p.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from .manifest import verify_release

    verify_release(args.release_dir, members=args.members, show_progress=not args.quiet)
    print(f"{args.release_dir}: every artifact matches manifest.json")
    return 0


# --------------------------------------------------------------------------- upload / cleanup


def _add_s3_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", default=_env("BUCKET"), help="bucket name (default: $BUCKET)")
    p.add_argument("--endpoint-url", default=None, metavar="URL",
                   help="S3 API endpoint (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, "
                   "else R2 from $R2_ACCOUNT_ID)")
    p.add_argument("--profile", default=None, help="credentials profile")
    p.add_argument("--remote", default=None, metavar="NAME:BUCKET/PREFIX",
                   help="an rclone S3 remote to take the endpoint, keys and bucket from")
    p.add_argument("--rclone-config", default=None, metavar="FILE",
                   help="rclone config file (default: $RCLONE_CONFIG or ~/.config/rclone/rclone.conf)")


def _add_upload(sub: Any) -> None:
    p = sub.add_parser("upload", help="resumable, verified multipart upload of a release to R2/S3")
    p.add_argument("--release-dir", required=True, metavar="DIR", help="the release directory")
    _add_s3_options(p)
    p.add_argument("--prefix", default=None, metavar="VERSION",
                   help="key prefix (default: the manifest's version)")
    p.add_argument("--chunk-size", default="64M", help="part size, 5M to 5G (default 64M)")
    p.add_argument("--upload-concurrency", type=int, default=16,
                   help="parts of one file in flight at once (default 16)")
    p.add_argument("--transfers", type=int, default=4, help="files at once (default 4)")
    p.add_argument("--part-attempts", type=int, default=5, metavar="N",
                   help="attempts per part, each with botocore's own retries, before the run stops "
                   "resumably (default 5)")
    p.add_argument("--force", action="store_true",
                   help="overwrite objects or a published version whose content differs")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded and stop")
    p.set_defaults(func=_run_upload)


def _run_upload(args: argparse.Namespace) -> int:
    from .upload import run_upload_command

    return run_upload_command(args)


def _add_cleanup(sub: Any) -> None:
    p = sub.add_parser("cleanup", help="list and abort abandoned multipart uploads")
    _add_s3_options(p)
    p.add_argument("--prefix", default=None, help="only uploads under this key prefix")
    p.add_argument("--older-than", default="24h", metavar="AGE",
                   help="only uploads started longer ago than this (e.g. 30m, 24h, 7d; default 24h)")
    p.add_argument("--dry-run", action="store_true", help="list only; abort nothing")
    p.set_defaults(func=_run_cleanup)


def _run_cleanup(args: argparse.Namespace) -> int:
    from .upload import run_cleanup_command

    return run_cleanup_command(args)


# --------------------------------------------------------------------------- download


def _add_download(sub: Any) -> None:
    p = sub.add_parser(
        "download", help="download a dataset version into ~/.objathor-assets",
        description="Download a part of a dataset version (or all it has) into DIR/VERSION/, in "
        "objathor's layout. Tars stream into a safe extractor; with the release's manifest.json every "
        "byte is checked; an interrupted run resumes when run again.",
    )
    p.add_argument("what", choices=["annotations", "assets", "features", "holodeck-base", "all"],
                   help="which part of the version to fetch")
    p.add_argument("--version", default=_env("VERSION"), metavar="YYYY_MM_DD",
                   help="dataset version, e.g. 2023_09_23 (default: $VERSION)")
    p.add_argument("--path", default=None, metavar="DIR",
                   help="where versions live (default ~/.objathor-assets)")
    p.add_argument("--base-url", default=None, metavar="URL",
                   help="serve files from {URL}/{VERSION}/... (default: $OBJATHOR_BASE_URL, else "
                   "objathor's table of public versions)")
    p.add_argument("--uids", default=None, metavar="A,B,C", help="fetch only these assets")
    p.add_argument("--uids-file", default=None, metavar="FILE", help="fetch only the uids in FILE")
    p.add_argument("--require-checksums", action="store_true",
                   help="refuse a version that has no manifest.json to verify against")
    p.add_argument("--trusted-key", action="append", default=[], metavar="KEY",
                   help="check manifest.json.sig with this Ed25519 public key (base64, or a file holding "
                   "it; repeatable; added to the package's trusted_keys.txt)")
    p.add_argument("--require-signature", action="store_true",
                   help="refuse a version whose manifest is not signed by a trusted key")
    p.add_argument("--keep-tar", action="store_true", help="keep the .tar beside the extracted folder")
    p.add_argument("--connections", type=int, default=8, metavar="N",
                   help="parallel Range requests per file (default 8)")
    p.set_defaults(func=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from .download import run_download_command

    return run_download_command(args)


# --------------------------------------------------------------------------- release / sample


def _add_publish_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE", help="release.toml to read settings from")
    p.add_argument("--version", default=_env("VERSION"), metavar="YYYY_MM_DD",
                   help="dataset version (default: $VERSION)")
    p.add_argument("--release-dir", default=_env("RELEASE_DIR"), metavar="DIR",
                   help="where the artifacts are built (default: release/VERSION)")
    _add_s3_options(p)
    p.add_argument("--prefix", default=None, help="key prefix (default: VERSION)")
    p.add_argument("--chunk-size", default=None, help="part size, 5M to 5G (default 64M)")
    p.add_argument("--upload-concurrency", type=int, default=None,
                   help="parts in flight per file (default 16)")
    p.add_argument("--transfers", type=int, default=None, help="files at once (default 4)")
    p.add_argument("--public-base-url", default=None, metavar="URL",
                   help="public URL the bucket is served from, for the summary")
    p.add_argument("--summary", default=None, metavar="FILE", help="also write the summary as JSON to FILE")
    p.add_argument("--force", action="store_true", help="overwrite a published version")


def _add_release(sub: Any) -> None:
    p = sub.add_parser("release", help="the whole pipeline: annotations, tar, manifest, verify, "
                       "upload, remote verify")
    _add_publish_options(p)
    p.add_argument("--assets-dir", default=_env("ASSETS_DIR"), metavar="DIR",
                   help="optimized assets (default: $ASSETS_DIR)")
    p.add_argument("--features-dir", default=_env("FEATURES_DIR"), metavar="DIR",
                   help="features directory, optional (default: $FEATURES_DIR)")
    p.add_argument("--dry-run", action="store_true",
                   help="do everything local and print what the upload would do")
    p.add_argument("--check-only", action="store_true",
                   help="validate the settings and stop (what `make release` runs first)")
    p.set_defaults(func=_run_release)


def _add_publish(sub: Any) -> None:
    p = sub.add_parser("publish", help="upload a built release dir, verify it remotely, print the summary")
    _add_publish_options(p)
    p.add_argument("--dry-run", action="store_true", help="print what the upload would do")
    p.set_defaults(func=_run_publish)


def _run_publish(args: argparse.Namespace) -> int:
    from .release import run_publish_command

    return run_publish_command(args)


def _run_release(args: argparse.Namespace) -> int:
    from .release import run_release_command

    return run_release_command(args)


def _add_config(sub: Any) -> None:
    p = sub.add_parser("config", help="validate a release.toml and show it (or as Make variables)")
    p.add_argument("--config", required=True, metavar="FILE", help="the release.toml to read")
    p.add_argument("--make", action="store_true", help="print it as Make assignments (VAR ?= value)")
    p.add_argument("--output", default=None, metavar="FILE", help="write to FILE instead of stdout")
    p.set_defaults(func=_run_config)


def _run_config(args: argparse.Namespace) -> int:
    from .release import run_config_command

    return run_config_command(args)


def _add_sample_dataset(sub: Any) -> None:
    p = sub.add_parser("sample-dataset", help="generate a synthetic asset tree for trying things out")
    p.add_argument("dir", metavar="DIR", help="the assets directory to create")
    p.add_argument("--assets", type=int, default=20, help="number of assets (default 20)")
    p.add_argument("--asset-size", default="48K", help="average bytes per asset (default 48K)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--features-dir", default=None, metavar="DIR", help="also write features here")
    p.add_argument("--no-junk", action="store_true", help="leave out .DS_Store, ._* and *.lock files")
    p.set_defaults(func=_run_sample_dataset)


def _run_sample_dataset(args: argparse.Namespace) -> int:
    from .config import parse_size
    from .sample import make_sample_dataset

    uids = make_sample_dataset(
        args.dir, args.assets, seed=args.seed, asset_bytes=parse_size(args.asset_size),
        junk=not args.no_junk, features_dir=args.features_dir,
    )
    print(f"wrote {len(uids)} sample assets to {args.dir}")
    return 0


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="release a generated sample to an embedded local S3 endpoint, "
                       "download it back and compare")
    p.add_argument("--workdir", default="demo", metavar="DIR", help="scratch directory (default demo/)")
    p.add_argument("--assets", type=int, default=50, help="number of sample assets (default 50)")
    p.add_argument("--version", default="2024_02_01", help="version to release (default 2024_02_01)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .release import run_demo_command

    return run_demo_command(args)


# --------------------------------------------------------------------------- registry / keygen


def _add_registry(sub: Any) -> None:
    p = sub.add_parser("registry", help="the package's pins of published manifests (registry/manifests.txt)",
                       description="List or add the sha256 of a published version's manifest.json; "
                       "download refuses a manifest of a listed version with other bytes.")
    actions = p.add_subparsers(dest="registry_command", metavar="<action>", required=True)
    add = actions.add_parser("add", help="pin a version to its manifest.json (after publishing it)")
    add.add_argument("--version", default=_env("VERSION"), metavar="YYYY_MM_DD",
                     help="dataset version (default: $VERSION)")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--release-dir", metavar="DIR", help="the release directory holding manifest.json")
    source.add_argument("--manifest", metavar="FILE", help="the manifest.json itself")
    add.add_argument("--force", action="store_true", help="replace a different pin of the version")
    listing = actions.add_parser("list", help="print the pinned versions")
    for q in (add, listing):
        q.add_argument("--registry", default=None, metavar="FILE",
                       help="registry file (default: $OBJATHOR_REGISTRY, else the package's manifests.txt)")
    p.set_defaults(func=_run_registry)


def _run_registry(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .config import validate_version
    from .registry import add_pin, load_registry, manifest_file_sha256, registry_path

    if args.registry_command == "list":
        reg = load_registry(args.registry)
        for version, entry in sorted(reg.entries.items()):
            print(f"{version} sha256:{entry.sha256}")
        print(f"{len(reg.entries)} version{'s' if len(reg.entries) != 1 else ''} pinned in {reg.path}",
              file=sys.stderr)
        return 0
    version = validate_version(args.version)
    manifest = Path(args.manifest) if args.manifest else Path(args.release_dir) / "manifest.json"
    digest = manifest_file_sha256(manifest, version)
    status = add_pin(version, digest, registry=args.registry, force=args.force)
    print(f"{registry_path(args.registry)}: {version} sha256:{digest} ({status})")
    return 0


def _add_keygen(sub: Any) -> None:
    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signing releases",
                       description="Write a new private key to FILE (mode 0600, PEM: what "
                       "$OBJATHOR_SIGNING_KEY takes) and its public key to FILE.pub (base64: what "
                       "--trusted-key takes), and print the public key.")
    p.add_argument("--output", required=True, metavar="FILE", help="where to write the private key")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.set_defaults(func=_run_keygen)


def _run_keygen(args: argparse.Namespace) -> int:
    from .signing import keygen

    key = keygen(args.output, force=args.force)
    print(f"wrote the private key to {args.output} (mode 0600: keep it secret; give it to publish as "
          f"$OBJATHOR_SIGNING_KEY) and the public key to {args.output}.pub")
    print(f"public key: {key.public_key}")
    print(f"fingerprint: {key.fingerprint}")
    return 0


COMMANDS: list[Callable[[Any], None]] = [
    _add_prepare_annotations, _add_tar, _add_manifest, _add_verify, _add_upload, _add_cleanup,
    _add_download, _add_release, _add_publish, _add_config, _add_sample_dataset, _add_demo,
    _add_registry, _add_keygen,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Reproducible, verified release tooling for objathor 3D-asset datasets.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}",
                        help="print the tool's version and exit")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="say more")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", metavar="<subcommand>", parser_class=argparse.ArgumentParser)
    original = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return original(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    run: Runner = args.func
    try:
        return run(args)
    except ReleaseError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
