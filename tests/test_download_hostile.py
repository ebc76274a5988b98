"""The download under a hostile or unlucky server, and under data that lies.

Misbehaving servers are tests/hostile_http.py (our own, scripted per path);
honest servers with hostile data are the real nginx of tests/fixtures_web.py.
Every case runs the command as a user does (``cli.main`` in-process) and
checks the one error line, the exit code, that nothing is left under a final
name or in staging, and that the part's lock is free again.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.nginx import Nginx
from devtools.sample import make_sample_dataset
from devtools.served_release import Release, build_release, expected_tree, tree
from objathor_release.cli import main
from objathor_release.errors import InputError, TransferError
from objathor_release.fetch import origin as served_manifest
from objathor_release.fetch.http import Http, HttpConfig, redirect_target
from tests.conftest import run_cli
from tests.support.hostile_http import HostileServer, Script, SlowHandshake
from tests.support.tmpfs import mounted_tmpfs

V = "2024_02_01"
#: Small enough that every failure below takes about a second: 4 KiB/s over 0.4 s, two attempts.
FAST_ENV = {
    "OBJATHOR_PROGRESS": "0",
    "OBJATHOR_DOWNLOAD_ATTEMPTS": "2",
    "OBJATHOR_DOWNLOAD_BACKOFF": "0.01",
    "OBJATHOR_DOWNLOAD_MIN_RATE": "4K",
    "OBJATHOR_DOWNLOAD_RATE_WINDOW": "0.4",
    "OBJATHOR_DOWNLOAD_CONNECT_TIMEOUT": "2",
    "OBJATHOR_FREE_SPACE": "",
}
BOUND = 8.0  # seconds any failing command below may take


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """One small release (annotations, assets.tar, manifest.json), shared by the tests that only read it."""
    base = tmp_path_factory.mktemp("hostile-release")
    src = base / "src" / "assets"
    make_sample_dataset(src, 6, seed=11, asset_bytes=24 * 1024)
    return build_release(src, base / "served", V)


@pytest.fixture
def server(release: Release) -> Iterator[HostileServer]:
    with HostileServer(release.root, max_seconds=6) as s:
        yield s


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str,
        env: dict[str, str] | None = None) -> tuple[int, str, str, float]:
    """``objathor-release download ARGS`` in-process: (exit code, stdout, stderr, seconds)."""
    for key, value in {**FAST_ENV, **(env or {})}.items():
        if value:
            monkeypatch.setenv(key, value)
        else:
            monkeypatch.delenv(key, raising=False)
    capsys.readouterr()
    started = time.monotonic()
    code = main(["download", *args])
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    return code, out, err, seconds


def error_line(err: str) -> str:
    """The one error line of a failed command (and no traceback anywhere)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("objathor-release: error: ")]
    assert len(lines) == 1, err
    assert "\n" not in lines[0]
    return lines[0]


def assert_clean(dest: Path, *finals: str, resumable: bool = False) -> None:
    """Nothing under a final name, no staging or temporary files, every lock free.

    ``resumable``: a single file's ``.part`` (and its ``.part.json``), or a tar's staging folder in
    the hidden bookkeeping folder, may stay for the next run to continue; otherwise they must be
    gone too.
    """
    for name in finals:
        assert not (dest / V / name).exists(), name
    kept = (".part", ".part.json") if resumable else ()
    leftovers = [p.name for p in dest.rglob("*") if ("staging" in p.name and not (resumable and p.name.endswith(
                     ".staging") and p.parent.name == ".objathor-release")) or ".tmp" in p.name
                 or (p.name.endswith((".part", ".part.json")) and not p.name.endswith(kept))]
    assert leftovers == []
    for lock in dest.rglob("*.lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if still held
        finally:
            os.close(fd)


def base(server: HostileServer) -> str:
    return server.url


# ---------------------------------------------------------------------- too slow, on every read path

SLOW = {
    "drip": Script(drip=(1, 0.1)),
    "stall after headers": Script(stall_after=0),
    "stall after each reconnect": Script(stall_after=300),
    "headers dripped": Script(header_drip=0.05),
    "cut after a few bytes each time": Script(cut_after=20),
}


@pytest.mark.parametrize("case", sorted(SLOW))
def test_a_slow_tar_stream_fails_in_bounded_time(server: HostileServer, tmp_path: Path, case: str,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server.script("assets.tar", SLOW[case])
    dest = tmp_path / "dl"
    code, _, err, seconds = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest),
                                "--base-url", base(server))
    line = error_line(err)
    assert code == 1 and seconds < BOUND, (seconds, line)
    assert f"{server.url}/{V}/assets.tar" in line
    if case == "cut after a few bytes each time":
        assert "2 attempts in a row without progress" in line and "run the command again" in line
    else:
        assert "the server is too slow" in line and "run the command again later to resume" in line
    assert len(server.requests_for("assets.tar")) >= 2  # it did reconnect, a bounded number of times
    assert len(server.requests_for("assets.tar")) <= 4
    assert not (dest / V / "assets").exists()
    assert_clean(dest, "assets")


PATHS = {  # read path: (command arguments, file to script, whether the server honours Range)
    "manifest.json (whole small file)": (["annotations"], "manifest.json", True),
    "annotations (parallel Range pieces)": (["annotations"], "annotations.json.gz", True),
    "annotations (server without Range: one plain stream)": (["annotations"], "annotations.json.gz", False),
    "--uids member ranges": (["assets", "--uids", "UID"], "assets.tar", True),
}


@pytest.mark.parametrize("how", ["drip", "stall after headers"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_every_read_path_has_the_throughput_floor(server: HostileServer, release: Release, tmp_path: Path,
                                                  path: str, how: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    args, name, ranges = PATHS[path]
    args = [a.replace("UID", release.uids[1]) for a in args]
    template = SLOW[how]
    script = Script(drip=template.drip, stall_after=template.stall_after, ranges=ranges)
    if name == "assets.tar":  # let the size probe through; the member ranges are slow
        server.script(name, script)
        server.script(name, Script(times=1, ranges=ranges))
    else:
        server.script(name, script)
    dest = tmp_path / "dl"
    code, _, err, seconds = run(monkeypatch, capsys, *args, "--version", V, "--path", str(dest),
                                "--base-url", base(server))
    line = error_line(err)
    assert code == 1 and seconds < BOUND, (seconds, line)
    assert "the server is too slow" in line and f"/{V}/{name}" in line, line
    assert "resume" in line
    assert not (dest / V / "annotations.json.gz").exists()
    assert not (dest / V / "assets").exists() or not any((dest / V / "assets").iterdir())
    assert_clean(dest, "annotations.json.gz", resumable=True)


def test_the_size_probe_of_a_version_without_manifest_is_bounded(
        server: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    server.script("manifest.json", Script(status=404))
    server.script("features.tar", Script(header_drip=0.05))  # 'all' asks whether the version has it
    dest = tmp_path / "dl"
    code, _, err, seconds = run(monkeypatch, capsys, "all", "--version", V, "--path", str(dest),
                                "--base-url", base(server))
    line = error_line(err)
    assert code == 1 and seconds < BOUND
    assert "too slow" in line and "headers took more than" in line and "features.tar" in line
    assert_clean(dest)


def test_a_tls_handshake_dripped_a_byte_at_a_time_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    with SlowHandshake(every=0.05) as tls:
        code, _, err, seconds = run(monkeypatch, capsys, "annotations", "--version", V, "--path",
                                    str(tmp_path / "dl"), "--base-url", tls.url,
                                    env={"OBJATHOR_DOWNLOAD_CONNECT_TIMEOUT": "0.5"})
        connections, url = tls.connections, tls.url
    line = error_line(err)
    assert code == 1 and seconds < BOUND, (seconds, line)
    assert f"{url}/{V}/manifest.json: the server is too slow (waited more than 0.5 s for data" in line
    assert connections == 2  # retried once, as OBJATHOR_DOWNLOAD_ATTEMPTS=2 says


def test_a_slow_but_steady_server_is_not_cut_off(server: HostileServer, release: Release, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server.script("annotations.json.gz", Script(drip=(2048, 0.05)))  # 40 KiB/s: above the floor
    dest = tmp_path / "dl"
    code, out, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path", str(dest),
                            "--base-url", base(server))
    assert code == 0, err
    assert (dest / V / "annotations.json.gz").read_bytes() == (release.vdir / "annotations.json.gz").read_bytes()


def test_a_read_timeout_alone_does_not_stop_a_drip(server: HostileServer) -> None:
    """Each recv returns within the read timeout, so only the throughput floor ends a drip."""
    server.script("assets.tar", Script(drip=(1, 0.05)))
    url = f"{server.url}/{V}/assets.tar"
    plain = Http(HttpConfig(attempts=1, read_timeout=0.3, min_rate=0))
    got, started = 0, time.monotonic()
    try:
        for data in plain.stream(url):
            got += len(data)
            if time.monotonic() - started > 1.2:  # four read timeouts' worth, still trickling
                break
    finally:
        plain.close()
    assert 5 < got < 100
    floor = Http(HttpConfig(attempts=1, read_timeout=0.3, min_rate=4096, rate_window=0.3))
    started = time.monotonic()
    try:
        with pytest.raises(TransferError, match="the server is too slow .*under the minimum of 4.0 KiB/s"):
            for _ in floor.stream(url):
                pass
    finally:
        floor.close()
    assert time.monotonic() - started < 2


def test_a_drip_stops_the_real_command_in_bounded_time(server: HostileServer, tmp_path: Path) -> None:
    server.script("assets.tar", Script(drip=(1, 0.1)))
    env = {k: v for k, v in FAST_ENV.items() if v}
    started = time.monotonic()
    proc = run_cli("download", "assets", "--version", V, "--path", str(tmp_path / "dl"), "--base-url",
                   server.url, env=env, timeout=60)
    seconds = time.monotonic() - started
    assert proc.returncode == 1 and seconds < 20, proc.stderr
    line = error_line(proc.stderr)
    assert f"{server.url}/{V}/assets.tar: the server is too slow" in line and "resume" in line
    assert proc.stdout == ""
    assert_clean(tmp_path / "dl", "assets")


def test_throughput_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBJATHOR_DOWNLOAD_MIN_RATE", "2K")
    monkeypatch.setenv("OBJATHOR_DOWNLOAD_RATE_WINDOW", "5")
    config = HttpConfig.from_env()
    assert (config.min_rate, config.rate_window, config.stall_timeout) == (2048, 5.0, 5.0)
    assert HttpConfig().min_rate == 1024 and HttpConfig().rate_window == 30.0
    monkeypatch.setenv("OBJATHOR_DOWNLOAD_MIN_RATE", "0")
    assert HttpConfig.from_env().stall_timeout == 60.0  # no floor: the plain read timeout
    monkeypatch.setenv("OBJATHOR_DOWNLOAD_RATE_WINDOW", "fast")
    with pytest.raises(Exception, match="OBJATHOR_DOWNLOAD_RATE_WINDOW='fast' is not a number"):
        HttpConfig.from_env()


# ---------------------------------------------------------------------- redirects

BAD_LOCATIONS = ["file:///etc/passwd", "ftp://127.0.0.1/assets.tar", "data:text/plain,hello",
                 "weird+scheme:abc", "javascript:alert(1)"]


@pytest.mark.parametrize("location", BAD_LOCATIONS)
@pytest.mark.parametrize("name", ["manifest.json", "assets.tar"])
def test_a_redirect_to_a_non_http_url_is_refused(server: HostileServer, tmp_path: Path, location: str,
                                                 name: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    server.script(name, Script(status=302, headers={"Location": location}))
    dest = tmp_path / "dl"
    code, _, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest),
                          "--base-url", base(server))
    line = error_line(err)
    assert code == 2
    assert f"{server.url}/{V}/{name} redirected to {location!r}" in line and "not an http" in line
    assert not (dest / V / "assets").exists()
    assert_clean(dest, "assets")


def test_a_redirect_chain_is_checked_at_every_hop(server: HostileServer, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    server.script("annotations.json.gz", Script(status=301, headers={"Location": "/hop/one"}))
    server.script("/hop/one", Script(status=307, headers={"Location": "file:///etc/shadow"}))
    dest = tmp_path / "dl"
    code, _, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path", str(dest),
                          "--base-url", base(server))
    line = error_line(err)
    assert code == 2 and "redirected to 'file:///etc/shadow'" in line
    assert_clean(dest, "annotations.json.gz")


def test_redirect_rules() -> None:
    ok = redirect_target("u", "https://a.example/x/y", "/z")
    assert ok == "https://a.example/z"
    assert redirect_target("u", "http://a/x", "https://b/y") == "https://b/y"
    assert redirect_target("u", "http://a/x", "//b/y") == "http://b/y"
    for bad in ("http://b/y", "file:///x", " ftp://b/y"):
        with pytest.raises(InputError, match="refused"):
            redirect_target("u", "https://a/x", bad)


# ---------------------------------------------------------------------- no server to talk to

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """urllib3 files a refused connection under its TimeoutError; the message must not say "timed out"."""
    port = free_port()
    code, _, err, seconds = run(monkeypatch, capsys, "annotations", "--version", V, "--path",
                                str(tmp_path / "dl"), "--base-url", f"http://127.0.0.1:{port}")
    line = error_line(err)
    assert code != 0 and seconds < BOUND
    assert f"cannot connect to 127.0.0.1:{port} (connection refused)" in line, line
    assert "timed out" not in line
    assert not (tmp_path / "dl" / V / "annotations.json.gz").exists()


def test_a_host_name_that_does_not_resolve_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err, seconds = run(monkeypatch, capsys, "assets", "--version", V, "--path",
                                str(tmp_path / "dl"), "--base-url", "http://no-such-host.invalid")
    line = error_line(err)
    assert code != 0 and seconds < BOUND
    assert "cannot resolve the host name 'no-such-host.invalid' (DNS)" in line, line
    assert "timed out" not in line


# ---------------------------------------------------------------------- objathor's features fallback

HTML = b"<!DOCTYPE html><html><body>not here</body></html>"


@pytest.fixture(scope="module")
def featured(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """A release with features.tar, a copy of it at BASE/features.tar (objathor's second place)."""
    base = tmp_path_factory.mktemp("featured-release")
    src, feats = base / "src" / "assets", base / "src" / "features"
    make_sample_dataset(src, 3, seed=5, asset_bytes=4096, features_dir=feats)
    rel = build_release(src, base / "served", V, features_dir=feats)
    shutil.copyfile(rel.vdir / "features.tar", rel.root / "features.tar")
    return rel


def test_features_answering_html_fall_back_to_the_base_url(featured: Release, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """objathor 0.0.8 reads BASE/features.tar when the versioned URL answers text/html; so do we,
    and the fallback's bytes are still checked against the manifest."""
    with HostileServer(featured.root, max_seconds=6) as srv:
        srv.script(f"{V}/features.tar", Script(body=HTML, content_type="text/html"))
        code, _, err, _ = run(monkeypatch, capsys, "features", "--version", V, "--path",
                              str(tmp_path / "dl"), "--base-url", srv.url)
        assert code == 0, err
        assert f"reading {srv.url}/features.tar instead" in err
        assert tree(tmp_path / "dl" / V / "features") == tree(featured.root.parent / "src" / "features")
        assert [r.path for r in srv.requests_for("/features.tar") if r.method == "GET"][-1] == "/features.tar"

        # A fallback that does not match the manifest is refused like any other bytes.
        srv.script("/features.tar", Script(body=(featured.root / "features.tar").read_bytes()[:-512] + b"x" * 512))
        code, _, err, _ = run(monkeypatch, capsys, "features", "--version", V, "--path",
                              str(tmp_path / "dl2"), "--base-url", srv.url)
        assert code != 0 and "sha256" in error_line(err)
        assert not (tmp_path / "dl2" / V / "features").exists()


def test_html_with_no_fallback_is_still_an_error(featured: Release, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """At a bucket root there is no second place: the page is reported, nothing lands."""
    with HostileServer(featured.vdir, max_seconds=6) as srv:
        srv.script("/features.tar", Script(body=HTML, content_type="text/html"))
        code, _, err, _ = run(monkeypatch, capsys, "features", "--version", V, "--path",
                              str(tmp_path / "dl"), "--base-url", srv.url, "--layout", "root")
        assert code != 0 and "text/html" in error_line(err)
        assert not (tmp_path / "dl" / V / "features").exists()


# ---------------------------------------------------------------------- statuses


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("name", ["manifest.json", "assets.tar"])
def test_access_denied_is_said_so(server: HostileServer, tmp_path: Path, status: int, name: str,
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    server.script(name, Script(status=status, content_type="application/xml",
                               body=b"<?xml version='1.0'?><Error><Code>AccessDenied</Code></Error>"))
    dest = tmp_path / "dl"
    code, _, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest),
                          "--base-url", base(server))
    line = error_line(err)
    assert code == 2
    assert line == (f"objathor-release: error: access denied: the bucket is private (HTTP {status} for "
                    f"{server.url}/{V}/{name}): download over the S3 API with credentials: pass --base-url "
                    "s3://BUCKET/PREFIX and --endpoint-url URL (or set AWS_ENDPOINT_URL or R2_ACCOUNT_ID), "
                    "with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY set (or --profile)")
    assert "not found" not in line and "2023_09_23" not in line and "unverified" not in err
    assert_clean(dest, "assets")


def test_access_denied_without_manifest_is_not_an_unknown_version(
        server: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    server.script("manifest.json", Script(status=404))
    server.script("annotations.json.gz", Script(status=403))
    code, _, err, _ = run(monkeypatch, capsys, "all", "--version", V, "--path", str(tmp_path / "dl"),
                          "--base-url", base(server))
    line = error_line(err)
    assert code == 2 and "access denied: the bucket is private (HTTP 403 for " in line
    assert "annotations.json.gz" in line and "--base-url s3://BUCKET/PREFIX" in line
    assert "was not found" not in line and "known public versions" not in line
    assert_clean(tmp_path / "dl", "annotations.json.gz")


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_failing_manifest_is_an_error_not_an_unverified_download(
        server: HostileServer, tmp_path: Path, status: int, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    server.script("manifest.json", Script(status=status))
    dest = tmp_path / "dl"
    code, _, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path", str(dest),
                          "--base-url", base(server))
    line = error_line(err)
    assert code == 1 and f"HTTP {status} (2 attempts in a row" in line and "manifest.json" in line
    assert "unverified" not in err
    assert len(server.requests_for("manifest.json")) == 2  # retried, then given up
    assert server.requests_for("annotations.json.gz") == []
    assert_clean(dest, "annotations.json.gz")


def test_other_statuses_for_the_manifest_are_errors(server: HostileServer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for status in (410, 400, 501):
        server.script("manifest.json", Script(status=status))
        code, _, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path",
                              str(tmp_path / "dl"), "--base-url", base(server))
        line = error_line(err)
        assert code == 1 and f"answered HTTP {status}" in line and "unverified" not in err
        assert_clean(tmp_path / "dl", "annotations.json.gz")


def test_a_passing_5xx_on_the_manifest_is_retried(server: HostileServer, release: Release, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    server.script("manifest.json", Script(status=503, times=1))
    code, out, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path", str(tmp_path / "dl"),
                            "--base-url", base(server))
    assert code == 0, err
    assert "(verified" in out and "unverified" not in err


# ---------------------------------------------------------------------- error pages instead of data

PAGES = {  # case: (script, what the line says)
    "JSON typed": (Script(content_type="application/json", body=b'{"error": "quota exceeded"}'),
                   "returned a page of type application/json"),
    "XML typed": (Script(content_type="application/xml", body=b"<Error><Code>SlowDown</Code></Error>"),
                  "returned a page of type application/xml"),
    "plain text": (Script(content_type="text/plain", body=b"Service Unavailable"), "returned a page of type text/plain"),
    "problem+json": (Script(content_type="application/problem+json", body=b'{"title": "x"}'),
                     "page of type application/problem+json"),
    "JSON as octet-stream": (Script(body=b'  {"error": {"code": 429, "message": "rate limited"}}'),
                             "returned a JSON page instead of a tar (it begins '{\"error\""),
    "XML as octet-stream": (Script(body=b"<?xml version='1.0'?><Error><Code>NoSuchBucket</Code></Error>"),
                            "returned an HTML/XML page"),
    "text as octet-stream": (Script(body=b"upstream connect error or disconnect/reset before headers\n"),
                             "returned a text page instead of a tar (it begins 'upstream connect"),
}


@pytest.mark.parametrize("case", sorted(PAGES))
def test_an_error_page_instead_of_the_tar_is_named(server: HostileServer, tmp_path: Path, case: str,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    script, says = PAGES[case]
    server.script("assets.tar", script)
    dest = tmp_path / "dl"
    # No manifest: nothing but the page itself gives it away.
    server.script("manifest.json", Script(status=404))
    code, _, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest),
                          "--base-url", base(server))
    line = error_line(err)
    assert code == 1 and says in line and f"{server.url}/{V}/assets.tar" in line, line
    assert "--base-url" in line
    assert not (dest / V / "assets").exists()
    assert_clean(dest, "assets")


@pytest.mark.parametrize("case", ["JSON as octet-stream", "text as octet-stream", "XML typed"])
def test_an_error_page_instead_of_a_single_file_is_named_not_retried(
        server: HostileServer, tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    script, _ = PAGES[case]
    server.script("annotations.json.gz", script)
    dest = tmp_path / "dl"
    code, _, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path", str(dest),
                          "--base-url", base(server))
    line = error_line(err)
    assert code == 1 and "returned a" in line and " instead of gzip data" in line and "annotations.json.gz" in line
    assert "retrying" not in err and "sha256" not in line
    assert_clean(dest, "annotations.json.gz")


def test_a_manifest_served_as_a_page_is_named(server: HostileServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for script, says in [
        (Script(content_type="application/xml", body=b"<Error/>"), "page of type application/xml instead of JSON"),
        (Script(body=b"<html><body>Sign in</body></html>"), "an HTML/XML page instead of JSON"),
    ]:
        server.script("manifest.json", script)
        code, _, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path",
                              str(tmp_path / "dl"), "--base-url", base(server))
        assert code == 1 and says in error_line(err)


# ---------------------------------------------------------------------- lying ranges and lengths


def test_a_wrong_content_range_is_refused(server: HostileServer, release: Release, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    size = (release.vdir / "annotations.json.gz").stat().st_size
    for content_range in (f"bytes 5-{size - 1}/{size}", f"bytes 0-{size}/{size}", "bytes 9-2/100",
                          "bytes */*", "octets 0-1/2"):
        server.script("annotations.json.gz", Script(content_range=content_range))
        dest = tmp_path / uuid.uuid4().hex
        code, _, err, seconds = run(monkeypatch, capsys, "annotations", "--version", V, "--path", str(dest),
                                    "--base-url", base(server))
        line = error_line(err)
        assert code == 1 and seconds < BOUND, line
        assert "annotations.json.gz" in line and "does not serve byte ranges correctly" in line, line
        assert_clean(dest, "annotations.json.gz")


def test_a_wrong_content_range_for_uid_members_is_refused(server: HostileServer, release: Release,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    uid = release.uids[3]
    members = [m for m in release.artifact("assets.tar")["members"] if m["path"].split("/")[1] == uid]
    first = min(m["offset"] for m in members)
    size = release.artifact("assets.tar")["size"]
    for content_range in (f"bytes {first + 512}-{size - 1}/{size}", f"bytes 0-{size - 1}/{size}",
                          f"bytes {first}-{size - 1}/{size + 1}", "bytes 1-0/5"):
        server.script("assets.tar", Script(content_range=content_range, range_prefix=f"bytes={first}-"))
        dest = tmp_path / uuid.uuid4().hex
        code, _, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest), "--uids", uid,
                              "--base-url", base(server))
        line = error_line(err)
        assert code == 1 and "assets.tar" in line, line
        assert "does not serve byte ranges correctly" in line or "changed on the server" in line, line
        assert not (dest / V / "assets" / uid).exists()
        assert_clean(dest)


def test_a_resumed_range_with_another_total_size_is_refused(server: HostileServer, release: Release,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    size = (release.vdir / "assets.tar").stat().st_size
    server.script("assets.tar", Script(cut_after=1000, range_prefix=""))  # every plain GET is cut ...
    server.script("assets.tar", Script(content_range=f"bytes 1000-{size - 1}/{size + 512}",  # ... and resumed
                                       range_prefix="bytes=1000-"))
    server.script("manifest.json", Script(status=404))
    dest = tmp_path / "dl"
    code, _, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest),
                          "--base-url", base(server))
    line = error_line(err)
    assert code == 1 and "changed on the server during the download" in line
    assert_clean(dest, "assets")


def test_a_body_shorter_than_announced_is_one_line(server: HostileServer, release: Release, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    size = (release.vdir / "assets.tar").stat().st_size
    server.script("manifest.json", Script(status=404))  # unverified: only the lengths can tell
    server.script("assets.tar", Script(content_length=size + 4096, stall_after=size))
    dest = tmp_path / "dl"
    code, _, err, seconds = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest),
                                "--base-url", base(server))
    line = error_line(err)
    assert code == 1 and seconds < BOUND and "assets.tar" in line
    assert not (dest / V / "assets").exists()
    assert_clean(dest, "assets")


def test_a_length_that_disagrees_with_the_manifest_fails_before_downloading(
        server: HostileServer, release: Release, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    size = (release.vdir / "assets.tar").stat().st_size
    server.script("assets.tar", Script(content_length=size - 512, cut_after=size - 512))
    dest = tmp_path / "dl"
    code, _, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest),
                          "--base-url", base(server))
    line = error_line(err)
    assert code == 1 and f"is {size - 512} bytes on the server but manifest.json says {size}" in line
    assert_clean(dest, "assets")


def test_more_bytes_than_announced_are_not_used(server: HostileServer, release: Release, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    server.script("annotations.json.gz", Script(extra=b"GARBAGE" * 100))
    server.script("assets.tar", Script(ignore_end=True))
    dest = tmp_path / "dl"
    code, out, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path", str(dest),
                            "--base-url", base(server))
    assert code == 0, err
    assert (dest / V / "annotations.json.gz").read_bytes() == (release.vdir / "annotations.json.gz").read_bytes()
    code, out, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest),
                            "--uids", release.uids[2], "--base-url", base(server))
    assert code == 0, err
    assert [p.name for p in (dest / V / "assets").iterdir()] == [release.uids[2]]


def test_a_stream_never_yields_past_the_requested_end(server: HostileServer, release: Release) -> None:
    server.script("assets.tar", Script(ignore_end=True))
    http = Http(HttpConfig(attempts=1))
    try:
        got = b"".join(http.stream(f"{server.url}/{V}/assets.tar", start=1000, end=1999))
    finally:
        http.close()
    assert got == (release.vdir / "assets.tar").read_bytes()[1000:2000]


# ---------------------------------------------------------------------- manifests that lie


def manifest_of(release: Release) -> dict[str, Any]:
    return json.loads((release.vdir / "manifest.json").read_text())


BAD_MANIFESTS: dict[str, tuple[bytes, str]] = {
    "not JSON": (b"{'version': 1", "not JSON"),
    "nested 100k deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "nested objects 50k deep": (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    "a list": (b"[]", "field $"),
    "null": (b"null", "field $"),
    "missing keys": (json.dumps({"version": V}).encode(), "field $"),
    "artifacts a string": (json.dumps({"version": V, "tool_version": "1", "excludes": [],
                                       "artifacts": "all"}).encode(), "field $.artifacts"),
    "not UTF-8": (b'{"version": "\xff\xfe"}', "not JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_a_malformed_manifest_is_one_line(server: HostileServer, tmp_path: Path, case: str,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    body, says = BAD_MANIFESTS[case]
    server.script("manifest.json", Script(content_type="application/json", body=body))
    dest = tmp_path / "dl"
    code, _, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path", str(dest),
                          "--base-url", base(server))
    line = error_line(err)
    assert code == 2 and f"{server.url}/{V}/manifest.json" in line and says in line, line
    assert "tell its publisher" in line
    assert len(line) < 600
    assert_clean(dest, "annotations.json.gz")


def test_wrong_types_inside_the_manifest_are_one_line(server: HostileServer, release: Release, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    def art(m: dict[str, Any]) -> dict[str, Any]:
        return next(a for a in m["artifacts"] if a["name"] == "assets.tar")

    edits = {
        "member size a string": lambda m: art(m)["members"][0].update(size="12"),
        "member without sha256": lambda m: art(m)["members"][0].pop("sha256"),
        "member offset negative": lambda m: art(m)["members"][0].update(offset=-512),
        "artifact size a float": lambda m: art(m).update(size=1.5),
        "members an object": lambda m: art(m).update(members={"a": 1}),
        "version of another release": lambda m: m.update(version="2020_01_01"),
    }
    for name, edit in edits.items():
        data = manifest_of(release)
        edit(data)
        server.script("manifest.json", Script(content_type="application/json", body=json.dumps(data).encode()))
        code, _, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(tmp_path / "dl"),
                              "--uids", release.uids[0], "--base-url", base(server))
        line = error_line(err)
        assert code == 2 and "manifest.json" in line and "tell its publisher" in line, (name, line)


def test_a_huge_manifest_is_refused(server: HostileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    server.script("manifest.json", Script(content_length=10**12, stall_after=0))  # announced
    code, _, err, seconds = run(monkeypatch, capsys, "annotations", "--version", V, "--path",
                                str(tmp_path / "dl"), "--base-url", base(server))
    line = error_line(err)
    assert code == 2 and seconds < BOUND and "is 1000000000000 bytes, more than the 256.0 MiB" in line
    monkeypatch.setattr(served_manifest, "MANIFEST_LIMIT", 4096)
    server.script("manifest.json", Script(body=b" " * 20_000, no_length=True))
    code, _, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path",
                          str(tmp_path / "dl"), "--base-url", base(server))
    assert code == 2 and "more than the 4.0 KiB expected" in error_line(err)


# ---------------------------------------------------------------------- --uids on a lying manifest (nginx)


def publish(web: Nginx, tmp_path: Path, *, n_assets: int = 6, asset_bytes: int = 16 * 1024) -> tuple[
        str, Release, Path]:
    folder = uuid.uuid4().hex[:10]
    src = tmp_path / "src" / "assets"
    make_sample_dataset(src, n_assets, seed=3, asset_bytes=asset_bytes)
    return f"{web.url}/{folder}", build_release(src, web.root / folder, V), src


def rewrite(release: Release, edit: Any) -> None:
    data = json.loads((release.vdir / "manifest.json").read_text())
    edit(next(a for a in data["artifacts"] if a["name"] == "assets.tar"))
    (release.vdir / "manifest.json").write_text(json.dumps(data))


def _last_uid(art: dict[str, Any]) -> str:
    return str(max(art["members"], key=lambda m: m["offset"])["path"].split("/")[1])


def _spare_offsets(art: dict[str, Any], n: int) -> list[int]:
    """Offsets past the tar's last member, still inside its end-of-archive blocks."""
    last = max(m["offset"] + m["size"] for m in art["members"])
    first = -(-last // 512) * 512 + 512
    offsets = [first + 512 * i for i in range(n)]
    assert offsets[-1] <= art["size"], "the tar has no room for extra empty members"
    return offsets


EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def _add_empty(names: list[str]) -> Any:
    def edit(art: dict[str, Any]) -> None:
        uid = _last_uid(art)
        for name, offset in zip(names, _spare_offsets(art, len(names)), strict=True):
            art["members"].append({"path": f"assets/{uid}/{name}", "size": 0, "sha256": EMPTY_SHA,
                                   "offset": offset})
    return edit


def _first_of_last(art: dict[str, Any]) -> dict[str, Any]:
    uid = _last_uid(art)
    return dict(min((m for m in art["members"] if m["path"].split("/")[1] == uid), key=lambda m: m["offset"]))


LYING = {  # case: (edit of the assets.tar artifact, what the line says)
    "a file where a folder must be": (_add_empty(["zz", "zz/inner"]), "its folder 'zz' is a file or a link"),
    "a folder where a file must be": (_add_empty(["zz/inner", "zz"]), "cannot create member"),
    "a name too long for the filesystem": (_add_empty(["n" * 300]), "its name is too long"),
    "a path with ..": (lambda a: a["members"].append({**_first_of_last(a), "path": "assets/x/../../evil"}),
                       "is unsafe ('..' component)"),
    "an absolute path": (lambda a: a["members"].append({**_first_of_last(a), "path": "/tmp/evil"}),
                         "is unsafe (absolute path)"),
    "a member listed twice": (lambda a: a["members"].append(_first_of_last(a)), "is listed twice"),
    "a member past the end of the tar": (
        lambda a: a["members"].append({**_first_of_last(a), "path": f"assets/{_last_uid(a)}/far",
                                       "offset": a["size"] + 512 * 4}), "past the end of assets.tar"),
    "overlapping members": (
        lambda a: a["members"].append({**_first_of_last(a), "path": f"assets/{_last_uid(a)}/overlap"}),
        "overlap in assets.tar"),
}


@pytest.mark.parametrize("case", sorted(LYING))
def test_uids_on_a_lying_manifest(web: Nginx, tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    url, release, _ = publish(web, tmp_path)
    edit, says = LYING[case]
    data = json.loads((release.vdir / "manifest.json").read_text())
    uid = _last_uid(next(a for a in data["artifacts"] if a["name"] == "assets.tar"))
    rewrite(release, edit)
    jail = tmp_path / "jail"
    dest = jail / "dl"
    code, _, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest),
                          "--uids", f"{uid},{release.uids[0]}", "--base-url", url)
    line = error_line(err)
    assert code == 2 and says in line and "manifest" in line, line
    assert not (dest / V / "assets" / uid).exists()
    assert not list(jail.rglob("evil")) and not Path("/tmp/evil").exists()
    assert_clean(dest)


def test_uids_do_not_follow_links_planted_in_the_target(web: Nginx, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    url, release, src = publish(web, tmp_path)
    uid = release.uids[1]
    outside = tmp_path / "outside"
    outside.mkdir()
    assets = tmp_path / "dl" / V / "assets"
    assets.mkdir(parents=True)
    os.symlink(outside, assets / uid)  # the asset's own folder is a link elsewhere
    state = tmp_path / "dl" / V / ".objathor-release"
    state.mkdir()
    os.symlink(outside, state / "uids.staging")  # and so is the staging folder
    code, out, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(tmp_path / "dl"),
                            "--uids", uid, "--base-url", url)
    assert code == 0, err
    assert list(outside.iterdir()) == []
    assert not (assets / uid).is_symlink() and (assets / uid).is_dir()
    assert tree(assets / uid) == {k.split("/", 1)[1]: v for k, v in expected_tree(src).items()
                                  if k.startswith(uid + "/")}


# ---------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs at tmp_path/disk (needs root and mount; skipped otherwise)."""
    with mounted_tmpfs(tmp_path / "disk", "size=2m") as disk:
        yield disk


@pytest.fixture(scope="module")
def big_release(tmp_path_factory: pytest.TempPathFactory) -> Release:
    """A release of about 3 MiB of incompressible assets and a 3 MiB annotations file: more than 2 MiB."""
    base = tmp_path_factory.mktemp("big-release")
    src = base / "src" / "assets"
    make_sample_dataset(src, 8, seed=5, asset_bytes=400 * 1024)
    annotations = gzip.compress(os.urandom(3 * 1024 * 1024), compresslevel=0)
    return build_release(src, base / "served", V, annotations=annotations)


FULL = {  # case: (command arguments, script for the hostile server)
    "annotations, preallocated": (["annotations"], None),
    "annotations, no Range (written as it comes)": (["annotations"], ("annotations.json.gz",
                                                                       Script(ranges=False))),
    "assets.tar streamed into the extractor": (["assets"], None),
    "--uids members": (["assets", "--uids", "ALL"], None),
}


@pytest.mark.parametrize("case", sorted(FULL))
def test_a_full_disk_is_one_line_and_leaves_nothing(small_disk: Path, big_release: Release, case: str,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    args, script = FULL[case]
    uids = "--uids" in args
    args = [",".join(big_release.uids) if a == "ALL" else a for a in args]
    with HostileServer(big_release.root) as srv:
        if script is not None:
            srv.script(*script)
        code, _, err, seconds = run(monkeypatch, capsys, *args, "--version", V, "--path", str(small_disk),
                                    "--base-url", srv.url, env={"OBJATHOR_FREE_SPACE": "1G"})
    line = error_line(err)
    assert code == 1 and seconds < BOUND, line
    # Ours names the folder and the size in all; the extractor's own names the member it was writing.
    assert f"{small_disk}/{V}" in line and ("no space left" in line or "disk is full" in line), line
    assert "MiB needed in all" in line or "the member is" in line, line
    assert "free" in line and "run the command again" in line
    assert not (small_disk / V / "annotations.json.gz").exists()
    assert_clean(small_disk, "annotations.json.gz")
    if uids:  # the assets finished before the disk filled stay, complete and verified; no partial one
        files = big_release_tree(big_release)
        for folder in (small_disk / V / "assets").iterdir():
            assert tree(folder) == {k.split("/", 1)[1]: v for k, v in files.items()
                                    if k.startswith(folder.name + "/")}
    else:
        assert not (small_disk / V / "assets").exists()
        assert shutil.disk_usage(small_disk).free > 1.5 * 1024 * 1024  # what was written is gone again


def big_release_tree(release: Release) -> dict[str, bytes]:
    return expected_tree(release.root.parent / "src" / "assets")


def test_the_space_check_names_the_path_and_the_size(web: Nginx, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    url, release, _ = publish(web, tmp_path)
    dest = tmp_path / "dl"
    code, _, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest),
                          "--uids", ",".join(release.uids[:3]), "--base-url", url,
                          env={"OBJATHOR_FREE_SPACE": "10K"})
    line = error_line(err)
    assert code == 2 and f"not enough space in {dest}" in line and "10.0 KiB is free" in line
    assert "it needs" in line
    assert_clean(dest)


# ---------------------------------------------------------------------- an unusable --path, hostile local state


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        yield disk


def test_an_unusable_path_is_one_line(server: HostileServer, tmp_path: Path, read_only_disk: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for path, says in [(read_only_disk, "Read-only file system"), (a_file, "cannot write"),
                       (a_file / "below", "Not a directory")]:
        for what in ("annotations", "assets"):
            code, _, err, _ = run(monkeypatch, capsys, what, "--version", V, "--path", str(path),
                                  "--base-url", base(server))
            line = error_line(err)
            assert code == 2 and says in line and str(path) in line and "check --path" in line, line
    assert a_file.read_text() == "not a folder"


def test_hostile_local_state_is_ignored_not_a_traceback(server: HostileServer, release: Release, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "dl"
    state = dest / V / ".objathor-release"
    state.mkdir(parents=True)
    (dest / V / "assets").mkdir()
    (dest / V / "annotations.json.gz").write_bytes(b"half")
    (state / "annotations.done").write_text("[1, 2, 3]")
    (state / "assets.done").write_text('"done"')
    (state / "assets.uids.json").write_text('{"sha256": [], "uids": {"a": 1}}')
    (dest / V / "annotations.json.gz.part").write_bytes(b"\0" * 10)
    (dest / V / "annotations.json.gz.part.json").write_text(json.dumps(
        {"url": f"{server.url}/{V}/annotations.json.gz", "size": 10, "validator": '"x"', "part_size": 0,
         "done": []}))
    code, _, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path", str(dest),
                          "--base-url", base(server))
    assert code == 0, err
    assert (dest / V / "annotations.json.gz").read_bytes() == (release.vdir / "annotations.json.gz").read_bytes()
    code, _, err, _ = run(monkeypatch, capsys, "assets", "--version", V, "--path", str(dest), "--uids",
                          release.uids[0], "--base-url", base(server))
    assert code == 0, err
    assert [p.name for p in (dest / V / "assets").iterdir()] == [release.uids[0]]


def test_a_base_url_with_credentials_is_refused_without_echoing_them(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for url in ("http://user:s3cr3t-token@127.0.0.1:9/bucket", "https://s3cr3t-token@127.0.0.1:9"):
        for how in ("flag", "env"):
            args = ["--base-url", url] if how == "flag" else []
            code, out, err, _ = run(monkeypatch, capsys, "annotations", "--version", V, "--path",
                                    str(tmp_path / "dl"), *args,
                                    env={"OBJATHOR_BASE_URL": url if how == "env" else ""})
            line = error_line(err)
            assert code == 2 and "user name or password" in line
            assert "s3cr3t" not in out + err
    assert not (tmp_path / "dl").exists()
