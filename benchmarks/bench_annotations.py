"""prepare-annotations against objathor's own merge, on a synthetic tree of 20,000 assets.

The reference does what objathor's aggregate_asset_annotations does today: a
thread pool of 8 over the asset folders, each loading annotations.json.gz and
thor_metadata.json, then one gzip JSON dump (compress_json style, level 9), and
no validation. objathor-release also validates every asset against the schema.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import WORK, Row, parser, report, run_process  # noqa: E402
from devtools.sample import make_sample_dataset  # noqa: E402


def objathor_way(assets_dir: Path, out: Path) -> None:
    merged: dict[str, Any] = {}

    def load(entry: os.DirEntry[str]) -> None:
        if not entry.is_dir():
            return
        with gzip.open(os.path.join(entry.path, "annotations.json.gz"), "rt") as fh:
            ann = json.load(fh)
        try:
            with open(os.path.join(entry.path, "thor_metadata.json")) as fh:
                thor = json.load(fh)
            thor.pop("objectMetadata", None)
        except FileNotFoundError:
            thor = {}
        ann["thor_metadata"] = thor
        merged[entry.name] = ann

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        for f in [pool.submit(load, e) for e in os.scandir(assets_dir)]:
            f.result()
    with gzip.open(out, "wt") as fh:
        fh.write(json.dumps(merged))


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    n = max(100, int(20_000 * args.scale))
    work = WORK / "annotations"
    shutil.rmtree(work, ignore_errors=True)
    assets = work / "assets"
    print(f"generating {n} assets under {assets} ...", flush=True)
    make_sample_dataset(assets, n, seed=7, asset_bytes=512, junk=True)
    ref_script = f"import sys; sys.path.insert(0, {str(Path(__file__).parent.parent)!r}); " \
                 "from benchmarks.bench_annotations import objathor_way; from pathlib import Path; " \
                 f"objathor_way(Path({str(assets)!r}), Path({str(work / 'ref.json.gz')!r}))"
    best: dict[str, Row] = {}
    for _ in range(args.repeat):
        for name, argv in [
            ("objathor-release prepare-annotations",
             [sys.executable, "-m", "objathor_release", "prepare-annotations", "--save-dir", str(assets),
              "--output-file", str(work / "ours.json.gz")]),
            ("objathor's merge (8 threads, no validation)", [sys.executable, "-c", ref_script]),
        ]:
            row = run_process(argv)
            row.name = name
            if name not in best or row.seconds < best[name].seconds:
                best[name] = row
    with gzip.open(work / "ours.json.gz") as a, gzip.open(work / "ref.json.gz") as b:
        ours, ref = json.load(a), json.load(b)
    assert ours == ref, "the two merges differ"
    report("prepare-annotations: 20,000-asset merge" if n == 20_000 else f"prepare-annotations: {n} assets",
           list(best.values()), "objathor-release prepare-annotations", args.json,
           {"assets": n, "cores": os.cpu_count(), "outputs equal": True})
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
