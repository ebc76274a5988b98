"""A real nginx (Debian's package) serving a directory on 127.0.0.1, for the download tests and benchmark.

    with Nginx(root, workdir) as web:
        web.url          # http://127.0.0.1:PORT  -> files under root
        web.url + "/slow"  # the same files, sent at ``slow_rate`` bytes per second
        web.url + "/html"  # every path answers 200 with an HTML page (a captive portal)
        web.url + "/moved" # the same files after two redirects (301, then 302)
        web.access_log()   # one parsed line per request: method, uri, status, range, if-range, bytes

The config is written from scratch into ``workdir`` (pid, logs, temp paths
there; ``daemon off``; one free port); nothing in /etc/nginx is read or changed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx")

CONFIG = """\
{user}
daemon off;
worker_processes {workers};
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 512; }}
http {{
    types {{
        application/x-tar tar;
        application/json json;
        application/gzip gz;
        text/html html;
    }}
    default_type application/octet-stream;
    log_format ranges '$request_method $uri $status "$http_range" "$http_if_range" $body_bytes_sent';
    access_log {work}/access.log ranges;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /slow/ {{
            alias {root}/;
            limit_rate {slow_rate};
        }}
        location /moved/ {{
            rewrite ^/moved/(.*)$ /moved2/$1 permanent;
        }}
        location /moved2/ {{
            rewrite ^/moved2/(.*)$ /$1 redirect;
        }}
        location /html/ {{
            types {{ }}
            default_type text/html;
            return 200 "<!doctype html><html><body><h1>Sign in to the network</h1></body></html>";
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return next((p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Nginx:
    """Run nginx in the foreground as a child process serving ``root``."""

    def __init__(self, root: str | Path, workdir: str | Path, *, slow_rate: int = 2 * 1024 * 1024,
                 workers: int = 1) -> None:
        self.root = Path(root).resolve()
        self.work = Path(workdir).resolve()
        self.slow_rate = slow_rate
        self.workers = workers
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> Nginx:
        binary = find_nginx()
        if binary is None:
            raise RuntimeError("nginx is not installed: run 'make install' (scripts/install-system-deps "
                               "installs Debian's nginx package) or 'apt-get install nginx'")
        self.work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.work / "nginx.conf"
        # As root, nginx's workers would switch to 'nobody', who cannot read pytest's private tmp dirs.
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(CONFIG.format(user=user, work=self.work, root=self.root, port=self.port,
                                      slow_rate=self.slow_rate, workers=self.workers))
        self.proc = subprocess.Popen(
            [binary, "-p", str(self.work), "-e", str(self.work / "error.log"), "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = (self.work / "error.log")
                err += log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def access_log(self) -> list[dict[str, str]]:
        """Requests served so far: method, uri, status, range, if_range, bytes (all strings)."""
        path = self.work / "access.log"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            method, uri, status, rest = line.split(" ", 3)
            rng, _, rest = rest[1:].partition('" "')
            if_range, _, sent = rest.partition('" ')
            rows.append({"method": method, "uri": uri, "status": status, "range": rng if rng != "-" else "",
                         "if_range": if_range if if_range != "-" else "", "bytes": sent})
        return rows

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
