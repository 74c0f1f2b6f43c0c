"""GPUs through NVML: one GpuReading per device, each field read on its own.

A field that raises NotSupported is left None (absent in /metrics, never 0) and logged once.
A GPU that is lost reads as up=False with no other values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..fleet import GpuReading
from . import nvml as nvml_seam

log = logging.getLogger(__name__)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class GpuCollector:
    def __init__(self, loader: Callable[[], Any] = nvml_seam.load) -> None:
        self._loader = loader
        self._nvml: Any = None
        self._absent = False
        self._unsupported_logged: set[tuple[int, str]] = set()

    def read(self) -> tuple[GpuReading, ...]:
        """The GPUs now. () when the machine has no NVIDIA library; raises NvmlInitError when
        NVML is present but broken (the runner records the failure and retries)."""
        if self._absent:
            return ()
        if self._nvml is None:
            try:
                self._nvml = self._loader()
            except nvml_seam.NvmlAbsent as e:
                log.info("no GPU collection: %s", e)
                self._absent = True
                return ()
        n = self._nvml
        driver = _text(n.nvmlSystemGetDriverVersion())
        return tuple(self._read_one(n, i, driver) for i in range(n.nvmlDeviceGetCount()))

    def _field(self, n: Any, index: int, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except n.NVMLError_NotSupported:
            if (index, name) not in self._unsupported_logged:
                self._unsupported_logged.add((index, name))
                log.info("GPU %d does not support %s; the series is left out", index, name)
            return None

    def _read_one(self, n: Any, i: int, driver: str) -> GpuReading:
        try:
            h = n.nvmlDeviceGetHandleByIndex(i)
            uuid = _text(n.nvmlDeviceGetUUID(h))
            name = _text(n.nvmlDeviceGetName(h))
            mig = self._field(n, i, "mig_mode", lambda: n.nvmlDeviceGetMigMode(h)[0])
            util = self._field(n, i, "utilization",
                               lambda: n.nvmlDeviceGetUtilizationRates(h).gpu / 100.0)
            mem = self._field(n, i, "memory", lambda: n.nvmlDeviceGetMemoryInfo(h))
            temp = self._field(n, i, "temperature",
                               lambda: float(n.nvmlDeviceGetTemperature(h,
                                                                        n.NVML_TEMPERATURE_GPU)))
            power = self._field(n, i, "power", lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0)
        except n.NVMLError_GpuIsLost:
            log.warning("GPU %d is lost", i)
            return GpuReading(index=i, driver_version=driver, up=False)
        return GpuReading(
            index=i, uuid=uuid, name=name, driver_version=driver,
            mig_mode="enabled" if mig else "disabled",
            up=True,
            # MIG hides whole-device utilization; a made-up figure would mislead.
            utilization_ratio=None if mig else util,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            temperature_celsius=temp, power_watts=power)
