"""`drm-exporter agent` against a real coordinator over HTTP on loopback: registration with this
host's psutil capacity, re-registration after a coordinator restart, full-jitter backoff while
it is down, 4xx vs 5xx, a required token, the agent's own /metrics, /sd, and the command itself
in a subprocess (--once, SIGTERM)."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drm_exporter import metrics
from drm_exporter.agent import (
    Agent,
    AgentSettings,
    advertise_url,
    backoff_bound,
    host_name,
    serve_metrics,
)
from drm_exporter.api import Api, ApiError
from drm_exporter.cli import build_parser, main
from drm_exporter.client import Client, CoordinatorUnreachable, HttpClient
from drm_exporter.collectors.cgroup import CgroupReading
from drm_exporter.collectors.host import HostCollector
from drm_exporter.config import API_TOKEN_ENV, Config, HostWorkerConfig
from drm_exporter.engine import Engine
from drm_exporter.exposition import SnapshotStore
from drm_exporter.service import Service
from drm_exporter.web import ExporterHTTPServer

REPO = Path(__file__).resolve().parents[1]


def coordinator(port: int = 0) -> Service:
    svc = Service(Config(listen_address=f"127.0.0.1:{port}",
                         host_worker=HostWorkerConfig(enabled=False)))
    svc.start()
    return svc


def url(svc: Service) -> str:
    assert svc.http is not None
    return f"http://127.0.0.1:{svc.http.port}"


def get_json(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=5) as r:
        return json.loads(r.read())


def workers(base: str) -> dict[str, dict[str, Any]]:
    return {w["worker"]: w for w in get_json(base, "/api/v1/workers")["workers"]}


def free_port() -> int:
    """A port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_agent(client: Client, worker: str = "w1", **kw: Any) -> Agent:
    rand = kw.pop("rand", random.uniform)
    store = kw.pop("store", None)
    settings = AgentSettings(worker=worker, pool=kw.pop("pool", "ci"), hostname="agent.test",
                             **kw)
    return Agent(settings, client, HostCollector(prime_s=0.05), None, store=store, rand=rand)


@pytest.fixture(autouse=True)
def _no_token_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    # The coordinator and the agent both read it; a developer's own must not leak in.
    monkeypatch.delenv(API_TOKEN_ENV, raising=False)


@pytest.fixture
def svc() -> Iterator[Service]:
    s = coordinator()
    yield s
    s.stop()


class Recorder:
    """The random seam: records each upper bound and draws from a seeded generator."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.bounds: list[float] = []

    def __call__(self, lo: float, hi: float) -> float:
        assert lo == 0.0
        self.bounds.append(hi)
        return self.rng.uniform(lo, hi)


# --- registration ----------------------------------------------------------------------------
def test_first_report_registers_with_this_hosts_capacity_and_usage(svc: Service) -> None:
    agent = make_agent(HttpClient(url(svc)), region="r1", instance_type="t1")
    assert agent.run_once() == 10.0
    assert agent.last_report_ok
    w = workers(url(svc))["w1"]
    assert w["pool"] == "ci" and w["region"] == "r1" and w["instance_type"] == "t1"
    assert w["hostname"] == "agent.test" and w["up"] is True
    assert w["cpu_cores"] == psutil.cpu_count(logical=True)
    assert w["memory_total_bytes"] == psutil.virtual_memory().total
    assert 0.0 <= w["cpu_utilization_ratio"] <= 1.0
    assert 0 < w["memory_used_bytes"] <= w["memory_total_bytes"]


def test_coordinator_restart_on_the_same_port_is_followed_by_reregistration(
        caplog: pytest.LogCaptureFixture) -> None:
    first = coordinator()
    assert first.http is not None
    port = first.http.port
    base = url(first)
    agent = make_agent(HttpClient(base))
    with caplog.at_level(logging.INFO, logger="drm_exporter.agent"):
        agent.run_once()
        assert [r for r in caplog.records if "registered worker w1" in r.message]
        caplog.clear()
        agent.run_once()  # an update: created=false, not logged as a registration
        assert not [r for r in caplog.records if "registered" in r.message]
        first.stop()
        second = coordinator(port)
        try:
            assert "w1" not in workers(base)  # the new coordinator starts empty
            assert agent.run_once() == 10.0
            assert "w1" in workers(base)
            assert [r for r in caplog.records
                    if "registered worker w1" in r.message and "again" in r.message]
        finally:
            second.stop()


# --- backoff ---------------------------------------------------------------------------------
def test_unreachable_coordinator_backs_off_with_full_jitter_and_resets_on_success() -> None:
    port = free_port()
    rec = Recorder()
    agent = make_agent(HttpClient(f"http://127.0.0.1:{port}", timeout_s=2), rand=rec,
                       interval_s=10.0, backoff_cap_s=300.0)
    delays = [agent.run_once() for _ in range(7)]
    assert rec.bounds == [10, 20, 40, 80, 160, 300, 300]
    for d, bound, n in zip(delays, rec.bounds, range(7), strict=True):
        assert 0.0 <= d <= bound == min(300.0, 10.0 * 2**n)
    assert len(set(delays)) == 7  # drawn, not the bound itself
    assert agent.failures == 7 and not agent.last_report_ok

    svc = coordinator(port)
    try:
        assert agent.run_once() == 10.0  # success: back to the plain interval
        assert agent.failures == 0 and "w1" in workers(url(svc))
    finally:
        svc.stop()
    agent.run_once()  # down again: the bound starts over at the base
    assert rec.bounds[-1] == 10.0 and agent.failures == 1


def test_backoff_bound_is_capped_without_overflow() -> None:
    assert backoff_bound(10, 300, 1) == 10
    assert backoff_bound(0.5, 3, 3) == 2
    assert backoff_bound(10, 300, 100_000) == 300


class ScriptedClient(Client):
    """Answers each request with the next scripted exception, or created=True."""

    def __init__(self, script: list[Exception | None]) -> None:
        self.script = script
        self.calls: list[tuple[str, str]] = []
        self.bodies: list[Any] = []

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, str] | None = None) -> Any:
        self.calls.append((method, path))
        self.bodies.append(body)
        err = self.script.pop(0) if self.script else None
        if err is not None:
            raise err
        return {"created": True, "released": []}


def test_5xx_backs_off_but_4xx_is_retried_at_the_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    client = ScriptedClient([ApiError(503, None, "overloaded"), ApiError(500, None, "bug"),
                             ApiError(400, "pool", "pool 'x' is bad"),
                             ApiError(400, "pool", "pool 'x' is bad"),
                             CoordinatorUnreachable("refused"), None])
    agent = make_agent(client, rand=rec, interval_s=4.0)
    with caplog.at_level(logging.DEBUG, logger="drm_exporter.agent"):
        agent.run_once()
        agent.run_once()
        assert rec.bounds == [4.0, 8.0]
        assert agent.run_once() == 4.0 and agent.failures == 0  # answered: not an outage
        assert agent.run_once() == 4.0 and rec.bounds == [4.0, 8.0]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "HTTP 400 [pool]" in errors[0].message  # once, clearly
        agent.run_once()
        assert rec.bounds == [4.0, 8.0, 4.0]  # the 4xx reset the outage count
        assert agent.run_once() == 4.0 and agent.last_report_ok
    assert all(c == ("PUT", "/api/v1/workers/w1") for c in client.calls)


class FlakyPs:
    """psutil's shape, failing while `broken` is set."""

    def __init__(self) -> None:
        self.broken = True

    def _check(self) -> None:
        if self.broken:
            raise OSError("procfs unreadable")

    def cpu_times(self) -> Any:
        return psutil.cpu_times()

    def cpu_count(self, logical: bool = True) -> int:
        self._check()
        return 4

    def virtual_memory(self) -> Any:
        self._check()
        return psutil.virtual_memory()


def test_a_failed_host_read_reports_nothing_new() -> None:
    ps = FlakyPs()
    client = ScriptedClient([])
    agent = Agent(AgentSettings(worker="w1", interval_s=5.0), client,
                  HostCollector(ps=ps, prime_s=0.0, cgroup=lambda: CgroupReading("host")),
                  None)
    assert agent.run_once() == 5.0 and client.calls == []  # no capacity known: no report
    assert agent.status.snapshot()["host"].success is False
    ps.broken = False
    agent.run_once()
    assert client.bodies[-1]["cpu_cores"] == 4 and "memory_used_bytes" in client.bodies[-1]["usage"]
    ps.broken = True
    agent.run_once()  # still alive and reporting, but last round's usage is not re-sent as new
    assert client.bodies[-1]["cpu_cores"] == 4 and client.bodies[-1]["usage"] == {}


# --- token -----------------------------------------------------------------------------------
def test_a_required_token_refuses_an_agent_without_it(caplog: pytest.LogCaptureFixture) -> None:
    web_src = (REPO / "exporter" / "drm_exporter" / "web.py").read_text()
    if "api_token" not in web_src:
        pytest.skip("the server has no token support yet")
    engine = Engine()
    server = ExporterHTTPServer("127.0.0.1", 0, SnapshotStore(), Api(engine),
                                api_token="s3cret-token")
    server.start_background()
    base = f"http://127.0.0.1:{server.port}"
    try:
        rec = Recorder()
        bare = make_agent(HttpClient(base), rand=rec)
        with caplog.at_level(logging.DEBUG, logger="drm_exporter"):
            assert bare.run_once() == 10.0 and not bare.last_report_ok
            assert rec.bounds == []  # a 401 is a config problem: no backoff
            assert [r for r in caplog.records if "HTTP 401" in r.message and "--token"
                    in r.message and r.levelno == logging.ERROR]
            assert engine.view().workers == ()
            good = make_agent(HttpClient(base, token="s3cret-token"), worker="w2")
            good.run_once()
            assert good.last_report_ok
            assert [w.spec.worker for w in engine.view().workers] == ["w2"]
        assert "s3cret-token" not in caplog.text
        # The command takes the token from the environment (and never prints it).
        cmd = agent_cmd(base, "--once", "--no-gpu", "--worker", "w3")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30,
                           env=os.environ | {API_TOKEN_ENV: "s3cret-token"})
        assert p.returncode == 0 and "s3cret-token" not in p.stderr, p.stderr
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and "HTTP 401" in p.stderr
    finally:
        server.shutdown()
        server.server_close()


# --- the agent's own /metrics and /sd ----------------------------------------------------------
def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return {f.name: f for f in text_string_to_metric_families(r.read().decode())}


def test_agent_serves_its_own_metrics_with_coordinator_health(svc: Service) -> None:
    store = SnapshotStore()
    server = serve_metrics("127.0.0.1:0", store)
    server.start_background()
    try:
        client = HttpClient(url(svc))
        agent = make_agent(client, store=store)
        agent.run_once()
        fams = scrape(server.port)
        [info] = fams[metrics.WORKER_INFO.name].samples
        assert info.labels["worker"] == "w1" and info.labels["pool"] == "ci"
        health = {s.labels["collector"]: s.value
                  for s in fams[metrics.COLLECTOR_SUCCESS.name].samples}
        assert health == {"host": 1.0, "coordinator": 1.0}
        [cores] = fams[metrics.WORKER_CPU_CORES.name].samples
        assert cores.value == psutil.cpu_count(logical=True)
        # The coordinator owns reservations, pools and cost: the agent does not guess them.
        for m in (metrics.WORKER_CPU_ALLOCATED, metrics.POOL_WORKERS, metrics.GPU_ALLOCATED,
                  metrics.CLOUD_UNPRICED_WORKERS):
            assert m.name not in fams
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"

        client.base = f"http://127.0.0.1:{free_port()}"  # the coordinator goes away
        agent.run_once()
        health = {s.labels["collector"]: s.value
                  for s in scrape(server.port)[metrics.COLLECTOR_SUCCESS.name].samples}
        assert health == {"host": 1.0, "coordinator": 0.0}
    finally:
        server.shutdown()
        server.server_close()


def test_sd_lists_the_advertised_url_with_worker_and_pool(svc: Service) -> None:
    server = serve_metrics("127.0.0.1:0", SnapshotStore())
    try:
        advertised = advertise_url("127.0.0.1", server.port)
        assert advertised == f"http://127.0.0.1:{server.port}/metrics"
        make_agent(HttpClient(url(svc)), metrics_url=advertised).run_once()
        make_agent(HttpClient(url(svc)), worker="silent").run_once()  # no URL: not a target
        groups = get_json(url(svc), "/sd")
        assert groups == [{"targets": [f"127.0.0.1:{server.port}"],
                           "labels": {"worker": "w1", "pool": "ci", "provider": "onprem",
                                      "__scheme__": "http"}}]
    finally:
        server.server_close()


def test_advertise_url_defaults() -> None:
    assert advertise_url("0.0.0.0", 9100) is None and advertise_url("::", 9100) is None
    assert advertise_url("::1", 9100) == "http://[::1]:9100/metrics"
    assert advertise_url("node-1.lan", 9100) == "http://node-1.lan:9100/metrics"


# --- the loop and the command ----------------------------------------------------------------
def test_run_stops_at_once_and_keeps_the_worker_unless_asked(svc: Service) -> None:
    for deregister, expect_present in ((False, True), (True, False)):
        agent = make_agent(HttpClient(url(svc)), interval_s=60.0,
                           deregister_on_exit=deregister)
        t = threading.Thread(target=agent.run)
        t.start()
        deadline = time.monotonic() + 5
        while "w1" not in workers(url(svc)):
            assert time.monotonic() < deadline, "no registration within 5 s"
            time.sleep(0.02)
        agent.stop()
        t.join(2)
        assert not t.is_alive(), "run() did not return within 2 s of stop()"
        agent.close()
        assert ("w1" in workers(url(svc))) is expect_present


def test_help_lists_every_flag() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices["agent"].format_help()
    for flag in ("--coordinator", "--worker", "--pool", "--provider", "--region",
                 "--instance-type", "--interval", "--backoff-cap", "--token",
                 "--listen-address", "--advertise-url", "--no-gpu", "--deregister-on-exit",
                 "--once"):
        assert flag in text, flag


@pytest.mark.parametrize("argv, needle", [
    (["--coordinator", "ftp://x"], "--coordinator"),
    (["--coordinator", "http://127.0.0.1:1", "--pool", "bad pool"], "--pool"),
    (["--coordinator", "http://127.0.0.1:1", "--advertise-url", "not a url"], "--advertise-url"),
    (["--coordinator", "http://127.0.0.1:1", "--worker", "a/b"], "--worker"),
    (["--coordinator", "http://127.0.0.1:1", "--listen-address", "nope"], "--listen-address"),
])
def test_bad_flags_exit_2_naming_the_flag(argv: list[str], needle: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", *argv, "--once", "--no-gpu"]) == 2
    assert needle in capsys.readouterr().err


def agent_cmd(base: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "drm_exporter.cli", "--log-level", "debug", "agent",
            "--coordinator", base, *extra]


def test_cli_once_registers_and_exits_0(svc: Service) -> None:
    env = os.environ | {API_TOKEN_ENV: "env-token-not-logged"}
    p = subprocess.run(agent_cmd(url(svc), "--once", "--pool", "ci"), env=env,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    w = workers(url(svc))[host_name()]
    assert w["pool"] == "ci" and w["cpu_cores"] == psutil.cpu_count(logical=True)
    assert "registered worker" in p.stderr and "env-token-not-logged" not in p.stderr

    down = f"http://127.0.0.1:{free_port()}"
    p = subprocess.run(agent_cmd(down, "--once", "--no-gpu"), capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 1 and "unreachable" in p.stderr


def test_cli_sigterm_stops_cleanly_and_deregisters_when_asked(svc: Service) -> None:
    proc = subprocess.Popen(agent_cmd(url(svc), "--worker", "sig", "--no-gpu", "--interval",
                                      "60", "--deregister-on-exit"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while "sig" not in workers(url(svc)):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no registration within 15 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "sig" not in workers(url(svc)) and "deregistered worker sig" in err
