"""The CLI's prepare-annotations, tar, manifest and verify: the build steps."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from objathor_release.cli.common import env


def _stderr(line: str) -> None:
    """A build step's problem or note, on stderr as it is (no program-name prefix)."""
    print(line, file=sys.stderr)


# --------------------------------------------------------------------------- prepare-annotations


def add_prepare_annotations(sub: Any) -> None:
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
    from objathor_release.build.annotations import prepare_annotations
    from objathor_release.settings import parse_size

    result = prepare_annotations(
        args.save_dir, args.output_file, skip_invalid=args.skip_invalid, report=args.report,
        workers=args.workers, show_progress=not args.quiet, max_size=parse_size(args.max_annotation_size),
        on_problem=_stderr,
    )
    print(result.summary())
    return 0


# --------------------------------------------------------------------------- tar


def add_tar(sub: Any) -> None:
    p = sub.add_parser(
        "tar",
        help="build a byte-for-byte reproducible tar (assets.tar or features.tar)",
        description="Archive DIR as one top-level folder, leaving out the exclude list (with "
        "--holodeck-base only the --exclude patterns), "
        "identical to GNU tar with the reproducible-builds flags, hashing every member on the way.",
    )
    p.add_argument("--assets-dir", "--dir", dest="assets_dir", required=True, metavar="DIR",
                   help="directory to archive (its base name becomes the top-level folder)")
    p.add_argument("--output", required=True, metavar="FILE", help="the .tar to write")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="another name pattern to leave out (repeatable)")
    p.add_argument("--holodeck-base", action="store_true",
                   help="DIR is Holodeck's base data (holodeck/VERSION.tar): keep every file, "
                   "annotations.json.gz and thor_metadata.json included; leave out only the --exclude "
                   "patterns")
    p.add_argument("--source-date-epoch", type=int, default=None, metavar="SECONDS",
                   help="mtime of every member (default: $SOURCE_DATE_EPOCH, else 0)")
    p.add_argument("--fsync", action="store_true",
                   help="wait for the archive to reach the disk before renaming it into place (slower)")
    p.add_argument("--shard-size", metavar="SIZE",
                   help="split the archive into shards of at most SIZE (e.g. 2G), whole asset folders each, "
                   "written beside --output as STEM-00000.tar, STEM-00001.tar, ... (default: one tar)")
    p.add_argument("--workers", type=int, default=None, help="with --shard-size: shards built at once "
                   "(default: every core)")
    p.set_defaults(func=_run_tar)


def _run_tar(args: argparse.Namespace) -> int:
    from pathlib import Path

    from objathor_release.build.shards import remove_stale
    from objathor_release.build.tarball import build_tar

    if args.shard_size:
        return _run_sharded_tar(args)
    result = build_tar(
        args.assets_dir, args.output, extra_excludes=args.exclude, default_excludes=not args.holodeck_base,
        source_date_epoch=args.source_date_epoch, verbose=args.verbose, show_progress=not args.quiet,
        fsync=args.fsync, on_note=_stderr,
    )
    print(result.summary())
    out = Path(args.output)
    if out.name.endswith(".tar"):  # the directory holds one form of the archive: no shards of an earlier run
        for stale in remove_stale(out.parent, out.name[:-4], keep=[out.name]):
            print(f"removed {out.parent / stale}: replaced by {out.name}")
    return 0


def _run_sharded_tar(args: argparse.Namespace) -> int:
    from pathlib import Path

    from objathor_release.build.shards import build_shards, parse_shard_size, plan_shards

    out = Path(args.output)
    stem = out.name[:-4] if out.name.endswith(".tar") else out.name
    plan = plan_shards(args.assets_dir, parse_shard_size(args.shard_size), extra_excludes=args.exclude,
                       default_excludes=not args.holodeck_base, stem=stem)
    print(f"plan: {plan.summary()}")
    results = build_shards(plan, out.parent, source_date_epoch=args.source_date_epoch, workers=args.workers,
                           show_progress=not args.quiet)
    for result in results:
        print(result.summary())
    return 0


def add_plan(sub: Any) -> None:
    p = sub.add_parser(
        "plan", help="print how --shard-size splits an asset tree into shards",
        description="Walk DIR (names and sizes only) and print the shards a sharded tar or release would "
        "build: each one's index, file name, size, number of files and first and last asset folder. "
        "Every machine that sees the same tree prints the same plan (its fingerprint says so).",
    )
    p.add_argument("--assets-dir", "--dir", dest="assets_dir", required=True, metavar="DIR",
                   help="directory to archive")
    p.add_argument("--shard-size", required=True, metavar="SIZE", help="largest shard, e.g. 2G")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="another name pattern to leave out (repeatable)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (for a CI matrix)")
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    import json

    from objathor_release.build.shards import parse_shard_size, plan_shards
    from objathor_release.settings import format_size, format_table

    plan = plan_shards(args.assets_dir, parse_shard_size(args.shard_size), extra_excludes=args.exclude)
    if args.json:
        print(json.dumps(plan.to_json(), indent=2, sort_keys=True))
        return 0
    print(f"{plan.summary()}, fingerprint {plan.fingerprint[:16]}")
    rows = [(str(s.index), s.name, format_size(s.size), str(s.files), str(len(s.units)), s.units[0],
             s.units[-1]) for s in plan.shards]
    print(format_table(("index", "shard", "size", "files", "assets", "first", "last"), rows))
    return 0


# --------------------------------------------------------------------------- manifest / verify


def add_manifest(sub: Any) -> None:
    p = sub.add_parser("manifest", help="write manifest.json and SHA256SUMS for a release directory",
                       description="List every file of the release directory (hidden ones aside) with its "
                       "size and sha256, and every member of each tar with its data offset, in "
                       "manifest.json (schemas/manifest.schema.json) and SHA256SUMS (sha256sum -c format).")
    p.add_argument("--release-dir", required=True, metavar="DIR", help="the release directory")
    p.add_argument("--version", default=env("VERSION"), metavar="YYYY_MM_DD",
                   help="dataset version (default: $VERSION)")
    p.set_defaults(func=_run_manifest)


def _run_manifest(args: argparse.Namespace) -> int:
    from objathor_release.build.manifest import write_manifest
    from objathor_release.settings import validate_version

    manifest = write_manifest(args.release_dir, validate_version(args.version), show_progress=not args.quiet)
    arts = manifest["artifacts"]
    members = sum(len(a["members"]) for a in arts)
    print(f"wrote {args.release_dir}/manifest.json and SHA256SUMS: {len(arts)} artifacts, "
          f"{members} tar members")
    return 0


def add_verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="re-hash a release directory against its manifest",
                       description="Re-hash every artifact against manifest.json and name every mismatch, "
                       "missing or extra file (one per line on stderr); exit 1 if there is any.")
    p.add_argument("--release-dir", required=True, metavar="DIR", help="the release directory")
    p.add_argument("--members", action="store_true", help="also re-hash every member of every tar")
    p.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from objathor_release.build.manifest import verify_release

    verify_release(args.release_dir, members=args.members, show_progress=not args.quiet, on_problem=_stderr)
    print(f"{args.release_dir}: every artifact matches manifest.json")
    return 0


COMMANDS = [add_prepare_annotations, add_tar, add_plan, add_manifest, add_verify]
