"""GPUs through NVML: one GpuReading per device, each field read on its own.

Exposition this feeds (snapshot.py), for a T4 and an A100 in MIG mode with two instances:

    drm_gpu_up{worker="w",gpu="0"} 1
    drm_gpu_utilization_ratio{worker="w",gpu="0"} 0.37
    drm_gpu_memory_used_bytes{worker="w",gpu="1"} 1.2e+10   # the whole device, MIG or not
    drm_gpu_mig_memory_used_bytes{worker="w",gpu="1",mig_instance="0"} 5e+09
    drm_gpu_mig_memory_used_bytes{worker="w",gpu="1",mig_instance="1"} 7e+09

A field that raises NotSupported is left None (absent in /metrics, never 0) and logged once.
A GPU that is lost, or whose NVML call does not answer within the budget, reads as up=False
with no other values. NVML calls run on daemon threads so a hung driver cannot stall the
collection; a call that hangs is abandoned, never doubled (one thread per GPU at most).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..clock import Clock, SystemClock
from ..fleet import GpuReading, MigReading
from . import nvml as nvml_seam
from .runner import default_timeout

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 5.0
DEFAULT_TIMEOUT_S = 4.0
BACKOFF_CAP_INTERVALS = 32  # a broken NVML is retried at least every 32 intervals
MAX_THREADS = 64  # threads on GPUs (api.MAX_GPUS); one more for init or the device count


def gpu_budget(interval_s: float, runner_timeout_s: float | None = None) -> float:
    """How long one read() may take: inside the runner's timeout for the collector, so a hung
    GPU reads up=False while the others still export, instead of the whole run timing out."""
    return min(DEFAULT_TIMEOUT_S, 0.8 * (runner_timeout_s or default_timeout(interval_s)))


class NvmlTimeout(nvml_seam.NvmlInitError):
    """A device-independent NVML call (init, device count) did not answer within the budget."""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class _Call:
    """One NVML call on its own daemon thread. Python cannot kill a thread stuck in C, so a call
    that hangs is abandoned; the collector keeps it to know not to start another beside it."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self._fn = fn
        self.done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as e:  # handed to the collecting thread, which decides
            self._error = e
        finally:
            self.done.set()

    def value(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class GpuCollector:
    def __init__(self, loader: Callable[[], Any] = nvml_seam.load, *,
                 clock: Clock | None = None, interval_s: float = DEFAULT_INTERVAL_S,
                 timeout_s: float | None = None,
                 backoff_cap_intervals: int = BACKOFF_CAP_INTERVALS,
                 max_threads: int = MAX_THREADS) -> None:
        """`timeout_s` is the budget of one read(), init included (default: gpu_budget of the
        interval). `clock` times the init retries only; waits use real time."""
        self._loader = loader
        self._clock = clock or SystemClock()
        self._interval = interval_s
        self._timeout = timeout_s if timeout_s is not None else gpu_budget(interval_s)
        self._cap = backoff_cap_intervals
        self._max_threads = max_threads
        self._nvml: Any = None
        self._absent = False
        self._unsupported_logged: set[tuple[int, str]] = set()
        self._last_error: dict[int, str] = {}  # per GPU, so a repeated error is logged once
        self._init_failures = 0
        self._retry_at: float | None = None
        self._init_error = ""
        self._system_call: _Call | None = None  # init or count, still running from before
        self._stuck: dict[int, _Call] = {}  # GPU index -> its call that has not returned

    def read(self) -> tuple[GpuReading, ...]:
        """The GPUs now. () when the machine has no NVIDIA library; raises NvmlInitError when
        NVML is present but broken or does not answer (the runner records the failure)."""
        if self._absent:
            return ()
        deadline = time.monotonic() + self._timeout
        n = self._init(deadline)
        if n is None:
            return ()
        driver, count = self._system(
            lambda: (_text(n.nvmlSystemGetDriverVersion()), int(n.nvmlDeviceGetCount())),
            "nvmlDeviceGetCount", deadline)
        calls: dict[int, _Call] = {}
        for i in range(count):
            old = self._stuck.get(i)
            if old is not None:
                if not old.done.is_set():
                    continue  # still hung: reported lost, and no second thread on this GPU
                del self._stuck[i]  # it came back at last; its answer is stale, read afresh
                log.info("GPU %d answers again", i)
            if self._gpu_threads() + len(calls) >= self._max_threads:
                continue  # too many hung calls already: this GPU is reported down
            calls[i] = _Call(lambda i=i: self._read_one(n, i, driver), f"nvml-gpu{i}")
        readings = []
        for i in range(count):
            call = calls.get(i)
            if call is None:
                readings.append(GpuReading(index=i, driver_version=driver, up=False))
            elif call.done.wait(max(0.0, deadline - time.monotonic())):
                readings.append(call.value())
            else:
                log.warning("GPU %d did not answer within %gs; reported down until it does",
                            i, self._timeout)
                self._stuck[i] = call
                readings.append(GpuReading(index=i, driver_version=driver, up=False))
        return tuple(readings)

    def threads_in_use(self) -> int:
        """NVML calls still running between reads, that is hung ones: at most max_threads on
        GPUs and one device-independent call."""
        s = self._system_call
        return self._gpu_threads() + int(s is not None and not s.done.is_set())

    def _gpu_threads(self) -> int:
        return sum(1 for c in self._stuck.values() if not c.done.is_set())

    def _init(self, deadline: float) -> Any:
        if self._nvml is not None:
            return self._nvml
        now = self._clock.monotonic()
        if self._retry_at is not None and now < self._retry_at:
            # No nvmlInit on every collection while it fails: 1, 2, 4 ... intervals apart.
            raise nvml_seam.NvmlInitError(
                f"{self._init_error} (next attempt in {self._retry_at - now:.0f}s)")
        try:
            self._nvml = self._system(self._loader, "nvmlInit", deadline)
        except nvml_seam.NvmlAbsent as e:
            log.info("no GPU collection: %s", e)
            self._absent = True
            return None
        except nvml_seam.NvmlInitError as e:
            self._init_failures += 1
            delay = self._interval * min(2 ** (self._init_failures - 1), self._cap)
            self._retry_at = now + delay
            self._init_error = str(e)
            raise nvml_seam.NvmlInitError(f"{e} (attempt {self._init_failures}, next in "
                                          f"{delay:g}s)") from e
        if self._init_failures:
            log.info("NVML initialised after %d failed attempts", self._init_failures)
        self._init_failures, self._retry_at = 0, None
        return self._nvml

    def _system(self, fn: Callable[[], Any], what: str, deadline: float) -> Any:
        """A device-independent call within the budget. One that hung is waited on again at
        the next read rather than started twice (reads are sequential, so it is the same kind
        of call)."""
        call = self._system_call
        if call is None:
            call = self._system_call = _Call(fn, f"nvml-{what}")
        if not call.done.wait(max(0.0, deadline - time.monotonic())):
            raise NvmlTimeout(f"{what} did not answer within {self._timeout:g}s")
        self._system_call = None
        return call.value()

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
            migs = self._mig_devices(n, i, h) if mig else ()
        except n.NVMLError_GpuIsLost:
            log.warning("GPU %d is lost", i)
            return GpuReading(index=i, driver_version=driver, up=False)
        except n.NVMLError as e:  # this GPU does not answer; the others still may
            if self._last_error.get(i) != str(e):
                log.warning("GPU %d: %s; reported down", i, e)
            self._last_error[i] = str(e)
            return GpuReading(index=i, driver_version=driver, up=False)
        self._last_error.pop(i, None)
        return GpuReading(
            index=i, uuid=uuid, name=name, driver_version=driver,
            mig_mode="enabled" if mig else "disabled",
            up=True,
            # MIG hides whole-device utilization; a made-up figure would mislead.
            utilization_ratio=None if mig else util,
            memory_total_bytes=int(mem.total) if mem is not None else None,
            memory_used_bytes=int(mem.used) if mem is not None else None,
            temperature_celsius=temp, power_watts=power, mig_devices=migs)

    def _mig_devices(self, n: Any, i: int, h: Any) -> tuple[MigReading, ...]:
        slots = self._field(n, i, "MIG devices", lambda: n.nvmlDeviceGetMaxMigDeviceCount(h))
        out = []
        for k in range(slots or 0):
            try:
                mh = n.nvmlDeviceGetMigDeviceHandleByIndex(h, k)
            except n.NVMLError_NotFound:
                continue  # an empty slot: no instance was created there
            out.append(self._mig_one(n, i, k, mh))
        return tuple(out)

    def _mig_one(self, n: Any, i: int, k: int, mh: Any) -> MigReading:
        uuid = self._field(n, i, "MIG uuid", lambda: _text(n.nvmlDeviceGetUUID(mh)))
        mem = self._field(n, i, "MIG memory", lambda: n.nvmlDeviceGetMemoryInfo(mh))
        return MigReading(index=k, uuid=uuid or "",
                          memory_total_bytes=int(mem.total) if mem is not None else None,
                          memory_used_bytes=int(mem.used) if mem is not None else None)
