"""The parallel ranged stream behind tar downloads: in order, bounded, resilient, verified.

Through Debian's nginx (the ``web`` fixture) and the fault proxy; pieces are made small
(64 KiB) so a release of a few hundred KiB is cut into many.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devtools.nginx import Nginx
from devtools.sample import make_sample_dataset
from devtools.served_release import build_release, expected_tree, flip_byte, tree
from devtools.wanproxy import WanProxy
from objathor_release.errors import ChecksumError, TransferError
from objathor_release.fetch.download import download_version
from objathor_release.fetch.http import Http, HttpConfig
from objathor_release.fetch.parallel import parallel_stream
from tests.support.faultproxy import PASS, FaultProxy, Request, cut, drop, status
from tests.support.hostile_http import HostileServer, Script

V = "2024_02_01"
KiB = 1024
PIECE = 64 * KiB
CONFIG = HttpConfig(attempts=4, backoff=0.01, connections=4, adaptive=False, stream_piece=PIECE,
                    stream_buffer=8 * PIECE, read_size=64 * KiB)


def served_file(web: Nginx, size: int) -> tuple[str, bytes]:
    data = os.urandom(size)
    name = f"blob-{uuid.uuid4().hex[:8]}.bin"
    (web.root / name).write_bytes(data)
    return f"{web.url}/{name}", data


def ranges_asked(log: list[dict[str, str]], name: str) -> list[str]:
    return [r.get("range", "") for r in log if r["uri"].endswith(name)]


def test_pieces_come_out_in_order_even_when_the_first_is_slowest(web: Nginx) -> None:
    url, data = served_file(web, 20 * PIECE + 123)

    def rule(req: Request) -> Any:
        if req.headers.get("Range", "").startswith("bytes=0-"):
            time.sleep(0.3)  # the first piece arrives last
        return PASS

    with FaultProxy(web.url, rule) as proxy:
        http = Http(CONFIG)
        got = b"".join(parallel_stream(http, proxy.url + url[len(web.url):], piece=PIECE, buffer=8 * PIECE,
                                       adaptive=False))
    assert got == data
    ranges = [r.headers.get("Range") for r in proxy.log if r.method == "GET"]
    assert len([r for r in ranges if r and r != "bytes=0-0"]) == 21  # 20 whole pieces and the tail


def test_memory_is_bounded_by_the_window(web: Nginx) -> None:
    """A consumer that stops reading: no more than ``buffer / piece`` pieces are ever requested ahead."""
    url, _ = served_file(web, 40 * PIECE)
    http = Http(CONFIG)
    before = len(web.access_log())
    stream = parallel_stream(http, url, piece=PIECE, buffer=4 * PIECE, adaptive=False)
    next(stream)
    time.sleep(0.5)
    asked = [r for r in ranges_asked(web.access_log()[before:], url.rsplit("/", 1)[1]) if r != "bytes=0-0"]
    stream.close()
    assert 4 <= len(asked) <= 5, asked  # the window of 4, plus the one handed on


def test_a_piece_cut_mid_way_resumes_at_its_byte(web: Nginx) -> None:
    url, data = served_file(web, 12 * PIECE)
    faults = iter([cut(1000), drop(), status(503)])

    def rule(req: Request) -> Any:
        return next(faults, PASS) if req.headers.get("Range", "").startswith(f"bytes={3 * PIECE}-") else PASS

    with FaultProxy(web.url, rule) as proxy:
        got = b"".join(parallel_stream(Http(CONFIG), proxy.url + url[len(web.url):], piece=PIECE,
                                       buffer=8 * PIECE, adaptive=False))
    assert got == data
    resumed = [r.headers["Range"] for r in proxy.log if r.headers.get("Range", "").startswith(
        f"bytes={3 * PIECE + 1000}-")]
    assert resumed, "the cut piece must continue from the byte it reached, not from its start"


def test_a_piece_that_keeps_failing_is_one_error_and_every_worker_stops(web: Nginx) -> None:
    url, _ = served_file(web, 12 * PIECE)

    def rule(req: Request) -> Any:
        return status(503) if req.headers.get("Range", "").startswith(f"bytes={5 * PIECE}-") else PASS

    with FaultProxy(web.url, rule) as proxy, pytest.raises(TransferError, match="HTTP 503"):
        b"".join(parallel_stream(Http(CONFIG), proxy.url + url[len(web.url):], piece=PIECE,
                                 buffer=8 * PIECE, adaptive=False))
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name.startswith("download-piece-")]


def test_a_server_that_ignores_range_gets_one_stream(web: Nginx) -> None:
    url, data = served_file(web, 6 * PIECE)
    name = url.rsplit("/", 1)[1]
    with HostileServer(web.root, max_seconds=6) as srv:
        srv.script(name, Script(ranges=False))
        got = b"".join(parallel_stream(Http(CONFIG), f"{srv.url}/{name}", piece=PIECE, buffer=8 * PIECE,
                                       adaptive=False))
        gets = [r for r in srv.requests_for(name) if r.method == "GET"]
    assert got == data
    assert len(gets) == 2  # the probe, then one whole stream


def test_a_file_that_changes_mid_download_is_an_error_not_a_mix(web: Nginx) -> None:
    url, data = served_file(web, 16 * PIECE)
    path = web.root / url.rsplit("/", 1)[1]
    changed = threading.Event()

    def rule(req: Request) -> Any:
        if req.headers.get("Range", "").startswith(f"bytes={8 * PIECE}-") and not changed.is_set():
            path.write_bytes(os.urandom(len(data)))  # republished: same size, new ETag
            os.utime(path, (time.time() + 5, time.time() + 5))
            changed.set()
        return PASS

    with FaultProxy(web.url, rule) as proxy, pytest.raises(TransferError, match="changed on the server"):
        b"".join(parallel_stream(Http(CONFIG), proxy.url + url[len(web.url):], piece=PIECE,
                                 buffer=16 * PIECE, adaptive=False))


def test_503_and_429_halve_the_connections_and_stop_the_growth(web: Nginx,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The server asking to slow down is heard: fewer pieces in flight from then on, the file still exact."""
    url, data = served_file(web, 24 * PIECE)
    answers = iter([status(503), status(429)])

    def rule(req: Request) -> Any:
        rng = req.headers.get("Range", "")
        return next(answers, PASS) if rng.startswith(f"bytes={2 * PIECE}-") else PASS

    config = HttpConfig(attempts=4, backoff=0.01, connections=8, adaptive=True, stream_piece=PIECE,
                        stream_buffer=16 * PIECE, read_size=64 * KiB)
    with caplog.at_level(logging.DEBUG, logger="objathor_release.ramp"), FaultProxy(web.url, rule) as proxy:
        got = b"".join(parallel_stream(Http(config), proxy.url + url[len(web.url):], piece=PIECE,
                                       buffer=16 * PIECE))
    assert got == data
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("download: ")]
    downs = [int(m.group(1)) for line in lines if (m := re.search(r"throttles: down to (\d+) in flight", line))]
    assert len(downs) == 2 and downs[1] == max(1, downs[0] // 2), lines  # each answer halves it
    first = next(i for i, line in enumerate(lines) if "throttles" in line)
    assert not [line for line in lines[first:] if re.search(r"now \d+ in flight", line)], lines  # no growth after


def test_through_a_link_that_caps_each_connection_the_tar_comes_whole_over_several(web: Nginx,
                                                                                   tmp_path: Path) -> None:
    """The long-link proxy caps every connection (1 MB/s, 10 ms): the release still arrives exact and
    verified, over several connections at once (how much faster that is lives in bench_wan.py)."""
    base, src, _ = publish(web, tmp_path)
    host, port = web.url.removeprefix("http://").split(":")
    config = HttpConfig(attempts=4, backoff=0.01, connections=8, adaptive=False, stream_piece=PIECE,
                        stream_buffer=16 * PIECE, read_size=64 * KiB)
    with WanProxy((host, int(port)), rtt=0.01, handshake_rtts=1, cap=1e6) as proxy:
        result = download_version("assets", V, path=tmp_path / "dl",
                                  base_url=f"http://127.0.0.1:{proxy.port}{base[len(web.url):]}",
                                  show_progress=False, http_config=config)
        connections = proxy.connections
    assert result.verified and tree(tmp_path / "dl" / V / "assets") == expected_tree(src)
    assert connections >= 4, connections


# ---------------------------------------------------------------------- through download_version

def publish(web: Nginx, tmp_path: Path) -> tuple[str, Path, Path]:
    folder = uuid.uuid4().hex[:10]
    src = tmp_path / "src" / "assets"
    make_sample_dataset(src, 16, seed=3, asset_bytes=48 * KiB)
    release = build_release(src, web.root / folder, V)
    assert (release.vdir / "assets.tar").stat().st_size > 8 * PIECE
    return f"{web.url}/{folder}", src, release.vdir


def test_assets_download_by_parallel_ranges_is_exact_and_verified(web: Nginx, tmp_path: Path) -> None:
    base, src, vdir = publish(web, tmp_path)
    before = len(web.access_log())
    result = download_version("assets", V, path=tmp_path / "dl", base_url=base, show_progress=False,
                              http_config=CONFIG)
    assert result.verified and tree(tmp_path / "dl" / V / "assets") == expected_tree(src)
    pieces = [r for r in ranges_asked(web.access_log()[before:], "assets.tar") if re.fullmatch(r"bytes=\d+-\d+", r)
              and r != "bytes=0-0"]
    size = (vdir / "assets.tar").stat().st_size
    assert len(pieces) == -(-size // PIECE)


def test_a_flipped_byte_in_one_piece_is_caught(web: Nginx, tmp_path: Path) -> None:
    base, _, vdir = publish(web, tmp_path)
    flip_byte(vdir / "assets.tar", 5 * PIECE + 700)
    with pytest.raises(ChecksumError):
        download_version("assets", V, path=tmp_path / "dl", base_url=base, show_progress=False,
                         http_config=CONFIG)
    assert not (tmp_path / "dl" / V / "assets").exists()


# ---------------------------------------------------------------------- servers that misbehave mid-way


def test_a_server_that_stops_serving_ranges_mid_way_gets_the_rest_in_one_stream(web: Nginx) -> None:
    """From piece 4 on, every Range is answered with the whole file (HTTP 200): the pieces must not each
    read the file up to themselves; the rest comes by one stream from piece 4, exact."""
    count = 24
    url, data = served_file(web, count * PIECE)
    name = url.rsplit("/", 1)[1]
    with HostileServer(web.root, max_seconds=6) as srv:
        for k in range(4, count):
            srv.script(name, Script(ranges=False, range_prefix=f"bytes={k * PIECE}-"))
        got = b"".join(parallel_stream(Http(CONFIG), f"{srv.url}/{name}", piece=PIECE, buffer=8 * PIECE,
                                       adaptive=False))
        ranges = [r.headers.get("Range", "") for r in srv.requests_for(name) if r.method == "GET"]
    assert got == data
    rest = [int(r[6:-1]) for r in ranges if re.fullmatch(r"bytes=\d+-", r)]
    assert len(rest) == 1 and rest[0] <= 4 * PIECE, "the rest is one open-ended stream"
    starts = [int(m.group(1)) // PIECE for r in ranges if (m := re.fullmatch(r"bytes=(\d+)-\d+", r))]
    assert max(starts) < 4 + 8 + 4, "no piece is asked for once the server stopped serving ranges"


@pytest.mark.parametrize("lie, error", [
    ("another start", "does not serve byte ranges correctly"),
    ("another total", "changed on the server"),
    ("an end past the total", "does not serve byte ranges correctly"),
])
def test_a_piece_answered_with_another_range_is_an_error(web: Nginx, lie: str, error: str) -> None:
    url, data = served_file(web, 12 * PIECE)
    name = url.rsplit("/", 1)[1]
    size, first, last = len(data), 5 * PIECE, 6 * PIECE - 1
    content_range = {"another start": f"bytes {first + 512}-{last}/{size}",
                     "another total": f"bytes {first}-{last}/{size + PIECE}",
                     "an end past the total": f"bytes {first}-{size}/{size}"}[lie]
    with HostileServer(web.root, max_seconds=6) as srv:
        srv.script(name, Script(content_range=content_range, range_prefix=f"bytes={first}-"))
        with pytest.raises(TransferError, match=error):
            b"".join(parallel_stream(Http(CONFIG), f"{srv.url}/{name}", piece=PIECE, buffer=8 * PIECE,
                                     adaptive=False))
    _no_worker_left()


def _no_worker_left() -> None:
    """Every piece worker has ended (each stops at its next read; the wait is bounded, not timed)."""
    for _ in range(200):
        if not [t for t in threading.enumerate() if t.name.startswith("download-piece-")]:
            return
        time.sleep(0.05)
    raise AssertionError("piece workers are still running")


@pytest.mark.parametrize("how", ["stall", "drip"])
def test_closing_the_stream_early_stops_every_worker(web: Nginx, how: str) -> None:
    """The consumer stops after the first piece while others stall or drip: no worker is left behind."""
    url, _ = served_file(web, 16 * PIECE)
    name = url.rsplit("/", 1)[1]
    config = HttpConfig(attempts=1, backoff=0.01, connections=4, adaptive=False, stream_piece=PIECE,
                        stream_buffer=8 * PIECE, read_size=64 * KiB, read_timeout=2, rate_window=2)
    with HostileServer(web.root, max_seconds=8) as srv:
        for k in range(1, 16):
            script = Script(stall_after=100) if how == "stall" else Script(drip=(64, 0.05))
            script.range_prefix = f"bytes={k * PIECE}-"
            srv.script(name, script)
        stream = parallel_stream(Http(config), f"{srv.url}/{name}", piece=PIECE, buffer=8 * PIECE,
                                 adaptive=False)
        assert len(next(stream)) == PIECE
        stream.close()
        _no_worker_left()


def test_a_storm_of_429_and_503_is_ridden_out(web: Nginx) -> None:
    """Every piece is refused twice (429, then 503) before it is served: all retried, the bytes exact."""
    url, data = served_file(web, 12 * PIECE)
    refused: dict[str, int] = {}
    lock = threading.Lock()

    def rule(req: Request) -> Any:
        r = req.headers.get("Range", "")
        if not re.fullmatch(r"bytes=\d+-\d+", r) or r == "bytes=0-0":
            return PASS
        with lock:
            n = refused[r] = refused.get(r, 0) + 1
        return status(429) if n == 1 else status(503) if n == 2 else PASS

    with FaultProxy(web.url, rule) as proxy:
        got = b"".join(parallel_stream(Http(CONFIG), proxy.url + url[len(web.url):], piece=PIECE,
                                       buffer=8 * PIECE, adaptive=False))
    assert got == data
    assert len(refused) == 12 and set(refused.values()) == {3}


@pytest.mark.parametrize("change", ["longer", "shorter"])
def test_a_tar_of_another_size_than_the_manifest_says_is_refused_before_use(web: Nginx, tmp_path: Path,
                                                                            change: str) -> None:
    base, _, vdir = publish(web, tmp_path)
    tar = vdir / "assets.tar"
    data = tar.read_bytes()
    tar.write_bytes(data + bytes(1024) if change == "longer" else data[:-1024])
    with pytest.raises(ChecksumError, match="on the server but manifest.json says"):
        download_version("assets", V, path=tmp_path / "dl", base_url=base, show_progress=False,
                         http_config=CONFIG)
    assert not (tmp_path / "dl" / V / "assets").exists()
    assert not (tmp_path / "dl" / V / ".objathor-release" / "assets.staging").exists()
