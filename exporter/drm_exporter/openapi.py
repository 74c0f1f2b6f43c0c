"""The OpenAPI 3.0 document of the coordinator API, built from the route table so the two
cannot drift (a test checks every route is described and nothing else is)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from . import __version__
from .api import (
    MAX_CPU_CORES,
    MAX_GPU_MEMORY_BYTES,
    MAX_GPUS,
    MAX_MEMORY_BYTES,
    MAX_MIG_DEVICES,
    NAME_RE,
    Route,
)
from .metrics import CAPACITY_SOURCES


def _num(lo: float, hi: float, integer: bool = False, exclusive_min: bool = False,
         desc: str = "") -> dict[str, Any]:
    s: dict[str, Any] = {"type": "integer" if integer else "number", "minimum": lo,
                         "maximum": hi}
    if exclusive_min:
        s["exclusiveMinimum"] = True
    if desc:
        s["description"] = desc
    return s


NAME = {"type": "string", "pattern": NAME_RE.pattern}

SCHEMAS: dict[str, dict[str, Any]] = {
    "GpuReading": {
        "type": "object", "additionalProperties": False, "required": ["index"],
        "properties": {
            "index": _num(0, MAX_GPUS - 1, True), "uuid": {"type": "string"},
            "name": {"type": "string"}, "driver_version": {"type": "string"},
            "mig_mode": {"type": "string", "enum": ["enabled", "disabled"]},
            "up": {"type": "boolean"},
            "utilization_ratio": _num(0, 1),
            "memory_total_bytes": _num(0, MAX_GPU_MEMORY_BYTES, True),
            "memory_used_bytes": _num(0, MAX_GPU_MEMORY_BYTES, True,
                                      desc="at most memory_total_bytes"),
            "temperature_celsius": _num(-50, 150), "power_watts": _num(0, 5000),
            "mig_devices": {"type": "array", "maxItems": MAX_MIG_DEVICES,
                            "description": "only with mig_mode enabled; indices unique",
                            "items": {"$ref": "#/components/schemas/MigReading"}},
        },
    },
    "MigReading": {
        "type": "object", "additionalProperties": False, "required": ["index"],
        "properties": {
            "index": _num(0, MAX_MIG_DEVICES - 1, True, desc="the NVML slot on the parent GPU"),
            "uuid": {"type": "string"},
            "memory_total_bytes": _num(0, MAX_GPU_MEMORY_BYTES, True),
            "memory_used_bytes": _num(0, MAX_GPU_MEMORY_BYTES, True,
                                      desc="at most memory_total_bytes"),
        },
    },
    "Usage": {
        "type": "object", "additionalProperties": False,
        "description": "Measured usage; an absent field is not measured (exported as absent).",
        "properties": {
            "cpu_utilization_ratio": _num(0, 1),
            "memory_used_bytes": _num(0, MAX_MEMORY_BYTES, True,
                                      desc="at most the worker's memory_total_bytes"),
            "gpus": {"type": "array", "items": {"$ref": "#/components/schemas/GpuReading"}},
        },
    },
    "WorkerSpec": {
        "type": "object", "additionalProperties": False,
        "required": ["pool", "provider", "cpu_cores", "memory_total_bytes"],
        "properties": {
            "pool": NAME, "provider": NAME, "region": NAME, "instance_type": NAME,
            "hostname": {"type": "string"},
            "cpu_cores": _num(0, MAX_CPU_CORES, exclusive_min=True),
            "memory_total_bytes": _num(0, MAX_MEMORY_BYTES, True, exclusive_min=True),
            "gpus": _num(0, MAX_GPUS, True, desc="whole GPUs, indexed 0..gpus-1"),
            "metrics_url": {"type": "string", "format": "uri",
                            "description": "the agent's own /metrics, listed by /sd"},
            "capacity_source": {
                "description": "where cpu_cores and memory_total_bytes come from: the machine "
                               "or a container's cgroup; one value stands for both",
                "oneOf": [
                    {"type": "string", "enum": list(CAPACITY_SOURCES)},
                    {"type": "object", "additionalProperties": False,
                     "required": ["cpu", "memory"],
                     "properties": {"cpu": {"type": "string", "enum": list(CAPACITY_SOURCES)},
                                    "memory": {"type": "string",
                                               "enum": list(CAPACITY_SOURCES)}}}]},
            "usage": {"$ref": "#/components/schemas/Usage"},
        },
    },
    "ReservationRequest": {
        "type": "object", "additionalProperties": False, "required": ["task_id"],
        "description": "Give `worker` to reserve there, else `pool` (or nothing) for best fit.",
        "properties": {
            "task_id": NAME, "cpu_cores": _num(0, MAX_CPU_CORES),
            "memory_bytes": _num(0, MAX_MEMORY_BYTES, True), "gpus": _num(0, MAX_GPUS, True),
            "worker": NAME, "pool": NAME,
        },
    },
    "Pending": {
        "type": "object", "additionalProperties": False, "required": ["tasks_pending"],
        "properties": {"tasks_pending": _num(0, 10**9, True)},
    },
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["status", "message"],
                                 "properties": {
                                     "status": {"type": "integer"},
                                     "field": {"type": "string", "nullable": True},
                                     "message": {"type": "string"}}}},
    },
}


def _error(desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}


def document(routes: Iterable[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": f"{r.method.lower()}_{re.sub(r'[^a-z]+', '_', r.template[8:])}"
                           .strip("_"),
            "responses": {str(r.ok): {"description": "OK", "content": {
                "application/json": {"schema": {"type": "object"}}}},
                "400": _error("invalid input; `field` names the culprit"),
                "404": _error("unknown worker, pool, task or route")},
        }
        params = [{"name": p, "in": "path", "required": True, "schema": NAME}
                  for p in re.findall(r"\{(\w+)\}", r.template)]
        params += [{"name": q.name, "in": "query", "required": False,
                    "description": q.description,
                    "schema": _num(q.minimum, q.maximum, q.type == "integer")} for q in r.query]
        if params:
            op["parameters"] = params
        if r.body:
            op["requestBody"] = {"required": r.method != "POST" or r.body != "Usage",
                                 "content": {"application/json": {
                                     "schema": {"$ref": f"#/components/schemas/{r.body}"}}}}
            op["responses"]["413"] = _error("body over the size limit")
            op["responses"]["415"] = _error("content type is not application/json")
        if r.write:
            op["security"] = [{"bearer": []}]
            op["responses"]["401"] = _error("missing or wrong bearer token")
            op["responses"]["409"] = _error("conflict: duplicate task or not enough capacity")
        paths.setdefault(r.template, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "drm-exporter coordinator API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
