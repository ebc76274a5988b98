"""The CLI's deps: a release's input files as a Make dependency file, for ``make release``.

The ``gcc -MMD`` idiom: the package lists what each artifact is built from
(objathor_release.build.inputs, the same list ``objathor-release release``
fingerprints) and the Makefile includes the file, so Make keeps real file
targets without ever listing inputs itself.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: The variable the dependency file sets to the settings it was made with (the folders, the extra
#: excludes and the epoch, as make's $(strip) would join them); the Makefile remakes the file when
#: its own differ.
SETTINGS_VARIABLE = "INPUTS_SETTINGS"


def add_deps(sub: Any) -> None:
    p = sub.add_parser(
        "deps", help="write each artifact's input files as a Make dependency file (make release reads it)",
        description="List the files annotations.json.gz, assets.tar, features.tar and holodeck.tar are "
        "built from, "
        "with the exclude list applied as the builders apply it, as Make rules: RELEASE_DIR/NAME "
        "depends on its inputs, and the output depends on the folders walked.",
    )
    p.add_argument("--assets-dir", required=True, metavar="DIR", help="optimized assets")
    p.add_argument("--features-dir", default=None, metavar="DIR", help="features directory, optional")
    p.add_argument("--holodeck-dir", default=None, metavar="DIR",
                   help="Holodeck base data folder, optional (its tar keeps every file)")
    p.add_argument("--release-dir", required=True, metavar="DIR",
                   help="where the artifacts are built (the rules' targets)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="another name pattern the tars leave out (repeatable), as for tar")
    p.add_argument("--source-date-epoch", type=int, default=None, metavar="SECONDS",
                   help="the tars' member mtime, recorded so a change rebuilds them "
                   "(default: $SOURCE_DATE_EPOCH, else 0)")
    p.add_argument("--shard-size", default=None, metavar="SIZE",
                   help="the shard size assets.tar is split by, recorded so a change rebuilds it")
    p.add_argument("--output", required=True, metavar="FILE", help="the dependency file to write")
    p.set_defaults(func=_run_deps)


def _run_deps(args: argparse.Namespace) -> int:
    from objathor_release.build.epoch import source_date_epoch
    from objathor_release.build.excludes import exclude_list
    from objathor_release.build.inputs import check_input_dirs, release_inputs, write_make_deps

    check_input_dirs(args.assets_dir, args.features_dir, args.holodeck_dir)
    epoch = source_date_epoch(args.source_date_epoch)
    tar_settings = {"excludes": " ".join(exclude_list(args.exclude)), "source_date_epoch": str(epoch)}
    holodeck_settings = {"excludes": " ".join(exclude_list(args.exclude, defaults=False)),
                         "source_date_epoch": str(epoch)}
    inputs = release_inputs(args.assets_dir, args.features_dir, args.exclude, args.holodeck_dir)
    assets_settings = {**tar_settings, "shard_size": args.shard_size or ""}
    result = write_make_deps(
        inputs, args.release_dir, args.output,
        settings={"assets.tar": assets_settings, "features.tar": tar_settings,
                  "holodeck.tar": holodeck_settings},
        variables={SETTINGS_VARIABLE: " ".join(" ".join(
            [args.assets_dir, args.features_dir or "", args.holodeck_dir or "", *args.exclude,
             str(epoch), args.shard_size or ""]).split())},
    )
    for path in result.unnameable:
        print(f"{path}: make cannot name this file: its artifact is rebuilt on every make run; "
              "rename it, or use objathor-release release", file=sys.stderr)
    if not args.quiet:
        print(result.summary())
    return 0


COMMANDS = [add_deps]
