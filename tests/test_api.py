"""The coordinator API over real HTTP: round trips, the OpenAPI document, bad input that
bounces off without changing anything, liveness and expiry, and concurrent use."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest
from conftest import GIB
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from drm_exporter.api import ROUTES, ApiError
from drm_exporter.client import HttpClient, LocalClient
from drm_exporter.clock import ManualClock
from drm_exporter.collectors.status import CollectorStatus
from drm_exporter.config import Config, HostWorkerConfig
from drm_exporter.engine import Engine, EngineSettings
from drm_exporter.exposition import format_text
from drm_exporter.fleet import GpuReading, Usage, WorkerSpec
from drm_exporter.scaling import PoolPolicy
from drm_exporter.service import Service
from drm_exporter.snapshot import build_families


def spec(worker: str, pool: str = "cpu", cores: float = 8, gpus: int = 0) -> WorkerSpec:
    return WorkerSpec(worker, pool, "aws", "us-east-1", "m5.2xlarge", f"{worker}.test", cores,
                      32 * GIB, gpus)


@pytest.fixture
def svc():
    cfg = Config(listen_address="127.0.0.1:0", tick_interval_s=0.1,
                 host_worker=HostWorkerConfig(enabled=False),
                 pools={"cpu": PoolPolicy(evaluation_interval_s=0.2, min_workers=1)})
    s = Service(cfg)
    s.start()
    yield s
    s.stop()


def base(svc: Service) -> str:
    return f"http://127.0.0.1:{svc.http.port}"


def raw(svc: Service, method: str, path: str, data: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(base(svc) + path, data=data, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_round_trip(svc: Service) -> None:
    c = HttpClient(base(svc))
    assert c.put_worker(spec("w1", gpus=2), Usage(0.25, 4 * GIB, (GpuReading(0, uuid="G0"),)))
    assert not c.put_worker(spec("w1", gpus=2))  # known now: an update
    c.put_worker(spec("w2", cores=4))
    [w1] = [w for w in c.workers() if w["worker"] == "w1"]
    assert (w1["cpu_cores"], w1["gpus"], w1["cpu_utilization_ratio"], w1["state"]) == (
        8, 2, 0.25, "active")
    r = c.reserve("t1", 2, GIB)  # best fit: w2 is the tighter fit for a CPU-only task
    assert r["worker"] == "w2" and r["gpu_indices"] == []
    g = c.reserve("t2", 1, GIB, gpus=2, worker="w1")
    assert g["gpu_indices"] == [0, 1]
    assert {x["task_id"] for x in c.reservations()} == {"t1", "t2"}
    c.heartbeat("w2", Usage(0.5, GIB))
    assert c.release("t1")["worker"] == "w2"
    c.set_tasks_pending("cpu", 3)
    [pool] = [p for p in c.pools() if p["pool"] == "cpu"]
    assert pool["tasks_pending"] == 3 and pool["policy"]["scale_up"] == 0.8
    assert c.deregister("w1") == ["t2"]
    assert [w["worker"] for w in c.workers()] == ["w2"]
    deadline = time.monotonic() + 5
    while not c.history("cpu"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    h = c.history("cpu", limit=1)[0]
    assert h["pool"] == "cpu" and h["action"] in ("scale_up", "scale_down", "maintain")


def test_openapi_document_matches_routes(svc: Service) -> None:
    status, doc = raw(svc, "GET", "/api/v1/openapi.json")
    assert status == 200
    validate(doc)  # a valid OpenAPI 3.0 document
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    assert described == {(r.method, r.template) for r in ROUTES}
    for r in ROUTES:
        op = doc["paths"][r.template][r.method.lower()]
        assert ("security" in op) == r.write, r.template
        if r.body:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]


J = {"Content-Type": "application/json"}
GOOD = {"pool": "cpu", "provider": "aws", "cpu_cores": 4, "memory_total_bytes": 8 * GIB,
        "gpus": 1}


def body(**over) -> bytes:
    return json.dumps(GOOD | over).encode()


# (method, path, raw body, headers, expected status, expected field)
BAD_INPUT = [
    ("PUT", "/api/v1/workers/w9", b"{not json", J, 400, None),
    ("PUT", "/api/v1/workers/w9", b"[1, 2]", J, 400, None),
    ("PUT", "/api/v1/workers/w9", body(), {"Content-Type": "text/plain"}, 415, None),
    ("PUT", "/api/v1/workers/w9", b'{"pool": "cpu", "provider": "aws", "cpu_cores": NaN, '
     b'"memory_total_bytes": 1}', J, 400, None),
    ("PUT", "/api/v1/workers/w9", json.dumps({"provider": "aws", "cpu_cores": 1,
                                              "memory_total_bytes": 1}).encode(), J, 400, "pool"),
    ("PUT", "/api/v1/workers/w9", body(cpu_cores="four"), J, 400, "cpu_cores"),
    ("PUT", "/api/v1/workers/w9", body(cpu_cores=10**18), J, 400, "cpu_cores"),
    ("PUT", "/api/v1/workers/w9", body(cpu_cores=-2), J, 400, "cpu_cores"),
    ("PUT", "/api/v1/workers/w9", body(cpu_cores=True), J, 400, "cpu_cores"),
    ("PUT", "/api/v1/workers/w9", body(memory_total_bytes=1.5), J, 400, "memory_total_bytes"),
    ("PUT", "/api/v1/workers/w9", body(gpus=1000), J, 400, "gpus"),
    ("PUT", "/api/v1/workers/w9", body(usage={"memory_used_bytes": 9 * GIB}), J, 400,
     "usage.memory_used_bytes"),
    ("PUT", "/api/v1/workers/w9", body(usage={"cpu_utilization_ratio": 1.5}), J, 400,
     "usage.cpu_utilization_ratio"),
    ("PUT", "/api/v1/workers/w9", body(usage={"gpus": [{"index": 0}, {"index": 1}]}), J, 400,
     "usage.gpus"),
    ("PUT", "/api/v1/workers/w9", body(gpus=2, usage={"gpus": [{"index": 0}, {"index": 0}]}),
     J, 400, "usage.gpus[1].index"),
    ("PUT", "/api/v1/workers/w9", body(usage={"gpus": [{"index": 0, "memory_total_bytes": 10,
                                                        "memory_used_bytes": 11}]}), J, 400,
     "usage.gpus[0].memory_used_bytes"),
    ("PUT", "/api/v1/workers/w9", body(colour="blue"), J, 400, "colour"),
    ("PUT", "/api/v1/workers/bad%20id", body(), J, 400, "worker"),
    ("PUT", "/api/v1/workers/w1", body(cpu_cores=1), J, 409, "cpu_cores"),  # below reserved 2
    ("POST", "/api/v1/workers/ghost/heartbeat", None, {}, 404, "worker"),
    ("DELETE", "/api/v1/workers/ghost", None, {}, 404, "worker"),
    ("POST", "/api/v1/reservations", json.dumps({"task_id": "t1", "cpu_cores": 1}).encode(), J,
     409, "task_id"),  # duplicate
    ("POST", "/api/v1/reservations", json.dumps({"task_id": "t9", "cpu_cores": 64,
                                                 "worker": "w1"}).encode(), J, 409, "cpu_cores"),
    ("POST", "/api/v1/reservations", json.dumps({"task_id": "t9", "gpus": 3}).encode(), J,
     409, "gpus"),
    ("POST", "/api/v1/reservations", json.dumps({"task_id": "t9", "cpu_cores": 1,
                                                 "worker": "ghost"}).encode(), J, 404, "worker"),
    ("POST", "/api/v1/reservations", json.dumps({"task_id": "t9"}).encode(), J, 400,
     "cpu_cores"),
    ("POST", "/api/v1/reservations", json.dumps({"cpu_cores": 1}).encode(), J, 400, "task_id"),
    ("POST", "/api/v1/reservations", json.dumps({"task_id": "t9", "memory_bytes": -1}).encode(),
     J, 400, "memory_bytes"),
    ("DELETE", "/api/v1/reservations/nope", None, {}, 404, "task_id"),
    ("PUT", "/api/v1/pools/cpu/pending", json.dumps({"tasks_pending": -1}).encode(), J, 400,
     "tasks_pending"),
    ("GET", "/api/v1/scaling/history?limit=lots", None, {}, 400, "limit"),
    ("GET", "/api/v1/nothing", None, {}, 404, None),
    ("PATCH", "/api/v1/workers/w1", body(), J, 405, None),
    ("DELETE", "/api/v1/pools", None, {}, 405, None),
]


def test_bad_input_is_refused_and_changes_nothing(svc: Service) -> None:
    c = HttpClient(base(svc))
    c.put_worker(spec("w1", cores=4, gpus=2), Usage(0.5, GIB))
    c.reserve("t1", 2, GIB, worker="w1")
    before = (c.workers(), c.reservations())
    for method, path, data, headers, status, field in BAD_INPUT:
        got, payload = raw(svc, method, path, data, headers)
        err = payload.get("error", {})
        assert (got, err.get("field")) == (status, field), (method, path, data, payload)
        assert err.get("message") and "Traceback" not in err["message"]
    # a body over the limit is refused before it is read
    got, payload = raw(svc, "PUT", "/api/v1/workers/w9", b"x" * ((1 << 20) + 1), J)
    assert got == 413
    after = (c.workers(), c.reservations())
    assert after == before
    svc.publish()  # snapshots follow the tick; publish now rather than wait for one
    with urllib.request.urlopen(base(svc) + "/metrics", timeout=5) as r:
        assert b'drm_worker_info{worker="w1"' in r.read()
    assert len(BAD_INPUT) >= 20


def test_local_client_gets_the_same_errors() -> None:
    c = LocalClient.for_engine(Engine())
    with pytest.raises(ApiError) as e:
        c.put_worker(WorkerSpec("w", "cpu", "aws", "r", "t", "h", 5000, GIB))
    assert (e.value.status, e.value.field) == (400, "cpu_cores")


def scrape_families(engine: Engine) -> dict:
    text = format_text(build_families(engine.view(), CollectorStatus().snapshot())).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def workers_in(fams: dict, name: str) -> set[str]:
    return {s.labels["worker"] for s in fams[name].samples} if name in fams else set()


def test_liveness_down_then_gone_then_back() -> None:
    clock = ManualClock()
    eng = Engine({}, EngineSettings(heartbeat_timeout_s=30, worker_expiry_s=120), clock=clock)
    c = LocalClient.for_engine(eng)
    gpu = Usage(0.3, GIB, (GpuReading(0, uuid="G0", utilization_ratio=0.5),))
    c.put_worker(spec("w", gpus=1), gpu)
    c.put_worker(spec("other"))
    c.reserve("t", 1, GIB, gpus=1, worker="w")
    clock.advance(31)
    c.heartbeat("other")
    eng.tick()
    fams = scrape_families(eng)
    up = {s.labels["worker"]: s.value for s in fams["drm_worker_up"].samples}
    assert up == {"w": 0.0, "other": 1.0}
    clock.advance(90)  # 121 s silent: past the expiry
    c.heartbeat("other")
    eng.tick()
    fams = scrape_families(eng)
    for name in ("drm_worker_info", "drm_worker_up", "drm_gpu_up", "drm_gpu_utilization_ratio",
                 "drm_gpu_allocated", "drm_worker_cpu_cores"):
        assert "w" not in workers_in(fams, name), name
    assert c.reservations() == []
    expired = {s.labels["pool"]: s.value
               for s in fams["drm_pool_reservations_expired"].samples}
    assert expired["cpu"] == 1.0
    assert c.put_worker(spec("w", gpus=1), gpu)  # reports again: back, as a new worker
    assert "w" in workers_in(scrape_families(eng), "drm_gpu_up")


PER_WORKER = ("drm_worker_info", "drm_worker_up", "drm_worker_last_report_timestamp_seconds",
              "drm_worker_cpu_cores", "drm_worker_cpu_allocated_cores",
              "drm_worker_cpu_utilization_ratio", "drm_worker_memory_total_bytes",
              "drm_worker_memory_used_bytes", "drm_worker_memory_allocated_bytes",
              "drm_worker_tasks_running")


def test_concurrent_reports_reservations_and_scrapes(svc: Service) -> None:
    errors: list[str] = []
    stop = time.monotonic() + 3.0
    scrapes = [0]

    def writer(n: int) -> None:
        c = HttpClient(base(svc))
        i = 0
        while time.monotonic() < stop:
            i += 1
            w = f"cc-{n}-{i % 3}"
            try:
                c.put_worker(spec(w, cores=4, gpus=1),
                             Usage(0.1 * (i % 10), GIB, (GpuReading(0, utilization_ratio=0.5),)))
                try:
                    c.reserve(f"t-{n}-{i}", 1, GIB, gpus=i % 2, worker=w)
                    c.release(f"t-{n}-{i}")
                except ApiError as e:
                    if e.status != 409:
                        raise
                if i % 7 == 0:
                    c.deregister(w)
            except ApiError as e:
                if not (e.status == 404 and e.field == "worker"):  # raced its own deregister
                    errors.append(f"writer {n}: {e.status} {e.field} {e.message}")
            except Exception as e:  # noqa: BLE001
                errors.append(f"writer {n}: {e!r}")

    def scraper() -> None:
        while time.monotonic() < stop:
            try:
                svc.publish()
                with urllib.request.urlopen(base(svc) + "/metrics", timeout=5) as r:
                    fams = {f.name: f for f in
                            text_string_to_metric_families(r.read().decode())}
                sets = {n: workers_in(fams, n) for n in PER_WORKER}
                if len({frozenset(s) for s in sets.values()}) != 1:
                    errors.append(f"inconsistent scrape: {sets}")
                if workers_in(fams, "drm_gpu_up") != sets["drm_worker_info"]:
                    errors.append("gpu families disagree with worker families")
                scrapes[0] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(f"scraper: {e!r}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    threads += [threading.Thread(target=scraper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:5]
    assert scrapes[0] >= 8
