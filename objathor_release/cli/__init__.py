"""The ``objathor-release`` command line: argument parsing and wiring only.

Each subcommand has an ``_add_<name>`` function that declares its flags and a
``_run_<name>`` function that calls the package. Heavy modules are imported
inside the runners so ``--help`` stays fast. ``main`` sets up the log lines and
progress for the run (:mod:`.output`). A ReleaseError becomes one line on stderr
and its exit code; no stack trace for user errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from objathor_release._version import __version__
from objathor_release.cli import build as build_commands
from objathor_release.cli import deps as deps_commands
from objathor_release.cli import fetch as fetch_commands
from objathor_release.cli import publish as publish_commands
from objathor_release.cli import release as release_commands
from objathor_release.cli import trust as trust_commands
from objathor_release.cli.common import PROG, Runner, make_hints, under_make
from objathor_release.cli.output import cli_output
from objathor_release.errors import ReleaseError

ENVIRONMENT_HELP = """\
environment variables:
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   S3/R2 credentials (also R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY)
  AWS_PROFILE                                credentials profile (or --profile)
  AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL      S3 API endpoint (or --endpoint-url)
  R2_ACCOUNT_ID                              gives https://<ACCOUNT_ID>.r2.cloudflarestorage.com
  BUCKET, VERSION                            defaults for --bucket and --version
  ASSETS_DIR, FEATURES_DIR, RELEASE_DIR      defaults for --assets-dir, --features-dir, --release-dir
  HOLODECK_DIR                               default for --holodeck-dir
  RAY_ADDRESS                                the Ray cluster for --executor ray (or --ray-address)
  OBJATHOR_BASE_URL                          download base URL (or --base-url)
  SOURCE_DATE_EPOCH                          timestamp for reproducible tars and manifests
  OBJATHOR_PROGRESS=0                        no progress output
  OBJATHOR_PROGRESS_INTERVAL                 seconds between progress lines when not on a terminal
  OBJATHOR_SIGNING_KEY                       Ed25519 private key publish signs manifest.json with
  OBJATHOR_REGISTRY, OBJATHOR_TRUSTED_KEYS   other files for the manifest pins and trusted keys
"""

COMMANDS: list[Callable[[Any], None]] = [
    *build_commands.COMMANDS, *publish_commands.COMMANDS, *fetch_commands.COMMANDS,
    *release_commands.COMMANDS, *trust_commands.COMMANDS, *deps_commands.COMMANDS,
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
        with cli_output(verbose=args.verbose, quiet=args.quiet):
            return run(args)
    except ReleaseError as exc:
        print(f"{PROG}: error: {make_hints(str(exc)) if under_make() else exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
