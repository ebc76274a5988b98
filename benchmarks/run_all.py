"""Run every benchmarks/bench_*.py and write benchmarks/RESULTS.md with a PNG chart per benchmark.

    python benchmarks/run_all.py [--scale 0.1] [--only tarball,upload]

Each script measures objathor-release against its references in the same run
and writes its rows with ``--json``; this script only collects them. The
benchmarks run one after another (they would disturb each other's timings).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def chart(name: str, data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    labels = [r["name"] for r in rows]
    seconds = [r["seconds"] for r in rows]
    colors = ["#2b7bba" if r["name"] == data["ours"] else "#b0b0b0" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.2))
    ax.barh(labels[::-1], seconds[::-1], color=colors[::-1])
    for y, s in enumerate(seconds[::-1]):
        ax.text(s, y, f" {s:.2f} s", va="center", fontsize=9)
    ax.set_xlabel("wall time, seconds (shorter is better)")
    ax.set_title(data["title"], fontsize=10)
    ax.set_xlim(0, max(seconds) * 1.25)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def table(data: dict[str, Any]) -> str:
    ours = next(r for r in data["rows"] if r["name"] == data["ours"])
    lines = ["| contender | seconds | its time / objathor-release's | CPU s | peak MB | note |",
             "|---|---:|---:|---:|---:|---|"]
    for r in data["rows"]:
        ratio = r["seconds"] / ours["seconds"] if ours["seconds"] else float("nan")
        cpu = f"{r['cpu_seconds']:.2f}" if r.get("cpu_seconds") is not None else "-"
        mem = f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") is not None else "-"
        label = r["name"].replace("|", "\\|")  # a pipe would end the table cell
        name = f"**{label}**" if r is ours else label
        lines.append(f"| {name} | {r['seconds']:.2f} | {ratio:.2f}x | {cpu} | {mem} | {r.get('note', '')} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="passed to every benchmark (1 = full size)")
    p.add_argument("--repeat", type=int, default=3, help="runs per contender, passed to every benchmark")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite RESULTS.md and the charts from the last results/*.json without running")
    p.add_argument("--only", default="", help="comma-separated benchmark names, e.g. tarball,upload")
    args = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {f"bench_{n.strip()}.py" for n in args.only.split(",")}
        scripts = [s for s in scripts if s.name in wanted]
    sections = []
    failed = []
    run = {"scale": args.scale, "repeat": args.repeat, "date": time.strftime("%Y-%m-%d")}
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        out_json = RESULTS / f"{name}.json"
        if not args.render_only:
            out_json.unlink(missing_ok=True)
            print(f"== {script.name} (scale {args.scale})", flush=True)
            t0 = time.perf_counter()
            argv = [sys.executable, str(script), "--scale", str(args.scale), "--repeat", str(args.repeat),
                    "--json", str(out_json)]
            proc = subprocess.run(argv, cwd=HERE.parent, env={**os.environ, "OBJATHOR_PROGRESS": "0"})
            if proc.returncode != 0 or not out_json.exists():
                failed.append(script.name)
                sections.append(f"## {name}\n\n{script.name} failed (exit {proc.returncode}).\n")
                continue
            data = json.loads(out_json.read_text())
            data["took_seconds"] = time.perf_counter() - t0
            data["run_all"] = run
            out_json.write_text(json.dumps(data, indent=2) + "\n")
        elif not out_json.exists():
            continue
        data = json.loads(out_json.read_text())
        took = data.get("took_seconds", 0.0)
        run = data.get("run_all", run)
        tables = data.get("tables") or [data]  # a benchmark may measure several setups
        for i, tab in enumerate(tables):
            label = name if len(tables) == 1 else f"{name}-{i + 1}"
            chart(label, tab, RESULTS / f"{label}.png")
            setup = ", ".join(f"{k}: {v}" for k, v in tab.get("setup", {}).items())
            machine = tab.get("machine") or data.get("machine", {})
            load = machine.get("load")
            load_text = f", load average {load[0]:.2f}" if load else ""
            sections.append(
                f"## {tab['title']}\n\n{setup}. Python {machine.get('python')}, {machine.get('cpus')} cores"
                f"{load_text}" + (f"; `{script.name}` took {took:.0f} s in all" if took else "") + ".\n\n"
                f"{table(tab)}\n\n![{label}](results/{label}.png)\n")
    header = (
        "# Benchmark results\n\n"
        f"Written by `make bench` (`benchmarks/run_all.py --scale {run['scale']} "
        f"--repeat {run['repeat']}`) on {run['date']}. Every table compares objathor-release "
        "with its references measured in the same run on the same machine; a ratio above 1 "
        "means objathor-release is faster. CPU seconds and peak memory are each client "
        "process's own (wait4).\n")
    (HERE / "RESULTS.md").write_text(header + "\n" + "\n".join(sections))
    print(f"wrote {HERE / 'RESULTS.md'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
