"""Host collectors through their seams (GPUs: test_gpu.py)."""

from __future__ import annotations

from collections import namedtuple

import psutil
import pytest

from drm_exporter.collectors.cgroup import CgroupReader, CgroupReading
from drm_exporter.collectors.host import HostCollector

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
    host = HostCollector(ps, prime_s=0.2, sleep=slept.append, monotonic=lambda: next(clock),
                         cgroup=lambda: CgroupReading("host"))  # not this machine's cgroup
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
    cg = CgroupReader().read()  # inside a container the tighter cgroup limit is the capacity
    assert r.cpu_cores == min(psutil.cpu_count(logical=True), cg.cpu_limit_cores or 1e9)
    assert r.memory_total_bytes == min(psutil.virtual_memory().total,
                                       cg.memory_limit_bytes or 2**63)
    assert 0.0 <= r.cpu_utilization_ratio <= 1.0
