"""A seeded simulated fleet that feeds the coordinator through its API client, like a real one.

It reproduces the seed example's behaviour without its faults: demand per pool follows a random
walk with a trend (increasing, decreasing or stable; every trend period a 20 % chance of a new
trend and 10 % of a new variability), tasks arrive in proportion to demand, reserve cores, memory
and whole GPUs and finish after a random duration; measured usage is the reserved share times a
per-worker efficiency that wanders, so used ÷ allocated is meaningful. The simulator acts as
the provisioner: a scale-up registers new workers after a provisioning delay, and a scale-down
removes the workers the engine chose once they have drained. Same seed, same run.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

from .api import ApiError
from .client import Client
from .clock import Clock, ManualClock
from .engine import Engine
from .fleet import GpuReading, Usage, WorkerSpec
from .scaling import Decision

GIB = 1024**3
TRENDS = {"increasing": 1, "decreasing": -1, "stable": 0}
SIM_DOMAIN = ".sim.internal"  # every simulated worker's hostname ends so


@dataclass(frozen=True)
class Shape:
    provider: str
    region: str
    instance_type: str
    cpu_cores: int
    memory_gib: int
    gpus: int = 0
    gpu_name: str = ""
    gpu_memory_gib: int = 0
    gpu_idle_w: float = 0.0
    gpu_max_w: float = 0.0


# Instance types the simulated pools launch, cycling through providers.
POOL_SHAPES: dict[str, tuple[Shape, ...]] = {
    "cpu": (Shape("aws", "us-east-1", "m5.2xlarge", 8, 32),
            Shape("gcp", "us-central1", "n2-standard-8", 8, 32),
            Shape("azure", "eastus", "Standard_D8s_v5", 8, 32)),
    "gpu": (Shape("aws", "us-east-1", "g4dn.2xlarge", 8, 32, 1, "Tesla T4", 16, 10, 70),
            Shape("gcp", "us-central1", "g2-standard-24", 24, 96, 2, "NVIDIA L4", 24, 16, 72),
            Shape("azure", "eastus", "Standard_NC8as_T4_v3", 8, 56, 1, "Tesla T4", 16, 10,
                  70)),
}

# What one task of each pool reserves: (cpu cores choices, memory GiB range, gpus).
TASK_SHAPES: dict[str, tuple[tuple[int, ...], tuple[float, float], int]] = {
    "cpu": ((1, 2, 2, 4), (1.0, 8.0), 0),
    "gpu": ((2, 4), (4.0, 12.0), 1),
}


@dataclass(frozen=True)
class SimulatorSettings:
    seed: int = 42
    workers: int = 8
    gpu_workers: int = 3
    provisioning_delay_s: float = 60.0
    task_duration_s: float = 120.0
    initial_load: float = 0.5
    initial_trend: str = "increasing"
    walk_interval_s: float = 10.0  # the seed example's update interval
    trend_period_s: float = 60.0  # the seed example's scaling interval
    report_interval_s: float = 5.0  # how often each simulated worker reports, like an agent
    max_pending: int = 500

    def __post_init__(self) -> None:
        if self.workers < 1 or not 0 <= self.gpu_workers <= self.workers:
            raise ValueError("need workers >= 1 and 0 <= gpu_workers <= workers")
        if self.initial_trend not in TRENDS:
            raise ValueError(f"initial_trend must be one of {sorted(TRENDS)}")
        if not 0.0 < self.initial_load <= 1.0:
            raise ValueError("initial_load must be in (0, 1]")
        for name in ("provisioning_delay_s", "task_duration_s", "walk_interval_s",
                     "trend_period_s", "report_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")


@dataclass
class _Demand:
    load: float
    trend: str
    variability: float = 0.1
    ref_units: float = 0.0  # demand is load × the pool's starting capacity, in its unit


@dataclass
class _SimWorker:
    spec: WorkerSpec
    shape: Shape
    eff_cpu: float
    eff_mem: float
    eff_gpu: float
    base_mem_gib: float


@dataclass
class _Task:
    task_id: str
    pool: str
    cpu: int
    memory: int
    gpus: int
    duration_s: float
    ends_at: float = 0.0


@dataclass
class _PoolSim:
    demand: _Demand
    pending: deque[_Task] = field(default_factory=deque)
    next_shape: int = 0
    launching: list[float] = field(default_factory=list)  # ready times (monotonic)


class Simulator:
    """Talks to the coordinator only through a Client (in-process or HTTP), like any fleet."""

    def __init__(self, client: Client, clock: Clock,
                 settings: SimulatorSettings | None = None) -> None:
        self.client = client
        self.clock = clock
        self.s = settings or SimulatorSettings()
        self._rng = random.Random(self.s.seed)
        self._workers: dict[str, _SimWorker] = {}
        self._tasks: dict[str, _Task] = {}
        self._seq = 0
        self._task_seq = 0
        self._next_walk = 0.0
        self._next_report = 0.0
        self._next_trend = 0.0
        self._last_step: float | None = None
        self.pools: dict[str, _PoolSim] = {}
        self.abandoned_tasks = 0
        self.decisions: list[Decision] = []

    # --- setup -------------------------------------------------------------------------------
    def start(self) -> None:
        # Simulated machines end with the process that simulated them: ones a state file kept
        # from an earlier run are gone (deregistered, releasing what their tasks held), and
        # their names and task ids are free for this run.
        for w in self.client.workers():
            if w["hostname"].endswith(SIM_DOMAIN):
                self.client.deregister(w["worker"])
        counts = {"cpu": self.s.workers - self.s.gpu_workers, "gpu": self.s.gpu_workers}
        for pool, n in counts.items():
            if n == 0:
                continue
            self.pools[pool] = _PoolSim(_Demand(self.s.initial_load, self.s.initial_trend))
            for _ in range(n):
                self._launch(pool)
            ws = [w.shape for w in self._workers.values() if w.spec.pool == pool]
            self.pools[pool].demand.ref_units = float(
                sum(s.gpus for s in ws) if pool == "gpu" else sum(s.cpu_cores for s in ws))
        mono = self.clock.monotonic()
        for pool, ps in self.pools.items():
            self._prewarm(pool, ps, mono)
        self._next_walk = mono + self.s.walk_interval_s
        self._next_trend = mono + self.s.trend_period_s
        self._last_step = mono
        self._next_report = mono + self.s.report_interval_s
        self._report_all()

    def _prewarm(self, pool: str, ps: _PoolSim, now: float) -> None:
        """Start in steady state: tasks already hold about `initial_load` of the pool, so the
        first evaluation does not see an empty fleet and scale it down (the seed's fault)."""
        cores, _, gpus = TASK_SHAPES[pool]
        held = 0.0
        while held < ps.demand.load * ps.demand.ref_units:
            t = self._new_task(pool)
            if not self._reserve(t):
                break
            t.ends_at = now + t.duration_s * self._rng.random()
            self._tasks[t.task_id] = t
            held += gpus if gpus else t.cpu

    def _new_task(self, pool: str) -> _Task:
        cores, (mem_lo, mem_hi), gpus = TASK_SHAPES[pool]
        self._task_seq += 1
        return _Task(f"{pool}-task-{self._task_seq:06d}", pool, self._rng.choice(cores),
                     int(self._rng.uniform(mem_lo, mem_hi) * GIB), gpus,
                     max(5.0, self._rng.expovariate(1.0 / self.s.task_duration_s)))

    def _launch(self, pool: str) -> str:
        ps = self.pools[pool]
        shapes = POOL_SHAPES[pool]
        shape = shapes[ps.next_shape % len(shapes)]
        ps.next_shape += 1
        self._seq += 1
        wid = f"{pool}-{shape.provider}-{self._seq:03d}"
        r = self._rng
        spec = WorkerSpec(
            worker=wid, pool=pool, provider=shape.provider, region=shape.region,
            instance_type=shape.instance_type, hostname=f"{wid}{SIM_DOMAIN}",
            cpu_cores=shape.cpu_cores, memory_total_bytes=shape.memory_gib * GIB,
            gpus=shape.gpus)
        self._workers[wid] = _SimWorker(spec, shape, r.uniform(0.45, 0.95),
                                        r.uniform(0.5, 0.95), r.uniform(0.6, 0.95),
                                        r.uniform(0.6, 1.5))
        self.client.put_worker(spec)
        return wid

    def _reserve(self, t: _Task) -> bool:
        try:
            self.client.reserve(t.task_id, t.cpu, t.memory, t.gpus, pool=t.pool)
        except ApiError as e:
            if e.status == 409:  # no capacity now: the task waits
                return False
            raise
        return True

    # --- one step --------------------------------------------------------------------------
    def step(self) -> None:
        """Advance the fleet to the engine clock's now: demand, tasks, launches, reports."""
        now = self.clock.monotonic()
        dt = max(0.0, now - (self._last_step if self._last_step is not None else now))
        self._last_step = now
        while now >= self._next_walk:
            self._walk()
            self._next_walk += self.s.walk_interval_s
        while now >= self._next_trend:
            self._maybe_new_trend()
            self._next_trend += self.s.trend_period_s
        for tid in [t.task_id for t in self._tasks.values() if t.ends_at <= now]:
            self.client.release(tid)
            del self._tasks[tid]
        for pool, ps in self.pools.items():
            ready = [t for t in ps.launching if t <= now]
            ps.launching = [t for t in ps.launching if t > now]
            for _ in ready:
                self._launch(pool)
        for w in self.client.workers():
            if (w["state"] == "draining" and w["tasks_running"] == 0
                    and w["worker"] in self._workers):
                self.client.deregister(w["worker"])
                del self._workers[w["worker"]]
        for pool, ps in self.pools.items():
            self._arrivals(pool, ps, dt)
            self._place(pool, ps, now)
            self.client.set_tasks_pending(pool, len(ps.pending))
        if now >= self._next_report:
            self._next_report = now + self.s.report_interval_s
            self._report_all()

    def apply(self, decisions: list[Decision]) -> None:
        """Act on the engine's decisions as a provisioner would."""
        now = self.clock.monotonic()
        for d in decisions:
            self.decisions.append(d)
            if d.action == "scale_up" and d.pool in self.pools:
                self.pools[d.pool].launching.extend(
                    [now + self.s.provisioning_delay_s] * d.count)
            # scale_down: the engine marked the workers draining; step() removes them drained.

    def _walk(self) -> None:
        r = self._rng
        for ps in self.pools.values():
            d = ps.demand
            change = TRENDS[d.trend] * r.uniform(0, 0.05) + r.uniform(-d.variability,
                                                                      d.variability)
            d.load = min(0.95, max(0.1, d.load + change))
        for w in self._workers.values():
            w.eff_cpu = min(1.0, max(0.3, w.eff_cpu + r.uniform(-0.04, 0.04)))
            w.eff_mem = min(1.0, max(0.4, w.eff_mem + r.uniform(-0.03, 0.03)))
            w.eff_gpu = min(1.0, max(0.5, w.eff_gpu + r.uniform(-0.04, 0.04)))

    def _maybe_new_trend(self) -> None:
        r = self._rng
        for ps in self.pools.values():
            if r.random() < 0.2:
                ps.demand.trend = r.choice(sorted(TRENDS))
            if r.random() < 0.1:
                ps.demand.variability = r.uniform(0.05, 0.2)

    def _arrivals(self, pool: str, ps: _PoolSim, dt: float) -> None:
        cores, _, gpus = TASK_SHAPES[pool]
        unit = gpus if gpus else sum(cores) / len(cores)
        # Little's law: arrival rate that keeps `demand` units busy on average.
        rate = ps.demand.load * ps.demand.ref_units / (unit * self.s.task_duration_s)
        for _ in range(self._poisson(rate * dt)):
            ps.pending.append(self._new_task(pool))
        while len(ps.pending) > self.s.max_pending:
            ps.pending.popleft()
            self.abandoned_tasks += 1

    def _place(self, pool: str, ps: _PoolSim, now: float) -> None:
        while ps.pending:
            t = ps.pending[0]
            if not self._reserve(t):
                return  # FIFO: the head waits for capacity, like a coordinator's queue
            ps.pending.popleft()
            t.ends_at = now + t.duration_s
            self._tasks[t.task_id] = t

    def _poisson(self, lam: float) -> int:
        if lam <= 0:
            return 0
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self._rng.random()
            if p <= limit:
                return k
            k += 1

    def _report_all(self) -> None:
        alloc = {w["worker"]: w for w in self.client.workers() if w["worker"] in self._workers}
        r = self._rng
        for wid in sorted(alloc):
            v, sw = alloc[wid], self._workers[wid]
            sh = sw.shape
            cpu = min(1.0, max(0.0, v["cpu_allocated_cores"] / sh.cpu_cores * sw.eff_cpu + 0.03
                               + r.gauss(0, 0.01)))
            mem = int(min(sh.memory_gib * GIB,
                          sw.base_mem_gib * GIB + v["memory_allocated_bytes"] * sw.eff_mem))
            gpus = []
            busy_gpus = set(v["gpus_allocated"])
            for i in range(sh.gpus):
                busy = i in busy_gpus
                util = min(1.0, sw.eff_gpu * r.uniform(0.85, 1.0)) if busy else 0.0
                total = sh.gpu_memory_gib * GIB
                used = int(total * (r.uniform(0.4, 0.9) if busy else 0.02))
                gpus.append(GpuReading(
                    index=i, uuid=f"GPU-{wid}-{i}", name=sh.gpu_name, driver_version="550.54.15",
                    utilization_ratio=round(util, 4), memory_total_bytes=total,
                    memory_used_bytes=used,
                    temperature_celsius=round(32 + 50 * util + r.uniform(-1.5, 1.5), 1),
                    power_watts=round(sh.gpu_idle_w + util * (sh.gpu_max_w - sh.gpu_idle_w), 1)))
            # PUT, like an agent: it re-registers by itself if the coordinator forgot it.
            self.client.put_worker(sw.spec, Usage(round(cpu, 4), mem, tuple(gpus)))


def run_for(sim: Simulator, engine: Engine, clock: ManualClock, seconds: float,
            step_s: float = 1.0) -> None:
    """Drive simulator and engine for `seconds` of simulated time on a manual clock."""
    for _ in range(int(seconds / step_s)):
        clock.advance(step_s)
        sim.step()
        sim.apply(engine.tick())
