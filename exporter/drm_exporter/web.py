"""The HTTP server: /metrics (text format, gzip when asked), /healthz, /sd (Prometheus http_sd)
and the coordinator API under /api/v1. Handlers only read the published snapshot or call the
API; they never collect. Every error is JSON naming the field; never a traceback.

Security, all optional: TLS and basic auth on every endpoint (webconfig.py), and a bearer token
for the API's write endpoints. Credentials are compared in constant time and never logged."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import socket
import ssl
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .api import API_PREFIX, Api, ApiError
from .exposition import CONTENT_TYPES, SnapshotStore, negotiate
from .webconfig import REALM, BasicAuth

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
HANDSHAKE_TIMEOUT_S = 10.0
TOKEN_HEADER = "X-DRM-Token"  # the token's place when Authorization carries basic auth

INDEX = b"""<!doctype html><html><head><title>drm-exporter</title></head><body>
<h1>drm-exporter</h1><ul><li><a href="/metrics">/metrics</a></li>
<li><a href="/healthz">/healthz</a></li><li><a href="/sd">/sd</a> (Prometheus http_sd)</li>
<li><a href="/api/v1/openapi.json">/api/v1/openapi.json</a></li></ul></body></html>
"""


def accepts_gzip(header: str | None) -> bool:
    if not header:
        return False
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip()
            try:
                return not (q.startswith("q=") and float(q[2:] or 0) == 0)
            except ValueError:
                return False
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once, as json.loads/dumps do for their defaults: with any option given they build a
# new decoder/encoder per call, a measurable share of a report (benchmarks/engine.py).
_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"))


def sd_targets(api: Api) -> list[dict[str, Any]]:
    """Agents that serve their own /metrics, as Prometheus http_sd target groups."""
    out = []
    for w in api.engine.view().workers:
        url = w.spec.metrics_url
        if not url:
            continue
        parts = urlsplit(url)
        labels = {"worker": w.spec.worker, "pool": w.spec.pool, "provider": w.spec.provider,
                  "__scheme__": parts.scheme}
        if parts.path and parts.path != "/metrics":
            labels["__metrics_path__"] = parts.path
        out.append({"targets": [parts.netloc], "labels": labels})
    return out


class _Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a keep-alive client's delayed ACK
    # stalls the second one ~40 ms (measured by benchmarks/scrape.py).
    disable_nagle_algorithm = True
    # Buffered: a response up to this size (every API answer) leaves in one send with its
    # headers, which handle_one_request flushes after each request; a larger body is written
    # straight through. ~35 us of CPU less per report (benchmarks/engine.py).
    wbufsize = 1 << 16

    def parse_request(self) -> bool:
        # The request line has arrived: from here on the request is in flight, and a drain
        # waits for it instead of cutting it off.
        self.server.request_started(self.connection)
        return super().parse_request()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            if self.server.request_finished(self.connection):
                self.close_connection = True  # draining: no next request on this connection

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._authenticated():
            return
        path = urlsplit(self.path).path
        if path == "/metrics":
            gz = accepts_gzip(self.headers.get("Accept-Encoding"))
            fmt = negotiate(self.headers.get("Accept"))
            self._send(HTTPStatus.OK, self.server.store.body(gz, fmt), CONTENT_TYPES[fmt],
                       {"Content-Encoding": "gzip"} if gz else {})
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/":
            self._send(HTTPStatus.OK, INDEX, "text/html; charset=utf-8")
        elif path == "/sd" and self.server.api is not None:
            self._json(200, sd_targets(self.server.api))
        else:
            self._api("GET")

    def do_PUT(self) -> None:  # noqa: N802
        if self._authenticated():
            self._api("PUT")

    def do_POST(self) -> None:  # noqa: N802
        if self._authenticated():
            self._api("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        if self._authenticated():
            self._api("DELETE")

    def _authenticated(self) -> bool:
        """Basic auth from the web config, before anything else is read; False once the 401
        is sent."""
        auth = self.server.basic_auth
        if auth is None or auth.check(self.headers.get("Authorization")):
            return True
        # The body (if any) stays unread, so this connection cannot carry another request.
        self.close_connection = True
        extra = {"WWW-Authenticate": f'Basic realm="{REALM}"', "Connection": "close"}
        path = urlsplit(self.path).path
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            self._json(401, ApiError(401, None, "authentication required").body(), extra)
        else:
            self._send(HTTPStatus.UNAUTHORIZED, b"401 Unauthorized\n",
                       "text/plain; charset=utf-8", extra)
        return False

    def do_PATCH(self) -> None:  # noqa: N802
        self._api("PATCH")

    def _api(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            body = self._read_body()  # always drained, so keep-alive stays in step
            if self.server.api is None or not url.path.startswith(API_PREFIX + "/"):
                raise ApiError(404, None, f"no route {url.path}")
            if method != "GET":
                self._check_token()
            status, payload = self.server.api.handle(method, url.path, body,
                                                     dict(parse_qsl(url.query)))
        except ApiError as e:
            self._json(e.status, e.body(),
                       {"WWW-Authenticate": f'Bearer realm="{REALM}"'} if e.status == 401
                       else None)
            return
        except Exception:  # a bug, not the client's fault: log it, never leak a traceback
            log.exception("%s %s failed", method, url.path)
            self._json(500, ApiError(500, None, "internal error").body())
            return
        self._json(status, payload)

    def _read_body(self) -> Any:
        raw_len = self.headers.get("Content-Length")
        if raw_len is None:
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise ApiError(411, None, "send the body with a Content-Length")
            return None
        try:
            length = int(raw_len)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, None, "Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            # A modest overshoot is read and dropped so the client, still sending, reliably
            # gets the 413 instead of a connection reset; a huge body is not worth reading.
            if length <= 4 * MAX_BODY_BYTES:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            raise ApiError(413, None, f"body over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, None, f"Content-Type must be application/json, got "
                           f"{ctype or 'none'!r}")
        try:
            text = raw.decode("utf-8")
            if text.startswith("\ufeff"):  # json.loads' own check, kept for the same message
                raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)",
                                           text, 0)
            return _JSON_DECODER.decode(text)
        except (UnicodeDecodeError, ValueError) as e:
            raise ApiError(400, None, f"malformed JSON: {e}") from None

    def _check_token(self) -> None:
        token = self.server.api_token
        if not token:
            return
        given = self.headers.get(TOKEN_HEADER)
        if given is None:
            scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
            given = value if scheme.lower() == "bearer" else ""
        # Digests first: compare_digest's time then tells neither how much of the token matched
        # nor how long it is.
        if not hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(),
                                   hashlib.sha256(token.encode()).digest()):
            raise ApiError(401, None, f"write endpoints need Authorization: Bearer <token> "
                           f"(or {TOKEN_HEADER}: <token> with basic auth)")

    def _json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        body = _JSON_ENCODER.encode(payload).encode()
        self._send(HTTPStatus(status), body, "application/json", extra)

    def _send(self, status: HTTPStatus, body: bytes, ctype: str,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        # The request line only: headers (tokens, passwords) never reach the log.
        if log.isEnabledFor(logging.DEBUG):  # formatted per request otherwise, for nothing
            log.debug("%s %s", self.address_string(), format % args)


class ExporterHTTPServer(ThreadingHTTPServer):
    # A stuck handler must never keep the process alive: drain() bounds the wait itself.
    daemon_threads = True

    def __init__(self, host: str, port: int, store: SnapshotStore, api: Api | None = None,
                 api_token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 basic_auth: BasicAuth | None = None,
                 handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.store = store
        self.api = api
        self.api_token = api_token
        self.basic_auth = basic_auth
        self.ssl_context = ssl_context
        self.handshake_timeout_s = handshake_timeout_s
        self._conn_lock = threading.Lock()
        self._conns: dict[Any, threading.Thread] = {}  # connection -> its handler thread
        self._busy: set[Any] = set()  # connections with a request in flight
        self._draining = False
        self._serving: threading.Thread | None = None
        if ssl_context is not None:
            # The handshake is deferred to the connection's own thread (finish_request): done
            # in accept(), one slow or silent client would stall every other connection.
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True,
                                                  do_handshake_on_connect=False)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.settimeout(self.handshake_timeout_s)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as e:
                # Plain HTTP on the TLS port, a scanner, a client that never speaks: close this
                # connection (process_request_thread does) and keep serving the others.
                log.debug("%s: TLS handshake failed: %s", client_address[0],
                          getattr(e, "reason", None) or type(e).__name__)
                return
            request.settimeout(None)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to stderr. A dropped connection is routine;
        # anything else is a bug, logged with its traceback but no request data (the headers
        # may carry credentials).
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("%s: connection error: %s", client_address[0], type(exc).__name__)
        else:
            log.error("%s: request failed", client_address[0], exc_info=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        t.start()
        self._serving = t
        return t

    # --- graceful stop ---------------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                             name="http-conn", daemon=True)
        with self._conn_lock:
            self._conns[request] = t
        t.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._conns.pop(request, None)
                self._busy.discard(request)

    def request_started(self, conn: Any) -> None:
        with self._conn_lock:
            self._busy.add(conn)

    def request_finished(self, conn: Any) -> bool:
        """True when the server is draining, so the connection must close."""
        with self._conn_lock:
            self._busy.discard(conn)
            return self._draining

    def drain(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, close idle keep-alive connections, let requests in flight finish
        for up to `timeout_s`, then close what is left and the listening socket."""
        if self._serving is not None:
            self.shutdown()  # serve_forever has returned: every accepted connection is known
        with self._conn_lock:
            self._draining = True
            conns = dict(self._conns)
            idle = [c for c in conns if c not in self._busy]
        # An idle connection's thread waits for a next request (Prometheus keeps connections
        # open): end its wait with EOF. socket.socket.shutdown, not SSLSocket's, which would
        # drop the TLS state under the other thread.
        for c in idle:
            _shutdown(c, socket.SHUT_RD)
        deadline = time.monotonic() + timeout_s
        for t in conns.values():
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [c for c, t in conns.items() if t.is_alive()]
        if stuck:
            log.warning("%d request(s) still running after %.0f s; closing them", len(stuck),
                        timeout_s)
            for c in stuck:
                _shutdown(c, socket.SHUT_RDWR)
        self.server_close()


def _shutdown(conn: Any, how: int) -> None:
    with contextlib.suppress(OSError):  # the client may have closed it already
        socket.socket.shutdown(conn, how)
