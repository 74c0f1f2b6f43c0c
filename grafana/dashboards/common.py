"""What the five dashboards share: variables, links, refresh choices, layout, selectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attr
from grafanalib.core import (
    Annotations,
    Dashboard,
    DashboardLink,
    GridPos,
    Panel,
    Template,
    Templating,
    Time,
    TimePicker,
)

from drm_exporter import metrics as m
from drm_exporter.metrics import MetricDef
from drm_exporter.recording import RecordingRule

from . import uids
from . import variables as v
from .panels import DATASOURCE

GRID_WIDTH = 24
SCHEMA_VERSION = 39
REFRESH_CHOICES = ["30s", "1m", "5m"]  # the seed dashboard's auto-refresh options
DEFAULT_REFRESH = "1m"
DATASOURCE_UID = "drm-prometheus"  # grafana/provisioning/datasources/prometheus.yml
REFRESH_ON_TIME_RANGE_CHANGE = 2

# ---------------------------------------------------------------------------------------------
# PromQL selectors. Every selector filters on $job and, where the series has the label, on
# $pool and $worker; worker-level series carry only `worker`, so `in_pool` / `with_pool` apply
# the pool filter through drm_worker_info.


def sel(metric: MetricDef | RecordingRule, *matchers: str) -> str:
    """`name{job=~"$job", pool=~"$pool", worker=~"$worker", <matchers>}`."""
    labels = metric.labels
    parts = [f'job=~"${v.JOB}"']
    if "pool" in labels:
        parts.append(f'pool=~"${v.POOL}"')
    if "worker" in labels:
        parts.append(f'worker=~"${v.WORKER}"')
    parts.extend(matchers)
    name = metric.name if isinstance(metric, MetricDef) else metric.record
    return f"{name}{{{', '.join(parts)}}}"


def in_pool(expr: str) -> str:
    """Keep the worker-level series of `expr` whose worker is in the selected pools."""
    return f"({expr}) and on (worker) {sel(m.WORKER_INFO)}"


def with_pool(expr: str, *extra: str) -> str:
    """Attach `pool` (and `extra` drm_worker_info labels) to worker-level series, filtering."""
    keep = ", ".join(("pool", *extra))
    return (f"({expr}) * on (worker) group_left ({keep}) "
            f"max by (worker, {keep}) ({sel(m.WORKER_INFO)})")


def rate(metric: MetricDef, *matchers: str, window: str = "$__rate_interval") -> str:
    return f"rate({sel(metric, *matchers)}[{window}])"


def increase(metric: MetricDef, *matchers: str, window: str = "$__rate_interval") -> str:
    return f"increase({sel(metric, *matchers)}[{window}])"


def count_per_interval(metric: MetricDef, by: str, *matchers: str) -> str:
    """Exact events per query interval of a counter, for bar panels of whole counts.

    The difference from one step to the previous one (`offset $__interval`, the step), so the
    windows do not overlap and nothing is extrapolated: increase() over $__rate_interval counts
    one event in several bars and shows 3 removals as 5.8. A counter reset shows as 0
    (clamp_min), not as a negative count. The counters it is used on are pre-created at 0, so
    the first event of a label set is not lost.
    """
    s = sel(metric, *matchers)
    return f"clamp_min(sum by ({by}) ({s}) - sum by ({by}) ({s} offset $__interval), 0)"


# ---------------------------------------------------------------------------------------------
# Templating


@attr.s
class QueryVariable(Template):
    """A Prometheus query variable defaulting to All, with the editor's `definition` set."""

    def to_json_data(self) -> dict[str, Any]:
        data = super().to_json_data()
        data["definition"] = self.query
        data["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
        return data


@attr.s
class DatasourceVariable(Template):
    """Defaults to the provisioned Prometheus; Grafana falls back to the first match."""

    def to_json_data(self) -> dict[str, Any]:
        data = super().to_json_data()
        data["current"] = {"selected": False, "text": "Prometheus", "value": DATASOURCE_UID}
        return data


def _query_variable(name: str, label: str, query: str) -> QueryVariable:
    return QueryVariable(
        name=name,
        label=label,
        query=query,
        dataSource=DATASOURCE,
        multi=True,
        includeAll=True,
        allValue=v.ALL_VALUE,
        refresh=REFRESH_ON_TIME_RANGE_CHANGE,
        sort=1,
        regex="",
    )


def templating() -> Templating:
    info = m.WORKER_INFO.name
    return Templating(list=[
        DatasourceVariable(
            name=v.DATASOURCE,
            label="Data source",
            type="datasource",
            query="prometheus",
            default=None,
            regex="",
            refresh=1,
        ),
        _query_variable(v.JOB, "Job", f"label_values({m.BUILD_INFO.name}, job)"),
        _query_variable(v.POOL, "Pool", f'label_values({info}{{job=~"$job"}}, pool)'),
        _query_variable(
            v.WORKER, "Worker",
            f'label_values({info}{{job=~"$job", pool=~"$pool"}}, worker)',
        ),
    ])


# ---------------------------------------------------------------------------------------------
# Layout and the dashboard itself


def layout(panels: Sequence[Panel]) -> list[Panel]:
    """Place panels left to right in the order given, wrapping at 24 columns.

    Each panel arrives with its width and height in gridPos; a new line starts below the
    tallest panel of the previous one, so panels never overlap.
    """
    placed: list[Panel] = []
    x = y = line_h = 0
    for p in panels:
        w, h = p.gridPos.w, p.gridPos.h
        if not 0 < w <= GRID_WIDTH:
            raise ValueError(f"{p.title}: width {w} outside 1..{GRID_WIDTH}")
        if x + w > GRID_WIDTH:
            x, y, line_h = 0, y + line_h, 0
        placed.append(attr.evolve(p, gridPos=GridPos(h=h, w=w, x=x, y=y)))
        x += w
        line_h = max(line_h, h)
    return placed


@attr.s
class DrmDashboard(Dashboard):
    """Grafana's current dashboard model: no `id` (Grafana assigns it), no `__inputs` (the
    datasource is a variable), none of the pre-panels `rows` fields."""

    def to_json_data(self) -> dict[str, Any]:
        data = super().to_json_data()
        for legacy in ("id", "__inputs", "rows", "style", "hideControls", "sharedCrosshair",
                       "gnetId"):
            data.pop(legacy, None)
        data["fiscalYearStartMonth"] = 0
        data["liveNow"] = False
        return data


def dashboard(uid: str, title: str, description: str, panels: Sequence[Panel],
              annotations: Sequence[dict[str, Any]] = ()) -> DrmDashboard:
    return DrmDashboard(
        uid=uid,
        title=title,
        description=description,
        tags=[uids.TAG],
        editable=True,
        graphTooltip=1,  # shared crosshair
        timezone="browser",
        refresh=DEFAULT_REFRESH,
        time=Time("now-1h", "now"),
        timePicker=TimePicker(
            refreshIntervals=list(REFRESH_CHOICES),
            timeOptions=["15m", "1h", "6h", "12h", "24h", "7d"],
        ),
        templating=templating(),
        links=[DashboardLink(
            title="DRM dashboards",
            type="dashboards",
            tags=[uids.TAG],
            asDropdown=True,
            includeVars=True,
            keepTime=True,
            tooltip="The other DRM dashboards",
        )],
        annotations=Annotations(list=list(annotations)),
        panels=layout(panels),
        schemaVersion=SCHEMA_VERSION,
        version=1,
    ).auto_panel_ids()


def prometheus_annotation(name: str, expr: str, color: str, title: str, text: str,
                          tag_keys: str) -> dict[str, Any]:
    """A Prometheus annotation query; one marker per step where `expr` returns a series."""
    return {
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": color,
        "name": name,
        "expr": expr,
        "titleFormat": title,
        "textFormat": text,
        "tagKeys": tag_keys,
        "useValueForTime": False,
    }
