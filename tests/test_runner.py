"""The collector runner (timeouts, one outstanding run at most), the --collector.<name> flags,
`drm-exporter collect`, and a hung collector against a live /metrics."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.request

import pytest
from fakenvml import FakeNvml, gpu
from test_collectors import FakePsutil

from drm_exporter import cli, collect, service
from drm_exporter.collectors.gpu import GpuCollector
from drm_exporter.collectors.host import HostCollector
from drm_exporter.collectors.runner import DEFAULT_TIMEOUT_S, CollectorRunner
from drm_exporter.collectors.status import CollectorStatus
from drm_exporter.config import (
    CollectorConfig,
    CollectorsConfig,
    Config,
    collector_names,
    load_config,
)


# --- the runner --------------------------------------------------------------------------------
def test_default_timeout_is_the_interval_capped() -> None:
    s = CollectorStatus()
    assert CollectorRunner("a", lambda: None, 2, s).timeout_s == 2
    assert CollectorRunner("a", lambda: None, 600, s).timeout_s == DEFAULT_TIMEOUT_S
    assert CollectorRunner("a", lambda: None, 600, s, timeout_s=30).timeout_s == 30


def test_failure_is_recorded_with_its_reason_and_last_success_kept() -> None:
    s, fail = CollectorStatus(), {"now": False}

    def fn() -> None:
        if fail["now"]:
            raise OSError("disk gone")

    r = CollectorRunner("x", fn, 60, s)
    assert r.run_once() is True
    ok = s.snapshot()["x"]
    fail["now"] = True
    assert r.run_once() is False
    st = s.snapshot()["x"]
    assert (st.success, st.error, st.last_success_ts) == (False, "OSError: disk gone",
                                                          ok.last_success_ts)


def test_hung_run_times_out_and_no_second_run_starts_while_it_hangs() -> None:
    s, release, started = CollectorStatus(), threading.Event(), []

    def hang() -> None:
        started.append(1)
        release.wait(10)

    r = CollectorRunner("stuck", hang, 60, s, timeout_s=0.1)
    t0 = time.monotonic()
    assert r.run_once() is False
    assert time.monotonic() - t0 < 1.0
    st = s.snapshot()["stuck"]
    assert (st.success, st.error, st.last_success_ts) == (False, "timed out after 0.1s", None)
    assert st.duration_s >= 0.1
    for _ in range(3):  # the stuck run still holds its thread: nothing new is started
        assert r.run_once() is False
    assert len(started) == 1
    assert s.snapshot()["stuck"].error.startswith("still running")
    release.set()  # it returns at last: the next interval runs afresh
    deadline = time.monotonic() + 5
    while any(t.name == "collector-stuck-run" for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert r.run_once() is True and len(started) == 2
    assert s.snapshot()["stuck"].success


def test_background_loop_retries_on_its_interval() -> None:
    s, calls = CollectorStatus(), []
    r = CollectorRunner("loop", lambda: calls.append(time.monotonic()), 0.05, s)
    r.start()
    time.sleep(0.4)
    r.stop()
    assert len(calls) >= 3 and s.snapshot()["loop"].success


# --- config and flags ----------------------------------------------------------------------------
def test_config_timeout_and_names() -> None:
    assert collector_names()[:2] == ("host", "gpu")
    cfg = load_config("collectors: {gpu: {enabled: false, interval_s: 30, timeout_s: 3}}")
    assert cfg.collectors.gpu == CollectorConfig(False, 30.0, 3.0)
    assert cfg.collectors.host.timeout_s is None


@pytest.mark.parametrize("command", [["serve"], ["agent", "--coordinator", "http://c:1"],
                                     ["collect", "--once"]])
def test_every_collector_has_a_flag_pair(command: list[str]) -> None:
    p = cli.build_parser()
    for name in collector_names():
        assert getattr(p.parse_args(command), f"collector_{name}") is None
        assert getattr(p.parse_args([*command, f"--collector.{name}"]), f"collector_{name}")
        assert getattr(p.parse_args([*command, f"--no-collector.{name}"]),
                       f"collector_{name}") is False


def test_flag_wins_over_config() -> None:
    cfg = CollectorsConfig(gpu=CollectorConfig(enabled=False, interval_s=7))
    args = cli.build_parser().parse_args(["serve", "--collector.gpu", "--no-collector.host"])
    out = collect.apply_collector_flags(cfg, args)
    assert out.gpu == CollectorConfig(True, 7.0) and out.host.enabled is False
    unset = cli.build_parser().parse_args(["serve"])
    assert collect.apply_collector_flags(cfg, unset) == cfg


def test_disabled_gpu_collector_has_no_runner_and_no_status() -> None:
    svc = service.Service(Config(listen_address="127.0.0.1:0", state_file="",
                                 collectors=CollectorsConfig(gpu=CollectorConfig(enabled=False))))
    assert [r.name for r in svc.runners] == ["host"]
    svc.runners[0].run_once()
    svc.publish()
    text = svc.store.body(False).decode()
    assert 'collector="host"' in text and 'collector="gpu"' not in text
    svc.engine.close()


def test_agent_refuses_no_host_collector(capsys) -> None:
    rc = cli.main(["agent", "--coordinator", "http://127.0.0.1:1", "--no-collector.host"])
    assert rc == 2 and "--no-collector.host" in capsys.readouterr().err


# --- drm-exporter collect -------------------------------------------------------------------------
def _collectors(fake: FakeNvml) -> tuple[HostCollector, GpuCollector]:
    return HostCollector(FakePsutil(), prime_s=0.0), GpuCollector(lambda: fake)


def test_collect_once_table_and_json() -> None:
    fake = FakeNvml([gpu(), gpu(uuid="GPU-2", temp=FakeNvml.NVMLError_GpuIsLost)])
    c = collect.collect_once(CollectorsConfig(), *_collectors(fake))
    assert c.failed == [] and c.host is not None and c.host.cpu_cores == 6
    doc = collect.to_json(c)
    json.dumps(doc)  # serialisable
    assert doc["host"]["memory_total_bytes"] == 16 * 2**30
    assert [(g["index"], g["uuid"], g["up"]) for g in doc["gpus"]] == [(0, "GPU-1", True),
                                                                       (1, "", False)]
    assert doc["collectors"]["gpu"]["success"] is True
    out = io.StringIO()
    collect.print_text(c, out)
    text = out.getvalue()
    for want in ("host", "cpu_cores", "16.0 GiB", "Tesla T4", "GPU-1", "37%", "51°C", "27.5 W",
                 "no (lost)"):
        assert want in text, want


def test_collect_failure_names_the_reason_and_exits_1(monkeypatch, capsys) -> None:
    from drm_exporter.collectors import nvml

    def broken() -> None:
        raise nvml.NvmlInitError("nvmlInit failed: Driver Not Loaded")

    monkeypatch.setattr(collect, "HostCollector", lambda: HostCollector(FakePsutil(), 0.0))
    monkeypatch.setattr(collect, "GpuCollector", lambda: GpuCollector(broken))
    assert cli.main(["collect", "--once"]) == 1
    out, err = capsys.readouterr()
    assert "FAILED" in out and "Driver Not Loaded" in out and "collector gpu failed" in err
    assert cli.main(["collect", "--once", "--json", "--no-collector.gpu"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc["collectors"]) == ["host"] and doc["gpus"] is None


# --- a hung collector against a live /metrics ----------------------------------------------------
class HangingHost:
    """A host collector stuck in the kernel (a hung mount, a wedged driver)."""

    release = threading.Event()

    def __init__(self, *_a, **_k) -> None:
        pass

    def read(self):
        HangingHost.release.wait(30)
        raise RuntimeError("released")


def test_hung_collector_does_not_delay_scrapes_or_pile_up_threads(monkeypatch) -> None:
    monkeypatch.setattr(service, "HostCollector", HangingHost)
    fast = CollectorConfig(interval_s=0.1, timeout_s=0.2)
    cfg = Config(listen_address="127.0.0.1:0", tick_interval_s=0.1, state_file="",
                 collectors=CollectorsConfig(host=fast, gpu=CollectorConfig(enabled=False)))
    svc = service.Service(cfg)
    HangingHost.release.clear()
    try:
        svc.start()
        base = threading.active_count()
        latencies, counts = [], []
        for _ in range(10):  # ten collector intervals
            t0 = time.monotonic()
            with urllib.request.urlopen(f"http://127.0.0.1:{svc.http.port}/metrics",
                                        timeout=5) as r:
                text = r.read().decode()
            latencies.append(time.monotonic() - t0)
            counts.append(threading.active_count())
            time.sleep(0.1)
        assert max(latencies) < 0.5, latencies
        assert max(counts) <= base + 2, counts  # request threads come and go; runs do not pile
        assert 'drm_exporter_collector_success{collector="host"} 0' in text
        assert svc.status.snapshot()["host"].error.startswith(("timed out", "still running"))
        assert [t.name for t in threading.enumerate()].count("collector-host-run") == 1
    finally:
        HangingHost.release.set()
        svc.stop()
