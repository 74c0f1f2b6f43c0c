"""Resource efficiency: measured use / what tasks reserved, and what idle reservations cost.

Efficiency is only defined where something is reserved (see drm_exporter.recording); it is
clamped to 100%, the "optimal" line of the seed's chart.
"""

from __future__ import annotations

from grafanalib.core import Dashboard

from drm_exporter import metrics as m
from drm_exporter import recording as r

from . import uids
from .common import dashboard, in_pool, sel, with_pool
from .panels import (
    NEUTRAL,
    RED_ORANGE_GREEN,
    bargauge,
    stat,
    status_history,
    table,
    target,
    timeseries,
)


def build() -> Dashboard:
    cores, cores_alloc = sel(m.WORKER_CPU_CORES), sel(m.WORKER_CPU_ALLOCATED)
    used_cores = f"{sel(m.WORKER_CPU_UTILIZATION)} * {cores}"
    mem_used, mem_alloc = sel(m.WORKER_MEMORY_USED), sel(m.WORKER_MEMORY_ALLOCATED)
    gpu_util, gpu_alloc = sel(m.GPU_UTILIZATION), sel(m.GPU_ALLOCATED)
    reserved_gpus = f"({gpu_alloc} == 1)"
    idle_cost = sel(r.WORKER_IDLE_COST)

    fleet_cpu = (f"clamp_max(sum({in_pool(f'({used_cores}) and ({cores_alloc} > 0)')})"
                 f" / (sum({in_pool(cores_alloc)}) > 0), 1)")
    fleet_mem = (f"clamp_max(sum({in_pool(f'{mem_used} and ({mem_alloc} > 0)')})"
                 f" / (sum({in_pool(mem_alloc)}) > 0), 1)")
    fleet_gpu = f"avg({in_pool(f'{gpu_util} and {reserved_gpus}')})"
    panels = [
        stat("Fleet CPU efficiency",
             "Cores in use / cores reserved, over the selected workers that have reservations.",
             [target(fleet_cpu)], "percentunit", w=6, spec=RED_ORANGE_GREEN),
        stat("Fleet memory efficiency",
             "Memory in use / memory reserved, over the selected workers with reservations.",
             [target(fleet_mem)], "percentunit", w=6, spec=RED_ORANGE_GREEN),
        stat("Fleet GPU efficiency", "Mean utilization of the reserved GPUs.",
             [target(fleet_gpu)], "percentunit", w=6, spec=RED_ORANGE_GREEN),
        stat("Idle reservations cost (USD/hour)",
             "What reserved-but-idle capacity costs per hour (USD/h): each worker's price x "
             "its larger idle reserved CPU or GPU share. Unpriced workers count as nothing.",
             [target(f"sum({idle_cost})")], "currencyUSD", w=6, spec=NEUTRAL),
        timeseries(
            "Efficiency by pool",
            "Used / reserved per pool and resource (recording rules "
            "drm:pool_*_efficiency:ratio); 100% is optimal.",
            [
                target(sel(r.POOL_CPU_EFFICIENCY), "{{pool}} cpu"),
                target(sel(r.POOL_MEMORY_EFFICIENCY), "{{pool}} memory"),
                target(sel(r.POOL_GPU_EFFICIENCY), "{{pool}} gpu"),
            ],
            "percentunit", w=8, h=9, min_value=0, max_value=1),
        bargauge(
            "Least efficient workers (CPU)",
            "The ten workers using the smallest share of the cores their tasks reserved.",
            [target(f"bottomk(10, {sel(r.WORKER_CPU_EFFICIENCY)})", "{{worker}}",
                    instant=True)],
            "percentunit", w=8, spec=RED_ORANGE_GREEN),
        bargauge(
            "GPU efficiency per worker",
            "Mean utilization of each worker's reserved GPUs now.",
            [target(sel(r.WORKER_GPU_EFFICIENCY), "{{worker}}")],
            "percentunit", spec=RED_ORANGE_GREEN),
        status_history(
            "CPU efficiency per worker",
            "Cores in use / cores reserved, one row per worker (red: reserved but idle). "
            "No cell where nothing is reserved.",
            [target(sel(r.WORKER_CPU_EFFICIENCY), "{{worker}}")], color="continuous-RdYlGr"),
        status_history(
            "Memory efficiency per worker",
            "Memory in use / memory reserved, one row per worker. No cell where nothing is "
            "reserved.",
            [target(sel(r.WORKER_MEMORY_EFFICIENCY), "{{worker}}")],
            color="continuous-RdYlGr"),
        timeseries(
            "Idle reserved cores and GPUs",
            "Reserved minus used: CPU cores, and reserved GPUs weighted by how idle they are, "
            "per pool.",
            [
                target(f"sum by (pool) "
                       f"({with_pool(f'clamp_min({cores_alloc} - {used_cores}, 0)')})",
                       "{{pool}} cores"),
                target(f"sum by (pool) ({with_pool(f'(1 - {gpu_util}) and {reserved_gpus}')})",
                       "{{pool}} GPUs"),
            ],
            "short", w=8),
        timeseries(
            "Idle reserved memory",
            "Reserved minus used memory, per pool.",
            [target(f"sum by (pool) ({with_pool(f'clamp_min({mem_alloc} - {mem_used}, 0)')})",
                    "{{pool}}")],
            "bytes", w=8),
        timeseries(
            "Idle reservations cost per pool (USD/hour)",
            "USD per hour paid for reserved-but-idle capacity (see the 'Idle reservations "
            "cost' card), per pool.",
            [target(f"sum by (pool) ({idle_cost})", "{{pool}}")],
            "currencyUSD", w=8),
        table(
            "Idle reservations cost per worker (USD/hour)",
            "USD per hour each worker's idle reservations cost now, most expensive first.",
            [target(f"sort_desc({idle_cost})", instant=True, table=True)],
            "currencyUSD", value_name="USD/h",
            columns=("worker", "pool", "provider", "instance_type", "region"), w=24),
    ]
    return dashboard(
        uids.EFFICIENCY,
        "DRM / Resource efficiency",
        "How much of the reserved CPU, memory and GPU capacity tasks actually use, and what "
        "the idle part costs.",
        panels,
    )
