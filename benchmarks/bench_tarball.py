"""Benchmark: `objathor-release tar` + `manifest` against GNU tar and the two-pass way.

Builds two synthetic trees with devtools.sample (deterministic):

* big:  2,000 assets of realistic size (about 2.7 GB at --scale 1)
* tiny: 20,000 assets of tiny files (per-file overhead dominates)

and times on each, in the same run, interleaved, ``--repeat`` times (median):

* ours:      ``objathor-release tar`` then ``objathor-release manifest`` (two processes, as a user runs
             them): the archive, its sha256 and every member's sha256 and offset
* gnu tar:   plain GNU tar with the reproducible flags (no checksums at all)
* two-pass:  GNU tar, then ``sha256sum`` over the tar, then ``sha256sum`` over every included file
* tarfile:   a plain Python ``tarfile`` loop hashing each file and the archive

Each run starts after ``sync`` (so no tool pays for the previous one's writeback), in a rotating order.

It checks that ours is byte-identical to GNU tar's, prints ratios (ours / reference; below 1 means
ours is faster) and the peak memory of each tool. Scratch data goes under benchmarks/work/tarball/
and is removed at the end unless --keep.

    .venv/bin/python benchmarks/bench_tarball.py --scale 0.1      # quick
    .venv/bin/python benchmarks/bench_tarball.py                  # full size (for the README)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devtools.sample import make_sample_dataset  # noqa: E402
from objathor_release.build.excludes import DEFAULT_EXCLUDES, compile_excludes  # noqa: E402
from objathor_release.build.tarball import gnu_tar_command  # noqa: E402

WORK = REPO / "benchmarks" / "work" / "tarball"
TREES = {  # name: (assets at scale 1, average bytes per asset)
    "big": (2000, 1_350_000),
    "tiny": (20000, 1024),
}
VERSION = "2024_02_01"
OURS = "objathor-release tar + manifest"


TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)


def run_timed(cmd: list[str], *, cwd: Path | None = None) -> tuple[float, float, int]:
    """Run a command; return (wall seconds, CPU seconds, peak RSS in MiB of its largest process).

    GNU time measures CPU and memory (its own tiny process starts the command, so
    the figures are the command's and its children's, not this Python process's).
    CPU and memory are 0 when GNU time is missing.
    """
    usage = WORK / "usage.txt"
    wrapped = [TIME, "-f", "%M %U %S", "-o", str(usage), *cmd] if TIME else cmd
    start = time.perf_counter()
    proc = subprocess.run(wrapped, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {cmd}\n{proc.stderr}")
    if not TIME:
        return elapsed, 0.0, 0
    rss_kb, user, system = usage.read_text().split()[-3:]
    return elapsed, float(user) + float(system), int(rss_kb) // 1024


Timing = tuple[float, float, int]


def _add(a: Timing, b: Timing) -> Timing:
    return a[0] + b[0], a[1] + b[1], max(a[2], b[2])


def ours(src: Path, rel: Path) -> Timing:
    py = sys.executable
    tar = run_timed([py, "-m", "objathor_release", "tar", "--assets-dir", str(src),
                     "--output", str(rel / "assets.tar"), "-q"])
    manifest = run_timed([py, "-m", "objathor_release", "manifest", "--release-dir", str(rel),
                          "--version", VERSION, "-q"])
    return _add(tar, manifest)


def gnu(src: Path, out: Path) -> Timing:
    return run_timed(gnu_tar_command(src, out, DEFAULT_EXCLUDES))


def two_pass(src: Path, out: Path) -> Timing:
    tar = " ".join(f"'{w}'" for w in gnu_tar_command(src, out, DEFAULT_EXCLUDES))
    script = (
        f"set -e; {tar}; sha256sum '{out}' > '{out}.sha256'; "
        f"cd '{src.parent}' && tar -tf '{out}' | grep -v '/$' | xargs -d '\\n' sha256sum > '{out}.members'"
    )
    return run_timed(["bash", "-c", script])


def tarfile_loop(src: Path, out: Path) -> Timing:
    """A straightforward Python version: tarfile.addfile per file, hashing each file and the archive."""
    code = f"""
import hashlib, os, tarfile
from objathor_release.build.excludes import DEFAULT_EXCLUDES, compile_excludes
src, out = {str(src)!r}, {str(out)!r}
excluded = compile_excludes(DEFAULT_EXCLUDES)
class H:
    def __init__(self, fh): self.fh, self.sha, self.pos = fh, hashlib.sha256(), 0
    def tell(self): return self.pos
    def write(self, b): self.sha.update(b); self.pos += len(b); return self.fh.write(b)
def norm(ti):
    ti.uid = ti.gid = 0; ti.uname = ti.gname = ""; ti.mtime = 0
    x = ti.isdir() or ti.mode & 0o111
    ti.mode = (ti.mode & 0o700) | 0o600 | (0o055 if x else 0o044)
    return ti
members = []
with open(out, "wb") as raw:
    h = H(raw)
    with tarfile.open(fileobj=h, mode="w", format=tarfile.GNU_FORMAT) as tf:
        def walk(path, rel):
            tf.addfile(norm(tf.gettarinfo(path, rel)))
            for name in sorted(os.listdir(path)):
                p, r = os.path.join(path, name), rel + "/" + name
                if excluded(r):
                    continue
                if os.path.isdir(p):
                    walk(p, r)
                else:
                    with open(p, "rb") as fh:
                        data_sha = hashlib.sha256()
                        ti = norm(tf.gettarinfo(p, r))
                        tf.addfile(ti, fh)
                        fh.seek(0)
                        for block in iter(lambda: fh.read(1 << 20), b""):
                            data_sha.update(block)
                        members.append((r, data_sha.hexdigest()))
        walk(src, os.path.basename(src))
"""
    return run_timed([sys.executable, "-c", code], cwd=REPO)


def make_tree(name: str, scale: float, root: Path) -> tuple[Path, int, int]:
    """The tree (built once, reused with --keep); returns (dir, files kept in the tar, bytes)."""
    n_assets, avg = TREES[name]
    n = max(1, round(n_assets * scale))
    src = root / f"{name}-{n}" / "assets"
    stamp = src.parent / "complete"
    if not stamp.exists():
        shutil.rmtree(src.parent, ignore_errors=True)
        t = time.perf_counter()
        make_sample_dataset(src, n, seed=11, asset_bytes=avg)
        stamp.write_text("ok")
        print(f"  built {name} tree: {n} assets in {time.perf_counter() - t:.1f} s", flush=True)
    excluded = compile_excludes(DEFAULT_EXCLUDES)
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(src):
        rel = "assets" + dirpath[len(str(src)):]
        dirnames[:] = [d for d in dirnames if not excluded(f"{rel}/{d}")]
        for f in filenames:
            if not excluded(f"{rel}/{f}"):
                files += 1
                size += os.path.getsize(os.path.join(dirpath, f))
    return src, files, size


def warm(src: Path) -> None:
    """Read the tree once so every tool starts with it in the page cache."""
    subprocess.run(["tar", "-cf", "/dev/null", "-C", str(src.parent), src.name], check=True)


def bench_tree(name: str, scale: float, repeat: int) -> dict[str, Any]:
    src, files, size = make_tree(name, scale, WORK)
    warm(src)
    scratch = WORK / f"run-{name}"
    shutil.rmtree(scratch, ignore_errors=True)
    tools: dict[str, Callable[[], Timing]] = {
        OURS: lambda: ours(src, scratch / "rel"),
        "GNU tar (no checksums)": lambda: gnu(src, scratch / "gnu.tar"),
        "two-pass: GNU tar, sha256sum tar, sha256sum files": lambda: two_pass(src, scratch / "twopass.tar"),
        "Python tarfile loop with hashing": lambda: tarfile_loop(src, scratch / "tarfile.tar"),
    }
    runs: dict[str, list[Timing]] = {k: [] for k in tools}
    order = list(tools)
    for round_ in range(repeat):
        for tool in order[round_ % len(order):] + order[:round_ % len(order)]:  # rotate who goes first
            shutil.rmtree(scratch, ignore_errors=True)
            (scratch / "rel").mkdir(parents=True)
            os.sync()  # nobody starts while the previous run's GBs are still being written back
            runs[tool].append(tools[tool]())
            if tool == OURS:  # sanity: the same bytes as GNU tar, and the manifest's figures
                ours_tar = scratch / "rel" / "assets.tar"
                gnu_tar = scratch / "gnu-check.tar"
                gnu(src, gnu_tar)
                if not _same(ours_tar, gnu_tar):
                    raise SystemExit(f"{name}: our archive differs from GNU tar's")
                manifest = json.loads((scratch / "rel" / "manifest.json").read_text())
                if len(manifest["artifacts"][0]["members"]) != files:
                    raise SystemExit(f"{name}: manifest lists a wrong number of members")
    shutil.rmtree(scratch, ignore_errors=True)
    rows = []
    for tool, timings in runs.items():
        wall = statistics.median(t[0] for t in timings)
        rows.append({"name": tool, "seconds": wall, "cpu_seconds": statistics.median(t[1] for t in timings),
                     "peak_rss_mb": max(t[2] for t in timings), "note": "",
                     "extra": {"all_seconds": [t[0] for t in timings]}})
    return {
        "title": f"tar + manifest, {name} tree: {files:,} files, {size / 1e9:.2f} GB",
        "ours": OURS,
        "setup": {"tree": name, "files": files, "bytes": size, "runs (median)": repeat,
                  "byte-identical to GNU tar": True},
        "rows": rows,
    }


def _same(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    ha, hb = hashlib.sha256(), hashlib.sha256()
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while block := fa.read(1 << 22):
            ha.update(block)
            hb.update(fb.read(1 << 22))
    return ha.digest() == hb.digest()


def table(results: list[dict[str, Any]]) -> str:
    """One row per tree: median seconds of each tool and ours / reference (below 1: ours is faster)."""
    names = [r["name"] for r in results[0]["rows"]]
    short = ["ours", "GNU tar", "two-pass", "tarfile loop"]
    head = ("| tree | files | size | " + " | ".join(f"{s} s" for s in short) + " | "
            + " | ".join(f"ours / {s}" for s in short[1:]) + " | peak RSS ours / GNU tar |")
    rows = [head, "|" + "---|" * 3 + "---:|" * (len(short) * 2) ]
    for r in results:
        sec = {row["name"]: row["seconds"] for row in r["rows"]}
        rss = {row["name"]: row["peak_rss_mb"] for row in r["rows"]}
        s = r["setup"]
        rows.append(
            f"| {s['tree']} | {s['files']:,} | {s['bytes'] / 1e9:.2f} GB | "
            + " | ".join(f"{sec[n]:.2f}" for n in names) + " | "
            + " | ".join(f"{sec[OURS] / sec[n]:.2f}" for n in names[1:])
            + f" | {rss[OURS]} / {rss[names[1]]} MiB |"
        )
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the full asset counts (default 1)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each tool; the median is reported")
    ap.add_argument("--trees", default="big,tiny", help="which trees (default big,tiny)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the generated trees for the next run")
    args = ap.parse_args(argv)
    if not shutil.which("tar") or "GNU tar" not in subprocess.run(["tar", "--version"], capture_output=True,
                                                                 text=True).stdout:
        raise SystemExit("GNU tar is needed for the reference timings")
    WORK.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    print(f"bench_tarball: scale {args.scale}, {args.repeat} runs each, {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.2f}", flush=True)
    results = []
    try:
        for name in args.trees.split(","):
            results.append(bench_tree(name, args.scale, args.repeat))
            print(f"  {name}: " + ", ".join(f"{row['name']} {row['seconds']:.2f} s"
                                            for row in results[-1]["rows"]), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    load_after = os.getloadavg()
    print()
    print(table(results))
    print()
    print(f"ours / reference below 1: ours is faster. Medians of {args.repeat} interleaved runs, "
          "warm page cache; "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after.")
    if args.json:  # benchmarks/run_all.py reads the first table; "tables" holds every tree
        tables = [{**r, "machine": machine()} for r in results]
        args.json.write_text(json.dumps({**tables[0], "tables": tables, "scale": args.scale,
                                         "load_before": load_before, "load_after": load_after}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
