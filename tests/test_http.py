"""`serve` over real HTTP: the contract families, gzip, the host worker against psutil, and
a departed worker's series gone from the next scrape."""

from __future__ import annotations

import gzip
import socket
import sys
import time
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drm_exporter import metrics
from drm_exporter.collectors.cgroup import CgroupReader
from drm_exporter.config import Config, CostConfig, SimulatorConfig
from drm_exporter.hooks import HookConfig
from drm_exporter.scaling import PoolPolicy
from drm_exporter.service import Service
from drm_exporter.simulator import SimulatorSettings


@pytest.fixture(scope="module")
def svc():
    fast = PoolPolicy(evaluation_interval_s=0.2, min_workers=1)
    cfg = Config(listen_address="127.0.0.1:0", tick_interval_s=0.1,
                 pools={"cpu": fast, "gpu": fast},
                 simulator=SimulatorConfig(True, SimulatorSettings(seed=3)),
                 cost=CostConfig(budgets_usd={"aws": 250.0}),
                 # a hook that accepts everything, so the hook families are produced
                 hooks={"cpu": HookConfig(command=(sys.executable, "-c",
                                                   "import sys; sys.stdin.read()"))})
    s = Service(cfg)
    s.start()
    deadline = time.monotonic() + 10
    while not all(p.last_decision_ts for p in s.engine.view().pools if p.policy):
        assert time.monotonic() < deadline, "no scaling decision within 10 s"
        time.sleep(0.1)
    s.publish()
    yield s
    s.stop()


def get(svc: Service, path: str, headers: dict[str, str] | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{svc.http.port}{path}", headers=headers or {})
    return urllib.request.urlopen(req, timeout=5)


def scrape(svc: Service) -> dict:
    with get(svc, "/metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _family_name(m: metrics.MetricDef) -> str:
    # prometheus_client's parser names a counter family without its _total suffix
    return m.name[: -len("_total")] if m.type == "counter" else m.name


def test_every_contract_family_this_release_produces(svc: Service) -> None:
    fams = scrape(svc)
    for m in metrics.ALL:
        if m.name in metrics.NOT_YET_PRODUCED:
            assert _family_name(m) not in fams, f"{m.name} is produced: update NOT_YET_PRODUCED"
            continue
        f = fams.get(_family_name(m))
        if f is None and m.name in metrics.ONLY_WHEN:
            continue  # the simulated fleet has no MIG GPUs; test_gpu.py checks these
        assert f is not None, f"{m.name} missing from /metrics"
        assert f.type == m.type, m.name
        assert f.samples, m.name
        for s in f.samples:
            assert s.name == m.name
            assert tuple(s.labels) == m.labels, (m.name, s.labels)


def test_gzip_when_asked_and_healthz(svc: Service) -> None:
    with get(svc, "/metrics", {"Accept-Encoding": "gzip"}) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert b"drm_worker_info" in gzip.decompress(r.read())
    with get(svc, "/metrics", {"Accept-Encoding": "gzip;q=0, identity"}) as r:
        assert r.headers["Content-Encoding"] is None
    with get(svc, "/healthz") as r:
        assert r.read() == b"ok\n"
    with pytest.raises(urllib.error.HTTPError) as e:
        get(svc, "/nope")
    assert e.value.code == 404


PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def test_openmetrics_for_prometheus_headers_with_the_same_samples(svc: Service) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

    def samples(fams) -> dict:  # noqa: ANN001
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams
                for s in f.samples}

    for _ in range(20):  # the service publishes every 0.1 s: retry until both saw one fleet
        with get(svc, "/metrics", {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}) as r:
            assert r.headers["Content-Type"] == (
                "application/openmetrics-text; version=1.0.0; charset=utf-8")
            assert r.headers["Content-Encoding"] == "gzip"
            om_text = gzip.decompress(r.read()).decode()
        with get(svc, "/metrics", {"Accept": "text/plain;version=0.0.4"}) as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = samples(text_string_to_metric_families(r.read().decode()))
        assert om_text.endswith("\n# EOF\n")
        om = samples(om_parse(om_text))  # the strict parser
        if om.keys() == text.keys():
            break
    assert om.keys() == text.keys() and len(om) > 50
    constant = [k for k in om if k[0] in ("drm_worker_cpu_cores", "drm_worker_memory_total_bytes")]
    assert constant and all(om[k] == text[k] for k in constant)


def test_host_worker_agrees_with_psutil(svc: Service) -> None:
    fams = scrape(svc)
    host = socket.gethostname()
    info = [s for s in fams["drm_worker_info"].samples if s.labels["worker"] == host]
    assert info and info[0].labels["pool"] == "local" and info[0].labels["provider"] == "onprem"

    def value(name: str) -> float:
        [s] = [s for s in fams[name].samples if s.labels["worker"] == host]
        return s.value

    # capacity is the host's, or a tighter cgroup limit when this runs in a container
    cg = CgroupReader().read()
    mem = psutil.virtual_memory().total
    cores = psutil.cpu_count(logical=True)
    assert value("drm_worker_memory_total_bytes") == min(mem, cg.memory_limit_bytes or mem)
    assert value("drm_worker_cpu_cores") == min(cores, cg.cpu_limit_cores or cores)
    assert 0.0 <= value("drm_worker_cpu_utilization_ratio") <= 1.0
    used = value("drm_worker_memory_used_bytes")
    assert 0 < used < psutil.virtual_memory().total
    ok = {s.labels["collector"]: s.value for s in fams["drm_exporter_collector_success"].samples}
    assert ok["host"] == 1.0


def test_removed_worker_is_absent_from_next_scrape(svc: Service) -> None:
    victim = next(w for w in svc.engine.workers(pool="gpu"))
    before = scrape(svc)
    gpu_util = before["drm_gpu_utilization_ratio"].samples
    assert any(s.labels.get("worker") == victim for s in gpu_util)
    svc.engine.deregister(victim)
    svc.publish()
    after = scrape(svc)
    for f in after.values():
        for s in f.samples:
            assert s.labels.get("worker") != victim, (f.name, s.labels)
    assert any(s.labels.get("worker") == victim for f in before.values() for s in f.samples)


def test_budget_from_config(svc: Service) -> None:
    [s] = scrape(svc)["drm_cloud_budget_usd"].samples
    assert (s.labels, s.value) == ({"provider": "aws"}, 250.0)
