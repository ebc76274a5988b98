"""Download and upload over an emulated long link (devtools.wanproxy), side by side with the usual tools.

Loopback hides what parallel connections buy. Here every contender talks to its server through a
WanProxy: ``--rtt-ms`` (default 80) added per round trip, ``--handshake-rtts`` (default 2: TCP +
TLS) more per new connection, and ``--cap`` (default 6M bytes/s) per connection and direction,
so one stream is slow and N streams are N times faster, as on the way to R2 from far away.

Download: a synthetic release (~330 MB at ``--scale 1``, ~1 MiB per asset) built with the
project's tar builder and manifest, served by Debian's nginx behind the proxy, fetched by

* ours: ``download assets`` at its defaults, with ``--connections 16``, and with ``--keep-tar
  --connections 16`` (the rows whose flags the CLI has);
* ``aria2c -x16 -s16 -k1M`` then ``tar -xf`` (one process tree, timed together);
* ``curl -sf URL | tar -x`` (one connection, verifies nothing);
* objathor's way (requests 4 KiB chunks, ``tar -xf``, rm).

Upload: one file (384 MiB at ``--scale 1``) to s3s-fs (a Rust S3 server on a tmpfs folder; moto
when s3s-fs is not found; see benchmarks/tools.py) behind the proxy, a fresh server per run, by

* ours: ``upload`` at its defaults, then at each reference's part size and concurrency;
* ``aws s3 cp`` (AWS CLI defaults), ``s5cmd cp`` (its defaults), ``rclone copy`` with the old
  release's flags (``--ignore-checksum --s3-disable-checksum``; rclone's defaults otherwise) and
  boto3 ``upload_file`` at boto3's defaults.

Every contender is a child process timed with wait4; every download's tree is compared with the
source (paths and sizes) and every uploaded object's SHA-256 with the file's. A missing tool's
rows are left out with one line saying how to get it.

    .venv/bin/python benchmarks/bench_wan.py --scale 0.1                # quick
    .venv/bin/python benchmarks/bench_wan.py --rtt-ms 150 --cap 3M      # a longer, thinner link
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import tools  # noqa: E402
from benchmarks.common import OBJATHOR_WAY, WORK, Row, parser, report, run_process  # noqa: E402
from devtools.locals3 import DUMMY_CREDENTIALS, LocalS3, free_port  # noqa: E402
from devtools.nginx import Nginx, find_nginx  # noqa: E402
from devtools.sample import make_sample_dataset  # noqa: E402
from devtools.served_release import build_release, write_manifest  # noqa: E402
from devtools.wanproxy import WanProxy, parse_rate  # noqa: E402

VERSION = "2024_02_01"
MiB = 1024**2
DOWNLOAD_BYTES = 330e6
ASSET_BYTES = MiB
UPLOAD_BYTES = 384 * MiB
BUCKET = "bench"
OURS_DOWN = "ours: download assets (defaults)"
OURS_UP = "ours: upload (defaults)"


BOTO3_DEFAULTS = f"""
import sys, boto3
endpoint, path, key = sys.argv[1:4]
boto3.client("s3", endpoint_url=endpoint).upload_file(path, "{BUCKET}", key)
"""


# ----------------------------------------------------------------------------------------- helpers


def listing(root: Path) -> dict[str, int]:
    """relative path -> size of every file under ``root``."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = os.path.getsize(p)
    return out


def table(title: str, rows: list[Row], ours: str, setup: dict[str, Any],
          goals: dict[str, Any]) -> dict[str, Any]:
    """One table as benchmarks/run_all.py reads it (the shape common.report writes)."""
    return {"title": title, "ours": ours, "setup": setup, "goals": goals,
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "platform": platform.platform(), "load": os.getloadavg()},
            "rows": [asdict(r) for r in rows]}


def cli_flags(*command: str) -> str:
    """The --help text of one of our subcommands (to offer only the rows its flags allow)."""
    proc = subprocess.run([sys.executable, "-m", "objathor_release", *command, "--help"],
                          capture_output=True, text=True)
    return proc.stdout


def link_setup(args: Any) -> dict[str, Any]:
    cap = parse_rate(args.cap)
    return {"rtt": f"{args.rtt_ms:g} ms", "handshake": f"{args.handshake_rtts:g} round trips",
            "cap per connection": f"{cap / 1e6:g} MB/s" if cap else "none"}


def proxy_for(upstream: tuple[str, int], args: Any) -> WanProxy:
    return WanProxy(upstream, rtt=args.rtt_ms / 1000, handshake_rtts=args.handshake_rtts,
                    cap=parse_rate(args.cap))


def keep_best(best: dict[str, Row], row: Row) -> None:
    if row.name not in best or row.seconds < best[row.name].seconds:
        best[row.name] = row


# ---------------------------------------------------------------------------------------- download


def bench_download(args: Any) -> dict[str, Any]:
    if find_nginx() is None:
        sys.exit("bench_wan: nginx is not installed: " + tools.HOWTO["nginx"])
    work = WORK / "wan-download"
    shutil.rmtree(work, ignore_errors=True)
    n = max(30, round(DOWNLOAD_BYTES * args.scale / ASSET_BYTES))
    src = work / "src" / "assets"
    print(f"download: generating {n} assets (~{n * ASSET_BYTES / 1e6:.0f} MB) ...", flush=True)
    make_sample_dataset(src, n, seed=11, asset_bytes=ASSET_BYTES, junk=True)
    release = build_release(src, work / "www", VERSION)
    tar_size = (release.vdir / "assets.tar").stat().st_size
    want = {k: v for k, v in listing(src).items()
            if not k.endswith(("annotations.json.gz", "thor_metadata.json"))
            and not os.path.basename(k).startswith((".", "._")) and not k.endswith(".lock")}

    out = work / "out"
    ours_argv = [sys.executable, "-m", "objathor_release", "download", "assets", "--version", VERSION,
                 "--path", str(out)]
    ours_result = out / VERSION / "assets"
    help_text = cli_flags("download", "assets")
    # (name, argv given the base URL, the folder that must match the source)
    contenders: list[tuple[str, Callable[[str], list[str]], Path]] = [
        (OURS_DOWN, lambda base: [*ours_argv, "--base-url", base], ours_result)]
    if "--connections" in help_text:
        contenders.append(("ours: --connections 16",
                           lambda base: [*ours_argv, "--base-url", base, "--connections", "16"], ours_result))
        if "--keep-tar" in help_text:
            contenders.append(("ours: --keep-tar --connections 16",
                               lambda base: [*ours_argv, "--base-url", base, "--keep-tar",
                                             "--connections", "16"], ours_result))
    else:
        print("download: this objathor-release has no --connections: its rows are left out", flush=True)
    aria2c, curl = tools.find("aria2c"), tools.find("curl")
    if aria2c:
        contenders.append((
            "aria2c -x16 -s16 -k1M, then tar -xf",
            lambda base: ["bash", "-c", f"set -e; {aria2c} -x16 -s16 -k1M --file-allocation=none -q "
                          f"-d {out} {base}/{VERSION}/assets.tar; tar -xf {out}/assets.tar -C {out}"],
            out / "assets"))
    else:
        print(tools.missing("aria2c", "its row is left out"), flush=True)
    if curl:
        contenders.append(("curl URL | tar -x (verifies nothing)",
                           lambda base: ["bash", "-c", f"set -o pipefail; {curl} -sf "
                                         f"{base}/{VERSION}/assets.tar | tar -x -C {out}"], out / "assets"))
    else:
        print(tools.missing("curl", "its row is left out"), flush=True)
    contenders.append(("objathor's way (requests 4 KiB, tar -xf, rm)",
                       lambda base: [sys.executable, "-c", OBJATHOR_WAY, f"{base}/{VERSION}/assets.tar",
                                     str(out / VERSION)], out / VERSION / "assets"))

    best: dict[str, Row] = {}
    with Nginx(work / "www", work / "nginx") as web, proxy_for(("127.0.0.1", web.port), args) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        for attempt in range(args.repeat):
            for name, argv, result in contenders:  # interleaved, so slow drift hits everyone alike
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                subprocess.run(["sync"], check=True)
                before = proxy.connections
                row = run_process(argv(base))
                row.name = name
                got = listing(result)
                if got != want:
                    wrong = sorted(set(want) ^ set(got))[:3] or [k for k in want if want[k] != got[k]][:3]
                    raise SystemExit(f"{name}: the result differs from the source (e.g. {wrong})")
                row.extra = {"connections": proxy.connections - before}
                print(f"  run {attempt + 1}: {name}: {row.seconds:.2f} s, {row.extra['connections']} "
                      f"connections", flush=True)
                keep_best(best, row)
    rows = [best[name] for name, _, _ in contenders]
    for r in rows:
        r.note = f"{tar_size / r.seconds / 1e6:.1f} MB/s, {r.extra['connections']} connections"

    setup = {**link_setup(args), "assets": n, "tar MB": round(tar_size / 1e6, 1), "best of": args.repeat}
    title = f"download assets over a long link: {tar_size / 1e6:.0f} MB from nginx behind the proxy"
    report(title, rows, OURS_DOWN, None, setup)
    ours = best[OURS_DOWN].seconds
    goals: dict[str, Any] = {}
    line = []
    aria = best.get("aria2c -x16 -s16 -k1M, then tar -xf")
    if aria:
        goals["ours / (aria2c + tar)"] = ours / aria.seconds
        line.append(f"ours / (aria2c + tar) = {ours / aria.seconds:.2f} (want <= 1.0)")
    piped = best.get("curl URL | tar -x (verifies nothing)")
    if piped:
        goals["curl|tar / ours"] = piped.seconds / ours
        line.append(f"curl|tar / ours = {piped.seconds / ours:.2f} (want >= 8)")
    if line:
        print("  goals: " + "; ".join(line))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return table(title, rows, OURS_DOWN, setup, goals)


# ------------------------------------------------------------------------------------------ upload


def make_file(path: Path, size: int) -> None:
    """``size`` incompressible bytes (as bench_upload.py makes them)."""
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(4 * MiB)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(left, len(block))
            fh.write(block[:n] if n < len(block) else block)
            block = block[1:] + block[:1]  # so no two parts are identical
            left -= n


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _tmpfs_dir(prefix: str) -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm if shm.is_dir() else None))


@contextmanager
def s3s_fs_server(binary: str, log: Path) -> Iterator[str]:
    """A fresh s3s-fs on a free port, storing into a new tmpfs folder; yields its endpoint URL."""
    root = _tmpfs_dir("bench-s3s-")
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port),
                                 "--access-key", DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                 "--secret-key", DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], str(root)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"s3s-fs exited at start ({proc.returncode}); see {log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"s3s-fs did not listen on {port}; see {log}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """A fresh moto server spooling to tmpfs (as bench_upload.py runs it); yields its endpoint URL."""
    spool = _tmpfs_dir("bench-moto-")
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(spool)
    try:
        server = LocalS3(log=log).start()
    finally:
        if saved is None:
            os.environ.pop("TMPDIR")
        else:
            os.environ["TMPDIR"] = saved
    try:
        yield server.endpoint_url
    finally:
        server.stop()
        shutil.rmtree(spool, ignore_errors=True)


def s3_client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                        config=Config(s3={"addressing_style": "path"}))


def client_env(url: str) -> dict[str, str]:
    """Dummy keys, the proxy as endpoint, no user config; an env-configured rclone remote 'bench'."""
    return {**DUMMY_CREDENTIALS, "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": url,
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            "RCLONE_CONFIG_BENCH_ENDPOINT": url, "RCLONE_CONFIG_BENCH_REGION": "us-east-1",
            "RCLONE_CONFIG": os.devnull}


Contender = tuple[str, Callable[[str], list[str]]]


def upload_contenders(release: Path, data: Path) -> tuple[list[Contender], list[str]]:
    """(name, argv given the endpoint) for every contender found, and the names of the references."""
    key = f"{VERSION}/{data.name}"
    ours = [sys.executable, "-m", "objathor_release", "upload", "--release-dir", str(release),
            "--bucket", BUCKET, "-q"]
    out: list[Contender] = [
        (OURS_UP, lambda url: [*ours, "--endpoint-url", url])]
    references: list[str] = []
    # Go and the AWS SDKs refuse an AWS_CA_BUNDLE on a plain-HTTP endpoint: the Go tools run without it.
    no_bundle = ["env", "-u", "AWS_CA_BUNDLE"]
    settings: list[tuple[str, str, str]] = []  # ours at each reference's part size and concurrency
    aws = tools.find("aws")
    if aws:
        name = "aws s3 cp (defaults: 8 MiB x 10)"
        out.append((name, lambda url: [aws, "s3", "cp", "--only-show-errors", "--no-progress", str(data),
                                       f"s3://{BUCKET}/{key}", "--endpoint-url", url]))
        references.append(name)
        settings.append(("aws's 8 MiB x 10", "8M", "10"))
    else:
        print(tools.missing("aws", "its row is left out"), flush=True)
    s5cmd = tools.find("s5cmd")
    if s5cmd:
        name = "s5cmd cp (defaults: 50 MiB x 5)"
        out.append((name, lambda url: [*no_bundle, s5cmd, "--log", "error", "--endpoint-url", url, "cp",
                                       str(data), f"s3://{BUCKET}/{key}"]))
        references.append(name)
        settings.append(("s5cmd's 50 MiB x 5", "50M", "5"))
    else:
        print(tools.missing("s5cmd", "its row is left out"), flush=True)
    rclone = tools.find("rclone")
    if rclone:
        name = "rclone copy, old flags (defaults: 5 MiB x 4)"
        # --s3-no-head and --s3-no-check-bucket: no HEAD after the upload, no bucket probe (see
        # bench_upload.py: moto answers that HEAD with 400); --s3-disable-checksum and --ignore-checksum:
        # the old release's flags; part size and concurrency at rclone's defaults.
        out.append((name, lambda url: [*no_bundle, rclone, "copy", "--ignore-checksum",
                                       "--s3-disable-checksum", "--s3-no-check-bucket", "--s3-no-head",
                                       "-q", str(data), f"bench:{BUCKET}/{VERSION}/"]))
        references.append(name)
        settings.append(("rclone's 5 MiB x 4", "5M", "4"))
    else:
        print(tools.missing("rclone", "its row is left out"), flush=True)
    out.append(("boto3 upload_file (defaults: 8 MiB x 10)",
                lambda url: [sys.executable, "-c", BOTO3_DEFAULTS, url, str(data), key]))
    for label, chunk, concurrency in settings:
        out.append((f"ours: at {label}",
                    _ours_at(ours, chunk, concurrency)))
    return out, references


def _ours_at(ours: list[str], chunk: str, concurrency: str) -> Callable[[str], list[str]]:
    return lambda url: [*ours, "--endpoint-url", url, "--chunk-size", chunk,
                        "--upload-concurrency", concurrency]


def bench_upload(args: Any) -> dict[str, Any]:
    work = WORK / "wan-upload"
    release = work / "release"
    size = max(16 * MiB, int(UPLOAD_BYTES * args.scale) // MiB * MiB)
    data = release / "bench.bin"
    print(f"upload: a {size / MiB:.0f} MiB file ...", flush=True)
    make_file(data, size)
    if not (release / "manifest.json").exists() or \
            f'"size": {size}' not in (release / "manifest.json").read_text():
        write_manifest(release, VERSION)
    want = sha256_of(data)
    binary = tools.find_s3s_fs()
    if binary is None:
        print(tools.missing("s3s-fs", "the server is moto instead (slower: it bounds every client)"),
              flush=True)
    server_name = "s3s-fs" if binary else "moto"
    log = work / f"{server_name}.log"

    def server() -> Any:
        return s3s_fs_server(binary, log) if binary else moto_server(log)

    runs, references = upload_contenders(release, data)
    best: dict[str, Row] = {}
    for attempt in range(args.repeat):
        for name, argv in runs:  # interleaved, so slow drift hits everyone alike
            shutil.rmtree(release / ".upload-state", ignore_errors=True)  # a first upload every time
            with server() as url:
                direct = s3_client(url)
                direct.create_bucket(Bucket=BUCKET)
                host, port = url.removeprefix("http://").rsplit(":", 1)
                with proxy_for((host, int(port)), args) as proxy:
                    proxied = f"http://127.0.0.1:{proxy.port}"
                    row = run_process(argv(proxied), env=client_env(proxied))
                    connections = proxy.connections
                body = direct.get_object(Bucket=BUCKET, Key=f"{VERSION}/{data.name}")["Body"]
                h = hashlib.sha256()
                while chunk := body.read(4 * MiB):
                    h.update(chunk)
                if h.hexdigest() != want:
                    raise SystemExit(f"{name}: the uploaded object's SHA-256 differs from the file's")
            row.name = name
            row.extra = {"connections": connections}
            print(f"  run {attempt + 1}: {name}: {row.seconds:.2f} s, {row.cpu_seconds:.2f} CPU s, "
                  f"{connections} connections", flush=True)
            keep_best(best, row)
    rows = [best[name] for name, _ in runs]
    for r in rows:
        r.note = f"{size / r.seconds / 1e6:.1f} MB/s, {r.extra['connections']} connections"
    setup = {**link_setup(args), "server": server_name, "file": f"{size / MiB:.0f} MiB",
             "best of": args.repeat}
    title = f"upload over a long link: one {size / MiB:.0f} MiB file to {server_name} behind the proxy"
    report(title, rows, OURS_UP, None, setup)
    goals: dict[str, Any] = {}
    if references:
        fastest = min(references, key=lambda n: best[n].seconds)
        ratio = best[OURS_UP].seconds / best[fastest].seconds
        goals["ours / best of (aws, s5cmd, rclone)"] = ratio
        print(f"  goals: ours / best of (aws, s5cmd, rclone) = {ratio:.2f} (want <= 0.6; "
              f"the best: {fastest})")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return table(title, rows, OURS_UP, setup, goals)


# -------------------------------------------------------------------------------------------- main


def main() -> int:
    p = parser(__doc__ or "")
    p.add_argument("--rtt-ms", type=float, default=80, help="round-trip time the proxy adds (default 80)")
    p.add_argument("--handshake-rtts", type=float, default=2,
                   help="round trips a new connection costs (default 2: TCP + TLS)")
    p.add_argument("--cap", default="6M", help="bytes per second per connection and direction (default 6M)")
    p.add_argument("--only", default="download,upload", help="download, upload or both (default both)")
    args = p.parse_args()
    parts = {s.strip() for s in args.only.split(",") if s.strip()}
    if not parts <= {"download", "upload"}:
        p.error(f"--only takes download and/or upload, not {args.only!r}")
    tables = []
    if "download" in parts:
        tables.append(bench_download(args))
    if "upload" in parts:
        tables.append(bench_upload(args))
    if args.json:  # benchmarks/run_all.py reads "tables" (one chart each); the first is also at the top
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**tables[0], "tables": tables, "scale": args.scale}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(1)
