"""The HTTP server: /metrics (text format, gzip when asked), /healthz, /sd (Prometheus http_sd)
and the coordinator API under /api/v1. Handlers only read the published snapshot or call the
API; they never collect. Every error is JSON naming the field; never a traceback."""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .api import API_PREFIX, Api, ApiError
from .exposition import CONTENT_TYPE, SnapshotStore

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20

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

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = urlsplit(self.path).path
        if path == "/metrics":
            gz = accepts_gzip(self.headers.get("Accept-Encoding"))
            self._send(HTTPStatus.OK, self.server.store.body(gz), CONTENT_TYPE,
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
        self._api("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._api("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._api("DELETE")

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
                       {"WWW-Authenticate": "Bearer"} if e.status == 401 else None)
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
            self.close_connection = True  # do not read a huge body just to throw it away
            raise ApiError(413, None, f"body over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, None, f"Content-Type must be application/json, got "
                           f"{ctype or 'none'!r}")
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as e:
            raise ApiError(400, None, f"malformed JSON: {e}") from None

    def _check_token(self) -> None:
        token = self.server.api_token
        if not token:
            return
        given = self.headers.get("Authorization") or ""
        scheme, _, value = given.partition(" ")
        # compare_digest: the time taken does not tell how much of the token matched
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(),
                                                                 token.encode()):
            raise ApiError(401, None, "write endpoints need Authorization: Bearer <token>")

    def _json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
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
        log.debug("%s %s", self.address_string(), format % args)


class ExporterHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, store: SnapshotStore, api: Api | None = None,
                 api_token: str | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.store = store
        self.api = api
        self.api_token = api_token

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="http", daemon=True)
        t.start()
        return t
