"""The live dashboard: a small HTTP server for the cluster's page and its JSON, loopback by default.

::

    browser ──GET /, /static/*────────► DashboardServer (ThreadingHTTPServer,
            ──GET /api/status,                 a thread per connection)
                  /api/history, /api/runs         │ reads
                  (every second)                  │
            ClusterMonitor ◄──────────────────────┼────► RunBoard
            (polls cluster_status once a second)  │      ├ own DashboardRun ◄── pool / estimate_pi
                                                  │      └ reported runs (at most 20)
    pool elsewhere (RemoteRun) ──POST /api/report, X-Pyro-Compute-Token ──► RunBoard

On 127.0.0.1 (or ::1, localhost) anyone on this machine may look (as with ``pyro-compute status``, which also
needs the secret only through the environment). On any other address every request must carry a
token derived from the shared secret (``?token=`` once, then an HttpOnly cookie); the secret
itself is never sent. Reports need their own token, derived from the secret under another label,
on every interface: looking at the page does not let anyone write to it.
"""
from __future__ import annotations

import argparse
import contextlib
import hmac
import http.cookies
import http.server
import ipaddress
import json
import logging
import mimetypes
import socket
import sys
import threading
import urllib.parse
from importlib import resources
from typing import Any

from .config import Settings
from .dashboard_state import (POLL_INTERVAL, ClusterMonitor, DashboardRun, RunBoard, RunReporter,
                              dashboard_token, report_token)
from .errors import ConfigError

__all__ = ["DashboardRun", "DashboardServer", "RunReporter", "add_parser", "dashboard_token", "main",
           "run", "serve_for_run"]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8787
COOKIE = "pyro_compute_dashboard"
TOKEN_HEADER = "X-Pyro-Compute-Token"
MAX_REPORT = 4 << 20  # bytes one report may have
STATIC = "dashboard_static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store", "X-Frame-Options": "DENY"}


def needs_token(host: str) -> bool:
    """Whether a server bound to ``host`` requires the token: on all but the usual loopback names.

    Only 127.0.0.1, ::1 and localhost are exempt; even 127.0.0.2 needs the token, which keeps the
    rule simple to state (and lets the tests exercise it without a second network interface).
    """
    return host.lower().strip("[]") not in ("127.0.0.1", "::1", "localhost")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback interface."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _static_file(name: str) -> bytes | None:
    """A file of the page by its plain name under dashboard_static, or None (no path tricks)."""
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") or "\\" in p for p in parts):
        return None
    node = resources.files(__package__ or "pyro_compute").joinpath(STATIC, *parts)
    return node.read_bytes() if node.is_file() else None


def _host_name(header: str) -> str:
    """The host part of a Host header: ``a:1`` -> ``a``, ``[::1]:1`` -> ``::1``."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _number(text: str) -> float | None:
    """``text`` as a finite float, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle keep-alive connection may hold its thread

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        """Serve the page, its static files and the JSON API."""
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if not self._allowed(query):
            return
        if url.path in ("/", "/index.html"):
            self._file("index.html", query)
        elif url.path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif url.path.startswith("/static/"):
            self._file(url.path[len("/static/"):], None)
        elif url.path == "/api/status":
            rows, error = self.server.monitor.status()
            self._json(rows if error is None else {"error": error}, 200 if error is None else 503)
        elif url.path == "/api/history":
            self._json(self.server.monitor.snapshot())
        elif url.path == "/api/run":
            current = self.server.run
            since = _number(query.get("since", [""])[0])
            self._json(None if current is None else current.snapshot(since))
        elif url.path == "/api/runs":
            self._json({"runs": self.server.runs.snapshots(_number(query.get("since", [""])[0]))})
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        """Take a report of a pool in another process (``/api/report``, see dashboard_client)."""
        if urllib.parse.urlsplit(self.path).path != "/api/report":
            self.close_connection = True  # the body is not read
            self._send(404, b"not found\n", "text/plain")
            return
        code, refusal = self._refusal()
        if refusal:
            self.close_connection = True
            self._send(code, refusal.encode() + b"\n", "text/plain")
            return
        self._report(self.rfile.read(int(self.headers["Content-Length"])))

    def _refusal(self) -> tuple[int, str]:
        """Why a report may not be read (HTTP code and sentence), or (200, "") if it may."""
        if self.server.token is None and not is_loopback(_host_name(self.headers.get("Host") or "")):
            return 403, "this dashboard answers only to loopback host names"
        if not hmac.compare_digest((self.headers.get(TOKEN_HEADER) or "").encode(),
                                   self.server.report_token.encode()):
            return 403, ("the report token is wrong: the pool and the dashboard must share the secret "
                         "(PYRO_COMPUTE_HMAC_KEY or PYRO_COMPUTE_HMAC_KEY_FILE)")
        length = self.headers.get("Content-Length") or ""
        if self.headers.get_content_type() != "application/json" or not length.isdigit() \
                or int(length) > MAX_REPORT:
            return 400, (f"a report is a JSON body (Content-Type: application/json) of at most "
                         f"{MAX_REPORT} bytes with its Content-Length")
        return 200, ""

    def _report(self, body: bytes) -> None:
        try:
            taken = self.server.runs.apply(json.loads(body))
        except ValueError as e:  # json.JSONDecodeError is a ValueError too
            self._send(400, f"the report was refused: {e}\n".encode(), "text/plain")
            return
        self._json({"taken": taken})

    def _allowed(self, query: dict[str, list[str]]) -> bool:
        """Check the token (other interfaces) or the Host header (loopback: no DNS rebinding)."""
        token = self.server.token
        if token is None:
            if is_loopback(_host_name(self.headers.get("Host") or "")):
                return True
            self._send(403, b"this dashboard answers only to loopback host names\n", "text/plain")
            return False
        given = query.get("token", [""])[0]
        cookie = http.cookies.SimpleCookie(self.headers.get("Cookie") or "").get(COOKIE)
        for candidate in (given, cookie.value if cookie else ""):
            if hmac.compare_digest(candidate.encode(), token.encode()):
                return True
        self._send(403, b"a valid ?token= is required; 'pyro-compute dashboard' printed the URL "
                        b"with it when it started\n", "text/plain")
        return False

    def _file(self, name: str, query: dict[str, list[str]] | None) -> None:
        body = _static_file(name)
        if body is None:
            self._send(404, b"not found\n", "text/plain")
            return
        extra = {}
        if query is not None and self.server.token is not None:
            extra["Set-Cookie"] = f"{COOKIE}={self.server.token}; HttpOnly; SameSite=Strict; Path=/"
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self._send(200, body, kind + ("; charset=utf-8" if kind.startswith("text/") or
                                      kind.endswith("javascript") else ""), extra)

    def _json(self, data: Any, code: int = 200) -> None:
        self._send(code, json.dumps(data, allow_nan=False, default=str).encode(), "application/json")

    def _send(self, code: int, body: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in {**SECURITY_HEADERS, **(extra or {}), "Content-Type": kind,
                           "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        """Log requests at debug level instead of printing them to stderr."""
        log.debug("%s %s", self.address_string(), format % args)


class DashboardServer(http.server.ThreadingHTTPServer):
    """Serve the dashboard for ``settings``'s cluster (and optionally one run) in a thread.

    Args:
        settings: where the name server is and the shared secret.
        host: interface to bind; anything but loopback requires the token.
        port: TCP port; 0 picks a free one.
        run: a run whose own view the page shows as well.
        interval: seconds between polls of the cluster.

    Raises:
        ConfigError: a non-loopback host without a shared secret to derive the token from.
        OSError: the address cannot be bound.
    """

    daemon_threads = True

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 run: DashboardRun | None = None, interval: float = POLL_INTERVAL) -> None:
        secret = settings.hmac_bytes
        if needs_token(host) and not secret:
            raise ConfigError(f"the dashboard on {host} needs a shared secret to derive its access "
                              "token from; set PYRO_COMPUTE_HMAC_KEY (or _FILE), or bind to 127.0.0.1 "
                              "and reach it through an ssh tunnel")
        self.token = dashboard_token(secret) if needs_token(host) and secret else None
        self.report_token = report_token(secret)
        self.run = run
        self.runs = RunBoard(run)
        self._connections: set[socket.socket] = set()  # open request sockets, closed by close()
        self._handlers: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self.monitor = ClusterMonitor(settings, interval=interval)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        # Named pool-*: a Pool serves its page in its own process (the leak check looks for them).
        self._thread = threading.Thread(target=self.serve_forever, name="pool-dashboard-http", daemon=True)

    @property
    def url(self) -> str:
        """The page's address, with the token when one is needed."""
        host, port = str(self.server_address[0]), int(self.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> DashboardServer:
        """Start polling and serving in background threads; return self."""
        self.monitor.start()
        self._thread.start()
        return self

    def process_request(self, request: Any, client_address: Any) -> None:
        """Handle each connection in its own named thread, remembered so close() can end it."""
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name="pool-dashboard-request", daemon=True)
        with self._lock:
            self._connections.add(request)
            self._handlers = {t for t in self._handlers if t.is_alive()} | {thread}
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        """Forget a finished connection, then close it."""
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close(self) -> None:
        """Stop serving and polling, and end open connections; safe to call more than once."""
        if self._thread.is_alive():
            self.shutdown()
            self._thread.join(timeout=10)
        self.server_close()
        with self._lock:
            connections, handlers = list(self._connections), list(self._handlers)
        for conn in connections:  # a browser's idle keep-alive connection would hold its thread
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in handlers:
            thread.join(timeout=5)
        self.monitor.close()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve_for_run(settings: Settings, run: DashboardRun, *, host: str = "127.0.0.1",
                  port: int = 0) -> DashboardServer:
    """Start a dashboard that shows ``run`` beside the cluster, for ``--dashboard``.

    Usage::

        view = DashboardRun("pi, 4e9 samples")
        with serve_for_run(pool.settings, view) as server:
            print("dashboard:", server.url, file=sys.stderr)
            estimate_pi(pool, samples, seed, reporter=view)
            view.finish()

    Raises:
        ConfigError, OSError: as DashboardServer.
    """
    return DashboardServer(settings, host, port, run=run).start()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``dashboard`` command to ``pyro-compute``'s subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "dashboard", help="serve a live web page of the workers and the cluster's throughput",
        description="Serve a page that shows every registered worker and the cluster's throughput, "
                    "updated every second, and the task stream of the pools that report to it "
                    "(Pool(dashboard=URL), 'pyro-compute pi/run --dashboard-url URL'). On a remote "
                    "cluster keep the default 127.0.0.1 and use 'ssh -L 8787:127.0.0.1:8787 HOST', "
                    "then open http://127.0.0.1:8787/.")
    p.add_argument("--ns", metavar="HOST:PORT", help="name server (default: $PYRO_COMPUTE_NS)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; others require the printed token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    return p


def run(args: argparse.Namespace) -> int:
    """Serve the dashboard until interrupted; return the exit status."""
    try:
        server = DashboardServer(Settings.from_env(ns=args.ns), args.host, args.port)
    except OSError as e:
        raise ConfigError(f"cannot serve the dashboard on {args.host}:{args.port}: {e}; "
                          "choose another --port") from e
    with server:
        server.start()
        print(f"dashboard: {server.url}  (Ctrl-C stops it; pools report here with "
              f"--dashboard-url {server.url.split('?')[0]})", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("dashboard: stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pyro_compute.dashboard``: the same as ``pyro-compute dashboard``."""
    parser = argparse.ArgumentParser(prog="pyro-compute")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dashboard", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
