"""The NVML seam. `load()` returns an initialised pynvml module; tests pass their own object
with the same functions and error classes, so every GPU and every fault can be modelled."""

from __future__ import annotations

from typing import Any


class NvmlAbsent(RuntimeError):
    """No NVIDIA library on this machine: nothing to report, not a failure."""


class NvmlInitError(RuntimeError):
    """NVML is there but does not work (driver not loaded, version mismatch...)."""


def load() -> Any:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError as e:
        raise NvmlAbsent("pynvml is not installed (pip install 'drm-exporter[nvidia]')") from e
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound as e:
        raise NvmlAbsent("libnvidia-ml is not present") from e
    except pynvml.NVMLError as e:
        raise NvmlInitError(f"nvmlInit failed: {e}") from e
    return pynvml
