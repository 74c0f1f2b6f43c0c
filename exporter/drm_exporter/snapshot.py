"""From an immutable FleetView to the metric families of the contract (metrics.py)."""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping

from . import __version__
from . import metrics as m
from .cloud.refresher import CloudView
from .collectors.status import CollectorState
from .engine import FleetView
from .exposition import Family, Sample, columns, family
from .hooks import HookCounts


def build_families(view: FleetView, collectors: dict[str, CollectorState],
                   hooks: Mapping[str, HookCounts] | None = None,
                   cloud: CloudView | None = None) -> list[Family]:
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
    fams.extend(_worker_families(view))
    fams.extend(_gpu_families(view))
    fams.extend(_pool_families(view))
    fams.extend(_hook_families(hooks or {}))
    fams.extend(_cost_families(view))
    if cloud is not None:
        fams.extend(_cloud_families(cloud))
    return [f for f in fams if f.keys]


def _worker_families(view: FleetView) -> Iterator[Family]:
    # Columns, with one key tuple per worker shared by every per-worker family.
    ws = view.workers
    keys = [(w.spec.worker,) for w in ws]
    yield columns(m.WORKER_INFO, [(w.spec.worker, w.spec.pool, w.spec.provider, w.spec.region,
                                   w.spec.instance_type, w.spec.hostname) for w in ws],
                  [1.0] * len(ws))
    yield columns(m.WORKER_UP, keys, [w.up for w in ws])
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


_GPU_FIELDS = ("utilization_ratio", "memory_total_bytes", "memory_used_bytes",
               "temperature_celsius", "power_watts")


def _gpu_families(view: FleetView) -> Iterator[Family]:
    info: list[Sample] = []
    up_keys: list[tuple[str, ...]] = []
    up: list[float] = []
    keys: list[tuple[str, ...]] = []  # the GPUs that are up: one tuple shared by all fields
    readings = []
    alloc_keys: list[tuple[str, ...]] = []
    allocated: list[float] = []
    mig_info: list[Sample] = []
    mig_total: list[Sample] = []
    mig_used: list[Sample] = []
    for w in view.workers:
        wid = w.spec.worker
        for g in w.usage.gpus:
            key = (wid, str(g.index))
            up_keys.append(key)
            up.append(g.up)
            if not g.up:  # a lost GPU's old values would be lies: only up=0 remains
                continue
            keys.append(key)
            readings.append(g)
            info.append(((wid, str(g.index), g.uuid, g.name, g.driver_version, g.mig_mode), 1.0))
            for d in g.mig_devices:
                mkey = (*key, str(d.index))
                mig_info.append(((*mkey, d.uuid), 1.0))
                if d.memory_total_bytes is not None:
                    mig_total.append((mkey, float(d.memory_total_bytes)))
                if d.memory_used_bytes is not None:
                    mig_used.append((mkey, float(d.memory_used_bytes)))
        for i in range(w.spec.gpus):
            alloc_keys.append((wid, str(i)))
            allocated.append(i in w.gpus_allocated)
    fields = {name: _present(metric, keys, [getattr(g, name) for g in readings])
              for name, metric in zip(_GPU_FIELDS, (m.GPU_UTILIZATION, m.GPU_MEMORY_TOTAL,
                                                     m.GPU_MEMORY_USED, m.GPU_TEMPERATURE,
                                                     m.GPU_POWER), strict=True)}
    yield family(m.GPU_INFO, info)
    yield columns(m.GPU_UP, up_keys, up)
    yield from fields.values()
    yield columns(m.GPU_ALLOCATED, alloc_keys, allocated)
    yield family(m.GPU_MIG_INFO, mig_info)
    yield family(m.GPU_MIG_MEMORY_TOTAL, mig_total)
    yield family(m.GPU_MIG_MEMORY_USED, mig_used)


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
