"""Alerting rules, defined once.

`prometheus/rules/alerts.yml` is generated from this module (`drm-exporter dashboards`) and a
test fails when it is stale; `prometheus/tests/alerts_test.yml` holds a firing and a silent
promtool case for every alert. Expressions are built from the metric names in `metrics.py`, the
recording rules in `recording.py` and the thresholds users tune in `thresholds.py`.

Every rule gets its `runbook_url` here, in one place, from one pattern (kubernetes-mixin style):
`RUNBOOK_URL` + `#` + the alert name in lower case, an anchor of `docs/runbook.md`.

A failed scrape marks every series of the target stale, so a bare instant comparison would
vanish for a scrape and restart the rule's `for`; rules that must survive a missed scrape read
a window (`max_over_time`, `min_over_time`, `avg_over_time`, `last_over_time`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from . import metrics as m
from . import recording as r
from . import thresholds as t

GROUP_NAME = "drm-alerts"
HEADER = (
    "# Generated from exporter/drm_exporter/alerts.py by `drm-exporter dashboards`.\n"
    "# Do not edit by hand: a test fails when this file is stale.\n"
)
# A fork that hosts the repository elsewhere changes this one line.
RUNBOOK_URL = "https://github.com/drm-exporter/drm-exporter/blob/main/docs/runbook.md"
# The scrape job of the coordinator, as named in prometheus/prometheus.yml.
EXPORTER_JOB = "drm-exporter"
SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str  # static: no template, so notifications group by it
    description: str  # a Go template over $labels and $value

    @property
    def anchor(self) -> str:
        return self.name.lower()

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_URL}#{self.anchor}"

    def __str__(self) -> str:
        return self.name


_JOB = f'job="{EXPORTER_JOB}"'

EXPORTER_DOWN = Alert(
    "DRMExporterDown",
    f"up{{{_JOB}}} == 0",
    "5m", "critical",
    "Prometheus cannot scrape drm-exporter.",
    "Scrapes of {{ $labels.instance }} (job {{ $labels.job }}) have failed for 5 minutes: "
    "no drm metric is fresh and every other drm alert is blind.",
)
# Two ways to vanish: the target left the scrape config or service discovery (no `up` at all),
# or it is scraped but the metrics are gone (a relabelling rule, a different program on the
# port). The second branch only applies while a scrape succeeds, so it does not repeat
# DRMExporterDown.
EXPORTER_ABSENT = Alert(
    "DRMExporterAbsent",
    f"absent(up{{{_JOB}}}) or (absent({m.BUILD_INFO}{{{_JOB}}})"
    f" and on () (max(up{{{_JOB}}}) == 1))",
    "10m", "critical",
    "drm-exporter has vanished from Prometheus.",
    "Prometheus has no target for job {{ $labels.job }}, or scrapes it without getting "
    f"{m.BUILD_INFO}: check the scrape config, service discovery and metric relabelling.",
)
COLLECTOR_FAILING = Alert(
    "DRMCollectorFailing",
    f"max_over_time({m.COLLECTOR_SUCCESS}[{t.COLLECTOR_FAILING_WINDOW}]) == 0",
    "5m", "warning",
    "A drm-exporter collector keeps failing.",
    "Collector {{ $labels.collector }} on {{ $labels.instance }} has failed every run for "
    f"{t.COLLECTOR_FAILING_WINDOW}; the metrics it produces are missing or stale.",
)
WORKER_NOT_REPORTING = Alert(
    "DRMWorkerNotReporting",
    f"max_over_time({m.WORKER_UP}[{t.DOWN_WINDOW}]) == 0",
    "5m", "warning",
    "A worker has stopped reporting.",
    "Worker {{ $labels.worker }} has missed its heartbeats: its capacity and reservations "
    "are no longer current, and it will be expired if it does not come back.",
)
WORKER_CPU_SATURATED = Alert(
    "DRMWorkerCPUSaturated",
    f"avg_over_time({m.WORKER_CPU_UTILIZATION}[10m]) > {t.WORKER_CPU_SATURATED_RATIO}",
    "30m", "warning",
    "A worker's CPU has been saturated for a long time.",
    "Worker {{ $labels.worker }} has used {{ $value | humanizePercentage }} of its CPU on "
    "average over the last 10 minutes, for more than 30 minutes.",
)
WORKER_MEMORY_PRESSURE = Alert(
    "DRMWorkerMemoryPressure",
    f"min_over_time({r.WORKER_MEMORY_UTILIZATION}[10m]) > {t.WORKER_MEMORY_PRESSURE_RATIO}",
    "10m", "warning",
    "A worker is running out of memory.",
    "Worker {{ $labels.worker }} in pool {{ $labels.pool }} has had at least "
    "{{ $value | humanizePercentage }} of its memory in use for 20 minutes.",
)
GPU_MEMORY_NEARLY_FULL = Alert(
    "DRMGPUMemoryNearlyFull",
    f"min_over_time({m.GPU_MEMORY_USED}[10m]) / (max_over_time({m.GPU_MEMORY_TOTAL}[10m]) > 0)"
    f" > {t.GPU_MEMORY_NEARLY_FULL_RATIO}",
    "10m", "warning",
    "A GPU's memory is nearly full.",
    "GPU {{ $labels.gpu }} of worker {{ $labels.worker }} has had "
    "{{ $value | humanizePercentage }} of its memory in use for 20 minutes.",
)
GPU_OVERHEATING = Alert(
    "DRMGPUOverheating",
    f"min_over_time({m.GPU_TEMPERATURE}[5m]) > {t.GPU_TEMPERATURE_CELSIUS}",
    "5m", "warning",
    "A GPU is overheating.",
    "GPU {{ $labels.gpu }} of worker {{ $labels.worker }} has stayed above "
    f"{t.GPU_TEMPERATURE_CELSIUS} °C for 10 minutes (at least {{{{ $value }}}} °C); "
    "it is probably throttling.",
)
GPU_LOST = Alert(
    "DRMGPULost",
    f"max_over_time({m.GPU_UP}[{t.DOWN_WINDOW}]) == 0",
    "5m", "critical",
    "A GPU no longer answers.",
    "GPU {{ $labels.gpu }} of worker {{ $labels.worker }} has not answered a read for "
    "10 minutes (fallen off the bus, driver or Xid error); tasks on it are likely failing.",
)

# Workers that count toward the maximum: draining ones are on their way out.
_pool_workers = (f"sum by (job, pool) (last_over_time("
                 f'{m.POOL_WORKERS}{{state=~"active|provisioning"}}[5m]))')
_pool_max = f"max by (job, pool) (last_over_time({m.POOL_MAX_WORKERS}[5m]))"
_pool_hot = f'min by (job, pool) (min_over_time({m.SCALING_UTILIZATION}{{resource="overall"}}[5m]))'
_scale_up_at = (f"max by (job, pool) (last_over_time("
                f'{m.SCALING_THRESHOLD}{{threshold="scale_up"}}[5m]))')
POOL_AT_MAX_WHILE_HOT = Alert(
    "DRMPoolAtMaxWhileHot",
    f"({_pool_hot} >= on (job, pool) {_scale_up_at})"
    f" and on (job, pool) ({_pool_workers} >= on (job, pool) {_pool_max})",
    "15m", "warning",
    "A pool is hot but already at its maximum size.",
    "Pool {{ $labels.pool }} has been at or above its scale-up threshold (overall signal "
    "{{ $value | humanizePercentage }}) for 20 minutes with max_workers active or "
    "provisioning: the autoscaler cannot add capacity and tasks will queue.",
)

# Direction changes in the last hour, approximated. Prometheus keeps no event order, so the
# rule counts the scrapes in which each direction's counter moved (changes(), exact while one
# scrape holds at most one decision per direction, which the cooldowns ensure) and takes
# 2 x min(ups, downs): exact for strictly alternating decisions (up, down, up, ...; one more
# than the truth when ups == downs), an over-estimate for an hour that climbs in several steps
# and then descends in several steps. Both directions are always exported, so the min is over
# two series.
_moves = f"changes({m.SCALING_WORKERS}[1h])"
SCALING_FLAPPING = Alert(
    "DRMScalingFlapping",
    f"2 * min by (job, pool) ({_moves}) > {t.FLAP_DIRECTION_CHANGES_PER_HOUR}",
    "5m", "warning",
    "A pool keeps scaling up and down.",
    "Pool {{ $labels.pool }} has changed scaling direction about {{ $value }} times in the "
    f"last hour (limit {t.FLAP_DIRECTION_CHANGES_PER_HOUR}): widen the band between its "
    "thresholds or lengthen its window and cooldowns.",
)


def _low_efficiency(resource: str, efficiency: r.RecordingRule,
                    allocation: r.RecordingRule) -> str:
    return (f"label_replace(avg_over_time({efficiency}[1h]) < {t.LOW_EFFICIENCY_RATIO}"
            f" and on (job, pool) avg_over_time({allocation}[1h])"
            f" >= {t.LOW_EFFICIENCY_MIN_ALLOCATION_RATIO},"
            f' "resource", "{resource}", "", "")')


LOW_ALLOCATION_EFFICIENCY = Alert(
    "DRMLowAllocationEfficiency",
    " or ".join((
        _low_efficiency("cpu", r.POOL_CPU_EFFICIENCY, r.POOL_CPU_ALLOCATION),
        _low_efficiency("memory", r.POOL_MEMORY_EFFICIENCY, r.POOL_MEMORY_ALLOCATION),
        _low_efficiency("gpu", r.POOL_GPU_EFFICIENCY, r.POOL_GPU_ALLOCATION),
    )),
    "30m", "info",
    "A pool reserves much more than it uses.",
    "Tasks in pool {{ $labels.pool }} have used only {{ $value | humanizePercentage }} of the "
    "{{ $labels.resource }} they reserved over the last hour: their requests are too large.",
)

# Month-end forecast per provider: what billing says was spent this month plus the current
# accrued rate (smoothed over 1h) for the seconds left in the month (UTC, as Prometheus'
# date functions). A provider without billed spend (GCP in this release) counts from 0, so its
# forecast is a lower bound.
# days_in_month() and day_of_month() return a label-less vector: scalar() lets it match any.
_seconds_left = "(scalar(days_in_month() - day_of_month() + 1) * 86400 - time() % 86400)"
_rate = f"sum by (provider) (avg_over_time({r.CLOUD_COST_RATE}[1h]))"
_billed = (f"sum by (provider) (last_over_time("
           f'{m.CLOUD_BILLED_COST}{{window="month_to_date",currency="USD"}}[1d]))')
COST_FORECAST_OVER_BUDGET = Alert(
    "DRMCostForecastOverBudget",
    f"(({_billed} or 0 * {_rate}) + {_rate} * {_seconds_left} / 3600)"
    f" > on (provider) max by (provider) (last_over_time({m.CLOUD_BUDGET}[1h]))",
    "1h", "warning",
    "Cloud spend is forecast to exceed the monthly budget.",
    "At the current rate {{ $labels.provider }} spend is forecast to reach "
    "${{ $value | humanize }} by the end of the month, over the budget set in the config.",
)
_last_success = f"max_over_time({m.CLOUD_REFRESH_LAST_SUCCESS}[1h])"
# Stale: refreshed once but not lately; or never refreshed and the last attempts failed.
BILLING_DATA_STALE = Alert(
    "DRMBillingDataStale",
    f"(time() - {_last_success} > {t.BILLING_STALE_SECONDS})"
    f" or (max_over_time({m.CLOUD_REFRESH_SUCCESS}[1h]) == 0"
    f" unless on (job, instance, provider, source) {_last_success})",
    "1h", "warning",
    "Cloud billing or pricing data is stale.",
    "Source {{ $labels.source }} of provider {{ $labels.provider }} has not refreshed "
    "successfully for too long; cost panels and the budget forecast read old figures.",
)
UNPRICED_WORKERS = Alert(
    "DRMUnpricedWorkers",
    f"min_over_time({m.CLOUD_UNPRICED_WORKERS}[15m]) > 0",
    t.UNPRICED_WORKERS_FOR, "info",
    "Some workers have no known price.",
    "{{ $value }} {{ $labels.provider }} worker(s) of instance type "
    "{{ $labels.instance_type }} have no price: their cost counts as 0.",
)

ALERTS: tuple[Alert, ...] = (
    EXPORTER_DOWN,
    EXPORTER_ABSENT,
    COLLECTOR_FAILING,
    WORKER_NOT_REPORTING,
    WORKER_CPU_SATURATED,
    WORKER_MEMORY_PRESSURE,
    GPU_MEMORY_NEARLY_FULL,
    GPU_OVERHEATING,
    GPU_LOST,
    POOL_AT_MAX_WHILE_HOT,
    SCALING_FLAPPING,
    LOW_ALLOCATION_EFFICIENCY,
    COST_FORECAST_OVER_BUDGET,
    BILLING_DATA_STALE,
    UNPRICED_WORKERS,
)
BY_NAME: dict[str, Alert] = {a.name: a for a in ALERTS}


def rule_file() -> dict[str, Any]:
    """The Prometheus rule file as plain data."""
    rules = [{
        "alert": a.name,
        "expr": a.expr,
        "for": a.for_,
        "labels": {"severity": a.severity},
        "annotations": {"summary": a.summary, "description": a.description,
                        "runbook_url": a.runbook_url},
    } for a in ALERTS]
    return {"groups": [{"name": GROUP_NAME, "rules": rules}]}


def render_yaml() -> str:
    """The rule file's text, as committed at prometheus/rules/alerts.yml."""
    body = yaml.safe_dump(rule_file(), sort_keys=False, width=100_000, default_flow_style=False,
                          allow_unicode=True)
    return HEADER + body
