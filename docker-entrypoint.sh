#!/bin/sh
# Entry point of the objathor-release image.
#   (no arguments)        usage: the subcommands and the environment variables they read; exit 0
#   make TARGET [VAR=..]  the repository's Makefile (a copy lives in the image), run in /work
#                         against the installed package, e.g. make release VERSION=2024_02_01
#   anything else         objathor-release ARGS, e.g. release --version 2024_02_01 --assets-dir ...
set -eu
PREFIX=/opt/objathor-release

if [ "$#" -eq 0 ]; then
    cat <<'USAGE'
usage: docker run [--rm -e NAME ... -v HOST_DIR:/work ...] objathor-release <subcommand> [options]
       docker run ... objathor-release make release VERSION=YYYY_MM_DD ASSETS_DIR=... BUCKET=...

Credentials are read from the environment at run time only (docker run -e NAME passes the
caller's value without writing it on the command line). Paths are inside the container:
mount the asset and release directories, e.g. -v "$PWD:/work".

USAGE
    exec objathor-release --help
fi

if [ "$1" = "make" ]; then
    shift
    # The venv is already installed: -o keeps make from (re)installing it.
    exec make -f "$PREFIX/share/Makefile" -o "$PREFIX/.installed" VENV="$PREFIX" "$@"
fi

exec objathor-release "$@"
