"""A small Prometheus HTTP API client on urllib: instant and range queries, nothing more.

Queries go out as form-encoded POSTs so long PromQL never hits a URL length limit. Two kinds of
failure are told apart because the renderer treats them differently:

* :class:`PrometheusUnreachable` — no usable answer at all (connection refused, DNS, timeout, a
  server that is not Prometheus). Rendering stops: every panel would be empty.
* :class:`PrometheusQueryError` — Prometheus answered and rejected this one query (bad PromQL,
  execution error). The renderer records it against the panel and carries on.

Both messages name the URL that was called.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_TIMEOUT_S = 10.0
_USER_AGENT = "drm-exporter-renderer"


class PrometheusError(RuntimeError):
    """Any failure talking to Prometheus."""


class PrometheusUnreachable(PrometheusError):
    """Prometheus could not be reached or did not answer like Prometheus."""


class PrometheusQueryError(PrometheusError):
    """Prometheus answered, with an error for this query."""


@dataclass(frozen=True)
class Series:
    """One series of a query result; an instant result has exactly one point."""

    labels: dict[str, str]
    timestamps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class QueryClient(Protocol):
    """What the renderer needs from Prometheus; tests and benchmarks substitute fakes."""

    def query(self, expr: str, time: float) -> list[Series]: ...

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]: ...


def _points(pairs: list) -> tuple[list[float], list[float]]:
    # Prometheus sends values as strings ("NaN", "+Inf" included); float() parses them all.
    return [float(p[0]) for p in pairs], [float(p[1]) for p in pairs]


def parse_result(data: dict) -> list[Series]:
    """Series from the ``data`` object of a query or query_range answer."""
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "matrix":
        return [Series(dict(item.get("metric") or {}), *_points(item.get("values") or []))
                for item in result or []]
    if kind == "vector":
        return [Series(dict(item.get("metric") or {}), *_points([item["value"]]))
                for item in result or []]
    if kind == "scalar" and result:
        return [Series({}, *_points([result]))]
    if kind == "string":
        return []  # a string result has no number to draw
    raise PrometheusError(f"unexpected resultType {kind!r}")


class PrometheusClient:
    """Queries one Prometheus server's HTTP API (``/api/v1/...``)."""

    def __init__(self, base_url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"Prometheus URL must be http(s)://host:port, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"PrometheusClient({self.base_url!r})"

    def _call(self, path: str, params: dict[str, str] | None, what: str) -> dict:
        url = self.base_url + path
        data = urllib.parse.urlencode(params).encode() if params is not None else None
        request = urllib.request.Request(url, data=data, headers={
            "Accept": "application/json", "User-Agent": _USER_AGENT,
            **({"Content-Type": "application/x-www-form-urlencoded"} if data else {}),
        })
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            if isinstance(payload, dict) and payload.get("status") == "error":
                raise PrometheusQueryError(
                    f"Prometheus at {url} rejected {what}: "
                    f"{payload.get('errorType', 'error')}: {payload.get('error', '')}") from None
            snippet = body[:200].decode("utf-8", "replace").strip()
            raise PrometheusUnreachable(
                f"{url} answered HTTP {exc.code} ({snippet!r}); is this a Prometheus server?"
            ) from None
        except TimeoutError:
            raise PrometheusUnreachable(
                f"Prometheus at {url} did not answer within {self.timeout_s:g}s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise PrometheusUnreachable(
                    f"Prometheus at {url} did not answer within {self.timeout_s:g}s") from None
            raise PrometheusUnreachable(f"cannot reach Prometheus at {url}: {reason}") from None
        except OSError as exc:  # connection reset and friends
            raise PrometheusUnreachable(f"cannot reach Prometheus at {url}: {exc}") from None
        try:
            payload = json.loads(body)
        except ValueError:
            raise PrometheusUnreachable(
                f"{url} did not answer with JSON; is this a Prometheus server?") from None
        if not isinstance(payload, dict) or payload.get("status") != "success":
            error = payload.get("error") if isinstance(payload, dict) else payload
            raise PrometheusQueryError(f"Prometheus at {url} rejected {what}: {error}")
        return payload.get("data") or {}

    def check(self) -> None:
        """Raise :class:`PrometheusUnreachable` unless the server answers its API."""
        self._call("/api/v1/status/buildinfo", None, "the build info request")

    def query(self, expr: str, time: float) -> list[Series]:
        data = self._call("/api/v1/query", {"query": expr, "time": f"{time:.3f}"},
                          f"query {expr!r}")
        return parse_result(data)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        data = self._call("/api/v1/query_range",
                          {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                           "step": f"{step:g}"}, f"query {expr!r}")
        return parse_result(data)
