"""Clients of the coordinator API: the same operations over HTTP (agents, remote coordinators)
or in-process (a coordinator that embeds the engine, and the simulator). Both go through
`Api.handle`, so both get the same validation and the same ApiError."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict
from typing import Any

from .api import API_PREFIX, Api, ApiError
from .engine import Engine
from .fleet import Usage, WorkerSpec


class CoordinatorUnreachable(ConnectionError):
    """No HTTP answer at all (refused, timed out, TLS failure)."""


def spec_body(spec: WorkerSpec, usage: Usage | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pool": spec.pool, "provider": spec.provider, "region": spec.region,
        "instance_type": spec.instance_type, "hostname": spec.hostname,
        "cpu_cores": spec.cpu_cores, "memory_total_bytes": spec.memory_total_bytes,
        "gpus": spec.gpus,
    }
    if spec.metrics_url:
        body["metrics_url"] = spec.metrics_url
    if spec.cpu_source:
        body["capacity_source"] = {"cpu": spec.cpu_source, "memory": spec.memory_source}
    if usage is not None:
        body["usage"] = usage_body(usage)
    return body


def usage_body(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if usage.cpu_utilization_ratio is not None:
        out["cpu_utilization_ratio"] = usage.cpu_utilization_ratio
    if usage.memory_used_bytes is not None:
        out["memory_used_bytes"] = usage.memory_used_bytes
    if usage.gpus:
        out["gpus"] = [_drop_unset(asdict(g)) for g in usage.gpus]
    return out


def _drop_unset(d: dict[str, Any]) -> dict[str, Any]:
    """None (not measured) and an empty list are left out, so a GPU without MIG devices reads
    the same to a coordinator that predates them."""
    return {k: [_drop_unset(x) for x in v] if isinstance(v, list | tuple) else v
            for k, v in d.items() if v is not None and v != () and v != []}


class Client:
    """The coordinator operations; subclasses only move a request and its answer."""

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, str] | None = None) -> Any:
        raise NotImplementedError

    def put_worker(self, spec: WorkerSpec, usage: Usage | None = None) -> bool:
        """Register or update; True when the coordinator did not know the worker."""
        return bool(self.request("PUT", f"{API_PREFIX}/workers/{spec.worker}",
                                 spec_body(spec, usage))["created"])

    def heartbeat(self, worker: str, usage: Usage | None = None) -> None:
        self.request("POST", f"{API_PREFIX}/workers/{worker}/heartbeat",
                     usage_body(usage) if usage is not None else None)

    def deregister(self, worker: str) -> list[str]:
        return list(self.request("DELETE", f"{API_PREFIX}/workers/{worker}")["released"])

    def reserve(self, task_id: str, cpu_cores: float = 0, memory_bytes: int = 0, gpus: int = 0,
                worker: str | None = None, pool: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"task_id": task_id, "cpu_cores": cpu_cores,
                                "memory_bytes": memory_bytes, "gpus": gpus}
        if worker:
            body["worker"] = worker
        if pool:
            body["pool"] = pool
        return dict(self.request("POST", f"{API_PREFIX}/reservations", body))

    def release(self, task_id: str) -> dict[str, Any]:
        return dict(self.request("DELETE", f"{API_PREFIX}/reservations/{task_id}"))

    def set_tasks_pending(self, pool: str, count: int) -> None:
        self.request("PUT", f"{API_PREFIX}/pools/{pool}/pending", {"tasks_pending": count})

    def workers(self, pool: str | None = None) -> list[dict[str, Any]]:
        return list(self.request("GET", f"{API_PREFIX}/workers",
                                 query={"pool": pool} if pool else None)["workers"])

    def reservations(self) -> list[dict[str, Any]]:
        return list(self.request("GET", f"{API_PREFIX}/reservations")["reservations"])

    def pools(self) -> list[dict[str, Any]]:
        return list(self.request("GET", f"{API_PREFIX}/pools")["pools"])

    def history(self, pool: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = {"limit": str(limit)} | ({"pool": pool} if pool else {})
        return list(self.request("GET", f"{API_PREFIX}/scaling/history", query=q)["decisions"])


class LocalClient(Client):
    """In-process: JSON-shaped dicts straight into Api.handle, no socket."""

    def __init__(self, api: Api) -> None:
        self.api = api

    @classmethod
    def for_engine(cls, engine: Engine) -> LocalClient:
        return cls(Api(engine))

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, str] | None = None) -> Any:
        # A JSON round trip, so in-process callers cannot pass what HTTP could not carry.
        wire = json.loads(json.dumps(body, allow_nan=False)) if body is not None else None
        return self.api.handle(method, path, wire, query)[1]


class HttpClient(Client):
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None,
                 basic_auth: tuple[str, str] | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.token, self.timeout_s, self.ssl_context = token, timeout_s, ssl_context
        self.basic_auth = basic_auth

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, str] | None = None) -> Any:
        url = self.base + path + (("?" + urllib.parse.urlencode(query)) if query else "")
        data = json.dumps(body, allow_nan=False).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if self.basic_auth:
            import base64
            cred = base64.b64encode(":".join(self.basic_auth).encode()).decode()
            req.add_header("Authorization", f"Basic {cred}")
            if self.token:  # Authorization now carries the basic credentials
                req.add_header("X-DRM-Token", self.token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s,
                                        context=self.ssl_context) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read())["error"]
                raise ApiError(e.code, err.get("field"), err.get("message", "")) from None
            except (ValueError, KeyError, TypeError):
                raise ApiError(e.code, None, f"HTTP {e.code} from {self.base}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CoordinatorUnreachable(f"{self.base}: {reason}") from None
