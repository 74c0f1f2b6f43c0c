"""The GPU collector against a fake NVML: healthy, unsupported fields, MIG, lost, hung, broken
and missing drivers, each through to the /metrics text where the difference shows."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import pytest
from fakenvml import FakeNvml, Hang, gpu
from prometheus_client.parser import text_string_to_metric_families

from drm_exporter import metrics as m
from drm_exporter.api import Api, ApiError
from drm_exporter.client import LocalClient
from drm_exporter.clock import ManualClock
from drm_exporter.collectors import nvml
from drm_exporter.collectors.gpu import GpuCollector, NvmlTimeout, gpu_budget
from drm_exporter.collectors.runner import CollectorRunner
from drm_exporter.collectors.status import CollectorStatus
from drm_exporter.engine import Engine
from drm_exporter.exposition import format_text
from drm_exporter.fleet import GpuReading, MigReading, Usage, WorkerSpec
from drm_exporter.snapshot import build_families

GIB = 1024**3
A100 = {"name": "NVIDIA A100-SXM4-40GB", "mem": (40 * GIB, 12 * GIB), "power_mw": 90125}


def scrape(gpus: tuple[GpuReading, ...], status: CollectorStatus | None = None
           ) -> list[tuple[str, dict[str, str], float]]:
    """The samples /metrics would carry for one worker with these GPUs."""
    engine = Engine()
    engine.register(WorkerSpec("w", "gpu", "aws", "us-east-1", "p4d", "w", 8, 64 * GIB,
                               len(gpus)), Usage(gpus=gpus))
    text = format_text(build_families(engine.view(), (status or CollectorStatus()).snapshot()))
    return [(s.name, s.labels, s.value)
            for f in text_string_to_metric_families(text.decode()) for s in f.samples]


def gpu_series(samples: list) -> dict[tuple[str, tuple], float]:
    return {(n, tuple(sorted((k, v) for k, v in lbl.items() if k != "worker"))): v
            for n, lbl, v in samples if n.startswith("drm_gpu_") and n != "drm_gpu_allocated"}


def test_healthy_two_gpu_host_exact_values() -> None:
    fake = FakeNvml([gpu(), gpu(uuid="GPU-2", util=100, mem=(16 * GIB, GIB), temp=70,
                                power_mw=70000)])
    a, b = GpuCollector(lambda: fake).read()
    assert a == GpuReading(0, "GPU-1", "Tesla T4", "550.54.15", "disabled", True, 0.37, 16, 4,
                           51.0, 27.5)
    assert b == GpuReading(1, "GPU-2", "Tesla T4", "550.54.15", "disabled", True, 1.0,
                           16 * GIB, GIB, 70.0, 70.0)
    g1 = (("gpu", "1"),)
    series = gpu_series(scrape((a, b)))
    assert {k: v for k, v in series.items() if ("gpu", "1") in k[1]} == {
        ("drm_gpu_up", g1): 1.0, ("drm_gpu_utilization_ratio", g1): 1.0,
        ("drm_gpu_memory_total_bytes", g1): 16.0 * GIB, ("drm_gpu_memory_used_bytes", g1): GIB,
        ("drm_gpu_temperature_celsius", g1): 70.0, ("drm_gpu_power_watts", g1): 70.0,
        ("drm_gpu_info", (("driver_version", "550.54.15"), ("gpu", "1"), ("mig_mode", "disabled"),
                          ("name", "Tesla T4"), ("uuid", "GPU-2"))): 1.0}
    assert len(series) == 14


def test_power_not_supported_is_absent_and_logged_once(caplog) -> None:
    caplog.set_level(logging.INFO)
    fake = FakeNvml([gpu(), gpu(uuid="GPU-2", power_mw=FakeNvml.NVMLError_NotSupported)])
    col = GpuCollector(lambda: fake)
    a, b = col.read()
    assert (b.power_watts, b.temperature_celsius, b.utilization_ratio) == (None, 51.0, 0.37)
    assert a.power_watts == 27.5  # the other GPU is not affected
    col.read()
    assert sum("GPU 1 does not support power" in r.message for r in caplog.records) == 1
    power = [lbl["gpu"] for n, lbl, _ in scrape((a, b)) if n == "drm_gpu_power_watts"]
    assert power == ["0"]  # absent for GPU 1, never 0


def test_mig_instances_have_their_own_label_sets() -> None:
    migs = [("MIG-a", (10 * GIB, 5 * GIB)), None, ("MIG-b", (20 * GIB, 7 * GIB))]
    fake = FakeNvml([gpu(), gpu(uuid="GPU-M", mig=1, migs=migs, **A100)])
    plain, parent = GpuCollector(lambda: fake).read()
    assert plain.mig_devices == ()
    assert (parent.mig_mode, parent.utilization_ratio, parent.memory_used_bytes) == (
        "enabled", None, 12 * GIB)  # no made-up utilization; memory is the whole device's
    assert parent.mig_devices == (MigReading(0, "MIG-a", 10 * GIB, 5 * GIB),
                                  MigReading(2, "MIG-b", 20 * GIB, 7 * GIB))  # slot 1 is empty
    samples = scrape((plain, parent))
    keys = Counter((n, tuple(sorted(lbl.items()))) for n, lbl, _ in samples)
    assert [k for k, c in keys.items() if c > 1] == []  # no label set repeats
    used = {(lbl["gpu"], lbl.get("mig_instance")): v for n, lbl, v in samples
            if n in (m.GPU_MEMORY_USED.name, m.GPU_MIG_MEMORY_USED.name)}
    assert used == {("0", None): 4, ("1", None): 12 * GIB, ("1", "0"): 5 * GIB,
                    ("1", "2"): 7 * GIB}
    # Summing the GPU family counts each device once; instances live apart.
    assert sum(v for n, _, v in samples if n == m.GPU_MEMORY_USED.name) == 12 * GIB + 4
    assert {lbl["uuid"] for n, lbl, _ in samples if n == m.GPU_MIG_INFO.name} == {"MIG-a",
                                                                                  "MIG-b"}
    assert not [1 for n, lbl, _ in samples if n == m.GPU_UTILIZATION.name and lbl["gpu"] == "1"]


def test_mig_devices_go_through_the_api() -> None:
    engine = Engine()
    client = LocalClient(Api(engine))
    spec = WorkerSpec("w", "gpu", "aws", "us-east-1", "p4d", "w", 8, 64 * GIB, 1)
    parent = GpuReading(0, "GPU-M", mig_mode="enabled", memory_total_bytes=40 * GIB,
                        memory_used_bytes=12 * GIB,
                        mig_devices=(MigReading(0, "MIG-a", 10 * GIB, 5 * GIB),
                                     MigReading(2, "MIG-b")))
    client.put_worker(spec, Usage(gpus=(parent,)))
    assert engine.view().workers[0].usage.gpus == (parent,)
    twice = (MigReading(1, "MIG-a"), MigReading(1, "MIG-b"))
    for bad, field in [(GpuReading(0, mig_mode="enabled", mig_devices=twice),
                        "usage.gpus[0].mig_devices[1].index"),
                       (GpuReading(0, mig_devices=(MigReading(0),)), "usage.gpus[0].mig_devices"),
                       (GpuReading(0, mig_mode="enabled",
                                   mig_devices=(MigReading(0, memory_total_bytes=1,
                                                           memory_used_bytes=2),)),
                        "usage.gpus[0].mig_devices[0].memory_used_bytes")]:
        with pytest.raises(ApiError) as e:
            client.put_worker(spec, Usage(gpus=(bad,)))
        assert (e.value.status, e.value.field) == (400, field)


def test_lost_gpu_exports_only_up_zero() -> None:
    fake = FakeNvml([gpu(temp=FakeNvml.NVMLError_GpuIsLost), gpu(uuid="GPU-2")])
    lost, ok = GpuCollector(lambda: fake).read()
    assert lost == GpuReading(0, driver_version="550.54.15", up=False)
    assert ok.up and ok.temperature_celsius == 51.0
    g0 = {n: v for n, lbl, v in scrape((lost, ok))
          if n.startswith("drm_gpu_") and lbl.get("gpu") == "0" and n != "drm_gpu_allocated"}
    assert g0 == {"drm_gpu_up": 0.0}


def test_other_nvml_error_downs_that_gpu_only() -> None:
    fake = FakeNvml([gpu(name=FakeNvml.NVMLError_Unknown), gpu(uuid="GPU-2")])
    a, b = GpuCollector(lambda: fake).read()
    assert (a.up, b.up, b.uuid) == (False, True, "GPU-2")


def test_hung_call_is_bounded_in_time_and_threads() -> None:
    hang = Hang(then=60)
    fake = FakeNvml([gpu(), gpu(uuid="GPU-2", temp=hang), gpu(uuid="GPU-3")])
    col = GpuCollector(lambda: fake, timeout_s=0.2)
    base = threading.active_count()
    try:
        for _ in range(25):
            start = time.monotonic()
            a, b, c = col.read()
            assert time.monotonic() - start < 0.2 + 0.15  # within the budget
            assert (a.up, b.up, c.up) == (True, False, True)
            assert b == GpuReading(1, driver_version="550.54.15", up=False)  # nothing frozen
            assert c.temperature_celsius == 51.0
            assert threading.active_count() <= base + 1  # only the one hung call remains
        assert hang.entered == 1  # never a second call on the GPU that is stuck
        assert col.threads_in_use() == 1
    finally:
        hang.release.set()
    deadline = time.monotonic() + 2
    while col.threads_in_use() and time.monotonic() < deadline:
        time.sleep(0.01)
    fake.gpus[1]["temp"] = 60
    assert [g.up for g in col.read()] == [True, True, True]  # answers again: read afresh
    assert col.read()[1].temperature_celsius == 60.0


def test_thread_count_is_capped_when_every_gpu_hangs() -> None:
    hangs = [Hang(then=40) for _ in range(4)]
    fake = FakeNvml([gpu(temp=h) for h in hangs])
    col = GpuCollector(lambda: fake, timeout_s=0.05, max_threads=2)
    try:
        for _ in range(10):
            assert [g.up for g in col.read()] == [False] * 4
            assert col.threads_in_use() <= 2
        assert sum(h.entered for h in hangs) == 2
    finally:
        for h in hangs:
            h.release.set()


def test_hung_device_count_fails_the_collection_within_budget() -> None:
    hang = Hang(then=b"550.54.15")
    fake = FakeNvml([gpu()], driver=hang)
    col = GpuCollector(lambda: fake, timeout_s=0.1)
    try:
        for _ in range(5):
            start = time.monotonic()
            with pytest.raises(NvmlTimeout):
                col.read()
            assert time.monotonic() - start < 0.25
        assert hang.entered == 1 and col.threads_in_use() == 1
    finally:
        hang.release.set()
    time.sleep(0.05)
    assert len(col.read()) == 1


def test_init_fails_three_times_then_succeeds_with_backoff() -> None:
    clock = ManualClock()
    attempts: list[float] = []

    def loader():
        attempts.append(clock.monotonic())
        if len(attempts) <= 3:
            raise nvml.NvmlInitError("nvmlInit failed: Driver Not Loaded")
        return FakeNvml([gpu(), gpu(uuid="GPU-2")])

    col, status = GpuCollector(loader, clock=clock, interval_s=10), CollectorStatus()
    runner = CollectorRunner("gpu", col.read, 10, status)
    up_at = None
    for _ in range(20):  # one collection every interval
        if runner.run_once():
            up_at = clock.monotonic()
            break
        s = status.snapshot()["gpu"]
        assert not s.success and "Driver Not Loaded" in s.error
        samples = scrape((), status)
        assert ("drm_exporter_collector_success", {"collector": "gpu"}, 0.0) in samples
        assert not [n for n, _, _ in samples if n.startswith("drm_gpu_")]
        clock.advance(10)
    assert attempts == [0, 10, 30, 70]  # 1, 2, 4 intervals apart, not every collection
    assert up_at == 70 and len(col.read()) == 2  # GPUs appear without a restart
    assert status.snapshot()["gpu"].success


def test_init_backoff_is_capped() -> None:
    clock = ManualClock()
    attempts: list[float] = []

    def loader():
        attempts.append(clock.monotonic())
        raise nvml.NvmlInitError("nvmlInit failed: version mismatch")

    col = GpuCollector(loader, clock=clock, interval_s=1, backoff_cap_intervals=4)
    for _ in range(30):
        with pytest.raises(nvml.NvmlInitError):
            col.read()
        clock.advance(1)
    assert attempts == [0, 1, 3, 7, 11, 15, 19, 23, 27]


def test_no_driver_at_all_is_nothing_to_report() -> None:
    calls = []

    def absent():
        calls.append(1)
        raise nvml.NvmlAbsent("libnvidia-ml is not present")

    col, status = GpuCollector(absent), CollectorStatus()
    runner = CollectorRunner("gpu", col.read, 10, status)
    assert runner.run_once() and runner.run_once()  # not a failure
    assert calls == [1]  # and not looked for again
    assert not [n for n, _, _ in scrape((), status) if n.startswith("drm_gpu_")]


def test_real_nvml_seam() -> None:
    """Without an NVIDIA driver the real seam reports absence, not a crash; with one, the same
    code reads the real GPUs."""
    try:
        n = nvml.load()
    except nvml.NvmlAbsent:
        assert GpuCollector().read() == ()
    except nvml.NvmlInitError:
        pytest.skip("NVML present but not working here")
    else:
        gpus = GpuCollector().read()
        assert len(gpus) == n.nvmlDeviceGetCount()
        assert all(g.up and g.uuid for g in gpus)


def test_budget_fits_inside_the_runner_timeout() -> None:
    assert gpu_budget(5, 3) == pytest.approx(2.4)  # hung GPUs answer before the runner gives up
    assert gpu_budget(2) == pytest.approx(1.6) and gpu_budget(60) == 4.0
