"""The DRM engine: fleet registry, reservations, scaling per pool and the cost meter.

Everything that feeds the engine (the simulator, a worker agent, a user's coordinator) calls the
same public methods; nothing here knows who is calling. All state sits behind one lock and
`view()` hands out an immutable copy, so a scrape never reads a half-applied change.
"""

from __future__ import annotations

import copy
import heapq
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from . import metrics
from .clock import Clock, SystemClock
from .fleet import STATE_ACTIVE, STATE_DRAINING, Usage, Worker, WorkerSpec
from .prices import Price, PriceBook
from .reservations import (
    InsufficientCapacity,
    Reservation,
    ReservationError,
    apply,
    best_fit,
    scarce_resource,
    shortfall,
    undo,
    validate_request,
)
from .scaling import Decision, PoolPolicy, PoolSignal, evaluate
from .state import PoolRecord, State, StateStore, WorkerRecord


class UnknownWorker(KeyError):
    def __str__(self) -> str:
        return f"unknown worker {self.args[0]!r}"


@dataclass(frozen=True)
class EngineSettings:
    heartbeat_timeout_s: float = 30.0
    # A worker silent this long is removed and its reservations released (counted).
    worker_expiry_s: float = 300.0
    # Recent decisions kept for GET /api/v1/scaling/history.
    history_size: int = 1000
    # Uptime gaps longer than this are not billed: a suspended coordinator cannot know.
    cost_max_gap_s: float = 300.0
    # A requested worker that never registers stops counting as provisioning after this.
    provisioning_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        for name in ("heartbeat_timeout_s", "worker_expiry_s", "cost_max_gap_s",
                     "provisioning_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.worker_expiry_s < self.heartbeat_timeout_s:
            raise ValueError("worker_expiry_s must be >= heartbeat_timeout_s")
        if self.history_size < 1:
            raise ValueError("history_size must be >= 1")


@dataclass
class _PoolRuntime:
    policy: PoolPolicy | None
    provisioning: list[float] = field(default_factory=list)  # request times (monotonic)
    next_eval_mono: float = 0.0
    cooldown_until: dict[str, float] = field(default_factory=lambda: {"up": 0.0, "down": 0.0})
    target_workers: int | None = None
    tasks_pending: int = 0
    decisions: dict[tuple[str, str], int] = field(default_factory=dict)
    workers_changed: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    last_decision_ts: dict[str, float] = field(default_factory=dict)
    workers_expired: int = 0
    reservations_expired: int = 0
    samples: deque[tuple[float, dict[str, float]]] = field(default_factory=deque)
    signal: dict[str, float] | None = None  # the smoothed policy input, from the last tick
    pending_mean: float = 0.0  # tasks_pending averaged over the same window

    def __post_init__(self) -> None:
        if self.policy is not None:
            # Pre-created at 0 so rate() and increase() have a series from the first scrape.
            for action, reasons in metrics.REASONS_BY_ACTION.items():
                for reason in reasons:
                    self.decisions[(action, reason)] = 0

    def record(self, name: str, now: float, mono: float) -> PoolRecord:
        """What the state file keeps; monotonic deadlines become unix times."""
        return PoolRecord(
            name, self.tasks_pending, self.target_workers, dict(self.decisions),
            dict(self.workers_changed), dict(self.last_decision_ts), self.workers_expired,
            self.reservations_expired,
            {d: now + (m - mono) for d, m in self.cooldown_until.items()},
            tuple(now + (t - mono) for t in self.provisioning))

    def restore(self, rec: PoolRecord, now: float, mono: float) -> None:
        self.tasks_pending, self.target_workers = rec.tasks_pending, rec.target_workers
        self.decisions.update(rec.decisions)
        self.workers_changed.update(rec.workers_changed)
        self.last_decision_ts.update(rec.last_decision_ts)
        self.workers_expired = rec.workers_expired
        self.reservations_expired = rec.reservations_expired
        # A cooldown keeps its unix deadline across the restart: downtime counts towards it.
        self.cooldown_until.update({d: mono + (t - now) for d, t in rec.cooldown_until.items()})
        self.provisioning = [mono + (t - now) for t in rec.provisioning]


@dataclass(frozen=True, slots=True)
class WorkerView:
    spec: WorkerSpec
    state: str
    up: bool
    last_report: float
    usage: Usage
    cpu_allocated: float
    memory_allocated: int
    gpus_allocated: frozenset[int]
    tasks_running: int
    registered_at: float = 0.0  # unix


@dataclass(frozen=True)
class PoolView:
    pool: str
    policy: PoolPolicy | None
    workers_by_state: dict[str, int]
    target_workers: int
    tasks_pending: int
    utilization: dict[str, float]
    cooldown_active: dict[str, bool]
    decisions: dict[tuple[str, str], int]
    workers_changed: dict[str, int]
    last_decision_ts: dict[str, float]
    workers_expired: int
    reservations_expired: int
    # The policy's pending input: tasks_pending averaged over the evaluation window.
    tasks_pending_mean: float = 0.0


@dataclass(frozen=True)
class HistoryEntry:
    timestamp: float  # unix
    decision: Decision


@dataclass(frozen=True)
class FleetView:
    taken_at: float
    workers: tuple[WorkerView, ...]
    pools: tuple[PoolView, ...]
    # provider, region, instance_type, pool; as of the last tick (what the state file holds)
    cost_usd: dict[tuple[str, str, str, str], float]
    prices: dict[tuple[str, str, str, str], float]  # provider, region, instance_type, source
    unpriced: dict[tuple[str, str], int]  # provider, instance_type
    budgets_usd: dict[str, float]


class Engine:
    def __init__(self, policies: dict[str, PoolPolicy] | None = None,
                 settings: EngineSettings | None = None, prices: PriceBook | None = None,
                 budgets_usd: dict[str, float] | None = None, clock: Clock | None = None,
                 store: StateStore | None = None) -> None:
        """With a `store`, everything it holds is restored now and every change that must
        survive a kill -9 is written to it under the lock; without one, memory only."""
        self._clock = clock or SystemClock()
        self._settings = settings or EngineSettings()
        self._prices = prices or PriceBook()
        self._budgets = dict(budgets_usd or {})
        self._lock = threading.RLock()
        self._workers: dict[str, Worker] = {}
        self._reservations: dict[str, Reservation] = {}
        # The first evaluation comes one interval after start, once workers have reported.
        self._pools: dict[str, _PoolRuntime] = {
            name: _PoolRuntime(policy, next_eval_mono=self._clock.monotonic()
                               + policy.evaluation_interval_s)
            for name, policy in (policies or {}).items()}
        self._cost: dict[tuple[str, str, str, str], float] = {}
        self._cost_dirty: set[tuple[str, str, str, str]] = set()
        # The cost as of the last flush is what view() shows: a scrape never sees more than
        # a restart after kill -9 brings back, so the counter never goes down.
        self._cost_flushed: dict[tuple[str, str, str, str], float] = {}
        self._history: deque[HistoryEntry] = deque(maxlen=self._settings.history_size)
        self._store = store
        if store is not None:
            self._restore(store.load())

    @property
    def clock(self) -> Clock:
        return self._clock

    def _pool(self, name: str) -> _PoolRuntime:
        rt = self._pools.get(name)
        if rt is None:  # a pool without a policy is observed, never scaled
            rt = self._pools[name] = _PoolRuntime(None)
        return rt

    # --- the state file --------------------------------------------------------------------
    # Each change is written before memory is touched (or, for a decision, undone in memory
    # when the write fails), so the file and memory never disagree.
    def _restore(self, state: State) -> None:
        now, mono = self._clock.time(), self._clock.monotonic()
        for rec in state.workers:
            # Restored workers count as having reported at the restart: up for one heartbeat
            # timeout, then expired as usual if they never report again. The downtime is not
            # billed: nobody saw them running.
            self._workers[rec.spec.worker] = Worker(rec.spec, rec.state, rec.registered_at,
                                                    now, mono, mono)
            self._pool(rec.spec.pool)
        for r in state.reservations:
            apply(self._workers[r.worker], r)
            self._reservations[r.task_id] = r
        self._cost.update(state.cost_usd)
        self._cost_flushed = dict(self._cost)
        for name, prec in state.pools.items():
            self._pool(name).restore(prec, now, mono)

    @contextmanager
    def _transaction(self) -> Iterator[StateStore | None]:
        if self._store is None:
            yield None
        else:
            with self._store.transaction():
                yield self._store

    def _pool_record(self, name: str, rt: _PoolRuntime) -> PoolRecord:
        return rt.record(name, self._clock.time(), self._clock.monotonic())

    def _flush_cost(self) -> None:
        if self._store is not None and self._cost_dirty:
            self._store.put_cost({k: self._cost[k] for k in self._cost_dirty})
        self._cost_dirty.clear()
        self._cost_flushed = dict(self._cost)

    def close(self) -> None:
        """Bill every worker up to now, write the cost and close the state file. The engine
        keeps working afterwards, in memory only."""
        with self._lock:
            if self._store is None:
                return
            mono = self._clock.monotonic()
            for w in self._workers.values():
                self._accrue(w, mono)
            try:
                self._flush_cost()
            finally:
                self._store.close()
                self._store = None

    # --- registry --------------------------------------------------------------------------
    def register(self, spec: WorkerSpec, usage: Usage | None = None) -> bool:
        """Add a worker, or update the identity and capacity of a known one (its report).
        Returns True when the worker is new."""
        now, mono = self._clock.time(), self._clock.monotonic()
        with self._lock:
            w = self._workers.get(spec.worker)
            if w is None:
                rt = self._pool(spec.pool)
                new = Worker(spec, STATE_ACTIVE, now, now, mono, mono, usage or Usage())
                with self._transaction() as store:
                    if store is not None:
                        store.put_worker(WorkerRecord(spec, new.state, now))
                        if rt.provisioning:
                            rec = self._pool_record(spec.pool, rt)
                            store.put_pool(replace(rec, provisioning=rec.provisioning[1:]))
                if rt.provisioning:  # this is (we assume) the worker a scale-up asked for
                    rt.provisioning.pop(0)
                self._workers[spec.worker] = new
                return True
            short = ("cpu_cores" if spec.cpu_cores + 1e-9 < w.cpu_allocated else
                     "memory_total_bytes" if spec.memory_total_bytes < w.memory_allocated else
                     "gpus" if any(i >= spec.gpus for i in w.gpus_allocated) else None)
            if short:
                raise InsufficientCapacity(f"worker {spec.worker!r}: new {short} is below what "
                                           "its reservations hold", short)
            if self._store is not None and spec != w.spec:  # a report mostly changes nothing
                self._store.put_worker(WorkerRecord(spec, w.state, w.registered_at))
            if spec.pool != w.spec.pool:
                self._pool(spec.pool)
            self._accrue(w, mono)
            w.spec = spec
            if usage is not None:
                w.usage = usage
            w.last_report, w.last_report_mono = now, mono
            return False

    def report(self, worker: str, usage: Usage) -> None:
        """A worker's measured usage; also its heartbeat."""
        now, mono = self._clock.time(), self._clock.monotonic()
        with self._lock:
            w = self._workers.get(worker)
            if w is None:
                raise UnknownWorker(worker)
            w.usage = usage
            w.last_report, w.last_report_mono = now, mono

    def deregister(self, worker: str) -> list[Reservation]:
        """Remove a worker; its reservations are released and returned."""
        with self._lock:
            w = self._workers.get(worker)
            if w is None:
                raise UnknownWorker(worker)
            if self._store is not None:
                self._store.delete_worker(worker)  # its reservations go by cascade
            return self._drop(w)

    def _drop(self, w: Worker) -> list[Reservation]:
        self._accrue(w, self._clock.monotonic())
        released = [self._reservations.pop(t) for t in sorted(w.tasks)]
        del self._workers[w.spec.worker]
        return released

    def workers(self, pool: str | None = None, state: str | None = None) -> list[str]:
        with self._lock:
            return sorted(k for k, w in self._workers.items()
                          if (pool is None or w.spec.pool == pool)
                          and (state is None or w.state == state))

    def worker(self, worker: str) -> WorkerView | None:
        """One worker as view() would show it, or None; O(1), for the per-report API paths
        that must not copy a 10k-worker fleet to find one entry."""
        mono = self._clock.monotonic()
        with self._lock:
            w = self._workers.get(worker)
            return None if w is None else self._worker_view(w, mono)

    def _worker_view(self, w: Worker, mono: float) -> WorkerView:
        return WorkerView(w.spec, w.state, mono - w.last_report_mono
                          <= self._settings.heartbeat_timeout_s, w.last_report, w.usage,
                          w.cpu_allocated, w.memory_allocated, frozenset(w.gpus_allocated),
                          len(w.tasks), w.registered_at)

    def drained(self, pool: str | None = None) -> list[str]:
        """Draining workers with no task left: the provisioner may now remove them."""
        with self._lock:
            return sorted(k for k, w in self._workers.items()
                          if w.state == STATE_DRAINING and not w.tasks
                          and (pool is None or w.spec.pool == pool))

    # --- reservations ----------------------------------------------------------------------
    def reserve(self, task_id: str, cpu_cores: float, memory_bytes: int, gpus: int = 0,
                worker: str | None = None, pool: str | None = None) -> Reservation:
        """Reserve on the named worker, or on the best-fitting active worker (of `pool`)."""
        validate_request(task_id, cpu_cores, memory_bytes, gpus)
        with self._lock:
            if task_id in self._reservations:
                raise ReservationError(f"task {task_id!r} already holds a reservation")
            if worker is not None:
                w = self._workers.get(worker)
                if w is None:
                    raise UnknownWorker(worker)
                if w.state != STATE_ACTIVE:
                    raise InsufficientCapacity(f"worker {worker!r} is {w.state}")
                short = shortfall(w, cpu_cores, memory_bytes, gpus)
                if short:
                    raise InsufficientCapacity(f"worker {worker!r} lacks free {short}", short)
            else:
                cands = [x for x in self._workers.values()
                         if x.state == STATE_ACTIVE and (pool is None or x.spec.pool == pool)]
                found = best_fit(cands, cpu_cores, memory_bytes, gpus)
                if found is None:
                    raise InsufficientCapacity(
                        "no active worker" + (f" in pool {pool!r}" if pool else "")
                        + " has the free capacity",
                        scarce_resource(cands, cpu_cores, memory_bytes, gpus))
                w = found
            r = Reservation(task_id, w.spec.worker, cpu_cores, memory_bytes,
                            tuple(w.gpus_free[:gpus]), self._clock.time())
            if self._store is not None:
                self._store.put_reservation(r)
            apply(w, r)
            self._reservations[task_id] = r
            return r

    def release(self, task_id: str) -> Reservation:
        with self._lock:
            r = self._reservations.get(task_id)
            if r is None:
                raise ReservationError(f"task {task_id!r} holds no reservation")
            if self._store is not None:
                self._store.delete_reservation(task_id)
            del self._reservations[task_id]
            undo(self._workers[r.worker], r)
            return r

    def reservations(self) -> list[Reservation]:
        with self._lock:
            return list(self._reservations.values())

    def set_tasks_pending(self, pool: str, count: int) -> None:
        if count < 0:
            raise ValueError("pending task count must be >= 0")
        with self._lock:
            rt = self._pool(pool)
            if self._store is not None and count != rt.tasks_pending:
                self._store.put_pool(replace(self._pool_record(pool, rt), tasks_pending=count))
            rt.tasks_pending = count

    # --- the loop --------------------------------------------------------------------------
    def tick(self) -> list[Decision]:
        """Accrue cost, expire silent workers, then evaluate every pool whose evaluation
        interval has passed."""
        mono = self._clock.monotonic()
        with self._lock:
            expired, active = self._sweep(mono)
            self._expire(expired)
            decisions = []
            for name in sorted(self._pools):
                rt = self._pools[name]
                if rt.policy is None:
                    continue
                members = active.get(name, [])
                self._sample(name, rt, mono, members)
                if mono + 1e-9 >= rt.next_eval_mono:
                    rt.next_eval_mono = mono + rt.policy.evaluation_interval_s
                    decisions.append(self._evaluate_pool(name, rt, mono, members))
            # The one cost write per tick, after the last accrual (an expiry bills up to its
            # end): a kill -9 loses at most what accrued since.
            self._flush_cost()
            return decisions

    def _sweep(self, mono: float) -> tuple[list[str], dict[str, list[Worker]]]:
        """The tick's one pass over the fleet: bill every worker up to `mono` (as `_accrue`
        does), and return the workers silent past expiry and the others' active ones by pool.
        At 10k workers every extra pass or per-worker call is milliseconds of the tick."""
        gap = self._settings.cost_max_gap_s
        limit = self._settings.worker_expiry_s
        cost, dirty = self._cost, self._cost_dirty
        # A fleet has a handful of instance types: one PriceBook lookup (a lock round trip)
        # per type and tick, not per worker. The whole tick sees one consistent price.
        prices: dict[tuple[str, str, str], Price | None] = {}
        expired: list[str] = []
        active: dict[str, list[Worker]] = {}
        for wid, w in self._workers.items():
            dt = mono - w.last_accrual_mono
            w.last_accrual_mono = mono
            if dt > 0.0:
                s = w.spec
                pk = (s.provider, s.region, s.instance_type)
                price = prices[pk] if pk in prices else prices.setdefault(
                    pk, self._prices.lookup(*pk))
                if price is not None:
                    key = (*pk, s.pool)
                    # The same expression as _accrue, so the sums match to the last bit.
                    cost[key] = cost.get(key, 0.0) + price.usd_per_hour * min(dt, gap) / 3600.0
                    dirty.add(key)
            if mono - w.last_report_mono > limit:
                expired.append(wid)
            elif w.state == STATE_ACTIVE:
                # A decision only drains workers of its own pool, so every pool's list stays
                # right while the pools are evaluated one after another.
                active.setdefault(w.spec.pool, []).append(w)
        return expired, active

    def _active(self, pool: str) -> list[Worker]:
        return [w for w in self._workers.values()
                if w.spec.pool == pool and w.state == STATE_ACTIVE]

    def _sample(self, name: str, rt: _PoolRuntime, mono: float,
                active: list[Worker] | None = None) -> None:
        """Add the instant reserved shares to the window and recompute the mean signal.
        `active` is the pool's active workers when the caller already has them."""
        assert rt.policy is not None
        now = pool_utilization(self._active(name) if active is None else active)
        # The queue length rides along, so pending pressure is smoothed the same way.
        now_with_queue = dict(now, pending=float(rt.tasks_pending))
        rt.samples.append((mono, now_with_queue))
        while rt.samples and rt.samples[0][0] < mono - rt.policy.evaluation_window_s:
            rt.samples.popleft()
        resources = [r for r in now if r != "overall"]
        n = len(rt.samples)
        mean = {r: sum(u.get(r, 0.0) for _, u in rt.samples) / n for r in resources}
        mean["overall"] = max(mean.values())
        rt.signal = mean
        rt.pending_mean = sum(u["pending"] for _, u in rt.samples) / n

    def _expire(self, expired: list[str]) -> None:
        """Drop the `expired` workers (the sweep has billed them up to now)."""
        for wid in expired:
            w = self._workers[wid]
            rt = self._pool(w.spec.pool)
            with self._transaction() as store:
                if store is not None:
                    store.delete_worker(wid)
                    store.put_pool(replace(
                        self._pool_record(w.spec.pool, rt),
                        workers_expired=rt.workers_expired + 1,
                        reservations_expired=rt.reservations_expired + len(w.tasks)))
            released = self._drop(w)
            rt.workers_expired += 1
            rt.reservations_expired += len(released)

    def history(self, pool: str | None = None, limit: int = 100) -> list[HistoryEntry]:
        """The most recent decisions, newest last."""
        with self._lock:
            rows = [h for h in self._history if pool is None or h.decision.pool == pool]
            return rows[-limit:] if limit > 0 else []

    def evaluate_now(self, pool: str) -> Decision:
        """Evaluate one pool immediately (a coordinator's explicit request)."""
        with self._lock:
            rt = self._pools.get(pool)
            if rt is None or rt.policy is None:
                raise KeyError(f"pool {pool!r} has no scaling policy")
            return self._evaluate_pool(pool, rt, self._clock.monotonic())

    def _evaluate_pool(self, name: str, rt: _PoolRuntime, mono: float,
                       active: list[Worker] | None = None) -> Decision:
        p = rt.policy
        assert p is not None
        # Put back when the state file refuses the decision (a full disk, say).
        saved = copy.deepcopy(rt) if self._store is not None else None
        chosen: list[Worker] = []
        timeout = self._settings.provisioning_timeout_s
        rt.provisioning = [t for t in rt.provisioning if mono - t < timeout]
        if active is None:
            active = self._active(name)
        if rt.signal is None:  # evaluated before any tick sampled it
            self._sample(name, rt, mono, active)
        assert rt.signal is not None
        signal = PoolSignal(len(active), len(rt.provisioning), rt.signal,
                            mono < rt.cooldown_until["up"], mono < rt.cooldown_until["down"],
                            rt.pending_mean)
        d = evaluate(name, p, signal)
        n = signal.active + signal.provisioning
        if d.action == "scale_up":
            rt.provisioning.extend([mono] * d.count)
            rt.cooldown_until["up"] = mono + p.cooldown_up_s
            # Scale up fast, down slow: new capacity gets the down cooldown to prove itself
            # before any of it is taken away, so a pool does not flap up and straight down.
            rt.cooldown_until["down"] = max(rt.cooldown_until["down"],
                                            mono + p.cooldown_down_s)
            rt.workers_changed["up"] += d.count
            rt.target_workers = n + d.count
        elif d.action == "scale_down":
            # Idle first, then the least loaded; busy ones drain rather than being killed.
            # nsmallest is sorted(...)[:count] (same order, same ties) without sorting the
            # whole pool for the few workers a step may take.
            chosen = heapq.nsmallest(d.count, active, key=lambda w: (
                len(w.tasks), w.cpu_allocated / w.spec.cpu_cores,
                w.usage.cpu_utilization_ratio or 0.0, w.spec.worker))
            for w in chosen:
                w.state = STATE_DRAINING
            d = Decision(d.pool, d.action, d.reason, len(chosen), d.utilization,
                         tuple(w.spec.worker for w in chosen))
            rt.cooldown_until["down"] = mono + p.cooldown_down_s
            rt.workers_changed["down"] += d.count
            rt.target_workers = n - d.count
        else:
            rt.target_workers = n
        rt.decisions[(d.action, d.reason)] = rt.decisions.get((d.action, d.reason), 0) + 1
        now = self._clock.time()
        rt.last_decision_ts[d.action] = now
        if self._store is not None:
            try:
                with self._store.transaction():
                    self._store.put_pool(self._pool_record(name, rt))
                    for w in chosen:
                        self._store.put_worker(WorkerRecord(w.spec, w.state, w.registered_at))
            except BaseException:
                assert saved is not None
                self._pools[name] = saved
                for w in chosen:
                    w.state = STATE_ACTIVE
                raise
        self._history.append(HistoryEntry(now, d))
        return d

    def _accrue(self, w: Worker, mono: float) -> None:
        dt = min(max(0.0, mono - w.last_accrual_mono), self._settings.cost_max_gap_s)
        w.last_accrual_mono = mono
        s = w.spec
        price = self._prices.lookup(s.provider, s.region, s.instance_type)
        if price is None or dt == 0.0:
            return
        key = (s.provider, s.region, s.instance_type, s.pool)
        self._cost[key] = self._cost.get(key, 0.0) + price.usd_per_hour * dt / 3600.0
        self._cost_dirty.add(key)

    # --- reading -----------------------------------------------------------------------------
    def view(self) -> FleetView:
        now, mono = self._clock.time(), self._clock.monotonic()
        hb = self._settings.heartbeat_timeout_s
        with self._lock:
            workers = tuple(
                WorkerView(w.spec, w.state, mono - w.last_report_mono <= hb, w.last_report,
                           w.usage, w.cpu_allocated, w.memory_allocated,
                           frozenset(w.gpus_allocated), len(w.tasks), w.registered_at)
                for _, w in sorted(self._workers.items()))
            prices: dict[tuple[str, str, str, str], float] = {}
            unpriced: dict[tuple[str, str], int] = {}
            # One PriceBook lookup per instance type, and the workers counted per pool and
            # state in the same pass: at 10k workers, per-worker lookups and a scan per pool
            # were a third of view() (benchmarks/engine.py).
            looked_up: dict[tuple[str, str, str], Price | None] = {}
            counts: dict[tuple[str, str], int] = {}
            for w in workers:
                s = w.spec
                pk = (s.provider, s.region, s.instance_type)
                p = looked_up[pk] if pk in looked_up else looked_up.setdefault(
                    pk, self._prices.lookup(*pk))
                ck = (s.pool, w.state)
                counts[ck] = counts.get(ck, 0) + 1
                if p is None:
                    unpriced[(s.provider, s.instance_type)] = (
                        unpriced.get((s.provider, s.instance_type), 0) + 1)
                else:
                    prices[(s.provider, s.region, s.instance_type, p.source)] = p.usd_per_hour
            pools = []
            for name in sorted(self._pools):
                rt = self._pools[name]
                by_state = {st: counts.get((name, st), 0) for st in metrics.POOL_STATES}
                by_state["provisioning"] = len(rt.provisioning)
                # Managed pools export the policy's (smoothed) input; others the instant value.
                util = dict(rt.signal) if rt.signal is not None else pool_utilization(
                    [x for x in self._workers.values()
                     if x.spec.pool == name and x.state == STATE_ACTIVE])
                # Before its first decision a pool is heading where it already is.
                target = rt.target_workers if rt.target_workers is not None else (
                    by_state["active"] + by_state["provisioning"])
                pools.append(PoolView(
                    name, rt.policy, by_state, target, rt.tasks_pending, util,
                    {"up": mono < rt.cooldown_until["up"],
                     "down": mono < rt.cooldown_until["down"]},
                    dict(rt.decisions), dict(rt.workers_changed), dict(rt.last_decision_ts),
                    rt.workers_expired, rt.reservations_expired,
                    tasks_pending_mean=rt.pending_mean))
            return FleetView(now, workers, tuple(pools), dict(self._cost_flushed), prices, unpriced,
                             dict(self._budgets))


def pool_utilization(active: Iterable[Worker]) -> dict[str, float]:
    """Reserved share per resource over the given workers; overall is the bottleneck."""
    # One list per field and the C-level sum(): at 10k workers this is half the time of one
    # Python loop with six running totals (benchmarks/engine.py). Byte counts sum as exact
    # ints; the ratio is then the correctly rounded quotient.
    active = list(active)
    specs = [w.spec for w in active]
    cores = sum([s.cpu_cores for s in specs])
    cpu = sum([w.cpu_allocated for w in active])
    mem_total = sum([s.memory_total_bytes for s in specs])
    mem = sum([w.memory_allocated for w in active])
    gpus = sum([s.gpus for s in specs])
    gpu_alloc = sum([len(w.gpus_allocated) for w in active])
    out = {"cpu": cpu / cores if cores else 0.0, "memory": mem / mem_total if mem_total else 0.0}
    if gpus:
        out["gpu"] = gpu_alloc / gpus
    out["overall"] = max(out.values())
    return out
