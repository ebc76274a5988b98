"""``python -m devtools``: the source checkout's commands, kept out of the installed ``objathor-release``.

    python -m devtools demo [--workdir DIR] [--assets N]       # what `make demo` runs
    python -m devtools sample-dataset DIR [--assets N ...]     # a synthetic asset tree
    python -m devtools open-bucket NAME [--endpoint-url URL]   # a readable bucket on a local S3 server

Output is the package's: progress and ``objathor-release: ...`` lines on stderr, results on
stdout; an error is one ``devtools: error: ...`` line and the package's exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from objathor_release.cli.output import StderrHandler, cli_output
from objathor_release.errors import ReleaseError

PROG = "devtools"


def _demo(args: argparse.Namespace) -> int:
    from devtools.demo import run_demo

    result = run_demo(args.workdir, args.assets, args.version, show_progress=not args.quiet)
    print(result.summary.text())
    print(result.ok_line())
    return 0


def _sample_dataset(args: argparse.Namespace) -> int:
    from devtools.sample import make_sample_dataset
    from objathor_release.settings import parse_size

    uids = make_sample_dataset(
        args.dir, args.assets, seed=args.seed, asset_bytes=parse_size(args.asset_size),
        junk=not args.no_junk, features_dir=args.features_dir,
    )
    print(f"wrote {len(uids)} sample assets to {args.dir}")
    return 0


def _open_bucket(args: argparse.Namespace) -> int:
    from devtools.demo import open_bucket

    print(open_bucket(args.name, args.endpoint_url))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m {PROG}", description="Development commands of the "
                                     "objathor-release source checkout (not installed with the package).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="say more")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = sub.add_parser("demo", parents=[common], help="release a generated sample to an embedded local S3 "
                       "endpoint, download it back and compare")
    p.add_argument("--workdir", default="demo", metavar="DIR", help="scratch directory (default demo/)")
    p.add_argument("--assets", type=int, default=50, help="number of sample assets (default 50)")
    p.add_argument("--version", default="2024_02_01", help="version to release (default 2024_02_01)")
    p.set_defaults(func=_demo)

    p = sub.add_parser("sample-dataset", parents=[common],
                       help="generate a synthetic asset tree for trying things out")
    p.add_argument("dir", metavar="DIR", help="the assets directory to create")
    p.add_argument("--assets", type=int, default=20, help="number of assets (default 20)")
    p.add_argument("--asset-size", default="48K", help="average bytes per asset (default 48K)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--features-dir", default=None, metavar="DIR", help="also write features here")
    p.add_argument("--no-junk", action="store_true", help="leave out .DS_Store, ._* and *.lock files")
    p.set_defaults(func=_sample_dataset)

    p = sub.add_parser("open-bucket", parents=[common],
                       help="create a bucket anyone can read on a local S3 endpoint "
                       "(e.g. moto_server -p 9000)")
    p.add_argument("name", metavar="NAME", help="the bucket to create")
    p.add_argument("--endpoint-url", default=None, metavar="URL",
                   help="the S3 endpoint (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL); credentials "
                   "come from the environment, test/test on 127.0.0.1 or localhost without any")
    p.set_defaults(func=_open_bucket)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    own = logging.getLogger(PROG)  # the demo's own lines, shown as they are ("demo: ...")
    handler = StderrHandler(prefix=None, level=logging.INFO)
    own.addHandler(handler)
    own.setLevel(logging.INFO)
    try:
        with cli_output(verbose=args.verbose, quiet=args.quiet):
            code: int = args.func(args)
            return code
    except ReleaseError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        own.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
