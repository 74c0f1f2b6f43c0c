"""Host and GPU collectors through their seams, and the runner's health bookkeeping."""

from __future__ import annotations

import logging
from collections import namedtuple
from types import SimpleNamespace

import psutil
import pytest

from drm_exporter.collectors import nvml
from drm_exporter.collectors.gpu import GpuCollector
from drm_exporter.collectors.host import HostCollector
from drm_exporter.collectors.runner import CollectorRunner
from drm_exporter.collectors.status import CollectorStatus

CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")
Mem = namedtuple("Mem", "total available")


class FakePsutil:
    """Counters the test moves by hand."""

    def __init__(self) -> None:
        self.times = CpuTimes(100, 0, 50, 800, 50, 0, 0, 0, 0, 0)

    def cpu_times(self):
        return self.times

    def cpu_count(self, logical=True):
        return 6

    def virtual_memory(self):
        return Mem(16 * 2**30, 10 * 2**30)


def test_host_utilization_from_counter_deltas_and_primed() -> None:
    ps = FakePsutil()
    slept: list[float] = []
    clock = iter([0.0, 0.05, 0.25, 10.0, 10.0])
    host = HostCollector(ps, prime_s=0.2, sleep=slept.append, monotonic=lambda: next(clock))
    # 30 busy + 10 idle seconds between the baseline and the first read: 0.75, not 0.0
    ps.times = ps.times._replace(user=120, system=60, idle=808, iowait=52)
    r = host.read()
    assert slept == [pytest.approx(0.15)]  # read 0.05 s after the baseline waits the rest
    assert r.cpu_utilization_ratio == pytest.approx(30 / 40)
    assert (r.cpu_cores, r.memory_total_bytes, r.memory_used_bytes) == (6, 16 * 2**30, 6 * 2**30)
    ps.times = ps.times._replace(idle=848)  # then only idle time passes
    assert host.read().cpu_utilization_ratio == 0.0


def test_host_reads_this_machine() -> None:
    r = HostCollector().read()
    assert r.cpu_cores == psutil.cpu_count(logical=True)
    assert r.memory_total_bytes == psutil.virtual_memory().total
    assert 0.0 <= r.cpu_utilization_ratio <= 1.0


class NVMLError(Exception):
    pass


class FakeNvml:
    """A fake NVML: the real pynvml's function names and error classes, any GPU, any fault."""

    NVMLError = NVMLError
    NVMLError_NotSupported = type("NVMLError_NotSupported", (NVMLError,), {})
    NVMLError_GpuIsLost = type("NVMLError_GpuIsLost", (NVMLError,), {})
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict]) -> None:
        self.gpus = gpus

    def _get(self, h: int, key: str):
        v = self.gpus[h][key]
        if isinstance(v, type) and issubclass(v, Exception):
            raise v()
        return v

    def nvmlSystemGetDriverVersion(self):  # noqa: N802
        return b"550.54.15"

    def nvmlDeviceGetCount(self):  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        return i

    def nvmlDeviceGetUUID(self, h):  # noqa: N802
        return self._get(h, "uuid")

    def nvmlDeviceGetName(self, h):  # noqa: N802
        return self._get(h, "name")

    def nvmlDeviceGetMigMode(self, h):  # noqa: N802
        return [self._get(h, "mig"), 0]

    def nvmlDeviceGetUtilizationRates(self, h):  # noqa: N802
        return SimpleNamespace(gpu=self._get(h, "util"), memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        total, used = self._get(h, "mem")
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetTemperature(self, h, sensor):  # noqa: N802
        return self._get(h, "temp")

    def nvmlDeviceGetPowerUsage(self, h):  # noqa: N802
        return self._get(h, "power_mw")


def gpu(**over) -> dict:
    base = {"uuid": "GPU-1", "name": "Tesla T4", "mig": 0, "util": 37, "mem": (16, 4),
            "temp": 51, "power_mw": 27500}
    return base | over


def test_gpu_fields_read_each_on_its_own(caplog) -> None:
    caplog.set_level(logging.INFO)
    fake = FakeNvml([gpu(), gpu(uuid="GPU-2", power_mw=FakeNvml.NVMLError_NotSupported)])
    col = GpuCollector(lambda: fake)
    a, b = col.read()
    assert (a.uuid, a.name, a.driver_version, a.utilization_ratio, a.memory_total_bytes,
            a.memory_used_bytes, a.temperature_celsius, a.power_watts) == (
        "GPU-1", "Tesla T4", "550.54.15", 0.37, 16, 4, 51.0, 27.5)
    assert b.power_watts is None and b.temperature_celsius == 51.0  # absent, not 0
    col.read()
    assert sum("does not support power" in r.message for r in caplog.records) == 1


def test_lost_gpu_and_mig() -> None:
    fake = FakeNvml([gpu(temp=FakeNvml.NVMLError_GpuIsLost), gpu(uuid="GPU-M", mig=1)])
    lost, mig = GpuCollector(lambda: fake).read()
    assert (lost.up, lost.utilization_ratio, lost.memory_used_bytes) == (False, None, None)
    assert (mig.mig_mode, mig.utilization_ratio, mig.memory_total_bytes) == ("enabled", None, 16)


def test_no_nvidia_library_is_nothing_to_report() -> None:
    def absent():
        raise nvml.NvmlAbsent("libnvidia-ml is not present")

    assert GpuCollector(absent).read() == ()


def test_broken_nvml_fails_the_collector_then_recovers() -> None:
    state = {"broken": True}

    def loader():
        if state["broken"]:
            raise nvml.NvmlInitError("nvmlInit failed: Driver Not Loaded")
        return FakeNvml([gpu()])

    col, status = GpuCollector(loader), CollectorStatus()
    runner = CollectorRunner("gpu", col.read, 60, status)
    assert runner.run_once() is False
    s = status.snapshot()["gpu"]
    assert (s.success, s.last_success_ts) == (False, None) and "Driver Not Loaded" in s.error
    state["broken"] = False  # NVML works again: GPUs appear without a restart
    assert runner.run_once() is True
    assert status.snapshot()["gpu"].success and len(col.read()) == 1


def test_real_nvml_seam_without_a_gpu() -> None:
    """On this machine (no NVIDIA driver) the real seam reports absence, not a crash."""
    try:
        n = nvml.load()
    except nvml.NvmlAbsent:
        assert GpuCollector().read() == ()
    except nvml.NvmlInitError:
        pytest.skip("NVML present but not working here")
    else:
        assert n.nvmlDeviceGetCount() >= 0  # a GPU machine: the same code reads real GPUs
