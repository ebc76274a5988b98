"""A small fault-injecting HTTP proxy for tests: sits between a client and a real server.

    with FaultProxy("http://127.0.0.1:9000", rule) as proxy:
        client(endpoint_url=proxy.url)

``rule(request) -> Action`` decides per request: pass it on, answer with a status
(503, 500, 429, ...), drop the connection without answering, or pass it on but
cut the response body after N bytes. ``proxy.log`` records every request seen.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.support.loopback import LoopbackServer


@dataclass
class Request:
    index: int  # 0-based count of requests the proxy has seen
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Action:
    kind: str = "pass"  # "pass", "status", "drop" or "cut"
    status: int = 503
    cut_after: int = 0  # bytes of response body to send before closing, for "cut"


PASS = Action()


def status(code: int) -> Action:
    return Action("status", status=code)


def drop() -> Action:
    return Action("drop")


def cut(after: int) -> Action:
    return Action("cut", cut_after=after)


Rule = Callable[[Request], Action]


@dataclass
class _State:
    upstream: urllib.parse.SplitResult
    rule: Rule
    log: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State  # set on a subclass per proxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.state.lock:
            req = Request(len(self.state.log), self.command, self.path, dict(self.headers.items()))
            self.state.log.append(req)
        action = self.state.rule(req)
        if action.kind == "drop":
            self._abort()
            return
        if action.kind == "status":
            payload = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>Injected{action.status}</Code>"
                f"<Message>injected by test proxy</Message></Error>"
            ).encode()
            self.send_response(action.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        up = self.state.upstream
        conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port or 80, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        # A HEAD answer has no body: pass the upstream length on, it is the object's size.
        length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length)
        self.end_headers()
        conn.close()
        if self.command == "HEAD":
            return
        if action.kind == "cut":
            self.wfile.write(data[: action.cut_after])
            self.wfile.flush()
            self._abort()
            return
        self.wfile.write(data)

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


class FaultProxy(LoopbackServer):
    def __init__(self, upstream: str, rule: Rule = lambda r: PASS) -> None:
        self.state = _State(urllib.parse.urlsplit(upstream), rule)
        super().__init__(type("Handler", (_Handler,), {"state": self.state}))

    @property
    def log(self) -> list[Request]:
        return self.state.log

    def set_rule(self, rule: Rule) -> None:
        self.state.rule = rule
