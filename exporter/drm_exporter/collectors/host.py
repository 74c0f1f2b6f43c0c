"""This machine through psutil: CPU cores and utilization, memory total and used.

psutil is the seam: pass any object with cpu_times/cpu_count/virtual_memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass(frozen=True)
class HostReading:
    cpu_cores: int
    cpu_utilization_ratio: float
    memory_total_bytes: int
    memory_used_bytes: int


def _busy_and_total(t: Any) -> tuple[float, float]:
    total = sum(t)
    # On Linux guest time is already counted in user/nice; psutil subtracts it the same way.
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


class HostCollector:
    """Utilization comes from CPU time counters between two reads, so it is never the 0.0
    that a first `cpu_percent()` call returns: the first read waits `prime_s` after the
    constructor's baseline when called too soon."""

    def __init__(self, ps: Any = psutil, prime_s: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._ps = ps
        self._prime_s = prime_s
        self._sleep = sleep
        self._monotonic = monotonic
        self._last = _busy_and_total(ps.cpu_times())
        self._last_at = monotonic()

    def read(self) -> HostReading:
        waited = self._monotonic() - self._last_at
        if waited < self._prime_s:
            self._sleep(self._prime_s - waited)
        busy, total = _busy_and_total(self._ps.cpu_times())
        d_busy, d_total = busy - self._last[0], total - self._last[1]
        self._last, self._last_at = (busy, total), self._monotonic()
        util = min(1.0, max(0.0, d_busy / d_total)) if d_total > 0 else 0.0
        vm = self._ps.virtual_memory()
        # "used" as total − available: page cache the kernel can drop is not pressure.
        return HostReading(cpu_cores=int(self._ps.cpu_count(logical=True) or 1),
                           cpu_utilization_ratio=util,
                           memory_total_bytes=int(vm.total),
                           memory_used_bytes=int(vm.total - vm.available))
