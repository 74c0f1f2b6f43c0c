"""Resource utilization: the seed's summary cards and worker x time heatmaps, measured."""

from __future__ import annotations

from grafanalib.core import Dashboard

from drm_exporter import metrics as m
from drm_exporter import recording as r

from . import uids
from .common import dashboard, in_pool, increase, sel
from .panels import GREEN_ORANGE_RED, bargauge, heatmap, stat, status_history, target

_CPU = sel(m.WORKER_CPU_UTILIZATION)


def build() -> Dashboard:
    used_cores = f"{_CPU} * {sel(m.WORKER_CPU_CORES)}"
    active = sel(m.POOL_WORKERS, 'state="active"')
    scale_events = increase(m.SCALING_DECISIONS, 'action!="maintain"', window="24h")
    panels = [
        stat("Active workers",
             "Workers in the active state, summed over the selected pools.",
             [target(f"sum({active})")], "short", decimals=0),
        stat("CPU cores",
             "CPU cores the selected workers offer (cgroup limits honoured).",
             [target(f"sum({in_pool(sel(m.WORKER_CPU_CORES))})")], "short"),
        stat("Memory",
             "Memory the selected workers offer.",
             [target(f"sum({in_pool(sel(m.WORKER_MEMORY_TOTAL))})")], "bytes"),
        stat("GPUs",
             "GPUs on the selected workers (0 when no worker has one).",
             [target(f"count({in_pool(sel(m.GPU_INFO))}) or vector(0)")], "short",
             decimals=0),
        stat("Fleet CPU utilization",
             "Measured CPU utilization of the selected workers, weighted by their cores.",
             [target(f"sum({in_pool(used_cores)}) / sum({in_pool(sel(m.WORKER_CPU_CORES))})")],
             "percentunit", spec=GREEN_ORANGE_RED),
        stat("Scale events (24h)",
             "Scale-up and scale-down decisions in the last 24 hours (fixed window, "
             "whatever the time range), over the selected pools; rounded to a whole count "
             "(increase() extrapolates).",
             [target(f"round(sum({scale_events}))", instant=True)],
             "short", decimals=0, graph=False),
        status_history(
            "CPU utilization per worker",
            "Measured CPU utilization, one row per worker, coloured on a fixed 0-100% scale. "
            "A departed worker's row ends when it stops reporting; a gap is a missing sample.",
            [target(in_pool(_CPU), "{{worker}}")]),
        status_history(
            "Memory utilization per worker",
            "Measured memory in use / memory offered, one row per worker (0-100% scale).",
            [target(sel(r.WORKER_MEMORY_UTILIZATION), "{{worker}}")]),
        status_history(
            "GPU utilization per worker",
            "Mean measured utilization of each worker's GPUs (0-100% scale). Workers "
            "without GPUs have no row: absent, not a fake 0.",
            [target(sel(r.WORKER_GPU_UTILIZATION), "{{worker}}")]),
        heatmap(
            "CPU utilization distribution",
            "How many workers sit in each 10% CPU utilization band over time; Grafana "
            "buckets the per-worker series.",
            [target(in_pool(_CPU), "{{worker}}")]),
        bargauge(
            "Hottest workers (CPU)",
            "The ten selected workers with the highest measured CPU utilization now.",
            [target(f"topk(10, {in_pool(_CPU)})", "{{worker}}", instant=True)],
            "percentunit", w=6),
        bargauge(
            "Hottest GPUs (temperature)",
            "The ten hottest GPUs now, ranked by core temperature (not by utilization, unlike "
            "'Hottest workers (CPU)'; see 'GPU utilization per worker').",
            [target(f"topk(10, {in_pool(sel(m.GPU_TEMPERATURE))})", "{{worker}}/{{gpu}}",
                    instant=True)],
            "celsius", w=6, max_value=100,
            spec=(("green", None), ("orange", 75.0), ("red", 85.0))),
    ]
    return dashboard(
        uids.UTILIZATION,
        "DRM / Resource utilization",
        "Measured CPU, memory and GPU utilization of the DRM's workers.",
        panels,
    )
