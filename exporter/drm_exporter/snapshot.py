"""From an immutable FleetView to the metric families of the contract (metrics.py)."""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain
from operator import attrgetter, itemgetter

from . import __version__
from . import metrics as m
from .cloud.refresher import CloudView
from .collectors.status import CollectorState
from .engine import FleetView, WorkerView
from .exposition import Family, columns, family
from .fleet import GpuReading, Usage, WorkerSpec
from .hooks import HookCounts

# The GPU families, in the order they are exported; a worker's rows hold one (keys, values)
# pair per family.
_GPU_METRICS = (m.GPU_INFO, m.GPU_UP, m.GPU_UTILIZATION, m.GPU_MEMORY_TOTAL, m.GPU_MEMORY_USED,
                m.GPU_TEMPERATURE, m.GPU_POWER, m.GPU_MIG_INFO, m.GPU_MIG_MEMORY_TOTAL,
                m.GPU_MIG_MEMORY_USED)
_GPU_FIELDS = ("utilization_ratio", "memory_total_bytes", "memory_used_bytes",
               "temperature_celsius", "power_watts")
Rows = list[tuple[Sequence[tuple[str, ...]], Sequence[float]]]
_SHAPE = attrgetter("index", "up", "mig_devices")


@functools.cache
def _plain_shape(n: int) -> tuple[tuple[int, bool, tuple[()]], ...]:
    """What _SHAPE reads off n plain GPUs: indices 0..n-1, all up, no MIG devices."""
    return tuple((i, True, ()) for i in range(n))


_IDENT = attrgetter("uuid", "name", "driver_version", "mig_mode")
_FIELD_GETTERS = tuple(attrgetter(f) for f in _GPU_FIELDS)
_KEYS, _VALUES = itemgetter(0), itemgetter(1)


class _WorkerKeys:
    """One worker's label-value tuples, kept while its spec stays the same, and its GPU rows,
    kept while its last report (the Usage object) stays the same: a tick between two of a
    worker's reports re-derives nothing for it."""

    __slots__ = ("spec", "key", "info", "gpus", "gpu_info", "usage", "rows", "alloc_of",
                 "alloc", "ident", "info_keys")

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.key = (spec.worker,)
        self.info = (spec.worker, spec.pool, spec.provider, spec.region, spec.instance_type,
                     spec.hostname)
        self.gpus: list[tuple[str, str]] = []
        self.gpu_info: dict[int, tuple[str, ...]] = {}
        self.usage: Usage | None = None
        self.rows: Rows = []
        self.alloc_of: frozenset[int] | None = None
        self.alloc: tuple[list[tuple[str, ...]], list[float]] = ([], [])
        self.ident: tuple[tuple[str, ...], ...] = ()
        self.info_keys: tuple[tuple[str, ...], ...] = ()

    def gpu(self, index: int) -> tuple[str, str]:
        gpus = self.gpus
        while len(gpus) <= index:
            gpus.append((self.spec.worker, str(len(gpus))))
        return gpus[index]

    def gpu_info_key(self, g: GpuReading) -> tuple[str, ...]:
        t = self.gpu_info.get(g.index)
        if t is None or t[2] != g.uuid or t[3] != g.name or t[4] != g.driver_version \
                or t[5] != g.mig_mode:
            t = self.gpu_info[g.index] = (*self.gpu(g.index), g.uuid, g.name, g.driver_version,
                                          g.mig_mode)
        return t

    def gpu_rows(self, usage: Usage) -> Rows:
        if usage is self.usage:
            return self.rows
        rows = self._plain_gpu_rows(usage.gpus)
        if rows is None:
            rows = self._gpu_rows(usage)
        self.usage, self.rows = usage, rows
        return rows

    def _plain_gpu_rows(self, gs: tuple[GpuReading, ...]) -> Rows | None:
        """The common case without a Python step per GPU: GPUs 0..n-1, all up, no MIG. None
        for anything else (then _gpu_rows, one GPU at a time)."""
        n = len(gs)
        if tuple(map(_SHAPE, gs)) != _plain_shape(n):
            return None
        if n:
            self.gpu(n - 1)  # the key list grows to n
        # Tuples, not lists: kept rows of strings and floats drop out of the cyclic GC's
        # sight, which at 10,000 workers otherwise walks them on every full collection.
        keys = tuple(self.gpus[:n])
        ident = tuple(map(_IDENT, gs))
        if ident != self.ident:
            self.ident = ident
            self.info_keys = tuple((*k, *i) for k, i in zip(keys, ident, strict=True))
        ones = (1.0,) * n
        rows: Rows = [(self.info_keys, ones), (keys, ones)]
        for get in _FIELD_GETTERS:
            vals = tuple(map(get, gs))
            if None in vals:  # some GPU does not support this field: absent for that one
                rows.append((tuple(k for k, v in zip(keys, vals, strict=True) if v is not None),
                             tuple(v for v in vals if v is not None)))
            else:
                rows.append((keys, vals))
        rows.extend(((), ()) for _ in range(3))  # no MIG devices
        return rows

    def _gpu_rows(self, usage: Usage) -> Rows:
        rows: Rows = [([], []) for _ in _GPU_METRICS]
        info, up, *fields, mig_info, mig_total, mig_used = rows
        for g in usage.gpus:
            key = self.gpu(g.index)
            up[0].append(key)
            up[1].append(1.0 if g.up else 0.0)
            if not g.up:  # a lost GPU's old values would be lies: only up=0 remains
                continue
            info[0].append(self.gpu_info_key(g))
            info[1].append(1.0)
            for name, (ks, vs) in zip(_GPU_FIELDS, fields, strict=True):
                v = getattr(g, name)
                if v is not None:  # not supported by this GPU: absent, never a fake 0
                    ks.append(key)
                    vs.append(v)
            for d in g.mig_devices:
                mkey = (*key, str(d.index))
                mig_info[0].append((*mkey, d.uuid))
                mig_info[1].append(1.0)
                if d.memory_total_bytes is not None:
                    mig_total[0].append(mkey)
                    mig_total[1].append(d.memory_total_bytes)
                if d.memory_used_bytes is not None:
                    mig_used[0].append(mkey)
                    mig_used[1].append(d.memory_used_bytes)
        return rows

    def allocation(self, allocated: frozenset[int]) -> tuple[list[tuple[str, ...]], list[float]]:
        if allocated != self.alloc_of or len(self.alloc[0]) != self.spec.gpus:
            n = self.spec.gpus
            self.alloc = ([self.gpu(i) for i in range(n)],
                          [1.0 if i in allocated else 0.0 for i in range(n)])
            self.alloc_of = allocated
        return self.alloc


class LabelKeys:
    """Label-value tuples reused from one snapshot to the next.

    Without it every tick allocates a fresh tuple per series (about 170,000 at 10,000 workers
    with 8 GPUs, ~20 MB) while the formatter's label text cache still holds the last
    snapshot's equal ones. With it a steady fleet's snapshots share them. Only workers of the
    latest snapshot are kept."""

    def __init__(self) -> None:
        self._workers: dict[str, _WorkerKeys] = {}

    def snapshot(self, workers: Iterable[WorkerView]) -> list[_WorkerKeys]:
        old, fresh = self._workers, {}
        out = []
        for w in workers:
            k = old.get(w.spec.worker)
            if k is None or k.spec is not w.spec:  # new, or re-registered with a new spec
                k = _WorkerKeys(w.spec)
            fresh[w.spec.worker] = k
            out.append(k)
        self._workers = fresh
        return out


def build_families(view: FleetView, collectors: dict[str, CollectorState],
                   hooks: Mapping[str, HookCounts] | None = None,
                   cloud: CloudView | None = None,
                   keys: LabelKeys | None = None,
                   agent_worker_series: bool = True) -> list[Family]:
    """`keys`, held by the caller across ticks, lets snapshots share their label tuples.
    `agent_worker_series=False` leaves the series an agent serves itself (metrics.py,
    AGENT_WORKER_METRICS) to the agents of workers that registered a metrics URL."""
    wkeys = (keys or LabelKeys()).snapshot(view.workers)
    fams: list[Family] = [
        family(m.BUILD_INFO, [((__version__, platform.python_version()), 1.0)]),
    ]
    names = sorted(collectors)
    fams.append(family(m.COLLECTOR_SUCCESS,
                       (((n,), float(collectors[n].success)) for n in names)))
    fams.append(family(m.COLLECTOR_DURATION, (((n,), collectors[n].duration_s) for n in names)))
    fams.append(family(m.COLLECTOR_LAST_SUCCESS,
                       (((n,), collectors[n].last_success_ts) for n in names
                        if collectors[n].last_success_ts is not None)))
    fams.extend(_worker_families(view, wkeys))
    fams.extend(_gpu_families(view, wkeys))
    fams.extend(_pool_families(view))
    fams.extend(_hook_families(hooks or {}))
    fams.extend(_cost_families(view))
    if cloud is not None:
        fams.extend(_cloud_families(cloud))
    if not agent_worker_series:
        served = {w.spec.worker for w in view.workers if w.spec.metrics_url}
        if served:
            fams = [_without_workers(f, served) if f.metric.name in m.AGENT_WORKER_METRICS
                    else f for f in fams]
    return [f for f in fams if f.keys]


def _without_workers(f: Family, workers: set[str]) -> Family:
    keep = [i for i, k in enumerate(f.keys) if k[0] not in workers]
    return columns(f.metric, [f.keys[i] for i in keep], [f.values[i] for i in keep],
                   check=False)


def _worker_families(view: FleetView, wkeys: list[_WorkerKeys]) -> Iterator[Family]:
    # Columns, with one key tuple per worker shared by every per-worker family.
    ws = view.workers
    keys = [k.key for k in wkeys]
    yield columns(m.WORKER_INFO, [k.info for k in wkeys], [1.0] * len(ws))
    yield columns(m.WORKER_UP, keys, [1.0 if w.up else 0.0 for w in ws])
    yield columns(m.WORKER_LAST_REPORT, keys, [w.last_report for w in ws])
    yield columns(m.WORKER_CPU_CORES, keys, [w.spec.cpu_cores for w in ws])
    yield columns(m.WORKER_CPU_ALLOCATED, keys, [w.cpu_allocated for w in ws])
    yield _present(m.WORKER_CPU_UTILIZATION, keys,
                   [w.usage.cpu_utilization_ratio for w in ws])
    yield columns(m.WORKER_MEMORY_TOTAL, keys, [w.spec.memory_total_bytes for w in ws])
    yield _present(m.WORKER_MEMORY_USED, keys, [w.usage.memory_used_bytes for w in ws])
    yield columns(m.WORKER_MEMORY_ALLOCATED, keys, [w.memory_allocated for w in ws])
    yield columns(m.WORKER_TASKS_RUNNING, keys, [w.tasks_running for w in ws])
    yield family(m.WORKER_CAPACITY_INFO, (((w.spec.worker, w.spec.cpu_source,
                                           w.spec.memory_source), 1.0)
                                         for w in ws if w.spec.cpu_source))


def _present(metric: m.MetricDef, keys: list[tuple[str, ...]],
             values: list[float | None]) -> Family:
    """The samples whose value is known: an unknown reading is absent, never a fake 0."""
    if None not in values:
        return columns(metric, keys, values)
    return columns(metric, [k for k, v in zip(keys, values, strict=True) if v is not None],
                   [v for v in values if v is not None])


def _gpu_families(view: FleetView, wkeys: list[_WorkerKeys]) -> Iterator[Family]:
    per_worker = [wk.gpu_rows(w.usage) for w, wk in zip(view.workers, wkeys, strict=True)]
    cat = chain.from_iterable  # concatenation in C: no Python step per GPU
    for i, metric in enumerate(_GPU_METRICS):
        get = itemgetter(i)
        pairs = list(map(get, per_worker))
        yield columns(metric, list(cat(map(_KEYS, pairs))), list(cat(map(_VALUES, pairs))),
                      check=False)
        if metric is m.GPU_POWER:  # allocation sits between the readings and MIG, as before
            alloc = [wk.allocation(w.gpus_allocated)
                     for w, wk in zip(view.workers, wkeys, strict=True)]
            yield columns(m.GPU_ALLOCATED, list(cat(map(_KEYS, alloc))),
                          list(cat(map(_VALUES, alloc))), check=False)


def _pool_families(view: FleetView) -> Iterator[Family]:
    ps = view.pools
    yield family(m.POOL_WORKERS, (((p.pool, st), float(p.workers_by_state[st]))
                                  for p in ps for st in m.POOL_STATES))
    managed = [p for p in ps if p.policy is not None]
    yield family(m.POOL_TARGET_WORKERS, (((p.pool,), float(p.target_workers)) for p in managed))
    yield family(m.POOL_MIN_WORKERS, (((p.pool,), p.policy.min_workers) for p in managed))
    yield family(m.POOL_MAX_WORKERS, (((p.pool,), p.policy.max_workers) for p in managed))
    yield family(m.POOL_TASKS_PENDING, (((p.pool,), p.tasks_pending) for p in ps))
    yield family(m.SCALING_UTILIZATION, (((p.pool, r), p.utilization[r]) for p in managed
                                         for r in m.SCALING_RESOURCES if r in p.utilization))
    yield family(m.SCALING_THRESHOLD, (((p.pool, t), getattr(p.policy, t)) for p in managed
                                       for t in m.THRESHOLDS))
    yield family(m.SCALING_DECISIONS, (((p.pool, a, r), float(n))
                                       for p in managed
                                       for (a, r), n in sorted(p.decisions.items())))
    yield family(m.SCALING_WORKERS, (((p.pool, d), float(p.workers_changed[d]))
                                     for p in managed for d in m.DIRECTIONS))
    yield family(m.SCALING_COOLDOWN_ACTIVE, (((p.pool, d), float(p.cooldown_active[d]))
                                             for p in managed for d in m.DIRECTIONS))
    yield family(m.WORKERS_EXPIRED, (((p.pool,), float(p.workers_expired)) for p in ps))
    yield family(m.RESERVATIONS_EXPIRED, (((p.pool,), float(p.reservations_expired))
                                          for p in ps))
    yield family(m.SCALING_LAST_DECISION, (((p.pool, a), ts) for p in managed
                                           for a, ts in sorted(p.last_decision_ts.items())))


def _hook_families(hooks: Mapping[str, HookCounts]) -> Iterator[Family]:
    pools = sorted(hooks)
    yield family(m.SCALING_HOOK_DELIVERIES, (((p, o), float(hooks[p].deliveries[o]))
                                             for p in pools for o in m.HOOK_OUTCOMES))
    yield family(m.SCALING_HOOK_ATTEMPTS, (((p,), float(hooks[p].attempts)) for p in pools))


def _cost_families(view: FleetView) -> Iterator[Family]:
    yield family(m.CLOUD_PRICE, sorted(view.prices.items()))
    yield family(m.CLOUD_COST, sorted(view.cost_usd.items()))
    yield family(m.CLOUD_UNPRICED_WORKERS, sorted(((k, float(v)) for k, v in
                                                   view.unpriced.items())))
    yield family(m.CLOUD_BUDGET, sorted(((p,), v) for p, v in view.budgets_usd.items()))


def _cloud_families(cloud: CloudView) -> Iterator[Family]:
    # Gauges, not counters: providers restate billed figures, and a credit may lower them.
    yield family(m.CLOUD_BILLED_COST, sorted(
        ((b.provider, b.account, b.service, b.window, b.currency), b.amount)
        for b in cloud.billed))
    yield family(m.CLOUD_BILLED_ESTIMATED, sorted((k, float(v))
                                                  for k, v in cloud.estimated.items()))
    yield family(m.CLOUD_API_REQUESTS, sorted((k, float(v)) for k, v in cloud.requests.items()))
    yield family(m.CLOUD_REFRESH_SUCCESS, sorted((k, float(v))
                                                 for k, v in cloud.success.items()))
    yield family(m.CLOUD_REFRESH_LAST_SUCCESS, sorted(cloud.last_success.items()))
