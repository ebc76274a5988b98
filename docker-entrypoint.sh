#!/bin/sh
# Entry point of the objathor-release image.
#   (no arguments)        usage: the subcommands and the environment variables they read; exit 0
#   make TARGET [VAR=..]  the repository's Makefile (a copy lives in the image), run in /work
#                         against the installed package, e.g. make release VERSION=2024_02_01
#   anything else         objathor-release ARGS, e.g. release --version 2024_02_01 --assets-dir ...
#                         (with /data mounted, ASSETS_DIR etc. default to folders below it)
set -eu
PREFIX=/opt/objathor-release

if [ "$#" -eq 0 ]; then
    cat <<'USAGE'
usage: docker run [--rm -e NAME ... -v HOST_DIR:/work ...] objathor-release <subcommand> [options]
       docker run -e VERSION=YYYY_MM_DD -e BUCKET=... -v /data:/data objathor-release release
       docker run ... objathor-release make release VERSION=YYYY_MM_DD ASSETS_DIR=... BUCKET=...

Credentials are read from the environment at run time only (docker run -e NAME passes the
caller's value without writing it on the command line). Paths are inside the container:
mount the asset and release directories, e.g. -v "$PWD:/work". With /data mounted, release
reads /data/assets (and /data/features) and builds in /data/release/VERSION by default.
Run as yourself (--user "$(id -u):$(id -g)") so the files written are yours.

USAGE
    exec objathor-release --help
fi

if [ "$1" = "make" ]; then
    shift
    # The venv is already installed: -o keeps make from (re)installing it.
    exec make -f "$PREFIX/share/Makefile" -o "$PREFIX/.installed" VENV="$PREFIX" "$@"
fi

# The /data convention, for `docker run -v /data:/data -e VERSION=... -e BUCKET=... objathor-release
# release`: when /data is mounted, the assets (and features) are read from /data/assets
# (/data/features) and the release is built in /data/release/VERSION, unless set otherwise.
if [ -d /data ]; then
    if [ -z "${ASSETS_DIR:-}" ] && [ -d /data/assets ]; then export ASSETS_DIR=/data/assets; fi
    if [ -z "${FEATURES_DIR:-}" ] && [ -d /data/features ]; then export FEATURES_DIR=/data/features; fi
    if [ -z "${RELEASE_DIR:-}" ] && [ -n "${VERSION:-}" ]; then export RELEASE_DIR="/data/release/$VERSION"; fi
fi

exec objathor-release "$@"
