"""devtools.wanproxy: the long-link emulator adds the round trips, handshake cost and rate cap it claims.

A tiny ThreadingHTTPServer in a thread stands behind the proxy. The bounds are loose on purpose
(lower bounds are the model's own arithmetic; upper bounds leave room for a loaded 2-core machine).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from devtools.wanproxy import WanProxy, main, parse_rate

BODY = os.urandom(3 * 1000 * 1000)
DIGEST = hashlib.sha256(BODY).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/big":
            body = BODY
        elif self.path.startswith("/third/"):  # /third/0, /third/1, /third/2: the body in three parts
            i = int(self.path.rsplit("/", 1)[1])
            body = BODY[i * len(BODY) // 3: (i + 1) * len(BODY) // 3]
        else:
            body = b"pong"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:  # noqa: N802
        data = self.rfile.read(int(self.headers["Content-Length"]))
        answer = hashlib.sha256(data).hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield ("127.0.0.1", httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


def _get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        conn.close()


def test_a_request_costs_the_handshake_and_one_round_trip(server: tuple[str, int]) -> None:
    rtt, handshake = 0.2, 2
    with WanProxy(server, rtt=rtt, handshake_rtts=handshake, cap=None) as proxy:
        t0 = time.perf_counter()
        assert _get(proxy.port, "/ping") == b"pong"
        first = time.perf_counter() - t0
        # a second request on the same connection pays the round trip only
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        try:
            conn.request("GET", "/ping")
            conn.getresponse().read()
            t1 = time.perf_counter()
            conn.request("GET", "/ping")
            assert conn.getresponse().read() == b"pong"
            again = time.perf_counter() - t1
        finally:
            conn.close()
        assert proxy.connections == 2
    assert rtt * (1 + handshake) * 0.98 <= first < rtt * (1 + handshake) + 2.0
    assert rtt * 0.98 <= again < rtt + 2.0


def test_the_cap_is_per_connection_and_the_bytes_arrive_intact(server: tuple[str, int]) -> None:
    with WanProxy(server, rtt=0.02, handshake_rtts=1, cap=1e6) as proxy:
        t0 = time.perf_counter()
        body = _get(proxy.port, "/big")
        one = time.perf_counter() - t0
        assert hashlib.sha256(body).hexdigest() == DIGEST
        assert proxy.bytes_down >= len(BODY)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(3) as pool:
            parts = list(pool.map(lambda i: _get(proxy.port, f"/third/{i}"), range(3)))
        three = time.perf_counter() - t0
        assert hashlib.sha256(b"".join(parts)).hexdigest() == DIGEST
        assert proxy.connections == 4
    assert 2.5 <= one < 12, one
    assert three / one < 0.6, (one, three)  # the same bytes on three connections: a third of the time


def test_an_upload_is_capped_and_arrives_intact(server: tuple[str, int]) -> None:
    data = BODY[: 1000 * 1000]
    with WanProxy(server, rtt=0.02, handshake_rtts=1, cap=1e6) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=60)
        try:
            t0 = time.perf_counter()
            conn.request("PUT", "/up", body=data)
            answer = conn.getresponse().read()
            took = time.perf_counter() - t0
        finally:
            conn.close()
    assert answer.decode() == hashlib.sha256(data).hexdigest()
    assert 0.8 <= took < 8, took


def test_stop_ends_open_connections(server: tuple[str, int]) -> None:
    proxy = WanProxy(server, rtt=0.01, handshake_rtts=0, cap=None).start()
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", "/ping")
    assert conn.getresponse().read() == b"pong"  # a keep-alive connection stays open in the proxy
    t0 = time.perf_counter()
    proxy.stop()
    assert time.perf_counter() - t0 < 5
    assert not proxy._thread.is_alive()
    conn.close()
    proxy.stop()  # a second stop is harmless


def test_parse_rate() -> None:
    assert parse_rate("6M") == 6e6
    assert parse_rate("512k") == 512e3
    assert parse_rate("1.5G") == 1.5e9
    assert parse_rate("2500") == 2500
    assert parse_rate("0") is None
    assert parse_rate("none") is None


def test_the_command_line_rejects_a_missing_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "--upstream" in capsys.readouterr().err
