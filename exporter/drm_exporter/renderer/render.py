"""Dashboard JSON → Prometheus queries → one PNG per dashboard.

The query side (:func:`fetch_panel_data`, :func:`run_all_queries`) needs only the standard
library; drawing imports matplotlib through :func:`load_draw`, which says which extra to install
when it is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

from .fields import FieldConfig
from .layout import GRID_COLUMNS, PAGE_PAD_PX, place_panels
from .prometheus import (
    DEFAULT_TIMEOUT_S,
    PrometheusClient,
    PrometheusQueryError,
    QueryClient,
)
from .queries import PanelQuery, QueryResult, dashboard_model, panel_queries
from .report import DashboardReport, RenderReport
from .variables import TimeContext, Value, Variables, choose_step, parse_duration

DEFAULT_WIDTH_PX = 2400
QUERY_THREADS = 8  # queries are I/O bound; Prometheus runs 20 concurrently by default
INSTALL_HINT = "pip install 'drm-exporter[render]'"


class RendererDependencyError(ImportError):
    """matplotlib or numpy is not installed."""


def load_draw() -> ModuleType:
    """The drawing module, or a clear error naming the extra to install."""
    try:
        draw = importlib.import_module(f"{__package__}.draw")
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in ("matplotlib", "numpy"):
            raise RendererDependencyError(
                f"rendering dashboards needs {missing}, which is not installed: {INSTALL_HINT}"
            ) from exc
        raise
    return draw


def query_time(query: PanelQuery, start: float, end: float, scrape_interval_s: float,
               width_px: int = DEFAULT_WIDTH_PX) -> TimeContext:
    """The step Grafana would use for this panel: range ÷ its width in pixels, ≥ scrape interval."""
    min_step = scrape_interval_s
    if query.min_interval and "$" not in query.min_interval:
        with contextlib.suppress(ValueError):  # Grafana ignores an unparsable one too
            min_step = max(min_step, parse_duration(query.min_interval))
    max_points = query.max_data_points or max(
        1, int(width_px * query.grid_width / GRID_COLUMNS) - 2 * PAGE_PAD_PX)
    step = choose_step(start, end, max_points, min_step)
    return TimeContext(start, end, step, scrape_interval_s)


def run_query(client: QueryClient, query: PanelQuery, variables: Variables, start: float,
              end: float, scrape_interval_s: float, width_px: int = DEFAULT_WIDTH_PX
              ) -> QueryResult:
    """Run one target. A rejected query is returned as an error; unreachable raises."""
    window = query_time(query, start, end, scrape_interval_s, width_px)
    expr = variables.substitute(query.expr, window)
    # Grafana aligns range starts to the step so that successive refreshes hit the same points.
    aligned = math.floor(start / window.step) * window.step
    try:
        if query.instant:
            series = client.query(expr, end)
        else:
            series = client.query_range(expr, aligned, end, window.step)
    except PrometheusQueryError as exc:
        return QueryResult(query, expr, [], str(exc), aligned, end, window.step)
    return QueryResult(query, expr, series, None, aligned, end, window.step)


def fetch_panel_data(client: QueryClient, dashboard: Mapping, start: float, end: float,
                     scrape_interval_s: float = 15, *, variables: Mapping[str, Value] | None = None,
                     width_px: int = DEFAULT_WIDTH_PX, panel_types: set[str] | None = None
                     ) -> list[QueryResult]:
    """Every target of ``dashboard`` (optionally only of some panel types), in panel order."""
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    dashboard = dashboard_model(dashboard)
    scope = Variables.from_dashboard(dashboard, variables)
    queries = [q for q in panel_queries(dashboard)
               if panel_types is None or q.panel_type in panel_types]
    if not queries:
        return []
    with ThreadPoolExecutor(max_workers=min(QUERY_THREADS, len(queries))) as pool:
        return list(pool.map(lambda q: run_query(client, q, scope, start, end,
                                                 scrape_interval_s, width_px), queries))


def run_all_queries(prometheus_url: str, dashboard: Mapping, start: float, end: float,
                    scrape_interval_s: float = 15, *,
                    variables: Mapping[str, Value] | None = None,
                    timeout_s: float = DEFAULT_TIMEOUT_S
                    ) -> list[tuple[PanelQuery, int, str | None]]:
    """``(query, number of series returned, error or None)`` for every target of ``dashboard``.

    Raises :class:`~drm_exporter.renderer.prometheus.PrometheusUnreachable` when Prometheus
    cannot be reached at all.
    """
    client = PrometheusClient(prometheus_url, timeout_s)
    results = fetch_panel_data(client, dashboard, start, end, scrape_interval_s,
                               variables=variables)
    return [(r.query, len(r.series), r.error) for r in results]


def _panel_status(panel: Mapping, results: Sequence[QueryResult], draw: ModuleType
                  ) -> str | None:
    """None when the panel shows data, else why it does not."""
    kind = str(panel.get("type") or "")
    if kind == "text":
        return None if draw.text_content(dict(panel)) else "empty text panel"
    if kind not in draw.DRAWERS:
        return f"unsupported panel type {kind or '(none)'!r}"
    if not results:
        return "panel has no queries"
    if any(r.has_values for r in results):
        return None
    errors = [r.error for r in results if r.error]
    if errors and len(errors) == len(results):
        return f"query failed: {errors[0]}"
    if any(r.series for r in results):
        return "all values are NaN"
    return "queries returned no series"


def _file_name(dashboard: Mapping, taken: set[str]) -> str:
    base = str(dashboard.get("uid") or dashboard.get("title") or "dashboard")
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.").lower() or "dashboard"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name + ".png"


def render_dashboard(client: QueryClient, dashboard: Mapping, path: Path, start: float,
                     end: float, scrape_interval_s: float = 15, *,
                     variables: Mapping[str, Value] | None = None,
                     width_px: int = DEFAULT_WIDTH_PX, source: str = "") -> DashboardReport:
    """Query and draw one dashboard into ``path``; ``source`` names Prometheus in the header."""
    draw = load_draw()
    began = time.perf_counter()
    dashboard = dashboard_model(dashboard)
    scope = Variables.from_dashboard(dashboard, variables)
    title = scope.display(str(dashboard.get("title") or "(untitled dashboard)"))
    entry = DashboardReport(title=title, uid=dashboard.get("uid"), path=path)
    results = fetch_panel_data(client, dashboard, start, end, scrape_interval_s,
                               variables=variables, width_px=width_px,
                               panel_types=set(draw.DRAWERS))
    by_panel: dict[int, list[QueryResult]] = {}
    for result in results:
        by_panel.setdefault(result.query.panel_index, []).append(result)
    layout = place_panels(dashboard, width_px, top_px=draw.HEADER_PX)
    header = [f"{draw.format_range(start, end)}   ·   {scope.describe()}"]
    if source:
        header.append(f"Prometheus {source}   ·   scrape interval {scrape_interval_s:g}s")
    with draw.matplotlib.rc_context(draw.RC):
        fig = draw.new_figure(width_px, layout.height_px)
        fw, fh = float(width_px), float(layout.height_px)
        draw.draw_header(fig, title, header, fw, fh)
        for placed in layout.panels:
            panel = placed.panel
            panel_title = scope.display(str(panel.get("title") or ""))
            if panel.get("type") == "row":
                draw.draw_row(fig, placed.rect, panel_title, fw, fh)
                continue
            entry.panels_total += 1
            panel_results = by_panel.get(placed.index, [])
            failed = [r for r in panel_results if r.error]
            for r in failed:
                entry.query_errors.append((panel_title, f"{r.query.ref_id}: {r.error}"))
            note = f"{len(failed)} of {len(panel_results)} queries failed" if failed else None
            content = draw.draw_frame(fig, placed.rect, panel_title, fw, fh, note)
            ctx = draw.PanelContext(fig, content, dict(panel), FieldConfig.from_panel(panel),
                                    panel_results, start, end, fw, fh)
            reason = _panel_status(panel, panel_results, draw)
            if reason is not None:
                entry.no_data.append((panel_title, reason))
                if reason.startswith("unsupported"):
                    draw.draw_unsupported(ctx)
                else:
                    draw.draw_no_data(ctx, reason)
                continue
            try:
                draw.DRAWERS[str(panel.get("type"))](ctx)
            except Exception as exc:  # one odd panel must not lose the whole dashboard
                entry.draw_errors.append((panel_title, f"{type(exc).__name__}: {exc}"))
                draw.draw_message(ctx, "Cannot draw panel", f"{type(exc).__name__}: {exc}",
                                  color="#C4162A")
                continue
            entry.panels_with_data += 1
        draw.save_figure(fig, str(path), title)
    entry.seconds = time.perf_counter() - began
    return entry


def render_dashboards(prometheus_url: str, dashboards: list[dict], out_dir: Path, start: float,
                      end: float, scrape_interval_s: float = 15, *,
                      variables: Mapping[str, Value] | None = None,
                      timeout_s: float = DEFAULT_TIMEOUT_S,
                      width_px: int = DEFAULT_WIDTH_PX) -> RenderReport:
    """Render each dashboard to ``out_dir/<uid>.png`` from the Prometheus at ``prometheus_url``.

    ``start``/``end`` are Unix seconds. ``variables`` maps dashboard variable names to a value
    or list of values; unset variables mean "All". Raises
    :class:`~drm_exporter.renderer.prometheus.PrometheusUnreachable` if Prometheus cannot be
    reached and :class:`RendererDependencyError` if matplotlib is missing; a query Prometheus
    rejects is recorded in the report instead.
    """
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    load_draw()  # fail before any query when matplotlib is missing
    client = PrometheusClient(prometheus_url, timeout_s)
    client.check()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = RenderReport(prometheus_url, start, end)
    taken: set[str] = set()
    for document in dashboards:
        dashboard = dashboard_model(document)
        path = out_dir / _file_name(dashboard, taken)
        report.dashboards.append(render_dashboard(
            client, dashboard, path, start, end, scrape_interval_s, variables=variables,
            width_px=width_px, source=client.base_url))
    return report
