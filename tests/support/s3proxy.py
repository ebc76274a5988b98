"""A rewriting S3 proxy for tests: sits between a client and a real S3 server (moto) and can change
its answers.

    def rule(ex: Exchange) -> Reply | None:          # before the request is forwarded
        if ex.op == "ListParts":
            return Reply(200, {"Content-Type": "application/xml"}, b"<garbage")
        return None                                  # forward it

    def rewrite(ex: Exchange, reply: Reply) -> Reply:  # after the server answered
        if ex.op == "UploadPart":
            reply.headers["ETag"] = '"0123456789abcdef0123456789abcdef"'
        return reply

    with S3Proxy(upstream, before=rule, after=rewrite) as proxy:
        client(endpoint_url=proxy.url)

``Exchange.op`` names the S3 operation of a path-style request (UploadPart,
CompleteMultipartUpload, ListParts, HeadObject, GetObject, PutObject, ...).
``proxy.log`` records every exchange with the status finally sent. Only
127.0.0.1 is used.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.support.loopback import LoopbackServer


@dataclass
class Exchange:
    """One request as the proxy saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the client finally got

    @property
    def query(self) -> dict[str, str]:
        q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query, keep_blank_values=True)
        return {k: v[0] for k, v in q.items()}

    @property
    def key(self) -> str:
        """The object key of a path-style request (``/bucket/key``), "" for bucket requests."""
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        return path.lstrip("/").partition("/")[2]

    @property
    def op(self) -> str:
        q, m, key = self.query, self.method, self.key
        if not key:
            return {"GET": "ListMultipartUploads" if "uploads" in q else "ListObjects",
                    "PUT": "CreateBucket", "HEAD": "HeadBucket"}.get(m, m)
        if m == "PUT":
            return "UploadPart" if "partNumber" in q else "PutObject"
        if m == "POST":
            return "CreateMultipartUpload" if "uploads" in q else "CompleteMultipartUpload"
        if m == "GET":
            return "ListParts" if "uploadId" in q else "GetObject"
        if m == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        return "HeadObject" if m == "HEAD" else m


@dataclass
class Reply:
    """An answer: status, headers (a HEAD's Content-Length is taken from them) and body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0  # seconds to wait before answering
    drop: bool = False  # close the connection instead of answering

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    def set_header(self, name: str, value: str | None) -> Reply:
        for k in [k for k in self.headers if k.lower() == name.lower()]:
            del self.headers[k]
        if value is not None:
            self.headers[name] = value
        return self


Before = Callable[[Exchange], "Reply | None"]
After = Callable[[Exchange, Reply], Reply]


def xml_error(code: str, message: str = "injected by the test proxy", status: int = 500) -> Reply:
    body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>{message}</Message></Error>").encode()
    return Reply(status, {"Content-Type": "application/xml"}, body)


def set_xml(body: bytes, tag: str, value: str | None) -> bytes:
    """``body`` with the text of every ``<tag>`` replaced (or the element removed, for None)."""
    pattern = re.compile(rb"<" + tag.encode() + rb">.*?</" + tag.encode() + rb">", re.S)
    new = b"" if value is None else f"<{tag}>{value}</{tag}>".encode()
    return pattern.sub(lambda _m: new, body)


@dataclass
class _State:
    upstream: urllib.parse.SplitResult
    before: Before
    after: After
    log: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _forward(state: _State, ex: Exchange) -> Reply:
    up = state.upstream
    conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port or 80, timeout=60)
    try:
        headers = {k: v for k, v in ex.headers.items() if k.lower() != "connection"}
        conn.request(ex.method, ex.path, body=ex.body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        out = {k: v for k, v in resp.getheaders()
               if k.lower() not in ("transfer-encoding", "connection", "content-length")}
        if ex.method == "HEAD":
            out["Content-Length"] = resp.getheader("Content-Length", "0")
        return Reply(resp.status, out, data)
    finally:
        conn.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: _State

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        ex = Exchange(self.command, self.path, dict(self.headers.items()), body)
        with self.state.lock:
            self.state.log.append(ex)
        reply = self.state.before(ex)
        if reply is None:
            reply = self.state.after(ex, _forward(self.state, ex))
        if reply.delay:
            time.sleep(reply.delay)
        ex.status = reply.status
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(2)
            return
        with contextlib.suppress(OSError):
            self.send_response(reply.status)
            for key, value in reply.headers.items():
                if key.lower() != "content-length":
                    self.send_header(key, value)
            if self.command == "HEAD":
                self.send_header("Content-Length", reply.header("Content-Length") or "0")
            else:
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


class S3Proxy(LoopbackServer):
    def __init__(self, upstream: str, before: Before | None = None, after: After | None = None) -> None:
        self.state = _State(urllib.parse.urlsplit(upstream), before or (lambda ex: None),
                            after or (lambda ex, reply: reply))
        super().__init__(type("Handler", (_Handler,), {"state": self.state}))

    @property
    def log(self) -> list[Exchange]:
        return self.state.log

    def ops(self, name: str) -> list[Exchange]:
        return [ex for ex in self.log if ex.op == name]

    def forward(self, ex: Exchange) -> Reply:
        """Send ``ex`` to the upstream server now and return its answer (for a rule that decides when)."""
        return _forward(self.state, ex)

    def set_rules(self, before: Before | None = None, after: After | None = None) -> None:
        self.state.before = before or (lambda ex: None)
        self.state.after = after or (lambda ex, reply: reply)
