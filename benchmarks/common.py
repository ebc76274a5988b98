"""Shared plumbing for the benchmark scripts: timing, the ratio table and the JSON result file.

Every benchmark measures its references in the same run as this tool and prints
ratios (reference time / our time: above 1 means we are faster). With
``--json FILE`` it also writes its rows for ``benchmarks/run_all.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work"


@dataclass
class Row:
    name: str
    seconds: float
    cpu_seconds: float | None = None
    peak_rss_mb: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the full benchmark size")
    p.add_argument("--repeat", type=int, default=1, help="runs per contender; the best is kept")
    p.add_argument("--json", metavar="FILE", help="also write the result rows as JSON")
    p.add_argument("--keep", action="store_true", help="keep the scratch data under benchmarks/work")
    return p


def time_call(fn: Callable[[], object], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_process(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> Row:
    """Run a command as a child process: its wall time, CPU seconds and peak RSS (from wait4).

    CPU and memory are the direct child's own (plus its reaped descendants'), so
    run pipelines as ``bash -c`` to count every stage.
    """
    full_env = {**os.environ, "OBJATHOR_PROGRESS": "0", **(env or {})}
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=full_env, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv)
    # ru_maxrss is the largest of the process and its reaped children (KiB on Linux).
    return Row(name=argv[0], seconds=wall, cpu_seconds=usage.ru_utime + usage.ru_stime,
               peak_rss_mb=usage.ru_maxrss / 1024)


def report(title: str, rows: list[Row], ours: str, json_path: str | None, setup: dict[str, Any]) -> None:
    """Print the table with ratios against ``ours`` and write the JSON file."""
    base = next(r for r in rows if r.name == ours)
    print(f"\n{title}")
    print("  " + ", ".join(f"{k}: {v}" for k, v in setup.items()))
    print(f"  {'contender':<44} {'seconds':>9} {'ratio':>7} {'CPU s':>7} {'peak MB':>8}")
    for r in rows:
        ratio = r.seconds / base.seconds if base.seconds else float("nan")
        cpu = f"{r.cpu_seconds:.2f}" if r.cpu_seconds is not None else "-"
        mem = f"{r.peak_rss_mb:.0f}" if r.peak_rss_mb is not None else "-"
        print(f"  {r.name:<44} {r.seconds:>9.2f} {ratio:>6.2f}x {cpu:>7} {mem:>8}  {r.note}")
    print("  ratio = contender's time / objathor-release's time (above 1: objathor-release is faster)")
    if json_path:
        data = {
            "title": title, "ours": ours, "setup": setup,
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "platform": platform.platform(), "load": os.getloadavg()},
            "rows": [asdict(r) for r in rows],
        }
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(data, indent=2) + "\n")


#: objathor 0.0.8's own download of assets.tar (objathor.dataset.load_assets_path): requests with
#: 4 KiB chunks into a file, then tar -xf and a rename; the reference both download benchmarks run.
OBJATHOR_WAY = """
import glob, os, sys
import requests
from tqdm import tqdm
url, versioned_path = sys.argv[1], sys.argv[2]
asset_save_path = os.path.join(versioned_path, "assets")
tar_path = asset_save_path + ".tar"
os.makedirs(versioned_path, exist_ok=True)
with open(tar_path, "wb") as f, open(os.devnull, "w") as sink:
    response = requests.get(url, stream=True)
    total_length = int(response.headers.get("content-length"))
    with tqdm(total=total_length, unit="B", unit_scale=True, desc="Downloading assets.", file=sink) as pbar:
        for data in response.iter_content(chunk_size=4096):
            f.write(data)
            pbar.update(len(data))
tmp_untar_dir = os.path.join(versioned_path, "tmp_untar_dir")
os.makedirs(tmp_untar_dir, exist_ok=True)
os.system(f"tar -xf {tar_path} -C {tmp_untar_dir}")
paths = glob.glob(os.path.join(tmp_untar_dir, "*"))
assert len(paths) == 1
os.rename(paths[0], asset_save_path)
os.rmdir(tmp_untar_dir)
os.remove(tar_path)
"""
