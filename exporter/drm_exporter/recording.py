"""Recording rules the dashboards (and alert rules) build on, defined once.

`prometheus/rules/recording.yml` is generated from this module (`drm-exporter dashboards`) and a
test fails when it is stale. Names follow Prometheus' `level:metric:operations` convention.

Worker-level series only carry `worker`; the rules below attach `pool` from `drm_worker_info`
(`group_left`) so a dashboard can filter them by pool directly. The join is `on (worker)`, not
`on (job, worker)`: in the scale-out layout an agent's worker series and the coordinator's
`drm_worker_info` come from different jobs.

Efficiency is measured use divided by what tasks reserved, only where something is reserved
(no division by zero, no +Inf), clamped to 1 like every other `_ratio`. A worker that uses more
than its tasks reserved therefore reads 1, not more.

Rates inside rules use a fixed 5m window: `$__rate_interval` exists only in Grafana.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from . import metrics as m

GROUP_NAME = "drm-recording"
HEADER = (
    "# Generated from exporter/drm_exporter/recording.py by `drm-exporter dashboards`.\n"
    "# Do not edit by hand: a test fails when this file is stale.\n"
)


@dataclass(frozen=True)
class RecordingRule:
    record: str
    expr: str
    # Labels on the recorded series (documentation, and the dashboards' filter checks).
    labels: tuple[str, ...]
    help: str
    # Static labels added by the rule (rendered as the rule's `labels:`).
    static_labels: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:  # reads naturally in f-strings, like MetricDef
        return self.record


def _pool_of() -> str:
    # One series per (worker, pool) whatever the number of scrapers exporting drm_worker_info.
    return f"max by (worker, pool) ({m.WORKER_INFO})"


def _with_pool(expr: str) -> str:
    return f"({expr}) * on (worker) group_left (pool) {_pool_of()}"


_WORKER = ("job", "instance", "worker", "pool")
_POOL = ("job", "pool")

_used_cores = f"{m.WORKER_CPU_UTILIZATION} * {m.WORKER_CPU_CORES}"
_allocated_gpus = f"({m.GPU_ALLOCATED} == 1)"

WORKER_MEMORY_UTILIZATION = RecordingRule(
    "drm:worker_memory_utilization:ratio",
    _with_pool(f"{m.WORKER_MEMORY_USED} / ({m.WORKER_MEMORY_TOTAL} > 0)"),
    _WORKER,
    "Measured memory in use / memory the worker offers.",
)
WORKER_GPU_UTILIZATION = RecordingRule(
    "drm:worker_gpu_utilization:ratio",
    _with_pool(f"avg without (gpu) ({m.GPU_UTILIZATION})"),
    _WORKER,
    "Mean measured utilization of the worker's GPUs; absent on workers without GPUs.",
)
WORKER_CPU_EFFICIENCY = RecordingRule(
    "drm:worker_cpu_efficiency:ratio",
    _with_pool(
        f"clamp_max({_used_cores} / ({m.WORKER_CPU_ALLOCATED} > 0), 1)"
    ),
    _WORKER,
    "Cores in use / cores reserved, i.e. utilization / (allocated / capacity); "
    "only where cores are reserved.",
)
WORKER_MEMORY_EFFICIENCY = RecordingRule(
    "drm:worker_memory_efficiency:ratio",
    _with_pool(
        f"clamp_max({m.WORKER_MEMORY_USED} / ({m.WORKER_MEMORY_ALLOCATED} > 0), 1)"
    ),
    _WORKER,
    "Memory in use / memory reserved; only where memory is reserved.",
)
WORKER_GPU_EFFICIENCY = RecordingRule(
    "drm:worker_gpu_efficiency:ratio",
    _with_pool(
        f"avg without (gpu) ({m.GPU_UTILIZATION} and {_allocated_gpus})"
    ),
    _WORKER,
    "Mean utilization of the worker's reserved GPUs; only where a GPU is reserved.",
)
WORKER_PRICE = RecordingRule(
    "drm:worker_price_usd_per_hour:max",
    "max by (job, instance, worker, pool, provider, region, instance_type) ("
    f"{m.WORKER_INFO} * on (provider, region, instance_type) group_left () "
    f"max by (provider, region, instance_type) ({m.CLOUD_PRICE}))",
    ("job", "instance", "worker", "pool", "provider", "region", "instance_type"),
    "Hourly price of each priced worker (max over price sources); unpriced workers are absent.",
)

# Share of the worker's capacity that is reserved but idle, per resource; the dominant one
# (the larger share, as in dominant-resource fairness) decides what the idle reservation costs,
# so a GPU box with an idle reserved GPU is charged for the GPU, not its few idle cores.
_idle_cpu_share = (
    f"(clamp_min({m.WORKER_CPU_ALLOCATED} - {_used_cores}, 0) / ({m.WORKER_CPU_CORES} > 0))"
)
_idle_gpu_share = (
    f"(sum without (gpu) ((1 - {m.GPU_UTILIZATION}) and {_allocated_gpus})"
    f" / count without (gpu) ({m.GPU_ALLOCATED}))"
)
_idle_share = (
    f"(({_idle_cpu_share} >= {_idle_gpu_share}) or {_idle_gpu_share} or {_idle_cpu_share})"
)
WORKER_IDLE_COST = RecordingRule(
    "drm:worker_idle_cost_usd_per_hour:max",
    f"{WORKER_PRICE} * on (worker) group_left () max by (worker) ({_idle_share})",
    WORKER_PRICE.labels,
    "Hourly price x the larger of the idle reserved CPU share and idle reserved GPU share.",
)


def _pool_sum(expr: str) -> str:
    return f"sum by (job, pool) ({_with_pool(expr)})"


POOL_CPU_ALLOCATION = RecordingRule(
    "drm:pool_cpu_allocation:ratio",
    f"{_pool_sum(str(m.WORKER_CPU_ALLOCATED))} / ({_pool_sum(str(m.WORKER_CPU_CORES))} > 0)",
    _POOL,
    "Reserved cores / cores offered, per pool.",
)
POOL_MEMORY_ALLOCATION = RecordingRule(
    "drm:pool_memory_allocation:ratio",
    f"{_pool_sum(str(m.WORKER_MEMORY_ALLOCATED))}"
    f" / ({_pool_sum(str(m.WORKER_MEMORY_TOTAL))} > 0)",
    _POOL,
    "Reserved memory / memory offered, per pool.",
)
POOL_GPU_ALLOCATION = RecordingRule(
    "drm:pool_gpu_allocation:ratio",
    f"avg by (job, pool) ({_with_pool(str(m.GPU_ALLOCATED))})",
    _POOL,
    "Reserved GPUs / GPUs, per pool; absent for pools without GPUs.",
)
POOL_CPU_EFFICIENCY = RecordingRule(
    "drm:pool_cpu_efficiency:ratio",
    f"clamp_max({_pool_sum(f'({_used_cores}) and ({m.WORKER_CPU_ALLOCATED} > 0)')}"
    f" / ({_pool_sum(str(m.WORKER_CPU_ALLOCATED))} > 0), 1)",
    _POOL,
    "Cores in use on workers with reservations / cores reserved, per pool.",
)
POOL_MEMORY_EFFICIENCY = RecordingRule(
    "drm:pool_memory_efficiency:ratio",
    f"clamp_max({_pool_sum(f'{m.WORKER_MEMORY_USED} and ({m.WORKER_MEMORY_ALLOCATED} > 0)')}"
    f" / ({_pool_sum(str(m.WORKER_MEMORY_ALLOCATED))} > 0), 1)",
    _POOL,
    "Memory in use on workers with reservations / memory reserved, per pool.",
)
POOL_GPU_EFFICIENCY = RecordingRule(
    "drm:pool_gpu_efficiency:ratio",
    f"avg by (job, pool) ({_with_pool(f'{m.GPU_UTILIZATION} and {_allocated_gpus}')})",
    _POOL,
    "Mean utilization of reserved GPUs, per pool.",
)
CLOUD_COST_RATE = RecordingRule(
    "drm:cloud_cost_usd_per_hour:rate5m",
    f"sum by (job, provider, region, instance_type, pool) (rate({m.CLOUD_COST}[5m])) * 3600",
    ("job", "provider", "region", "instance_type", "pool"),
    "Accrued cost rate in USD per hour, over a fixed 5m window: for alerts. While the counter "
    "is younger than 5m it underestimates (the extrapolated increase is divided by the full "
    "5m), so the dashboards show the current rate with rate(...[$__rate_interval]) instead.",
)

# Order matters: a rule may use the ones recorded before it in the same evaluation.
RULES: tuple[RecordingRule, ...] = (
    WORKER_MEMORY_UTILIZATION,
    WORKER_GPU_UTILIZATION,
    WORKER_CPU_EFFICIENCY,
    WORKER_MEMORY_EFFICIENCY,
    WORKER_GPU_EFFICIENCY,
    WORKER_PRICE,
    WORKER_IDLE_COST,
    POOL_CPU_ALLOCATION,
    POOL_MEMORY_ALLOCATION,
    POOL_GPU_ALLOCATION,
    POOL_CPU_EFFICIENCY,
    POOL_MEMORY_EFFICIENCY,
    POOL_GPU_EFFICIENCY,
    CLOUD_COST_RATE,
)
BY_RECORD: dict[str, RecordingRule] = {r.record: r for r in RULES}


def rule_file() -> dict[str, Any]:
    """The Prometheus rule file as plain data (evaluation interval left to the global one)."""
    rules: list[dict[str, Any]] = []
    for r in RULES:
        entry: dict[str, Any] = {"record": r.record, "expr": r.expr}
        if r.static_labels:
            entry["labels"] = dict(r.static_labels)
        rules.append(entry)
    return {"groups": [{"name": GROUP_NAME, "rules": rules}]}


def render_yaml() -> str:
    """The rule file's text, as committed at prometheus/rules/recording.yml."""
    body = yaml.safe_dump(rule_file(), sort_keys=False, width=100_000, default_flow_style=False)
    return HEADER + body
