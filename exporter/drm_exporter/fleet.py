"""Worker identity, capacity and measured usage: what the registry holds per worker."""

from __future__ import annotations

from dataclasses import dataclass, field

from .metrics import CAPACITY_SOURCES

STATE_ACTIVE = "active"
STATE_DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Who a worker is and what it offers. GPUs are whole devices, indexed 0..gpus-1."""

    worker: str
    pool: str
    provider: str
    region: str
    instance_type: str
    hostname: str
    cpu_cores: float
    memory_total_bytes: int
    gpus: int = 0
    metrics_url: str = ""  # set by agents that serve their own /metrics (for /sd)
    # Where cpu_cores and memory_total_bytes come from (CAPACITY_SOURCES); "" when not reported.
    cpu_source: str = ""
    memory_source: str = ""

    def __post_init__(self) -> None:
        if not self.worker:
            raise ValueError("worker id must not be empty")
        if not self.pool:
            raise ValueError("pool must not be empty")
        if self.cpu_cores <= 0:
            raise ValueError(f"cpu_cores must be > 0, got {self.cpu_cores}")
        if self.memory_total_bytes <= 0:
            raise ValueError(f"memory_total_bytes must be > 0, got {self.memory_total_bytes}")
        if self.gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {self.gpus}")
        for name in ("cpu_source", "memory_source"):
            v = getattr(self, name)
            if v and v not in CAPACITY_SOURCES:
                raise ValueError(f"{name} must be one of {', '.join(CAPACITY_SOURCES)}, got {v!r}")
        if bool(self.cpu_source) != bool(self.memory_source):
            raise ValueError("cpu_source and memory_source are reported together or not at all")


@dataclass(frozen=True, slots=True)
class MigReading:
    """One MIG device of a GPU in MIG mode. `index` is its slot on the parent (0..max-1, as
    nvmlDeviceGetMigDeviceHandleByIndex numbers them); its memory is part of the parent's."""

    index: int
    uuid: str = ""
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU as measured. A field the device does not support is None (absent, never 0).
    The memory fields are the whole device's, MIG or not; `mig_devices` break it down."""

    index: int
    uuid: str = ""
    name: str = ""
    driver_version: str = ""
    mig_mode: str = "disabled"
    up: bool = True
    utilization_ratio: float | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    temperature_celsius: float | None = None
    power_watts: float | None = None
    mig_devices: tuple[MigReading, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Measured usage in one report. None means "not measured", which is exported as absent."""

    cpu_utilization_ratio: float | None = None
    memory_used_bytes: int | None = None
    gpus: tuple[GpuReading, ...] = ()

    def __post_init__(self) -> None:
        u = self.cpu_utilization_ratio
        if u is not None and not 0.0 <= u <= 1.0:
            raise ValueError(f"cpu_utilization_ratio must be in 0..1, got {u}")
        if self.memory_used_bytes is not None and self.memory_used_bytes < 0:
            raise ValueError(f"memory_used_bytes must be >= 0, got {self.memory_used_bytes}")


@dataclass(slots=True)
class Worker:
    spec: WorkerSpec
    state: str
    registered_at: float  # unix
    last_report: float  # unix
    last_report_mono: float
    last_accrual_mono: float
    usage: Usage = field(default_factory=Usage)
    # Allocation is kept as running sums so a snapshot of 10k workers needs no reservation walk.
    cpu_allocated: float = 0.0
    memory_allocated: int = 0
    gpus_allocated: set[int] = field(default_factory=set)
    tasks: set[str] = field(default_factory=set)

    @property
    def cpu_free(self) -> float:
        return self.spec.cpu_cores - self.cpu_allocated

    @property
    def memory_free(self) -> int:
        return self.spec.memory_total_bytes - self.memory_allocated

    @property
    def gpus_free(self) -> list[int]:
        return [i for i in range(self.spec.gpus) if i not in self.gpus_allocated]
