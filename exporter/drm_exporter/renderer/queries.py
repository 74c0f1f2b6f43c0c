"""The queries a Grafana dashboard runs, read from its JSON model.

Panels are walked in a fixed order — top-level ``panels`` in list order, each row followed by the
panels nested in it (a collapsed row keeps them in its own ``panels``) — and each panel is
identified by its position in that walk, because panel ids are optional and not always unique.
Dashboards in the pre-5.0 layout (``rows[].panels``) are walked the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from .prometheus import Series

# Panel types that show one value per series: Grafana users set these to instant queries, and
# running them as range queries would only be reduced to the last point anyway.
INSTANT_PANEL_TYPES = frozenset({"stat", "bargauge", "gauge", "table", "piechart"})


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel, before variable substitution."""

    panel_index: int  # position in iter_panels(); the key that ties results back to panels
    panel_id: int | None
    panel_title: str
    panel_type: str
    ref_id: str
    expr: str
    legend_format: str = ""
    instant: bool = False
    format: str = "time_series"  # time_series | table | heatmap
    min_interval: str | None = None  # the target's or panel's "interval" (Grafana min step)
    max_data_points: int | None = None
    grid_width: int = 24  # gridPos.w, used for Grafana's default max data points


def dashboard_model(document: Mapping) -> Mapping:
    """The dashboard, also when wrapped as the HTTP API returns it (``{"dashboard": ...}``)."""
    inner = document.get("dashboard")
    if isinstance(inner, Mapping) and "panels" not in document and "rows" not in document:
        return inner
    return document


def iter_panels(dashboard: Mapping) -> Iterator[dict]:
    """Every panel of ``dashboard``, rows included, in the order described above."""
    dashboard = dashboard_model(dashboard)
    for panel in dashboard.get("panels") or []:
        yield panel
        if panel.get("type") == "row":
            yield from panel.get("panels") or []
    for row in dashboard.get("rows") or []:  # schema < 16
        yield {"type": "row", "title": row.get("title", ""), "collapsed": row.get("collapse"),
               "_legacy": True}
        yield from row.get("panels") or []


def is_instant(panel_type: str, target: Mapping) -> bool:
    """Instant for single-value panel types, or when the target asks for instant only."""
    if panel_type in INSTANT_PANEL_TYPES:
        return True
    return bool(target.get("instant")) and not target.get("range")


def panel_queries(dashboard: Mapping) -> list[PanelQuery]:
    """The PromQL targets of every panel, hidden and empty targets left out."""
    queries: list[PanelQuery] = []
    for index, panel in enumerate(iter_panels(dashboard)):
        panel_type = str(panel.get("type") or "")
        if panel_type == "row":
            continue
        grid = panel.get("gridPos") or {}
        for position, target in enumerate(panel.get("targets") or []):
            expr = (target.get("expr") or "").strip()
            if not expr or target.get("hide"):
                continue
            max_points = panel.get("maxDataPoints")
            queries.append(PanelQuery(
                panel_index=index,
                panel_id=panel.get("id"),
                panel_title=str(panel.get("title") or ""),
                panel_type=panel_type,
                ref_id=str(target.get("refId") or chr(ord("A") + position % 26)),
                expr=expr,
                legend_format=str(target.get("legendFormat") or ""),
                instant=is_instant(panel_type, target),
                format=str(target.get("format") or "time_series"),
                min_interval=target.get("interval") or panel.get("interval") or None,
                max_data_points=int(max_points) if max_points else None,
                grid_width=int(grid.get("w") or 24),
            ))
    return queries


@dataclass(frozen=True)
class QueryResult:
    """What one target returned: the PromQL actually sent, its series, or the error."""

    query: PanelQuery
    expr: str
    series: list[Series] = field(default_factory=list)
    error: str | None = None
    start: float = 0.0  # the range actually queried (start aligned to the step)
    end: float = 0.0
    step: float = 0.0

    @property
    def has_values(self) -> bool:
        """True when some series has a point that is not NaN."""
        return any(v == v for s in self.series for v in s.values)  # NaN != NaN
