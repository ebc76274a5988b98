"""``download assets`` from a real nginx on 127.0.0.1 against objathor's way and ``curl | tar -x``.

A synthetic release (2.7 GB of assets at ``--scale 1``, about 1 MiB per asset)
is built with the project's tar builder and manifest, served by Debian's nginx
(started here with a config of its own), and downloaded into a fresh folder by:

* objathor-release ``download assets`` (streamed into the extractor, every
  member and the whole tar checked against manifest.json);
* objathor's way, as ``objathor.dataset.load_assets_path`` does it: requests
  with 4 KiB chunks into assets.tar (tqdm bar), ``tar -xf`` into a temporary
  folder, rename, delete the tar;
* ``curl -s URL | tar -x`` (fast, verifies nothing);
* ``tar -xf`` of the tar already on local disk (no network at all: a floor);
* objathor-release ``download assets --uids`` of 20 uids (Range requests by
  the manifest's member offsets), compared with the full download.

Every contender is a child process; ``sync`` runs between contenders so one's
dirty pages are not written back during the next. Outputs are compared (every
file's path and size against the source tree).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import OBJATHOR_WAY, WORK, Row, parser, report, run_process  # noqa: E402
from devtools.nginx import Nginx, find_nginx  # noqa: E402
from devtools.sample import make_sample_dataset  # noqa: E402
from devtools.served_release import build_release  # noqa: E402

VERSION = "2024_02_01"
FULL_BYTES = 2.7e9
ASSET_BYTES = 1024 * 1024


def listing(root: Path) -> dict[str, int]:
    """relative path -> size of every file under ``root``."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = os.path.getsize(p)
    return out


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--uids", type=int, default=20, help="assets fetched by the --uids run (default 20)")
    args = p.parse_args()
    if find_nginx() is None:
        sys.exit("bench_download: nginx is not installed: run 'make install' or 'apt-get install nginx'")
    curl = shutil.which("curl")
    if curl is None:
        print("bench_download: curl is not installed ('apt-get install curl'): its row is left out",
              flush=True)
    work = WORK / "download"
    shutil.rmtree(work, ignore_errors=True)
    n = max(30, round(FULL_BYTES * args.scale / ASSET_BYTES))
    src = work / "src" / "assets"
    print(f"generating {n} assets (~{n * ASSET_BYTES / 1e9:.2f} GB) under {src} ...", flush=True)
    make_sample_dataset(src, n, seed=11, asset_bytes=ASSET_BYTES, junk=True)
    print("building the release (tar + manifest) ...", flush=True)
    release = build_release(src, work / "www", VERSION)
    tar_size = (release.vdir / "assets.tar").stat().st_size
    want = {k: v for k, v in listing(src).items() if not k.endswith(("annotations.json.gz",
                                                                      "thor_metadata.json"))}
    want = {k: v for k, v in want.items() if not os.path.basename(k).startswith((".", "._"))
            and not k.endswith(".lock")}
    load = os.getloadavg()
    print(f"assets.tar: {tar_size / 1e9:.2f} GB, {len(want)} files; load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f} (uptime)", flush=True)

    with Nginx(work / "www", work / "nginx") as web:
        base = web.url
        url = f"{base}/{VERSION}/assets.tar"
        out = work / "out"
        ours = "objathor-release download assets"
        contenders: list[tuple[str, list[str], Path]] = [
            (ours, [sys.executable, "-m", "objathor_release", "download", "assets", "--version", VERSION,
                    "--path", str(out), "--base-url", base], out / VERSION / "assets"),
            ("objathor's way (requests 4 KiB, tar -xf, rm)",
             [sys.executable, "-c", OBJATHOR_WAY, url, str(out / VERSION)], out / VERSION / "assets"),
            ("tar -xf of a local file (no network)",
             ["tar", "-xf", str(release.vdir / "assets.tar"), "-C", str(out)], out / "assets"),
        ]
        if curl:
            contenders.insert(2, ("curl URL | tar -x (verifies nothing)",
                                  ["bash", "-c", f"set -o pipefail; curl -sf {url} | tar -x -C {out}"],
                                  out / "assets"))
        best: dict[str, Row] = {}
        for _ in range(args.repeat):
            for name, argv, result in contenders:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                subprocess.run(["sync"], check=True)
                row = run_process(argv)
                row.name = name
                got = listing(result)
                if got != want:
                    missing = sorted(set(want) - set(got))[:3]
                    raise SystemExit(f"{name}: the result differs from the source (e.g. missing {missing})")
                if name not in best or row.seconds < best[name].seconds:
                    best[name] = row
        rows = list(best.values())
        for r in rows:
            r.note = f"{tar_size / r.seconds / 1e6:.0f} MB/s"

        pick = release.uids[: args.uids]
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(["sync"], check=True)
        uid_row = run_process([sys.executable, "-m", "objathor_release", "download", "assets", "--version",
                               VERSION, "--path", str(out), "--base-url", base, "--uids", ",".join(pick)])
        uid_row.name = f"objathor-release download assets --uids ({len(pick)})"
        fetched = sum(listing(out / VERSION / "assets").values())
        uid_row.note = f"{fetched / 1e6:.1f} MB of assets"
        assert sorted(os.listdir(out / VERSION / "assets")) == sorted(pick)
        rows.append(uid_row)

    full = best[ours].seconds
    report(f"download assets: {tar_size / 1e9:.2f} GB release from nginx on 127.0.0.1", rows, ours, args.json,
           {"assets": n, "files": len(want), "tar GB": round(tar_size / 1e9, 2), "cores": os.cpu_count(),
            "load average (1/5/15 min)": " ".join(f"{x:.2f}" for x in load)})
    objathor = best["objathor's way (requests 4 KiB, tar -xf, rm)"].seconds
    print(f"  goals: objathor's way / ours = {objathor / full:.2f} (want >= 1.7)", end="")
    if curl:
        piped = best["curl URL | tar -x (verifies nothing)"].seconds
        print(f"; ours / curl|tar = {full / piped:.2f} (want <= 1.1)", end="")
    print(f"; --uids {len(pick)} takes {uid_row.seconds / full:.3f} of the full download's time")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
