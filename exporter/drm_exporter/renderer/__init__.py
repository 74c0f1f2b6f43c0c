"""Render Grafana dashboards to PNG without Grafana or a browser.

Reads dashboard JSON (Grafana's JSON model), substitutes its variables, runs each panel's
queries against a Prometheus HTTP API and draws every dashboard as one PNG laid out by
``gridPos``. Drawing needs the ``render`` extra (matplotlib, numpy); querying does not::

    from drm_exporter.renderer import render_dashboards
    report = render_dashboards("http://127.0.0.1:9090", [dashboard], Path("out"),
                               start=time.time() - 3600, end=time.time())
    print(report.summary())
"""

from .prometheus import (
    PrometheusClient,
    PrometheusError,
    PrometheusQueryError,
    PrometheusUnreachable,
    Series,
)
from .queries import PanelQuery, QueryResult, iter_panels, panel_queries
from .render import (
    INSTALL_HINT,
    RendererDependencyError,
    fetch_panel_data,
    render_dashboard,
    render_dashboards,
    run_all_queries,
)
from .report import DashboardReport, RenderReport, dashboard_has_data
from .variables import TimeContext, Variables, substitute

__all__ = [
    "INSTALL_HINT",
    "DashboardReport",
    "PanelQuery",
    "PrometheusClient",
    "PrometheusError",
    "PrometheusQueryError",
    "PrometheusUnreachable",
    "QueryResult",
    "RenderReport",
    "RendererDependencyError",
    "Series",
    "TimeContext",
    "Variables",
    "dashboard_has_data",
    "fetch_panel_data",
    "iter_panels",
    "panel_queries",
    "render_dashboard",
    "render_dashboards",
    "run_all_queries",
    "substitute",
]
