"""The coordinator API: JSON in, JSON out, versioned under /api/v1.

`Api.handle` is transport-free: the HTTP server decodes a request and calls it, and the
in-process client (client.LocalClient) calls it directly, so a coordinator embedding the engine,
the simulator and a remote agent all pass the same validation. Every refusal is an ApiError
naming the field; the engine is only called with values that passed validation, so a refused
request changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engine import Engine, UnknownWorker, WorkerView
from .explain import explain, state_from_view
from .fleet import GpuReading, MigReading, Usage, WorkerSpec
from .metrics import CAPACITY_SOURCES
from .reservations import InsufficientCapacity, Reservation, ReservationError

API_PREFIX = "/api/v1"

# Bounds that catch absurd input (10^18 cores) while leaving room for any real machine.
MAX_CPU_CORES = 4096
MAX_MEMORY_BYTES = 2**50  # 1 PiB
MAX_GPUS = 64
MAX_GPU_MEMORY_BYTES = 2**40
MAX_MIG_DEVICES = 16  # NVML slots per GPU (7 on an A100/H100), with room to spare
MAX_HISTORY = 1000
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")
URL_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[^\s]*)?$")


class ApiError(Exception):
    """A refused request: HTTP status, the offending field (or None) and a message."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


# --- validation --------------------------------------------------------------------------------
def _object(v: Any, field: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ApiError(400, field or None, f"{field or 'body'} must be a JSON object")
    return v


def _only(d: dict[str, Any], allowed: set[str], prefix: str = "") -> None:
    if d.keys() <= allowed:  # the usual case, in one C-level set comparison
        return
    for k in d:
        if k not in allowed:
            raise ApiError(400, prefix + k, f"unknown field {prefix + k!r}; known: "
                           f"{', '.join(sorted(allowed))}")


def _number(d: dict[str, Any], key: str, lo: float, hi: float, *, prefix: str = "",
            required: bool = True, integer: bool = False, lo_open: bool = False
            ) -> Any:
    # Fast path for what a valid report holds, a plain int or float in range: a report
    # carries about a hundred numbers, so this runs at 10^5/s. Anything else (bool, NaN, an
    # integral float for an integer, out of range) takes the checks below and fails or
    # converts exactly as before.
    v = d.get(key)
    t = type(v)
    if (t is int or (t is float and not integer)) and lo <= v <= hi and not (
            lo_open and v == lo):
        return v
    f = prefix + key
    if v is None:
        if required:
            raise ApiError(400, f, f"{f} is required")
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(400, f, f"{f} must be a number, got {type(v).__name__}")
    if integer and not isinstance(v, int):
        if not (isinstance(v, float) and v.is_integer()):
            raise ApiError(400, f, f"{f} must be an integer")
        v = int(v)
    if isinstance(v, float) and not math.isfinite(v):
        raise ApiError(400, f, f"{f} must be finite")
    if v < lo or v > hi or (lo_open and v == lo):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ApiError(400, f, f"{f} must be in {rng}, got {v:g}")
    return v


def _string(d: dict[str, Any], key: str, pattern: re.Pattern[str] = NAME_RE, *,
            prefix: str = "", required: bool = True, default: str = "") -> str:
    v = d.get(key)
    if type(v) is str and pattern.match(v):  # the usual case; errors are built below
        return v
    f = prefix + key
    if v is None:
        if required:
            raise ApiError(400, f, f"{f} is required")
        return default
    if not isinstance(v, str):
        raise ApiError(400, f, f"{f} must be a string, got {type(v).__name__}")
    if not pattern.match(v):
        raise ApiError(400, f, f"{f} {v[:64]!r} does not match {pattern.pattern}")
    return v


def _path_name(v: str, field: str) -> str:
    if not NAME_RE.match(v):
        raise ApiError(400, field, f"{field} {v[:64]!r} does not match {NAME_RE.pattern}")
    return v


SPEC_FIELDS = {"pool", "provider", "region", "instance_type", "hostname", "cpu_cores",
               "memory_total_bytes", "gpus", "metrics_url", "capacity_source", "usage"}
CAPACITY_SOURCE_FIELDS = {"cpu", "memory"}
# Compiled once: re.compile's cache lookup per GPU field was a visible share of a report.
GPU_UUID_RE = re.compile(r"^[\w.:-]{0,128}$")
GPU_NAME_RE = re.compile(r"^[\w .:()/-]{0,128}$")
DRIVER_VERSION_RE = re.compile(r"^[\w.-]{0,64}$")
MIG_MODE_RE = re.compile(r"^(enabled|disabled)$")
MIG_UUID_RE = re.compile(r"^[\w.:/-]{0,128}$")
CAPACITY_SOURCE_RE = re.compile(rf"^({'|'.join(CAPACITY_SOURCES)})$")
USAGE_FIELDS = {"cpu_utilization_ratio", "memory_used_bytes", "gpus"}
GPU_FIELDS = {"index", "uuid", "name", "driver_version", "mig_mode", "up", "utilization_ratio",
              "memory_total_bytes", "memory_used_bytes", "temperature_celsius", "power_watts",
              "mig_devices"}
MIG_FIELDS = {"index", "uuid", "memory_total_bytes", "memory_used_bytes"}
RESERVATION_FIELDS = {"task_id", "cpu_cores", "memory_bytes", "gpus", "worker", "pool"}


def parse_spec(worker: str, body: Any) -> tuple[WorkerSpec, Usage | None]:
    d = _object(body, "")
    _only(d, SPEC_FIELDS)
    spec = WorkerSpec(
        worker=_path_name(worker, "worker"),
        pool=_string(d, "pool"),
        provider=_string(d, "provider"),
        region=_string(d, "region", required=False, default="unknown"),
        instance_type=_string(d, "instance_type", required=False, default="unknown"),
        hostname=_string(d, "hostname", HOSTNAME_RE, required=False, default=worker),
        cpu_cores=_number(d, "cpu_cores", 0, MAX_CPU_CORES, lo_open=True),
        memory_total_bytes=_number(d, "memory_total_bytes", 0, MAX_MEMORY_BYTES, integer=True,
                                   lo_open=True),
        gpus=_number(d, "gpus", 0, MAX_GPUS, integer=True, required=False) or 0,
        metrics_url=_string(d, "metrics_url", URL_RE, required=False),
        **_capacity_source(d),
    )
    usage = parse_usage(d["usage"], spec, "usage.") if d.get("usage") is not None else None
    return spec, usage


def _capacity_source(d: dict[str, Any]) -> dict[str, str]:
    """`{"cpu": SOURCE, "memory": SOURCE}`, or one SOURCE string for both."""
    v = d.get("capacity_source")
    if v is None:
        return {}
    if isinstance(v, str):
        both = _string(d, "capacity_source", CAPACITY_SOURCE_RE)
        return {"cpu_source": both, "memory_source": both}
    p = "capacity_source."
    obj = _object(v, "capacity_source")
    _only(obj, CAPACITY_SOURCE_FIELDS, p)
    return {"cpu_source": _string(obj, "cpu", CAPACITY_SOURCE_RE, prefix=p),
            "memory_source": _string(obj, "memory", CAPACITY_SOURCE_RE, prefix=p)}


def parse_usage(body: Any, spec: WorkerSpec | None, prefix: str = "") -> Usage:
    d = _object(body, prefix.rstrip("."))
    _only(d, USAGE_FIELDS, prefix)
    total = spec.memory_total_bytes if spec else MAX_MEMORY_BYTES
    cpu = _number(d, "cpu_utilization_ratio", 0, 1, prefix=prefix, required=False)
    mem = _number(d, "memory_used_bytes", 0, total, prefix=prefix, integer=True,
                  required=False)
    gpus_raw = d.get("gpus") or []
    if not isinstance(gpus_raw, list):
        raise ApiError(400, prefix + "gpus", f"{prefix}gpus must be a list")
    limit = spec.gpus if spec else MAX_GPUS
    if len(gpus_raw) > limit:
        raise ApiError(400, prefix + "gpus", f"{prefix}gpus lists {len(gpus_raw)} GPUs, the "
                       f"worker has {limit}")
    gpus: list[GpuReading] = []
    seen: set[int] = set()
    for i, g in enumerate(gpus_raw):
        p = f"{prefix}gpus[{i}]."
        gd = _object(g, p.rstrip("."))
        _only(gd, GPU_FIELDS, p)
        up = gd.get("up", True)
        if not isinstance(up, bool):
            raise ApiError(400, p + "up", f"{p}up must be true or false")
        mtotal = _number(gd, "memory_total_bytes", 0, MAX_GPU_MEMORY_BYTES, prefix=p,
                         integer=True, required=False)
        reading = GpuReading(
            index=_number(gd, "index", 0, max(0, limit - 1), prefix=p, integer=True),
            uuid=_string(gd, "uuid", GPU_UUID_RE, prefix=p, required=False),
            name=_string(gd, "name", GPU_NAME_RE, prefix=p, required=False),
            driver_version=_string(gd, "driver_version", DRIVER_VERSION_RE, prefix=p,
                                   required=False),
            mig_mode=_string(gd, "mig_mode", MIG_MODE_RE, prefix=p, required=False,
                             default="disabled"),
            up=up,
            utilization_ratio=_number(gd, "utilization_ratio", 0, 1, prefix=p, required=False),
            memory_total_bytes=mtotal,
            memory_used_bytes=_number(gd, "memory_used_bytes", 0,
                                      mtotal if mtotal is not None else MAX_GPU_MEMORY_BYTES,
                                      prefix=p, integer=True, required=False),
            temperature_celsius=_number(gd, "temperature_celsius", -50, 150, prefix=p,
                                        required=False),
            power_watts=_number(gd, "power_watts", 0, 5000, prefix=p, required=False),
            mig_devices=_parse_mig(gd.get("mig_devices"), p))
        if reading.mig_devices and reading.mig_mode != "enabled":
            raise ApiError(400, p + "mig_devices", f"{p}mig_devices needs mig_mode \"enabled\"")
        if reading.index in seen:
            raise ApiError(400, p + "index", f"{p}index {reading.index} is listed twice")
        seen.add(reading.index)
        gpus.append(reading)
    return Usage(cpu, mem, tuple(gpus))


def _parse_mig(raw: Any, prefix: str) -> tuple[MigReading, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_MIG_DEVICES:
        raise ApiError(400, prefix + "mig_devices", f"{prefix}mig_devices must be a list of at "
                       f"most {MAX_MIG_DEVICES}")
    out: list[MigReading] = []
    for k, m in enumerate(raw):
        p = f"{prefix}mig_devices[{k}]."
        md = _object(m, p.rstrip("."))
        _only(md, MIG_FIELDS, p)
        total = _number(md, "memory_total_bytes", 0, MAX_GPU_MEMORY_BYTES, prefix=p,
                        integer=True, required=False)
        d = MigReading(
            index=_number(md, "index", 0, MAX_MIG_DEVICES - 1, prefix=p, integer=True),
            uuid=_string(md, "uuid", MIG_UUID_RE, prefix=p, required=False),
            memory_total_bytes=total,
            memory_used_bytes=_number(md, "memory_used_bytes", 0,
                                      total if total is not None else MAX_GPU_MEMORY_BYTES,
                                      prefix=p, integer=True, required=False))
        # The index is the mig_instance label: a repeat would repeat a label set in /metrics.
        if any(x.index == d.index for x in out):
            raise ApiError(400, p + "index", f"{p}index {d.index} is listed twice")
        out.append(d)
    return tuple(out)


# --- serialisation -----------------------------------------------------------------------------
def worker_json(w: WorkerView) -> dict[str, Any]:
    s, u = w.spec, w.usage
    return {
        "worker": s.worker, "pool": s.pool, "provider": s.provider, "region": s.region,
        "instance_type": s.instance_type, "hostname": s.hostname, "state": w.state,
        "up": w.up, "last_report": w.last_report, "cpu_cores": s.cpu_cores,
        "cpu_allocated_cores": w.cpu_allocated, "cpu_utilization_ratio": u.cpu_utilization_ratio,
        "memory_total_bytes": s.memory_total_bytes, "memory_allocated_bytes": w.memory_allocated,
        "memory_used_bytes": u.memory_used_bytes, "gpus": s.gpus,
        "gpus_allocated": sorted(w.gpus_allocated), "tasks_running": w.tasks_running,
        "metrics_url": s.metrics_url,
        "capacity_source": {"cpu": s.cpu_source, "memory": s.memory_source}
        if s.cpu_source else None,
    }


def reservation_json(r: Reservation) -> dict[str, Any]:
    return {"task_id": r.task_id, "worker": r.worker, "cpu_cores": r.cpu_cores,
            "memory_bytes": r.memory_bytes, "gpu_indices": list(r.gpu_indices),
            "created_at": r.created_at}


# --- routing -----------------------------------------------------------------------------------
Handler = Callable[["Api", dict[str, str], Any, dict[str, str]], tuple[int, Any]]


@dataclass(frozen=True)
class QueryParam:
    """An optional query parameter, for the OpenAPI document."""
    name: str
    type: str  # "number" or "integer"
    description: str
    minimum: float
    maximum: float


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # /api/v1/workers/{worker}
    handler: Handler
    summary: str
    body: str | None = None  # schema name in the OpenAPI document
    ok: int = 200
    query: tuple[QueryParam, ...] = ()

    @property
    def write(self) -> bool:
        return self.method != "GET"

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        # Cached: every request tries each route's pattern, and rebuilding it (re.sub plus the
        # re module's cache lookup) was a visible share of a report's cost.
        pat = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template)
        return re.compile(f"^{pat}$")


class Api:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def handle(self, method: str, path: str, body: Any = None,
               query: dict[str, str] | None = None) -> tuple[int, Any]:
        """Route one request. Returns (status, JSON-able payload); raises ApiError."""
        allowed = []
        for route in ROUTES:
            m = route.regex.match(path)
            if m is None:
                continue
            allowed.append(route.method)
            if route.method == method:
                return route.handler(self, m.groupdict(), body, query or {})
        if allowed:
            raise ApiError(405, None, f"{method} is not allowed on {path}; allowed: "
                           f"{', '.join(allowed)}")
        raise ApiError(404, None, f"no route {path}")

    # workers -----------------------------------------------------------------------------------
    def list_workers(self, _: dict[str, str], __: Any, q: dict[str, str]) -> tuple[int, Any]:
        pool = q.get("pool")
        return 200, {"workers": [worker_json(w) for w in self.engine.view().workers
                                 if pool is None or w.spec.pool == pool]}

    def get_worker(self, p: dict[str, str], _: Any, __: dict[str, str]) -> tuple[int, Any]:
        w = self.engine.worker(p["worker"])
        if w is not None:
            return 200, worker_json(w)
        raise ApiError(404, "worker", f"unknown worker {p['worker']!r}")

    def put_worker(self, p: dict[str, str], body: Any, _: dict[str, str]) -> tuple[int, Any]:
        spec, usage = parse_spec(p["worker"], body)
        try:
            created = self.engine.register(spec, usage)
        except InsufficientCapacity as e:
            raise ApiError(409, e.field, str(e)) from None
        return (201 if created else 200), {"worker": spec.worker, "created": created}

    def heartbeat(self, p: dict[str, str], body: Any, _: dict[str, str]) -> tuple[int, Any]:
        wid = _path_name(p["worker"], "worker")
        view = self.engine.worker(wid)
        if view is None:
            raise ApiError(404, "worker", f"unknown worker {wid!r}: register it with PUT "
                           f"{API_PREFIX}/workers/{wid}")
        usage = parse_usage(body, view.spec) if body is not None else view.usage
        try:
            self.engine.report(wid, usage)
        except UnknownWorker:  # expired between the lookup and the report
            raise ApiError(404, "worker", f"unknown worker {wid!r}") from None
        return 200, {"worker": wid}

    def delete_worker(self, p: dict[str, str], _: Any, __: dict[str, str]) -> tuple[int, Any]:
        try:
            released = self.engine.deregister(p["worker"])
        except UnknownWorker:
            raise ApiError(404, "worker", f"unknown worker {p['worker']!r}") from None
        return 200, {"worker": p["worker"], "released": [r.task_id for r in released]}

    # reservations ------------------------------------------------------------------------------
    def list_reservations(self, _: dict[str, str], __: Any, ___: dict[str, str]
                          ) -> tuple[int, Any]:
        return 200, {"reservations": [reservation_json(r) for r in self.engine.reservations()]}

    def create_reservation(self, _: dict[str, str], body: Any, __: dict[str, str]
                           ) -> tuple[int, Any]:
        d = _object(body, "")
        _only(d, RESERVATION_FIELDS)
        task_id = _string(d, "task_id")
        cpu = _number(d, "cpu_cores", 0, MAX_CPU_CORES, required=False) or 0
        mem = _number(d, "memory_bytes", 0, MAX_MEMORY_BYTES, integer=True, required=False) or 0
        gpus = _number(d, "gpus", 0, MAX_GPUS, integer=True, required=False) or 0
        worker = _string(d, "worker", required=False) or None
        pool = _string(d, "pool", required=False) or None
        if cpu == 0 and mem == 0 and gpus == 0:
            raise ApiError(400, "cpu_cores", "a reservation must hold cpu_cores, memory_bytes "
                           "or gpus")
        try:
            r = self.engine.reserve(task_id, cpu, mem, gpus, worker=worker, pool=pool)
        except UnknownWorker:
            raise ApiError(404, "worker", f"unknown worker {worker!r}") from None
        except InsufficientCapacity as e:
            raise ApiError(409, e.field, str(e)) from None
        except ReservationError as e:
            raise ApiError(409, "task_id", str(e)) from None
        return 201, reservation_json(r)

    def delete_reservation(self, p: dict[str, str], _: Any, __: dict[str, str]
                           ) -> tuple[int, Any]:
        try:
            r = self.engine.release(p["task_id"])
        except ReservationError:
            raise ApiError(404, "task_id", f"task {p['task_id']!r} holds no reservation"
                           ) from None
        return 200, reservation_json(r)

    # pools and scaling -------------------------------------------------------------------------
    def list_pools(self, _: dict[str, str], __: Any, ___: dict[str, str]) -> tuple[int, Any]:
        out = []
        for p in self.engine.view().pools:
            pol = p.policy
            out.append({
                "pool": p.pool, "workers": p.workers_by_state, "target_workers": p.target_workers,
                "tasks_pending": p.tasks_pending, "utilization": p.utilization,
                "tasks_pending_mean": p.tasks_pending_mean,
                "cooldown_active": p.cooldown_active,
                # The whole policy, so `policy explain --coordinator` can reproduce a decision.
                "policy": None if pol is None else dataclasses.asdict(pol),
            })
        return 200, {"pools": out}

    def explain_pool(self, p: dict[str, str], _: Any, q: dict[str, str]) -> tuple[int, Any]:
        """A dry run of the pool's policy on its current state (what the next evaluation
        would decide, and why), optionally with some inputs replaced. Changes nothing."""
        pool = _path_name(p["pool"], "pool")
        _only(q, {x.name for x in EXPLAIN_QUERY})
        view = next((v for v in self.engine.view().pools if v.pool == pool), None)
        if view is None or view.policy is None:
            raise ApiError(404, "pool", f"pool {pool!r} has no scaling policy")
        given: dict[str, Any] = {}
        for k, v in q.items():
            try:
                given[k] = float(v)
            except ValueError:
                raise ApiError(400, k, f"{k} must be a number, got {v[:32]!r}") from None
        bounds = {x.name: x for x in EXPLAIN_QUERY}

        def arg(name: str) -> Any:
            b = bounds[name]
            return _number(given, name, b.minimum, b.maximum, required=False,
                           integer=b.type == "integer")

        state = state_from_view(view).overridden(
            utilization=arg("utilization"), active=arg("workers"), pending=arg("pending"))
        return 200, explain(pool, view.policy, state).to_json()

    def put_pending(self, p: dict[str, str], body: Any, _: dict[str, str]) -> tuple[int, Any]:
        pool = _path_name(p["pool"], "pool")
        d = _object(body, "")
        _only(d, {"tasks_pending"})
        n = _number(d, "tasks_pending", 0, 10**9, integer=True)
        self.engine.set_tasks_pending(pool, n)
        return 200, {"pool": pool, "tasks_pending": n}

    def history(self, _: dict[str, str], __: Any, q: dict[str, str]) -> tuple[int, Any]:
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise ApiError(400, "limit", "limit must be an integer") from None
        if not 1 <= limit <= MAX_HISTORY:
            raise ApiError(400, "limit", f"limit must be in [1, {MAX_HISTORY}]")
        rows = self.engine.history(q.get("pool"), limit)
        return 200, {"decisions": [
            {"timestamp": h.timestamp, "pool": h.decision.pool, "action": h.decision.action,
             "reason": h.decision.reason, "count": h.decision.count,
             "utilization": h.decision.utilization, "workers": list(h.decision.worker_ids)}
            for h in rows]}

    def openapi(self, _: dict[str, str], __: Any, ___: dict[str, str]) -> tuple[int, Any]:
        from .openapi import document

        return 200, document(ROUTES)


def _bind(name: str) -> Handler:
    return lambda api, params, body, query: getattr(api, name)(params, body, query)


EXPLAIN_QUERY = (
    QueryParam("utilization", "number", "overall signal instead of the pool's", 0, 1),
    QueryParam("workers", "integer", "active workers instead of the pool's", 0, 10**6),
    QueryParam("pending", "number", "mean pending tasks instead of the pool's", 0, 10**9),
)

W = f"{API_PREFIX}/workers"
ROUTES: tuple[Route, ...] = (
    Route("GET", W, _bind("list_workers"), "List workers (optionally ?pool=)"),
    Route("GET", W + "/{worker}", _bind("get_worker"), "One worker's state"),
    Route("PUT", W + "/{worker}", _bind("put_worker"),
          "Register a worker or update it: labels, capacity and optionally usage", "WorkerSpec"),
    Route("POST", W + "/{worker}/heartbeat", _bind("heartbeat"),
          "Heartbeat, optionally with measured usage", "Usage"),
    Route("DELETE", W + "/{worker}", _bind("delete_worker"),
          "Deregister a worker; its reservations are released"),
    Route("GET", f"{API_PREFIX}/reservations", _bind("list_reservations"), "List reservations"),
    Route("POST", f"{API_PREFIX}/reservations", _bind("create_reservation"),
          "Reserve CPU cores, memory and whole GPUs on a named worker or by best fit",
          "ReservationRequest", ok=201),
    Route("DELETE", f"{API_PREFIX}/reservations/{{task_id}}", _bind("delete_reservation"),
          "Release a task's reservation"),
    Route("GET", f"{API_PREFIX}/pools", _bind("list_pools"), "Pools: workers, policy, signal"),
    Route("PUT", f"{API_PREFIX}/pools/{{pool}}/pending", _bind("put_pending"),
          "Set the pool's pending task count (the coordinator's queue)", "Pending"),
    Route("GET", f"{API_PREFIX}/pools/{{pool}}/explain", _bind("explain_pool"),
          "Dry-run the pool's scaling policy on its current state: the decision and the "
          "reasoning; query values replace inputs", query=EXPLAIN_QUERY),
    Route("GET", f"{API_PREFIX}/scaling/history", _bind("history"),
          "Recent scaling decisions (?pool=, ?limit=)"),
    Route("GET", f"{API_PREFIX}/openapi.json", _bind("openapi"), "This document"),
)
