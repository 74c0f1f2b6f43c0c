"""Scaling history: pool sizes against their bounds, the policy's input, its decisions."""

from __future__ import annotations

from grafanalib.core import Dashboard

from drm_exporter import metrics as m

from . import uids
from .common import count_per_interval, dashboard, increase, prometheus_annotation, sel
from .panels import (
    by_name,
    by_regex,
    dashed,
    stat,
    state_timeline,
    target,
    timeseries,
)


def _scale_events(action: str) -> str:
    decisions = increase(m.SCALING_DECISIONS, f'action="{action}"')
    return f"sum by (pool, reason) ({decisions}) > 0"


def build() -> Dashboard:
    scale_ups = increase(m.SCALING_DECISIONS, 'action="scale_up"', window="$__range")
    scale_downs = increase(m.SCALING_DECISIONS, 'action="scale_down"', window="$__range")
    last_change = sel(m.SCALING_LAST_DECISION, 'action!="maintain"')
    active = sel(m.POOL_WORKERS, 'state="active"')
    overall = sel(m.SCALING_UTILIZATION, 'resource="overall"')
    per_resource = sel(m.SCALING_UTILIZATION, 'resource!="overall"')
    panels = [
        stat("Workers", "Workers in any state (active, provisioning, draining) now.",
             [target(f"sum({sel(m.POOL_WORKERS)})")], "short", w=6, decimals=0),
        stat("Scale-ups in range",
             "Scale-up decisions over the dashboard's time range (increase() extrapolates; "
             "rounded to a whole count).",
             [target(f"round(sum({scale_ups}))", instant=True)], "short", w=6, decimals=0,
             graph=False),
        stat("Scale-downs in range",
             "Scale-down decisions over the dashboard's time range (increase() extrapolates; "
             "rounded to a whole count).",
             [target(f"round(sum({scale_downs}))", instant=True)], "short", w=6, decimals=0,
             graph=False),
        stat("Since last scale event",
             "Time since the most recent scale-up or scale-down decision in the selected "
             "pools.",
             [target(f"time() - max({last_change})")], "s", w=6, graph=False),
        timeseries(
            "Workers by state",
            "Workers per state (active, provisioning, draining), stacked to the pool size, "
            "summed over the selected pools. Scale events are marked as annotations.",
            [target(f"sum by (state) ({sel(m.POOL_WORKERS)})", "{{state}}")],
            "short", stack=True, decimals=0),
        timeseries(
            "Workers vs target and bounds",
            "All workers (any state) summed over the selected pools, against the target the "
            "last decisions set and the configured minimum and maximum (dashed, not stacked).",
            [
                target(f"sum({sel(m.POOL_WORKERS)})", "workers"),
                target(f"sum({sel(m.POOL_TARGET_WORKERS)})", "target"),
                target(f"sum({sel(m.POOL_MIN_WORKERS)})", "min"),
                target(f"sum({sel(m.POOL_MAX_WORKERS)})", "max"),
            ],
            "short", min_value=0, decimals=0,
            overrides=[
                dashed(by_name("target"), color="blue"),
                dashed(by_name("min"), color="orange"),
                dashed(by_name("max"), color="red"),
            ]),
        timeseries(
            "Active workers vs target per pool",
            "Active workers in each pool against the worker count its last decision aims at "
            "(dashed). Lines only: the pools are compared, not added up.",
            [
                target(f"sum by (pool) ({active})",
                       "{{pool}} active"),
                target(f"max by (pool) ({sel(m.POOL_TARGET_WORKERS)})", "{{pool}} target"),
            ],
            "short", min_value=0, decimals=0, overrides=[dashed(by_regex("^.* target$"))]),
        timeseries(
            "Policy input vs thresholds",
            "The overall utilization signal each pool's scaling policy acts on (reserved "
            "share of capacity), against its scale-up, target and scale-down thresholds "
            "(dashed).",
            [
                target(f"max by (pool) ({overall})",
                       "{{pool}} overall"),
                target(f"max by (pool, threshold) ({sel(m.SCALING_THRESHOLD)})",
                       "{{pool}} {{threshold}}"),
            ],
            "percentunit", min_value=0, max_value=1,
            overrides=[dashed(by_regex("^.* (scale_up|scale_down|target)$"))]),
        timeseries(
            "Policy input by resource",
            "Reserved share of each pool's CPU, memory and GPU capacity, the parts of the "
            "overall signal.",
            [target(f"max by (pool, resource) ({per_resource})",
                    "{{pool}} {{resource}}")],
            "percentunit", min_value=0, max_value=1),
        timeseries(
            "Decisions per interval by action and reason",
            "Scaling decisions made in each query interval (the counter's exact difference "
            "from the previous step: no overlap, no extrapolation), stacked by action and "
            "reason; maintain decisions show why the pool did not change.",
            [target(count_per_interval(m.SCALING_DECISIONS, "action, reason"),
                    "{{action}}: {{reason}}")],
            "short", stack=True, bars=True, min_value=0, decimals=0),
        timeseries(
            "Workers added and removed",
            "Workers added (up, above zero) and removed (down, below zero) by decisions in "
            "each query interval (the counter's exact difference from the previous step).",
            [target(count_per_interval(m.SCALING_WORKERS, "pool, direction"),
                    "{{pool}} {{direction}}")],
            "short", w=8, bars=True, decimals=0,
            overrides=[{"matcher": by_regex("^.* down$"),
                        "properties": [{"id": "custom.transform", "value": "negative-Y"}]}]),
        state_timeline(
            "Cooldowns",
            "When each pool's scale-up and scale-down cooldowns were running; a wanted "
            "change during a cooldown is recorded as maintain/cooldown.",
            [target(f"max by (pool, direction) ({sel(m.SCALING_COOLDOWN_ACTIVE)})",
                    "{{pool}} {{direction}}")],
            {0: ("ready", "green"), 1: ("cooldown", "orange")}, w=8, h=8),
        timeseries(
            "Pending tasks",
            "Tasks waiting for capacity in each pool.",
            [target(f"sum by (pool) ({sel(m.POOL_TASKS_PENDING)})", "{{pool}}")],
            "short", w=8, min_value=0, decimals=0),
    ]
    annotations = [
        prometheus_annotation("Scale up", _scale_events("scale_up"), "green",
                              "scale up {{pool}}", "{{reason}}", "pool,reason"),
        prometheus_annotation("Scale down", _scale_events("scale_down"), "red",
                              "scale down {{pool}}", "{{reason}}", "pool,reason"),
    ]
    return dashboard(
        uids.SCALING,
        "DRM / Scaling history",
        "Pool sizes, the scaling policy's input and thresholds, and its decisions.",
        panels,
        annotations,
    )
