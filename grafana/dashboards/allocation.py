"""Resource allocation: what tasks reserved against what the workers offer."""

from __future__ import annotations

from grafanalib.core import Dashboard

from drm_exporter import metrics as m
from drm_exporter import recording as r

from . import uids
from .common import dashboard, in_pool, sel, with_pool
from .panels import (
    GREEN_ORANGE_RED,
    NEUTRAL,
    bargauge,
    by_regex,
    dashed,
    stat,
    target,
    timeseries,
)


def _sum(expr: str) -> str:
    return f"sum({in_pool(expr)})"


def _per_pool(expr: str) -> str:
    return f"sum by (pool) ({with_pool(expr)})"


def build() -> Dashboard:
    cores, cores_alloc = sel(m.WORKER_CPU_CORES), sel(m.WORKER_CPU_ALLOCATED)
    mem, mem_alloc = sel(m.WORKER_MEMORY_TOTAL), sel(m.WORKER_MEMORY_ALLOCATED)
    gpu_alloc = sel(m.GPU_ALLOCATED)
    capacity_dashed = [dashed(by_regex("^.* capacity$"))]
    panels = [
        stat("CPU allocated", "Reserved cores / cores offered by the selected workers.",
             [target(f"{_sum(cores_alloc)} / ({_sum(cores)} > 0)")], "percentunit",
             spec=GREEN_ORANGE_RED),
        stat("Memory allocated", "Reserved memory / memory offered by the selected workers.",
             [target(f"{_sum(mem_alloc)} / ({_sum(mem)} > 0)")], "percentunit",
             spec=GREEN_ORANGE_RED),
        stat("GPUs allocated", "Reserved GPUs / GPUs on the selected workers.",
             [target(f"avg({in_pool(gpu_alloc)})")], "percentunit", spec=GREEN_ORANGE_RED),
        stat("Free CPU cores", "Cores offered but not reserved.",
             [target(f"{_sum(cores)} - {_sum(cores_alloc)}")], "short", spec=NEUTRAL),
        stat("Free memory", "Memory offered but not reserved.",
             [target(f"{_sum(mem)} - {_sum(mem_alloc)}")], "bytes", spec=NEUTRAL),
        stat("Free GPUs", "GPUs no task has reserved.",
             [target(f"sum({in_pool(f'1 - {gpu_alloc}')})")], "short", spec=NEUTRAL,
             decimals=0),
        timeseries(
            "Allocated share of capacity per pool",
            "Reserved / offered per pool and resource (recording rules "
            "drm:pool_*_allocation:ratio).",
            [
                target(sel(r.POOL_CPU_ALLOCATION), "{{pool}} cpu"),
                target(sel(r.POOL_MEMORY_ALLOCATION), "{{pool}} memory"),
                target(sel(r.POOL_GPU_ALLOCATION), "{{pool}} gpu"),
            ],
            "percentunit", w=24, min_value=0, max_value=1),
        bargauge("CPU allocated per worker", "Reserved cores / cores offered, per worker now.",
                 [target(in_pool(f"{cores_alloc} / ({cores} > 0)"), "{{worker}}")],
                 "percentunit"),
        bargauge("Memory allocated per worker",
                 "Reserved memory / memory offered, per worker now.",
                 [target(in_pool(f"{mem_alloc} / ({mem} > 0)"), "{{worker}}")],
                 "percentunit"),
        bargauge("GPUs allocated per worker",
                 "Reserved GPUs / GPUs, per worker now; workers without GPUs are absent.",
                 [target(in_pool(f"avg without (gpu) ({gpu_alloc})"), "{{worker}}")],
                 "percentunit"),
        timeseries(
            "CPU cores: allocated vs capacity",
            "Cores reserved by tasks and cores offered (dashed), per pool.",
            [target(_per_pool(cores_alloc), "{{pool}} allocated"),
             target(_per_pool(cores), "{{pool}} capacity")],
            "short", w=8, h=9, overrides=capacity_dashed),
        timeseries(
            "Memory: allocated vs capacity",
            "Memory reserved by tasks and memory offered (dashed), per pool.",
            [target(_per_pool(mem_alloc), "{{pool}} allocated"),
             target(_per_pool(mem), "{{pool}} capacity")],
            "bytes", w=8, h=9, overrides=capacity_dashed),
        timeseries(
            "GPUs: allocated vs capacity",
            "GPUs reserved by tasks and GPUs present (dashed), per pool.",
            [target(_per_pool(gpu_alloc), "{{pool}} allocated"),
             target(f"count by (pool) ({with_pool(gpu_alloc)})", "{{pool}} capacity")],
            "short", w=8, h=9, min_value=0, decimals=0, overrides=capacity_dashed),
    ]
    return dashboard(
        uids.ALLOCATION,
        "DRM / Resource allocation",
        "CPU cores, memory and GPUs reserved by tasks against what the workers offer, per "
        "worker and per pool.",
        panels,
    )
