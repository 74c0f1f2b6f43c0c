"""A fake NVML for tests: the real pynvml's function names and error classes, any GPU, any
fault. A GPU is a dict (see `gpu()`); a value that is an exception class is raised, a `Hang`
blocks the calling thread until its event is set (a driver that does not answer)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    pass


def _error(name: str) -> type[NVMLError]:
    return type(name, (NVMLError,), {})


@dataclass
class Hang:
    """A call that blocks until `release` is set (at most `limit_s`), then answers `then`."""

    then: Any
    release: threading.Event = field(default_factory=threading.Event)
    limit_s: float = 60.0
    entered: int = 0  # how many calls are, or were, blocked here

    def wait(self) -> Any:
        self.entered += 1
        self.release.wait(self.limit_s)
        return self.then


class FakeNvml:
    NVMLError = NVMLError
    NVMLError_NotSupported = _error("NVMLError_NotSupported")
    NVMLError_GpuIsLost = _error("NVMLError_GpuIsLost")
    NVMLError_NotFound = _error("NVMLError_NotFound")
    NVMLError_Unknown = _error("NVMLError_Unknown")
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[dict], driver: Any = b"550.54.15") -> None:
        self.gpus = gpus
        self.driver = driver

    def _answer(self, v: Any) -> Any:
        if isinstance(v, Hang):
            v = v.wait()
        if isinstance(v, type) and issubclass(v, Exception):
            raise v()
        return v

    def _get(self, h: int, key: str) -> Any:
        return self._answer(self.gpus[h][key])

    def _mig(self, mh: tuple[int, int]) -> Any:
        return self._answer(self.gpus[mh[0]]["migs"][mh[1]])

    def nvmlSystemGetDriverVersion(self):  # noqa: N802
        return self._answer(self.driver)

    def nvmlDeviceGetCount(self):  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):  # noqa: N802
        return i

    def nvmlDeviceGetUUID(self, h):  # noqa: N802
        return self._mig(h)[0] if isinstance(h, tuple) else self._get(h, "uuid")

    def nvmlDeviceGetName(self, h):  # noqa: N802
        return self._get(h, "name")

    def nvmlDeviceGetMigMode(self, h):  # noqa: N802
        return [self._get(h, "mig"), 0]

    def nvmlDeviceGetUtilizationRates(self, h):  # noqa: N802
        return SimpleNamespace(gpu=self._get(h, "util"), memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):  # noqa: N802
        total, used = self._answer(self._mig(h)[1]) if isinstance(h, tuple) \
            else self._get(h, "mem")
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetTemperature(self, h, sensor):  # noqa: N802
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._get(h, "temp")

    def nvmlDeviceGetPowerUsage(self, h):  # noqa: N802
        return self._get(h, "power_mw")

    def nvmlDeviceGetMaxMigDeviceCount(self, h):  # noqa: N802
        return len(self._get(h, "migs"))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, k):  # noqa: N802
        if self.gpus[h]["migs"][k] is None:
            raise self.NVMLError_NotFound()
        return (h, k)


def gpu(**over: Any) -> dict:
    """A healthy Tesla T4 unless told otherwise; `migs` lists (uuid, (total, used)) per slot,
    None for an empty slot."""
    base = {"uuid": "GPU-1", "name": "Tesla T4", "mig": 0, "util": 37, "mem": (16, 4),
            "temp": 51, "power_mw": 27500, "migs": []}
    return base | over
