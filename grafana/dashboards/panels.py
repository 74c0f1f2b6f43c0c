"""Panel builders producing Grafana's current JSON model (schema 39, Grafana 10/11).

grafanalib 0.7 still emits some legacy shapes (bar gauge `fieldOptions`, graph-era targets), and
has no status-history or calculated-heatmap panel, so the few classes here subclass its `Panel`
and write the modern model. Every panel and target gets `datasource = ${datasource}`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attr
from grafanalib.core import (
    BarGauge,
    GridPos,
    Panel,
    PieChartv2,
    Stat,
    StateTimeline,
    Target,
    TimeSeries,
)

DATASOURCE: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

# One point per pixel column is more than a 12-wide panel can show; status-history cells need
# to stay wide enough to read, so it asks for fewer.
MAX_DATA_POINTS = 300
STATUS_HISTORY_POINTS = 60

Step = tuple[str, float | None]

GREEN_ORANGE_RED: tuple[Step, ...] = (("green", None), ("orange", 0.7), ("red", 0.9))
RED_ORANGE_GREEN: tuple[Step, ...] = (("red", None), ("orange", 0.3), ("green", 0.6))
NEUTRAL: tuple[Step, ...] = (("blue", None),)


def steps(spec: Iterable[Step]) -> list[dict[str, Any]]:
    return [{"color": color, "value": value} for color, value in spec]


def thresholds(spec: Iterable[Step]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": steps(spec)}


@attr.s
class PromTarget(Target):
    """A Prometheus query in the current model (no graph-era `step`/`target`/`metric`)."""

    def to_json_data(self) -> dict[str, Any]:
        return {
            "datasource": self.datasource,
            "editorMode": "code",
            "expr": self.expr,
            "format": self.format,
            "instant": self.instant,
            "range": not self.instant,
            "intervalFactor": self.intervalFactor,
            "legendFormat": self.legendFormat,
            "refId": self.refId,
        }


def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False
           ) -> PromTarget:
    return PromTarget(
        expr=expr,
        legendFormat=legend,
        instant=instant,
        format="table" if table else "time_series",
        intervalFactor=1,
        datasource=DATASOURCE,
    )


def _with_ref_ids(targets: Sequence[PromTarget]) -> list[PromTarget]:
    return [attr.evolve(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)]


def _common(title: str, description: str, targets: Sequence[PromTarget], w: int, h: int,
            max_points: int = MAX_DATA_POINTS) -> dict[str, Any]:
    return {
        "title": title,
        "description": description,
        "targets": _with_ref_ids(targets),
        "dataSource": DATASOURCE,
        "gridPos": GridPos(h=h, w=w, x=0, y=0),  # x/y are set by common.layout
        "maxDataPoints": max_points,
    }


# Stacking group of reference lines: besides `mode: none`, a group of their own, so that no
# Grafana version adds a bound or threshold onto the stacked parts of a whole.
REFERENCE_GROUP = "reference"


def dashed(matcher: dict[str, str], *, color: str | None = None) -> dict[str, Any]:
    """An override drawing matched series as reference lines (a target, a bound, a threshold,
    a budget, a capacity): dashed, never stacked, never filled."""
    props: list[dict[str, Any]] = [
        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        {"id": "custom.fillOpacity", "value": 0},
        {"id": "custom.stacking", "value": {"mode": "none", "group": REFERENCE_GROUP}},
    ]
    if color:
        props.append({"id": "color", "value": {"mode": "fixed", "fixedColor": color}})
    return {"matcher": matcher, "properties": props}


def fixed_color(matcher: dict[str, str], color: str) -> dict[str, Any]:
    """An override giving matched series one fixed colour (to pair series across targets)."""
    return {"matcher": matcher,
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}]}


def by_regex(pattern: str) -> dict[str, str]:
    return {"id": "byRegexp", "options": pattern}


def by_name(name: str) -> dict[str, str]:
    return {"id": "byName", "options": name}


def timeseries(title: str, description: str, targets: Sequence[PromTarget], unit: str, *,
               w: int = 12, h: int = 8, stack: bool = False, bars: bool = False,
               min_value: int | None = None, max_value: int | None = None,
               decimals: int | None = None,
               overrides: Sequence[dict[str, Any]] = (),
               legend_calcs: Sequence[str] = ()) -> TimeSeries:
    """A time series panel. `stack` only where the series are parts of a whole (workers by
    state, cost by provider); only stacked areas and bars are filled: overlapping fills of
    independent lines hide each other and read as a stack. `decimals=0` for whole counts
    (workers, GPUs, tasks): integer axis ticks and legend values."""
    return TimeSeries(
        **_common(title, description, targets, w, h),
        unit=unit,
        drawStyle="bars" if bars else "line",
        fillOpacity=80 if bars else (30 if stack else 0),
        lineWidth=1,
        showPoints="never",
        stacking={"mode": "normal", "group": "A"} if stack else {"mode": "none", "group": "A"},
        valueMin=min_value,
        valueMax=max_value,
        valueDecimals=decimals,
        tooltipMode="multi",
        tooltipSort="desc",
        legendDisplayMode="table" if legend_calcs else "list",
        legendPlacement="right" if legend_calcs else "bottom",
        legendCalcs=list(legend_calcs),
        overrides=list(overrides),
        thresholds=steps(NEUTRAL),
    )


def stat(title: str, description: str, targets: Sequence[PromTarget], unit: str, *,
         w: int = 4, h: int = 4, spec: Sequence[Step] = NEUTRAL, decimals: int | None = None,
         graph: bool = True) -> Stat:
    return Stat(
        **_common(title, description, targets, w, h, max_points=100),
        format=unit,
        reduceCalc="lastNotNull",
        graphMode="area" if graph else "none",
        colorMode="value",
        color={"mode": "thresholds"},
        decimals=decimals,
        noValue="No data",
        textMode="auto",
        thresholds=steps(spec),
    )


@attr.s
class ModernBarGauge(BarGauge):
    """grafanalib's BarGauge writes the Grafana 6 `options.fieldOptions`; write fieldConfig."""

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json(
            {
                "fieldConfig": {
                    "defaults": {
                        "color": {"mode": "thresholds"},
                        "decimals": self.decimals,
                        "mappings": [],
                        "max": self.max,
                        "min": self.min,
                        "unit": self.format,
                        "thresholds": {"mode": "absolute", "steps": self.thresholds},
                    },
                    "overrides": [],
                },
                "options": {
                    "displayMode": self.displayMode,
                    "orientation": self.orientation,
                    "reduceOptions": {"calcs": [self.calc], "fields": "", "values": False},
                    "showUnfilled": True,
                    "valueMode": "color",
                    "namePlacement": "auto",
                    "sizing": "auto",
                    "minVizHeight": 16,
                    "minVizWidth": 8,
                    "maxVizHeight": 300,
                },
                "type": "bargauge",
            }
        )


def bargauge(title: str, description: str, targets: Sequence[PromTarget], unit: str, *,
             w: int = 8, h: int = 9, min_value: float = 0, max_value: float | None = 1,
             spec: Sequence[Step] = GREEN_ORANGE_RED) -> ModernBarGauge:
    return ModernBarGauge(
        **_common(title, description, targets, w, h, max_points=100),
        format=unit,
        min=min_value,
        max=max_value,
        calc="lastNotNull",
        displayMode="gradient",
        orientation="horizontal",
        thresholds=steps(spec),
    )


@attr.s
class StatusHistory(Panel):
    """Grafana's status-history panel: one row per series, one coloured cell per step."""

    unit: str = attr.ib(default="percentunit")
    colorMode: str = attr.ib(default="continuous-GrYlRd")
    minValue: float = attr.ib(default=0)
    maxValue: float = attr.ib(default=1)

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json(
            {
                "fieldConfig": {
                    "defaults": {
                        "color": {"mode": self.colorMode},
                        "custom": {
                            "fillOpacity": 90,
                            "lineWidth": 0,
                            "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                        },
                        "mappings": [],
                        "min": self.minValue,
                        "max": self.maxValue,
                        "unit": self.unit,
                    },
                    "overrides": [],
                },
                "options": {
                    "colWidth": 0.95,
                    "rowHeight": 0.9,
                    "showValue": "never",
                    "legend": {"displayMode": "list", "placement": "bottom",
                               "showLegend": False},
                    "tooltip": {"mode": "single", "sort": "none"},
                },
                "type": "status-history",
            }
        )


def status_history(title: str, description: str, targets: Sequence[PromTarget], *,
                   unit: str = "percentunit", w: int = 24, h: int = 7,
                   color: str = "continuous-GrYlRd") -> StatusHistory:
    return StatusHistory(
        **_common(title, description, targets, w, h, max_points=STATUS_HISTORY_POINTS),
        unit=unit,
        colorMode=color,
        thresholds=steps(NEUTRAL),
    )


@attr.s
class CalculatedHeatmap(Panel):
    """Grafana's heatmap (v9+) bucketing raw series values itself (`calculate: true`)."""

    unit: str = attr.ib(default="percentunit")
    bucketSize: str = attr.ib(default="0.1")

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json(
            {
                "fieldConfig": {
                    "defaults": {
                        "custom": {
                            "hideFrom": {"legend": False, "tooltip": False, "viz": False},
                            "scaleDistribution": {"type": "linear"},
                        },
                        "unit": self.unit,
                    },
                    "overrides": [],
                },
                "options": {
                    "calculate": True,
                    "calculation": {
                        "yBuckets": {"mode": "size", "value": self.bucketSize,
                                     "scale": {"type": "linear"}},
                    },
                    "cellGap": 1,
                    "cellValues": {"unit": "short"},
                    "color": {"mode": "scheme", "scheme": "Viridis", "scale": "exponential",
                              "exponent": 0.5, "steps": 64, "reverse": False,
                              "fill": "dark-orange"},
                    "exemplars": {"color": "rgba(255,0,255,0.7)"},
                    "filterValues": {"le": 1e-9},
                    "legend": {"show": True},
                    "rowsFrame": {"layout": "auto"},
                    "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
                    "yAxis": {"axisPlacement": "left", "reverse": False, "unit": self.unit,
                              "min": 0, "max": 1},
                },
                "type": "heatmap",
            }
        )


def heatmap(title: str, description: str, targets: Sequence[PromTarget], *,
            unit: str = "percentunit", w: int = 12, h: int = 9,
            bucket: str = "0.1") -> CalculatedHeatmap:
    return CalculatedHeatmap(
        **_common(title, description, targets, w, h, max_points=STATUS_HISTORY_POINTS),
        unit=unit,
        bucketSize=bucket,
        thresholds=steps(NEUTRAL),
    )


def value_mapping(states: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    """{value: (text, colour)} -> Grafana value mappings."""
    return [{
        "type": "value",
        "options": {
            str(v): {"text": text, "color": color, "index": i}
            for i, (v, (text, color)) in enumerate(sorted(states.items()))
        },
    }]


def state_timeline(title: str, description: str, targets: Sequence[PromTarget],
                   states: dict[int, tuple[str, str]], *, unit: str = "bool",
                   w: int = 12, h: int = 7) -> StateTimeline:
    return StateTimeline(
        **_common(title, description, targets, w, h),
        mappings=value_mapping(states),
        fillOpacity=80,
        showValue="never",
        rowHeight=0.8,
        thresholds=steps(NEUTRAL),
        extraJson={"fieldConfig": {"defaults": {"unit": unit, "min": 0, "max": 1}}},
    )


def piechart(title: str, description: str, targets: Sequence[PromTarget], unit: str, *,
             w: int = 6, h: int = 8) -> PieChartv2:
    return PieChartv2(
        **_common(title, description, targets, w, h, max_points=100),
        unit=unit,
        pieType="donut",
        legendDisplayMode="table",
        legendPlacement="right",
        legendValues=["value", "percent"],
        reduceOptionsCalcs=["lastNotNull"],
        thresholds=steps(NEUTRAL),
    )


@attr.s
class TablePanel(Panel):
    """Grafana's table panel (the React one, not `table-old`)."""

    unit: str = attr.ib(default="short")
    sortBy: list[dict[str, Any]] = attr.ib(factory=list)

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json(
            {
                "fieldConfig": {
                    "defaults": {
                        "color": {"mode": "thresholds"},
                        "custom": {"align": "auto", "cellOptions": {"type": "auto"},
                                   "inspect": False, "filterable": True},
                        "mappings": [],
                        "unit": self.unit,
                    },
                    "overrides": [],
                },
                "options": {
                    "cellHeight": "sm",
                    "footer": {"show": False, "reducer": ["sum"], "fields": "",
                               "countRows": False},
                    "showHeader": True,
                    "sortBy": self.sortBy,
                },
                "type": "table",
            }
        )


def table(title: str, description: str, targets: Sequence[PromTarget], unit: str, *,
          value_name: str, columns: Sequence[str],
          hide: Sequence[str] = ("Time", "__name__", "job", "instance"),
          w: int = 12, h: int = 8) -> TablePanel:
    """An instant-query table of one query: the label columns in the order `columns` gives
    (what a row is comes first), then the value column, renamed `value_name` and sorted on.
    `organize` keys on the frame's field names, so the value column is "Value" there."""
    order = [*columns, "Value"]
    return TablePanel(
        **_common(title, description, targets, w, h, max_points=100),
        unit=unit,
        sortBy=[{"displayName": value_name, "desc": True}],
        thresholds=steps(NEUTRAL),
        transformations=[{
            "id": "organize",
            "options": {
                "excludeByName": {name: True for name in hide},
                "indexByName": {name: i for i, name in enumerate(order)},
                "renameByName": {"Value": value_name},
            },
        }],
    )
