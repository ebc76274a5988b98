"""Benchmark: how the release steps scale with the number of assets (10k, 100k, 1M tiny assets).

For each tree of N tiny assets (``<uid>/annotations.json.gz`` + ``<uid>/<uid>.pkl.gz``, written by
this script's own fast generator) and one tree of realistic sizes (300 assets of about 1.3 MB,
devtools.sample), it measures, each step in a fresh child process (time inside the child, peak RSS
of the child and its reaped children from wait4):

* annotations:      ``prepare_annotations`` (its default workers: the cores)
* tar + manifest:   ``build_tar`` of the whole tree, then ``write_manifest``
* shards wK:        ``plan_shards``, ``build_shards(workers=K)`` for K = 1, 2, then ``write_manifest``
* ray shards wK:    the same shards as Ray tasks (one per shard), ``ray.init(num_cpus=K)``, if Ray imports
* manifest load:    what ``download`` did with manifest.json before --uids kept only its members
                    (a full download still does): parse and check it
                    (``fetch.origin.check_manifest``), index members by uid, pick 10 uids' members
* manifest --uids:  what ``download assets --uids`` does now: ``check_manifest_for_uids`` (the
                    streaming reader, then the check of what it kept), the same index and 10 uids
* manifest index:   the streaming reader (``fetch.manifest_index``) picking the same 10 uids, if present
* baseline:         a child that imports the same modules and does nothing (its RSS is the floor)

Peak RSS is GNU time's (/usr/bin/time starts each step), so each figure is the step's own process
and its workers' largest, not inherited from this script (Linux passes a parent's peak to its child).

The shard size is chosen per tree for about 12 shards. It prints a table per tree, the per-asset time
ratios against the smallest tree, the worker speed-ups, and writes a log-log chart of time against
number of assets to benchmarks/results/scale.png. Scratch data goes under benchmarks/work/scale/
(removed at the end unless --keep).

    .venv/bin/python benchmarks/bench_scale.py --quick                 # 2k and 10k tiny assets, 30 real
    .venv/bin/python benchmarks/bench_scale.py                         # 10k, 100k, 1M (about 2M files)
    .venv/bin/python benchmarks/bench_scale.py --sizes 10000,100000 --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORK = REPO / "benchmarks" / "work" / "scale"
RESULTS = REPO / "benchmarks" / "results"
VERSION = "2024_02_01"
TARGET_SHARDS = 12
PICK = 10  # uids picked from the manifest
TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None  # GNU time, for peak RSS
REAL_ASSETS, REAL_BYTES = 300, 1_350_000

STEPS = ["annotations", "tar", "shards-w1", "shards-w2", "ray-w1", "ray-w2", "manifest-load",
         "manifest-uids", "manifest-index"]
LABELS = {
    "annotations": "annotations (prepare_annotations)",
    "tar": "tar + manifest (single assets.tar)",
    "shards-w1": "shards, 1 worker (+ plan, manifest)",
    "shards-w2": "shards, 2 workers (+ plan, manifest)",
    "ray-w1": "Ray shards, 1 CPU (+ plan, manifest)",
    "ray-w2": "Ray shards, 2 CPUs (+ plan, manifest)",
    "manifest-load": f"manifest load + pick {PICK} uids (full parse)",
    "manifest-uids": f"manifest load for --uids, {PICK} uids (slim)",
    "manifest-index": f"manifest index: pick {PICK} uids (streaming)",
    "baseline": "baseline child (imports only)",
}


# --------------------------------------------------------------------------- generating trees


def tiny_uid(i: int) -> str:
    return hashlib.md5(i.to_bytes(8, "little")).hexdigest()  # noqa: S324 - a name, not security


def make_tiny_tree(root: Path, n: int) -> None:
    """``n`` assets: ``<uid>/annotations.json.gz`` (the minimal valid annotation), ``<uid>/<uid>.pkl.gz``.

    The annotation holds the schema's required fields (uid, category, description); the default
    excludes leave it out of the tar, so each asset has one tar member, its 40-byte .pkl.gz.
    """
    root.mkdir(parents=True, exist_ok=True)
    payload = gzip.compress(b"\x80\x04}\x94.", mtime=0) + b"\0" * 8
    mkdir, open_ = os.mkdir, os.open
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    base = str(root)
    for i in range(n):
        uid = tiny_uid(i)
        d = f"{base}/{uid}"
        mkdir(d)
        ann = gzip.compress(b'{"uid": "%s", "category": "chair", "description": "a chair"}' % uid.encode(),
                            compresslevel=1, mtime=0)
        for name, data in (("annotations.json.gz", ann), (f"{uid}.pkl.gz", payload)):
            fd = open_(f"{d}/{name}", flags, 0o644)
            os.write(fd, data)
            os.close(fd)


def tree(kind: str, n: int) -> Path:
    """The tree's assets folder (built once per run; reused with --keep)."""
    src = WORK / f"{kind}-{n}" / "assets"
    stamp = src.parent / "complete"
    if stamp.exists():
        return src
    shutil.rmtree(src.parent, ignore_errors=True)
    t = time.perf_counter()
    if kind == "tiny":
        make_tiny_tree(src, n)
    else:
        from devtools.sample import make_sample_dataset

        make_sample_dataset(src, n, seed=7, asset_bytes=REAL_BYTES)
    stamp.write_text("ok")
    print(f"  generated {kind} tree of {n:,} assets in {time.perf_counter() - t:.1f} s", flush=True)
    return src


# --------------------------------------------------------------------------- the steps (child side)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def step_annotations(src: Path, out: Path, **_: Any) -> dict[str, Any]:
    from objathor_release.build.annotations import prepare_annotations

    _fresh(out)
    t = time.perf_counter()
    r = prepare_annotations(src, out / "annotations.json.gz", show_progress=False)
    return {"seconds": time.perf_counter() - t, "written": r.written}


def step_tar(src: Path, out: Path, **_: Any) -> dict[str, Any]:
    from objathor_release.build.manifest import write_manifest
    from objathor_release.build.tarball import build_tar

    rel = _fresh(out)
    t0 = time.perf_counter()
    r = build_tar(src, rel / "assets.tar", show_progress=False)
    t1 = time.perf_counter()
    write_manifest(rel, VERSION, show_progress=False)
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "tar_seconds": t1 - t0, "manifest_seconds": t2 - t1,
            "members": len(r.members), "tar_bytes": r.size,
            "manifest_bytes": (rel / "manifest.json").stat().st_size}


def step_shards(src: Path, out: Path, shard_size: int, workers: int, **_: Any) -> dict[str, Any]:
    from objathor_release.build.manifest import write_manifest
    from objathor_release.build.shards import build_shards, plan_shards

    rel = _fresh(out)
    t0 = time.perf_counter()
    plan = plan_shards(src, shard_size)
    t1 = time.perf_counter()
    build_shards(plan, rel, workers=workers, show_progress=False)
    t2 = time.perf_counter()
    write_manifest(rel, VERSION, show_progress=False)
    t3 = time.perf_counter()
    return {"seconds": t3 - t0, "plan_seconds": t1 - t0, "build_seconds": t2 - t1,
            "manifest_seconds": t3 - t2, "shards": len(plan.shards)}


def step_ray(src: Path, out: Path, shard_size: int, workers: int, **_: Any) -> dict[str, Any]:
    import ray

    from objathor_release.build.manifest import write_manifest
    from objathor_release.build.shards import ShardPlan, build_shard, plan_shards

    rel = _fresh(out)
    t_init = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)

    @ray.remote(num_cpus=1)
    def one(plan: ShardPlan, k: int, out_dir: str) -> int:
        return build_shard(plan, k, out_dir).size

    @ray.remote(num_cpus=1)
    def warm() -> int:
        time.sleep(0.2)
        return os.getpid()

    # Start the workers first (their start is Ray's fixed cost, reported apart as init_seconds).
    ray.get([warm.remote() for _ in range(workers)])
    init = time.perf_counter() - t_init
    try:
        t0 = time.perf_counter()
        plan = plan_shards(src, shard_size)
        t1 = time.perf_counter()
        ref = ray.put(plan)
        sizes = ray.get([one.remote(ref, k, str(rel)) for k in range(len(plan.shards))])
        t2 = time.perf_counter()
        write_manifest(rel, VERSION, show_progress=False)
        t3 = time.perf_counter()
    finally:
        ray.shutdown()
    return {"seconds": t3 - t0, "init_seconds": init, "plan_seconds": t1 - t0, "build_seconds": t2 - t1,
            "manifest_seconds": t3 - t2, "shards": len(sizes)}


def _picked(n: int) -> list[str]:
    step = max(1, n // PICK)
    return [tiny_uid(i) for i in range(0, n, step)][:PICK]


def step_manifest_load(manifest: Path, n: int, **_: Any) -> dict[str, Any]:
    """What ``download --uids`` does with the served manifest (fetch.origin, fetch.uids), from a file."""
    from objathor_release.fetch.extract import member_parts
    from objathor_release.fetch.origin import check_manifest

    t0 = time.perf_counter()
    data = manifest.read_bytes()  # load_manifest holds the fetched bytes the same way
    parsed = check_manifest(data, str(manifest), VERSION)
    t1 = time.perf_counter()
    uids = _picked(n)
    picked = 0
    total = 0
    for art in parsed["artifacts"]:  # fetch_uids: every member indexed by its uid folder
        by_uid: dict[str, list[dict[str, Any]]] = {}
        for m in art["members"]:
            total += 1
            parts = member_parts(m["path"])
            if len(parts) >= 3:
                by_uid.setdefault(parts[1], []).append(m)
        picked += sum(len(by_uid.get(u, [])) for u in uids)
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "parse_seconds": t1 - t0, "index_seconds": t2 - t1,
            "members": total, "picked_members": picked}


def step_manifest_uids(manifest: Path, n: int, **_: Any) -> dict[str, Any]:
    """What ``download assets --uids`` does now: keep only the wanted members (check_manifest_for_uids)."""
    from objathor_release.fetch.extract import member_parts
    from objathor_release.fetch.origin import check_manifest_for_uids

    uids = _picked(n)
    t0 = time.perf_counter()
    data = manifest.read_bytes()
    parsed = check_manifest_for_uids(data, str(manifest), VERSION, uids)
    t1 = time.perf_counter()
    picked = 0
    for art in parsed["artifacts"]:
        by_uid: dict[str, list[dict[str, Any]]] = {}
        for m in art["members"]:
            parts = member_parts(m["path"])
            if len(parts) >= 3:
                by_uid.setdefault(parts[1], []).append(m)
        picked += sum(len(by_uid.get(u, [])) for u in uids)
    t2 = time.perf_counter()
    return {"seconds": t2 - t0, "parse_seconds": t1 - t0, "index_seconds": t2 - t1, "picked_members": picked}


def step_manifest_index(manifest: Path, n: int, **_: Any) -> dict[str, Any]:
    manifest_index = importlib.import_module("objathor_release.fetch.manifest_index")
    t0 = time.perf_counter()
    with open(manifest, "rb") as fh:
        found = manifest_index.members_of(fh, _picked(n))
    t1 = time.perf_counter()
    return {"seconds": t1 - t0, "picked_members": sum(len(a.members) for a in found.artifacts.values())}


def step_baseline(**_: Any) -> dict[str, Any]:
    import objathor_release.build.annotations  # noqa: F401
    import objathor_release.build.manifest  # noqa: F401
    import objathor_release.build.shards  # noqa: F401
    import objathor_release.fetch.origin  # noqa: F401

    return {"seconds": 0.0}


CHILD_STEPS: dict[str, Callable[..., dict[str, Any]]] = {
    "annotations": step_annotations, "tar": step_tar, "shards": step_shards, "ray": step_ray,
    "manifest-load": step_manifest_load, "manifest-uids": step_manifest_uids,
    "manifest-index": step_manifest_index, "baseline": step_baseline,
}


def child(name: str, args_json: str) -> int:
    kwargs = json.loads(args_json)
    for k in ("src", "out", "manifest"):
        if k in kwargs:
            kwargs[k] = Path(kwargs[k])
    result = CHILD_STEPS[name](**kwargs)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- the parent side


def run_step(name: str, **kwargs: Any) -> dict[str, Any]:
    """Run one step in a fresh child: its own figures plus wall time, CPU and peak RSS (wait4)."""
    args = {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}
    argv = [sys.executable, str(Path(__file__).resolve()), "--step", name, "--step-args", json.dumps(args)]
    # Linux hands a child the parent's peak RSS at fork (ru_maxrss survives exec), so the peak comes
    # from GNU time, a small process that starts the step: the step's own figure, not this process's.
    usage_file = WORK / f".usage-{os.getpid()}"
    if TIME:
        argv = [TIME, "-f", "%M", "-o", str(usage_file), *argv]
    os.sync()  # no step pays for the previous one's writeback
    load = os.getloadavg()[0]  # another job on the machine shows here
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "OBJATHOR_PROGRESS": "0", "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if code != 0 or not lines:
        raise SystemExit(f"step {name} failed (exit {code}): {argv}\n{out[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    peak_kb = int(usage_file.read_text().split()[-1]) if TIME else usage.ru_maxrss
    usage_file.unlink(missing_ok=True)
    result.update(process_seconds=wall, cpu_seconds=usage.ru_utime + usage.ru_stime,
                  peak_rss_mb=peak_kb / 1024, load_before=load, load_after=os.getloadavg()[0])
    return result


def shard_size_for(kind: str, n: int) -> int:
    per_asset = 1536 if kind == "tiny" else REAL_BYTES + 3 * 1024  # tar bytes: folder + 1 member; real
    return max(1 << 20, per_asset * n // TARGET_SHARDS)


def have_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def have_index() -> bool:
    return (REPO / "objathor_release" / "fetch" / "manifest_index.py").exists()


def bench_tree(kind: str, n: int, steps: list[str]) -> dict[str, Any]:
    src = tree(kind, n)
    scratch = WORK / f"run-{kind}-{n}"
    size = shard_size_for(kind, n)
    res: dict[str, dict[str, Any]] = {}
    for step in steps:
        t = time.perf_counter()
        if step == "annotations":
            res[step] = run_step("annotations", src=src, out=scratch / "ann")
        elif step == "tar":
            res[step] = run_step("tar", src=src, out=scratch / "tar")
        elif step.startswith(("shards-", "ray-")):
            kind_, w = step.split("-w")
            res[step] = run_step("shards" if kind_ == "shards" else "ray", src=src, out=scratch / step,
                                 shard_size=size, workers=int(w))
            shutil.rmtree(scratch / step, ignore_errors=True)
        elif step in ("manifest-load", "manifest-uids", "manifest-index"):
            res[step] = run_step(step, manifest=scratch / "tar" / "manifest.json", n=n)
        elif step == "baseline":
            res[step] = run_step("baseline")
        print(f"    {kind} {n:>9,} {LABELS[step]:<46} {res[step]['seconds']:8.2f} s  "
              f"peak {res[step]['peak_rss_mb']:7.0f} MB  (child {time.perf_counter() - t:.1f} s)", flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"kind": kind, "assets": n, "shard_size": size, "steps": res}


def _fmt_ratio(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "-"


def summarize(trees: list[dict[str, Any]]) -> dict[str, Any]:
    tiny = sorted((t for t in trees if t["kind"] == "tiny"), key=lambda t: t["assets"])
    out: dict[str, Any] = {"per_asset_ratio": {}, "speedup": {}}
    if len(tiny) >= 2:
        small, big = tiny[0], tiny[-1]
        for step in big["steps"]:
            if step == "baseline" or step not in small["steps"]:
                continue
            a = small["steps"][step]["seconds"] / small["assets"]
            b = big["steps"][step]["seconds"] / big["assets"]
            out["per_asset_ratio"][step] = {"small": small["assets"], "big": big["assets"],
                                            "ratio": b / a if a else None}
    for t in trees:
        s = t["steps"]
        key = f"{t['kind']}-{t['assets']}"
        sp = {}
        for kind in ("shards", "ray"):
            if f"{kind}-w1" in s and f"{kind}-w2" in s:
                sp[kind] = s[f"{kind}-w1"]["seconds"] / s[f"{kind}-w2"]["seconds"]
                sp[f"{kind} build only"] = s[f"{kind}-w1"]["build_seconds"] / s[f"{kind}-w2"]["build_seconds"]
        out["speedup"][key] = sp
    return out


def print_tables(trees: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    for t in trees:
        s = t["steps"]
        print(f"\n{t['kind']} tree, {t['assets']:,} assets (shard size {t['shard_size']:,} bytes)")
        print(f"  {'step':<46} {'seconds':>9} {'us/asset':>9} {'CPU s':>8} {'peak MB':>8}  detail")
        for step, r in s.items():
            detail = ", ".join(f"{k.removesuffix('_seconds')} {v:.2f} s" for k, v in r.items()
                               if k.endswith("_seconds") and k != "cpu_seconds" and k != "process_seconds")
            for k in ("members", "shards", "picked_members", "manifest_bytes"):
                if k in r:
                    detail += f", {k.replace('_', ' ')} {r[k]:,}"
            print(f"  {LABELS[step]:<46} {r['seconds']:>9.2f} {1e6 * r['seconds'] / t['assets']:>9.1f} "
                  f"{r['cpu_seconds']:>8.2f} {r['peak_rss_mb']:>8.0f}  {detail.lstrip(', ')}")
    if summary["per_asset_ratio"]:
        print("\ntime per asset, largest tiny tree / smallest (goal: at most 1.5x)")
        for step, r in summary["per_asset_ratio"].items():
            ok = "met" if r["ratio"] is not None and r["ratio"] <= 1.5 else "MISSED"
            print(f"  {LABELS[step]:<46} {r['big']:,} / {r['small']:,}: {_fmt_ratio(r['ratio'])}  {ok}")
    print("\n1 worker's time / 2 workers' (goal: at least 1.6x)")
    for key, sp in summary["speedup"].items():
        if sp:
            print(f"  {key:<16} " + ", ".join(f"{k} {_fmt_ratio(v)}" for k, v in sp.items()))


def chart(trees: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiny = sorted((t for t in trees if t["kind"] == "tiny"), key=lambda t: t["assets"])
    real = [t for t in trees if t["kind"] != "tiny"]
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    markers = "osD^v<>ph"
    for i, step in enumerate(s for s in STEPS if any(s in t["steps"] for t in tiny)):
        pts = [(t["assets"], t["steps"][step]["seconds"]) for t in tiny if step in t["steps"]]
        line = ax.plot([p[0] for p in pts], [max(p[1], 1e-3) for p in pts], marker=markers[i % len(markers)],
                       label=LABELS[step])[0]
        for t in real:
            if step in t["steps"]:
                ax.plot([t["assets"]], [max(t["steps"][step]["seconds"], 1e-3)],
                        marker=markers[i % len(markers)], color=line.get_color(), markerfacecolor="none",
                        markersize=10, linestyle="none")
    if tiny:  # the reference slope: time proportional to assets, through the smallest tree's tar time
        t0 = tiny[0]
        base = t0["steps"].get("tar", next(iter(t0["steps"].values())))["seconds"]
        xs = [t["assets"] for t in tiny]
        ax.plot(xs, [base * x / xs[0] for x in xs], color="grey", linestyle=":", label="linear (slope 1)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of assets (filled: tiny assets; hollow: 300 realistic assets of ~1.3 MB)")
    ax.set_ylabel("wall time in the child process, seconds")
    ax.set_title(f"objathor-release steps against the number of assets ({os.cpu_count()} cores)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def run_all_tables(trees: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One table per tree in the shape benchmarks/run_all.py reads (title, ours, rows)."""
    tables = []
    for t in trees:
        rows = [{"name": LABELS[k], "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
                 "peak_rss_mb": r["peak_rss_mb"], "note": f"{1e6 * r['seconds'] / t['assets']:.1f} us/asset",
                 "extra": r} for k, r in t["steps"].items()]
        tables.append({"title": f"scale: {t['kind']} tree of {t['assets']:,} assets", "ours": rows[0]["name"],
                       "setup": {"assets": t["assets"], "shard size": t["shard_size"]}, "rows": rows,
                       "machine": machine()})
    return tables


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000",
                    help="tiny-tree sizes (default 10000,100000,1000000)")
    ap.add_argument("--real", type=int, default=REAL_ASSETS, help="realistic assets (default 300; 0: none)")
    ap.add_argument("--quick", action="store_true", help="sizes 2000,10000 and 30 realistic assets")
    ap.add_argument("--steps", default=",".join(STEPS), help="which steps (default: all available)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies the sizes (for benchmarks/run_all.py)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="accepted for benchmarks/run_all.py; each step runs once")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--chart", type=Path, default=RESULTS / "scale.png",
                    help="the PNG chart (default %(default)s)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the generated trees under benchmarks/work/scale")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--step-args", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step:
        return child(args.step, args.step_args)
    sizes = [2000, 10000] if args.quick else [int(s) for s in args.sizes.split(",") if s]
    sizes = [max(1, round(s * args.scale)) for s in sizes]
    real = 30 if args.quick else max(0, round(args.real * args.scale))
    steps = [s for s in args.steps.split(",") if s]
    if not have_ray():
        steps = [s for s in steps if not s.startswith("ray-")]
    if not have_index():
        steps = [s for s in steps if s not in ("manifest-index", "manifest-uids")]
    elif not hasattr(importlib.import_module("objathor_release.fetch.origin"), "check_manifest_for_uids"):
        steps = [s for s in steps if s != "manifest-uids"]
    steps.append("baseline")
    free = shutil.disk_usage(WORK.parent if WORK.parent.exists() else REPO).free
    print(f"bench_scale: tiny trees {sizes}, {real} realistic assets, steps {','.join(steps)}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {free / 1e9:.0f} GB free", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    trees = []
    started = time.perf_counter()
    try:
        for n in sizes:
            trees.append(bench_tree("tiny", n, steps))
            if not args.keep:
                shutil.rmtree(WORK / f"tiny-{n}", ignore_errors=True)
        if real:
            real_steps = [s for s in steps if not s.startswith("manifest-") and s != "baseline"]
            trees.append(bench_tree("real", real, real_steps))
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)
    summary = summarize(trees)
    print_tables(trees, summary)
    chart(trees, args.chart)
    print(f"\nchart: {args.chart}; took {time.perf_counter() - started:.0f} s in all")
    if args.json:
        tables = run_all_tables(trees)
        data = {**tables[0], "tables": tables, "trees": trees, "summary": summary, "machine": machine(),
                "date": time.strftime("%Y-%m-%d")}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
