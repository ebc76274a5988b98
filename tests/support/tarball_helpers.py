"""Helpers for the tarball and manifest tests: awkward trees, GNU tar, independent readings of a tar."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from tests.conftest import run_cli

# The seed's exclude list, written out again here so the tests do not trust the module's copy.
SEED_EXCLUDES = [
    "annotations.json.gz", "thor_metadata.json", ".DS_Store", "._*", ".Spotlight-V100", ".Trashes",
    ".fseventsd", ".VolumeIcon.icns", ".apdisk", ".TemporaryItems", "*.lock",
]


def gnu_tar_available() -> bool:
    exe = shutil.which("tar")
    if not exe:
        return False
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    return "GNU tar" in out.stdout


def gnu_tar(src: Path, output: Path, excludes: list[str] | None = None, epoch: int = 0,
            extra: tuple[str, ...] = ()) -> Path:
    """The README's reproducible GNU tar command, run on ``src``."""
    excludes = SEED_EXCLUDES if excludes is None else excludes
    cmd = [
        "tar", "--sort=name", f"--mtime=@{epoch}", "--owner=0", "--group=0", "--numeric-owner",
        "--mode=go=rX,u+rw,a-s", "--format=gnu", "--hard-dereference", *extra,
        *(f"--exclude={p}" for p in excludes),
        "-C", str(src.parent), "-cf", str(output), src.name,
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(cmd, check=True, capture_output=True)
    return output


def write(path: Path, data: bytes | str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(path, mode)
    return path


def make_messy_tree(root: Path) -> Path:
    """A tree with every awkward case GNU tar's output depends on; returns ``root``.

    Sort order traps (lod/ before lod-2), names at and around the 100-byte
    limit and far past it, UTF-8, empty files and folders, sizes around the
    512-byte block, odd modes (setuid, sticky, no permissions), hard links,
    junk to exclude and a pattern that only GNU's whole-path matching catches.
    """
    root.mkdir(parents=True)
    write(root / "lod" / "x" / "f", "1")
    write(root / "lod-2" / "g", "22")
    write(root / "lod.b" / "h", "")
    write(root / "Lod" / "upper", "U")
    (root / "empty-dir").mkdir()
    for n in (0, 1, 511, 512, 513, 10240, 70000):
        write(root / "sizes" / f"s{n:05d}", bytes((i * 7) % 251 for i in range(n)))
    prefix = len(root.name) + 1  # "assets/" in front of every member name
    for total in (99, 100, 101):
        write(root / ("n" * (total - prefix)), f"name of {total} bytes")
    deep = root / ("D" * 200) / ("E" * 200) / ("F" * 200)
    write(deep / ("G" * 200), "a member name of more than 800 bytes")
    write(root / ("é" * 60) / "ü.txt", "utf-8 names")
    for i, m in enumerate([0o000, 0o700, 0o111, 0o4755, 0o2755, 0o1777, 0o600, 0o640, 0o001, 0o7777]):
        write(root / "modes" / f"m{i}", "m" * i, mode=m)
    for i, m in enumerate([0o700, 0o1777, 0o2755, 0o600, 0o4711]):
        d = root / "dirmodes" / f"d{i}"
        write(d / "f", "f")
        os.chmod(d, m)
    os.link(root / "lod" / "x" / "f", root / "lod-2" / "hardlink-to-f")
    write(root / "uid1" / "annotations.json.gz", b"\x1f\x8b junk")
    write(root / "uid1" / "thor_metadata.json", "{}")
    write(root / "uid1" / "albedo.jpg", b"\xff\xd8\xff jpeg")
    write(root / "uid1" / ".DS_Store", "junk")
    write(root / "uid1" / "._albedo.jpg", "junk")
    write(root / "uid1" / "x.lock", "")
    write(root / ".Trashes" / "inside", "junk folder")
    write(root / ".lock", "a name that is only the suffix")
    write(root / "ab" / "cz", "excluded by 'a*z' only through GNU whole-path matching")
    return root


def tarfile_members(tar_path: Path) -> list[dict[str, Any]]:
    """Regular members read with Python's tarfile (not our scanner), hashing the bytes at their offset."""
    out = []
    with tarfile.open(tar_path, "r:") as tf, open(tar_path, "rb") as raw:
        for info in tf:
            if info.isreg():
                raw.seek(info.offset_data)
                data = raw.read(info.size)
                out.append({"path": info.name, "size": info.size, "offset": info.offset_data,
                            "sha256": hashlib.sha256(data).hexdigest()})
    return out


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def s3_etag_fields(path: Path) -> dict[str, Any]:
    """md5, etag and part_size the manifest must list for ``path``, worked out here without the package:
    one PUT under 8 MiB; else parts of size // 256 in whole MiB, within 5 to 64 MiB."""
    data = path.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    if len(data) < 8 * 2**20:
        return {"md5": md5, "etag": md5}
    part = min(max(len(data) // 256 // 2**20 * 2**20, 5 * 2**20), 64 * 2**20)
    digests = b"".join(hashlib.md5(data[i:i + part]).digest() for i in range(0, len(data), part))
    n = -(-len(data) // part)
    return {"md5": md5, "etag": f"{hashlib.md5(digests).hexdigest()}-{n}", "part_size": part}


def leftovers(directory: Path) -> list[str]:
    """Everything in ``directory`` (temporaries and sidecars included)."""
    return sorted(os.listdir(directory)) if directory.exists() else []


def run_cli_unprivileged(*args: str) -> subprocess.CompletedProcess[str]:
    """``run_cli`` without the power to read any file: as root, drop CAP_DAC_OVERRIDE/READ_SEARCH."""
    if os.geteuid() != 0:
        return run_cli(*args)
    if shutil.which("setpriv") is None:
        import pytest

        pytest.skip("running as root without setpriv (util-linux): cannot make a file unreadable")
    caps = "-dac_override,-dac_read_search"
    full_env = {**os.environ, "OBJATHOR_PROGRESS_INTERVAL": "0.5"}
    return subprocess.run(
        ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, "-m", "objathor_release",
         *args],
        capture_output=True, text=True, env=full_env, timeout=300,
    )
