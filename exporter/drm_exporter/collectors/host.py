"""This machine through psutil: CPU cores and utilization, memory total and used; inside a
container, the cgroup's CPU quota and memory limit instead where they are tighter.

psutil is the seam: pass any object with cpu_times/cpu_count/virtual_memory. The cgroup is the
other one: any callable returning a CgroupReading (collectors/cgroup.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from .cgroup import SOURCE_HOST, CgroupReader, CgroupReading


@dataclass(frozen=True)
class HostReading:
    cpu_cores: float  # fractional under a CPU quota (1.5)
    cpu_utilization_ratio: float
    memory_total_bytes: int
    memory_used_bytes: int
    cpu_source: str = SOURCE_HOST  # host, cgroup_v1 or cgroup_v2
    memory_source: str = SOURCE_HOST


def _busy_and_total(t: Any) -> tuple[float, float]:
    total = sum(t)
    # On Linux guest time is already counted in user/nice; psutil subtracts it the same way.
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


def _ratio(part: float, whole: float) -> float:
    return min(1.0, max(0.0, part / whole)) if whole > 0 else 0.0


class HostCollector:
    """Utilization comes from CPU time counters between two reads, so it is never the 0.0
    that a first `cpu_percent()` call returns: the first read waits `prime_s` after the
    constructor's baseline when called too soon.

    Under a CPU quota tighter than the machine, capacity is the quota and utilization is the
    cgroup's CPU time against it (CPU seconds ÷ (wall seconds × quota)): a container using its
    1.5 CPUs fully is at 1.0, not at 1.5/64 of the host. Likewise a memory limit tighter than
    the machine is the capacity, and the cgroup's working set is the usage."""

    def __init__(self, ps: Any = psutil, prime_s: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 cgroup: Callable[[], CgroupReading] | None = None) -> None:
        self._ps = ps
        self._prime_s = prime_s
        self._sleep = sleep
        self._monotonic = monotonic
        self._cgroup = cgroup or CgroupReader().read
        self._last = _busy_and_total(ps.cpu_times())
        self._last_cg = self._cgroup().cpu_usage_seconds
        self._last_at = monotonic()

    def read(self) -> HostReading:
        waited = self._monotonic() - self._last_at
        if waited < self._prime_s:
            self._sleep(self._prime_s - waited)
        busy, total = _busy_and_total(self._ps.cpu_times())
        cg = self._cgroup()
        now = self._monotonic()
        d_busy, d_total, d_wall = busy - self._last[0], total - self._last[1], now - self._last_at
        last_cg = self._last_cg
        self._last, self._last_cg, self._last_at = (busy, total), cg.cpu_usage_seconds, now

        cores: float = int(self._ps.cpu_count(logical=True) or 1)
        cpu_source = SOURCE_HOST
        if cg.cpu_limit_cores is not None and cg.cpu_limit_cores < cores:
            cores, cpu_source = cg.cpu_limit_cores, cg.source
        if cpu_source != SOURCE_HOST and cg.cpu_usage_seconds is not None \
                and last_cg is not None:
            util = _ratio(cg.cpu_usage_seconds - last_cg, d_wall * cores)
        else:
            util = _ratio(d_busy, d_total)

        vm = self._ps.virtual_memory()
        # "used" as total − available: page cache the kernel can drop is not pressure.
        mem_total, mem_used, memory_source = int(vm.total), int(vm.total - vm.available), \
            SOURCE_HOST
        limit = cg.memory_limit_bytes
        if limit is not None and limit < mem_total and cg.memory_used_bytes is not None:
            mem_total, mem_used, memory_source = limit, min(cg.memory_used_bytes, limit), cg.source
        return HostReading(cpu_cores=cores, cpu_utilization_ratio=util,
                           memory_total_bytes=mem_total, memory_used_bytes=mem_used,
                           cpu_source=cpu_source, memory_source=memory_source)
