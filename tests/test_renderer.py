"""The PNG renderer: variables, queries, layout and units as units; drawing against a real
Prometheus that scrapes itself, checked pixel by pixel."""

from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from drm_exporter.renderer import (
    INSTALL_HINT,
    PanelQuery,
    PrometheusQueryError,
    PrometheusUnreachable,
    RendererDependencyError,
    Series,
    TimeContext,
    Variables,
    dashboard_has_data,
    panel_queries,
    render_dashboard,
    render_dashboards,
    run_all_queries,
    substitute,
)
from drm_exporter.renderer.layout import place_panels
from drm_exporter.renderer.prometheus import PrometheusClient
from drm_exporter.renderer.units import format_value

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
FORBIDDEN_PORTS = {9847, 9090, 19090}
HOUR = TimeContext(start=1_700_000_000, end=1_700_003_600, step=15, scrape_interval_s=15)


# --- variables ------------------------------------------------------------------------------

def test_rate_interval_and_range_builtins() -> None:
    expr = 'sum(rate(x_total{job=~"$job"}[$__rate_interval])) / $__range_s'
    assert substitute(expr, HOUR) == 'sum(rate(x_total{job=~".*"}[60s])) / 3600'
    coarse = TimeContext(0, 86400, step=300, scrape_interval_s=15)
    assert substitute("[$__rate_interval] [$__interval] [$__range]", coarse) == \
        "[315s] [300s] [86400s]"
    assert substitute("$__interval_ms $__from $__to", TimeContext(10, 70, 1.5, 1)) == \
        "1500 10000 70000"
    assert substitute("rate(x[$__interval])", TimeContext(0, 60, 1.5, 1)) == "rate(x[1500ms])"


def test_dashboard_variables_default_to_all() -> None:
    expr = ('up{job=~"$job", pool=~"${pool}", worker=~"${worker:regex}", '
            'zone=~"[[zone]]", ds="${datasource}"}')
    assert substitute(expr, HOUR) == \
        'up{job=~".*", pool=~".*", worker=~".*", zone=~"[[zone]]", ds=""}'
    dashboard = {"templating": {"list": [
        {"name": "zone", "type": "query"},
        {"name": "host", "type": "custom", "allValue": ".+"},
        {"name": "prom", "type": "datasource"},
        {"name": "factor", "type": "constant", "query": "42"},
    ]}}
    assert substitute('a{zone=~"[[zone]]",host=~"$host"} * $factor${prom}', HOUR,
                      dashboard=dashboard) == 'a{zone=~".*",host=~".+"} * 42'


def test_given_values_are_formatted_like_grafana() -> None:
    values = {"job": "drm", "pool": ["gpu-a", "cpu.b"], "worker": "w-1.example"}
    assert substitute('x{job="$job",pool=~"$pool"}', HOUR, values) == \
        'x{job="drm",pool=~"(gpu-a|cpu\\\\.b)"}'
    assert substitute('x{worker=~"${worker:regex}"}', HOUR, values) == \
        'x{worker=~"w-1\\\\.example"}'
    assert substitute("${pool:pipe} ${pool:csv} ${worker}", HOUR, values) == \
        "gpu-a|cpu.b gpu-a,cpu.b w-1.example"


def test_unknown_dollar_names_survive() -> None:
    expr = 'label_replace(up, "host", "$1", "instance", "(.*):.*") * $jobs'
    assert substitute(expr, HOUR) == expr


def test_panel_titles_show_all_not_regex() -> None:
    assert Variables.from_dashboard({}).display("CPU of $pool / ${worker}") == "CPU of All / All"
    assert Variables.from_dashboard({}, {"pool": "gpu"}).display("CPU of $pool") == "CPU of gpu"


# --- queries and layout ---------------------------------------------------------------------

def test_panel_queries_walks_rows_and_picks_instant() -> None:
    dashboard = {"panels": [
        {"type": "stat", "title": "S", "id": 1, "targets": [{"expr": "up", "refId": "A"}]},
        {"type": "row", "title": "R", "collapsed": True, "panels": [
            {"type": "timeseries", "title": "T", "id": 3, "interval": "30s", "targets": [
                {"expr": "rate(x[$__rate_interval])", "legendFormat": "{{pool}}"},
                {"expr": "hidden", "hide": True},
                {"expr": "  "},
                {"expr": "y", "instant": True, "refId": "C"},
                {"expr": "z", "instant": True, "range": True, "refId": "D"},
            ]},
        ]},
        {"type": "text", "title": "no targets"},
    ]}
    queries = panel_queries(dashboard)
    assert [(q.panel_title, q.expr, q.instant, q.ref_id) for q in queries] == [
        ("S", "up", True, "A"),
        ("T", "rate(x[$__rate_interval])", False, "A"),
        ("T", "y", True, "C"),
        ("T", "z", False, "D"),
    ]
    assert queries[1].panel_index == 2 and queries[1].legend_format == "{{pool}}"
    assert queries[1].min_interval == "30s"


def test_api_wrapped_dashboard_is_unwrapped() -> None:
    inner = {"panels": [{"type": "stat", "targets": [{"expr": "up"}]}]}
    assert [q.expr for q in panel_queries({"dashboard": inner, "meta": {}})] == ["up"]


def test_grid_layout_places_half_width_panel_in_right_half() -> None:
    dashboard = {"panels": [
        {"type": "stat", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 4}},
        {"type": "stat", "gridPos": {"x": 12, "y": 0, "w": 12, "h": 4}},
        {"type": "timeseries", "gridPos": {"x": 0, "y": 4, "w": 24, "h": 8}},
    ]}
    layout = place_panels(dashboard, width_px=2400, top_px=100)
    left, right, wide = (p.rect for p in layout.panels)
    assert left.right < 1200 < right.left < right.right <= 2400
    assert right.top == left.top == 100
    assert wide.top >= left.bottom and wide.width > 2300
    fx, _fy, fw, _fh = right.figure_fraction(2400, layout.height_px)
    assert fx >= 0.5 and fx + fw <= 1.0
    assert layout.height_px >= wide.bottom


def test_collapsed_row_is_expanded_and_pushes_panels_down() -> None:
    dashboard = {"panels": [
        {"type": "row", "collapsed": True, "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1},
         "panels": [{"type": "stat", "gridPos": {"x": 0, "y": 1, "w": 24, "h": 6}}]},
        {"type": "stat", "gridPos": {"x": 0, "y": 1, "w": 24, "h": 4}},
    ]}
    row, nested, after = place_panels(dashboard).panels
    assert row.grid.y == 0 and nested.grid.y == 1 and after.grid.y == 7
    assert nested.rect.top >= row.rect.bottom and after.rect.top >= nested.rect.bottom


# --- units ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "unit", "text"), [
    (0.4567, "percentunit", "45.7%"),
    (1536, "bytes", "1.5 KiB"),
    (3 * 1024**3, "bytes", "3 GiB"),
    (1234.5, "currencyUSD", "$1.23K"),
    (12.5, "currencyUSD", "$12.50"),
    (2, "currencyUSD", "$2.00"),
    (999.5, "currencyUSD", "$999.50"),
    (-4.9, "currencyUSD", "-$4.90"),
    (0.0926, "currencyUSD", "$0.0926"),
    (0.00046, "currencyUSD", "$0.00046"),
    (3, "currency:€", "€3.00"),
    (1500, "short", "1.5 K"),
    (0.25, "s", "250 ms"),
    (90, "s", "1.5 min"),
    (71.5, "celsius", "71.5°C"),
    (250, "watt", "250 W"),
    (1500, "watt", "1.5 kW"),
    (3, "suffix: workers", "3 workers"),
    (1, "bool", "True"),
    (0, "bool_yes_no", "No"),
    (float("nan"), "bytes", "NaN"),
])
def test_units(value: float, unit: str, text: str) -> None:
    assert format_value(value, unit) == text


# --- field overrides and drawing details (one panel drawn into a figure) -----------------------

T0 = 1_700_000_000.0
STEP = 15.0


def _series(labels: dict[str, str], values: list[float]) -> Series:
    return Series(labels, [T0 + STEP * k for k in range(len(values))], list(values))


def _draw_panel(panel: dict, data: dict[str, list[Series]], width: int = 1200,
                height: int = 320, steps: int = 40):
    """Draw ``panel`` alone with ``data`` (series per refId); the figure, context and axes."""
    import matplotlib

    from drm_exporter.renderer import QueryResult
    from drm_exporter.renderer import draw as drawing
    from drm_exporter.renderer.fields import FieldConfig
    from drm_exporter.renderer.layout import Rect

    end = T0 + STEP * (steps - 1)
    results = [QueryResult(q, q.expr, data.get(q.ref_id, []), None, T0, end, STEP)
               for q in panel_queries({"panels": [panel]})]
    fig = drawing.new_figure(width, height)
    with matplotlib.rc_context(drawing.RC):
        ctx = drawing.PanelContext(fig, Rect(8, 30, width - 16, height - 36), panel,
                                   FieldConfig.from_panel(panel), results, T0, end,
                                   float(width), float(height))
        drawing.DRAWERS[panel["type"]](ctx)
        fig.canvas.draw()
    return fig, ctx, fig.axes


def _override(matcher: str, options: object, **props: object) -> dict:
    return {"matcher": {"id": matcher, "options": options},
            "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()]}


def test_field_overrides_match_by_name_regexp_and_ref_id() -> None:
    from drm_exporter.renderer.fields import GRAFANA_COLORS, FieldConfig

    panel = _panel(1, "timeseries", "t", (0, 0, 12, 8), [], "short", defaults={
        "custom": {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 30}})
    panel["fieldConfig"]["overrides"] = [
        _override("byRegexp", "^.* down$", custom__transform="negative-Y"),
        _override("byName", "cpu budget", custom__lineStyle={"fill": "dash", "dash": [10, 10]},
                  color={"mode": "fixed", "fixedColor": "semi-dark-orange"},
                  custom__stacking={"mode": "none", "group": "A"}, custom__fillOpacity=0,
                  unit="currencyUSD", decimals=1, displayName="Budget (${__field.labels.pool})"),
        _override("byFrameRefID", "B", custom__drawStyle="bars"),
        _override("byRegexp", "/^GPU/i", color={"mode": "fixed", "fixedColor": "purple"}),
    ]
    base = FieldConfig.from_panel(panel)
    plain_series = base.for_field("cpu up", "A")
    assert (plain_series.transform, plain_series.draw_style, plain_series.stacking,
            plain_series.unit) == (None, "line", "normal", "short")
    assert base.for_field("cpu down", "A").transform == "negative-Y"
    budget = base.for_field("cpu budget", "A", {"pool": "cpu"})
    assert budget.line_style == "dash" and budget.dash == (10.0, 10.0)
    assert (budget.color_mode, budget.fixed_color) == ("fixed", GRAFANA_COLORS["semi-dark-orange"])
    assert (budget.stacking, budget.fill_opacity) == ("none", 0.0)
    assert budget.format(2) == "$2.0" and budget.display("cpu budget") == "Budget (cpu)"
    assert base.for_field("anything", "B").draw_style == "bars"
    assert base.for_field("gpu used", "A").fixed_color == GRAFANA_COLORS["purple"]


def _segments_by_color(ax) -> dict[str, tuple]:
    """hex colour -> (y values, line style) of each line in the panel's LineCollection."""
    from matplotlib import colors as mcolors
    from matplotlib.collections import LineCollection

    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 1
    collection = lines[0]
    styles = collection.get_linestyles()
    out = {}
    for i, segment in enumerate(collection.get_segments()):
        color = mcolors.to_hex(collection.get_colors()[i % len(collection.get_colors())]).upper()
        out[color] = ([round(float(y), 6) for y in segment[:, 1]], styles[i % len(styles)])
    return out


def test_timeseries_draws_overridden_series_unstacked_dashed_in_fixed_colour() -> None:
    from drm_exporter.renderer.fields import CLASSIC_PALETTE, GRAFANA_COLORS

    panel = _panel(1, "timeseries", "Cost vs budget", (0, 0, 12, 8),
                   [_target("used", "{{pool}} used"),
                    _target("budget", "{{pool}} budget", refId="B")], "currencyUSD",
                   defaults={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 20}})
    panel["fieldConfig"]["overrides"] = [
        _override("byRegexp", "^.* budget$", custom__lineStyle={"fill": "dash", "dash": [10, 10]},
                  custom__stacking={"mode": "none", "group": "reference"},
                  custom__fillOpacity=0,
                  color={"mode": "fixed", "fixedColor": "orange"})]
    data = {"A": [_series({"pool": "cpu"}, [1.0] * 40), _series({"pool": "gpu"}, [2.0] * 40)],
            "B": [_series({"pool": "cpu"}, [10.0] * 40)]}
    _fig, _ctx, axes = _draw_panel(panel, data)
    lines = _segments_by_color(axes[0])
    cpu_y, cpu_style = lines[CLASSIC_PALETTE[0]]
    gpu_y, _ = lines[CLASSIC_PALETTE[1]]
    budget_y, budget_style = lines[GRAFANA_COLORS["orange"].upper()]
    assert set(cpu_y) == {1.0} and set(gpu_y) == {3.0}  # the used series stack
    assert set(budget_y) == {10.0}  # the budget is not stacked on top of them
    assert cpu_style[1] is None and budget_style[1]  # solid vs dashed
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["cpu used", "gpu used", "cpu budget"]


def _bar_rectangles(ax) -> list:
    """The rectangles (4 corners each) of the panel's bar PolyCollection."""
    import numpy as np
    from matplotlib.collections import PolyCollection

    rects = []
    for collection in ax.collections:
        if isinstance(collection, PolyCollection):
            for path in collection.get_paths():
                corners = np.unique(np.round(path.vertices, 9), axis=0)
                if len(corners) == 4:
                    rects.append(corners)
    return rects


def test_bars_with_negative_y_override_draw_removals_below_zero() -> None:
    import numpy as np
    from matplotlib.collections import LineCollection

    panel = _panel(1, "timeseries", "Workers added and removed", (0, 0, 12, 8),
                   [_target("workers", "{{pool}} {{direction}}")], "short",
                   defaults={"custom": {"drawStyle": "bars", "fillOpacity": 80,
                                        "stacking": {"mode": "none", "group": "A"}}})
    panel["fieldConfig"]["overrides"] = [
        _override("byRegexp", "^.* down$", custom__transform="negative-Y")]
    up = [float(k % 3) for k in range(40)]  # 0, 1, 2, ...: 26 non-zero buckets
    down = [float(k % 2) for k in range(40)]  # 20 non-zero buckets
    data = {"A": [_series({"pool": "cpu", "direction": "up"}, up),
                  _series({"pool": "cpu", "direction": "down"}, down)]}
    _fig, _ctx, axes = _draw_panel(panel, data)
    ax = axes[0]
    assert not [c for c in ax.collections if isinstance(c, LineCollection)]
    rects = _bar_rectangles(ax)
    assert len(rects) == 26 + 20
    tops = [r[:, 1].max() for r in rects]
    bottoms = [r[:, 1].min() for r in rects]
    assert sorted(t for t in tops if t > 0) == sorted(v for v in up if v)  # above zero: up
    assert sorted(-b for b in bottoms if b < 0) == sorted(v for v in down if v)  # below: down
    step_days = STEP / 86400
    assert all(np.ptp(r[:, 0]) < step_days for r in rects)  # one bar per time bucket
    assert ax.get_ylim()[0] < -0.9 and all(float(t) == int(t) for t in ax.get_yticks())


def test_stacked_bars_sit_on_each_other() -> None:
    panel = _panel(1, "timeseries", "Decisions", (0, 0, 12, 8),
                   [_target("decisions", "{{action}}")], "short",
                   defaults={"custom": {"drawStyle": "bars", "fillOpacity": 80,
                                        "stacking": {"mode": "normal", "group": "A"}}})
    data = {"A": [_series({"action": "scale_up"}, [1.0] * 40),
                  _series({"action": "maintain"}, [2.0] * 40)]}
    _fig, _ctx, axes = _draw_panel(panel, data)
    rects = _bar_rectangles(axes[0])
    assert len(rects) == 80
    spans = {(round(float(r[:, 1].min()), 6), round(float(r[:, 1].max()), 6)) for r in rects}
    assert spans == {(0.0, 1.0), (1.0, 3.0)}


def test_count_axis_gets_integer_ticks() -> None:
    values = [float(k % 6) for k in range(40)]  # 0..5: MaxNLocator alone picks 1.5, 4.5
    for defaults in ({"decimals": 0}, {}):
        panel = _panel(1, "timeseries", "Workers", (0, 0, 12, 8), [_target("w", "{{pool}}")],
                       "short", defaults=defaults)
        _fig, _ctx, axes = _draw_panel(panel, {"A": [_series({"pool": "cpu"}, values)]},
                                       height=260)
        ticks = [t for t in axes[0].get_yticks() if 0 <= t <= 5]
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks), ticks
    panel = _panel(1, "timeseries", "Load", (0, 0, 12, 8), [_target("w", "{{pool}}")], "short")
    _fig, _ctx, axes = _draw_panel(panel, {"A": [_series({"pool": "cpu"},
                                                         [v / 4 for v in values])]}, height=260)
    assert any(not float(t).is_integer() for t in axes[0].get_yticks())  # fractions stay


def test_grid_rows_all_labelled_until_they_cannot_fit() -> None:
    from drm_exporter.renderer.draw import ROW_LABEL_MIN_PT, row_label_layout

    assert row_label_layout(23, 232) == (pytest.approx(6.06, abs=0.05), 1)
    assert row_label_layout(5, 232) == (8.0, 1)
    size, every = row_label_layout(200, 232)
    assert size == ROW_LABEL_MIN_PT and every == 9

    names = [f"cpu-aws-{i:03d}" for i in range(23)]
    panel = _panel(1, "status-history", "CPU per worker", (0, 0, 24, 8),
                   [_target("cpu", "{{worker}}")], "percentunit")
    data = {"A": [_series({"worker": n}, [((k + i) % 10) / 10 for k in range(40)])
                  for i, n in enumerate(names)]}
    fig, ctx, axes = _draw_panel(panel, data, height=8 * 30 + 7 * 8)
    ticks = axes[0].get_yticklabels()
    assert [t.get_text() for t in ticks] == names
    assert all(t.get_fontsize() >= ROW_LABEL_MIN_PT for t in ticks)
    assert not [t for t in fig.texts if "label per" in t.get_text()]
    renderer = fig.canvas.get_renderer()
    boxes = sorted((t.get_window_extent(renderer) for t in ticks), key=lambda b: b.y0)
    assert all(a.y1 <= b.y0 + 1 for a, b in zip(boxes, boxes[1:], strict=False))  # no overlap

    many = {"A": [_series({"worker": f"w{i:03d}"}, [0.5] * 40) for i in range(200)]}
    fig, ctx, axes = _draw_panel(panel, many, height=8 * 30 + 7 * 8)
    _size, every = row_label_layout(200, ctx.rect.height - 28)  # the plot's height
    shown = [t.get_text() for t in axes[0].get_yticklabels()]
    assert every > 1 and shown == [f"w{i:03d}" for i in range(0, 200, every)]
    assert [t.get_text() for t in fig.texts] == [f"1 label per {every} rows"]


def test_bargauge_labels_fit_inside_the_panel() -> None:
    names = ["gpu-azure-008", "WWWW-gpu-azure-0008", "vm"]
    panel = _panel(1, "bargauge", "Allocated per worker", (0, 0, 8, 8),
                   [_target("alloc", "{{worker}}")], "percentunit")
    data = {"A": [Series({"worker": n}, [T0], [0.5]) for n in names]}
    fig, ctx, axes = _draw_panel(panel, data, width=520, height=300)
    renderer = fig.canvas.get_renderer()
    labels = axes[0].get_yticklabels()
    assert [t.get_text() for t in labels] == names
    for label in labels:
        box = label.get_window_extent(renderer)
        assert box.x0 >= ctx.rect.left - 0.5, (label.get_text(), box.x0, ctx.rect.left)
    values = [t for t in axes[0].texts if t.get_text().endswith("%")]
    assert values and all(t.get_window_extent(renderer).x1 <= ctx.rect.right + 0.5
                          for t in values)


def test_money_has_cents_in_stats_and_tables() -> None:
    stat = _panel(1, "stat", "Cost rate", (0, 0, 6, 4), [_target("cost")], "currencyUSD")
    fig, _ctx, _axes = _draw_panel(stat, {"A": [Series({}, [T0], [2.0])]}, width=300,
                                   height=150)
    assert "$2.00" in [t.get_text().replace("\\$", "$") for t in fig.texts]

    from drm_exporter.renderer.draw import _table_columns

    table = _panel(2, "table", "Prices", (0, 0, 12, 6),
                   [_target("price", format="table", instant=True)], "currencyUSD")
    table["fieldConfig"]["overrides"] = [_override("byName", "Value", displayName="USD/h")]
    _fig, ctx, _axes = _draw_panel(table, {"A": [
        Series({"instance_type": "g2-standard-24"}, [T0], [2.0]),
        Series({"instance_type": "m5.2xlarge"}, [T0], [0.384])]}, height=200)
    headers, rows, _columns = _table_columns(ctx)
    assert headers == ["instance_type", "USD/h"]
    assert rows == [["g2-standard-24", "$2.00"], ["m5.2xlarge", "$0.384"]]
    # axis ticks keep the cents only where some tick needs them
    from drm_exporter.renderer.draw import _unit_formatter
    from drm_exporter.renderer.fields import FieldConfig

    ticks = _unit_formatter(FieldConfig(unit="currencyUSD"), T0)
    assert [t.replace("\\$", "$") for t in ticks.format_ticks([0, 400, 800, 1200])] == \
        ["$0", "$400", "$800", "$1.2K"]
    assert [t.replace("\\$", "$") for t in ticks.format_ticks([0, 1.5, 3])] == \
        ["$0", "$1.50", "$3.00"]

    # Grafana's organize transformation puts the value first (indexByName)
    table["transformations"] = [{"id": "organize", "options": {
        "indexByName": {"Value": 0, "instance_type": 1}}}]
    headers, rows, _columns = _table_columns(ctx)
    assert headers == ["USD/h", "instance_type"] and rows[0] == ["$2.00", "g2-standard-24"]


# --- failures -------------------------------------------------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_prometheus_names_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(PrometheusUnreachable,
                       match="cannot reach Prometheus at " + re.escape(f"{url}/api/v1/status")):
        render_dashboards(url, [{"title": "x", "panels": []}], tmp_path, 0, 60)
    with pytest.raises(PrometheusUnreachable, match=re.escape(f"{url}/api/v1/query")):
        run_all_queries(url, {"panels": [{"type": "stat", "targets": [{"expr": "up"}]}]}, 0, 60)
    assert not list(tmp_path.iterdir())


def test_silent_prometheus_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        began = time.monotonic()
        with pytest.raises(PrometheusUnreachable, match=r"did not answer within 0.5s"):
            PrometheusClient(url, timeout_s=0.5).query("up", 0)
        assert time.monotonic() - began < 5


def test_missing_matplotlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "drm_exporter.renderer.draw", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(RendererDependencyError) as info:
        render_dashboards("http://127.0.0.1:1", [], tmp_path, 0, 60)
    assert INSTALL_HINT in str(info.value) and "matplotlib" in str(info.value)


# --- fake Prometheus: the report's bookkeeping, many series, timing ------------------------------

class ScriptedPrometheus:
    """Answers each expression with a fixed result, or raises for it."""

    def __init__(self, answers: dict[str, list[Series] | Exception]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, bool]] = []

    def _answer(self, expr: str, instant: bool) -> list[Series]:
        self.seen.append((expr, instant))
        answer = self.answers.get(expr, [])
        if isinstance(answer, Exception):
            raise answer
        return answer

    def query(self, expr: str, time: float) -> list[Series]:
        return self._answer(expr, True)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        return self._answer(expr, False)


def test_report_reasons_and_gappy_series(tmp_path: Path) -> None:
    t0 = 1_700_000_000.0
    ts = [t0 + 15 * k for k in range(241)]  # on the step the renderer asks for (15s)
    gappy = [float(k % 7) if not 80 <= k < 120 else float("nan") for k in range(241)]
    workers = [Series({"worker": f"w{i}"}, ts, [((k // 8 + i) % 10) / 10 for k in range(241)])
               for i in range(30)]
    client = ScriptedPrometheus({
        "gappy": [Series({"worker": "a"}, ts, gappy), Series({"worker": "b"}, ts[:5], [1.0] * 5)],
        "nan": [Series({}, [t0], [float("nan")])],
        "broken": PrometheusQueryError("Prometheus at http://x/api/v1/query rejected 'broken'"),
        "util": workers,
    })
    stacked = {"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 40}}
    dashboard = {"title": "Scripted $pool", "panels": [
        _panel(1, "timeseries", "Gaps", (0, 0, 12, 8), [_target("gappy", "{{worker}}")],
               "short", defaults=stacked),
        _panel(2, "stat", "NaN only", (12, 0, 6, 4), [_target("nan")], "percentunit"),
        _panel(3, "stat", "Broken", (18, 0, 6, 4), [_target("broken")]),
        _panel(4, "heatmap", "Distribution", (12, 4, 12, 8), [_target("util")], "percentunit",
               options={"calculate": True, "calculation": {"yBuckets": {"mode": "size",
                                                                         "value": "0.25"}},
                        "color": {"scheme": "Oranges", "scale": "exponential"}}),
        _panel(5, "timeseries", "No queries", (0, 8, 12, 4)),
        _panel(6, "gauge", "Gauge", (0, 12, 6, 4), [_target("util", "{{worker}}")], "percentunit"),
    ]}
    entry = render_dashboard(client, dashboard, tmp_path / "s.png", t0, t0 + 3600, 15,
                             variables={"pool": "gpu"})
    assert entry.title == "Scripted gpu"
    assert (entry.panels_total, entry.panels_with_data) == (6, 3), entry.summary()
    assert entry.no_data == [
        ("NaN only", "all values are NaN"),
        ("Broken", "query failed: Prometheus at http://x/api/v1/query rejected 'broken'"),
        ("No queries", "panel has no queries"),
    ]
    assert entry.query_errors == [("Broken", "A: Prometheus at http://x/api/v1/query "
                                             "rejected 'broken'")]
    assert not entry.draw_errors
    assert dashboard_has_data(entry) and not dashboard_has_data(entry, every_panel=True)
    assert not dashboard_has_data(replace(entry, panels_with_data=0))
    assert ("nan", True) in client.seen and ("gappy", False) in client.seen



class FleetPrometheus:
    """Answers every query with ``workers`` series (built once), so drawing cost is measured."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.calls = 0
        self._ranges: dict[tuple[float, float, float], list[Series]] = {}

    def _labels(self, i: int) -> dict[str, str]:
        return {"worker": f"worker-{i:03d}", "pool": f"pool-{i % 4}"}

    def query(self, expr: str, time: float) -> list[Series]:
        self.calls += 1
        return [Series(self._labels(i), [time], [((i * 37) % 100) / 100])
                for i in range(self.workers)]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        import numpy as np

        self.calls += 1
        key = (start, end, step)
        if key not in self._ranges:
            k = np.arange(int((end - start) // step) + 1)
            ts = list(start + k * step)
            self._ranges[key] = [Series(self._labels(i), ts,
                                        list(0.5 + 0.45 * np.sin(k / 9 + i)))
                                 for i in range(self.workers)]
        return self._ranges[key]


def _fleet_dashboard(n: int) -> dict:
    kinds = ["stat", "bargauge", "timeseries", "status-history", "state-timeline", "heatmap",
             "timeseries", "table", "piechart", "timeseries", "bargauge", "stat"]
    panels = []
    for i, kind in enumerate(kinds):
        panels.append({
            "type": kind, "title": f"{kind} {i}", "id": i + 1,
            "gridPos": {"x": (i % 2) * 12, "y": (i // 2) * 8, "w": 12, "h": 8},
            "fieldConfig": {"defaults": {"unit": "percentunit", "min": 0, "max": 1,
                                         "custom": {"stacking": {"mode": "normal"}}
                                         if i == 6 else {}}},
            "targets": [{"expr": f'drm_x{{pool=~"$pool"}} * {i}', "refId": "A",
                         "legendFormat": "{{worker}}"}],
        })
    return {"title": f"Fleet {n}", "uid": f"fleet-{n}", "panels": panels}


def test_five_dashboards_of_100_series_render_quickly(tmp_path: Path) -> None:
    client = FleetPrometheus(workers=100)
    end = 1_700_003_600.0
    began = time.perf_counter()
    entries = [render_dashboard(client, _fleet_dashboard(n), tmp_path / f"{n}.png", end - 6 * 3600,
                                end, 15) for n in range(5)]
    elapsed = time.perf_counter() - began
    assert elapsed < 30, f"5 dashboards took {elapsed:.1f}s"
    for entry in entries:
        assert (entry.panels_total, entry.panels_with_data) == (12, 12), entry.summary()
        assert not entry.no_data and not entry.draw_errors and not entry.query_errors
        assert entry.path.stat().st_size > 50_000
    assert client.calls == 60


# --- a real Prometheus scraping itself -----------------------------------------------------------

def _free_port() -> int:
    for _ in range(20):
        port = _closed_port()
        if port not in FORBIDDEN_PORTS:
            return port
    raise RuntimeError("no free port")


def _api(url: str, path: str, **params: str) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}",
                                timeout=2) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory):
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip(f"{PROMETHEUS} not installed (Debian package prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus")
    port = _free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: prometheus\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    started = time.time()
    try:
        deadline = time.monotonic() + 30
        while True:  # a few scrapes, so rate() has samples to work with
            assert proc.poll() is None, (tmp / "prometheus.log").read_text()
            try:
                data = _api(url, "/api/v1/query", query="count_over_time(up[1m])")
                if data["data"]["result"] and float(data["data"]["result"][0]["value"][1]) >= 4:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape itself within 30s"
            time.sleep(0.3)
        yield url, started
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _target(expr: str, legend: str = "", **extra: object) -> dict:
    return {"expr": expr, "refId": "A", "legendFormat": legend,
            "datasource": {"type": "prometheus", "uid": "${datasource}"}, **extra}


def _panel(pid: int, kind: str, title: str, grid: tuple[int, int, int, int],
           targets: list[dict] | None = None, unit: str | None = None, **extra: object) -> dict:
    x, y, w, h = grid
    panel: dict = {"id": pid, "type": kind, "title": title,
                   "gridPos": {"x": x, "y": y, "w": w, "h": h},
                   "datasource": {"type": "prometheus", "uid": "${datasource}"},
                   "targets": targets or [],
                   "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
                   "options": {}}
    for key, value in extra.items():
        if key == "defaults":
            panel["fieldConfig"]["defaults"].update(value)  # type: ignore[arg-type]
        else:
            panel[key] = value
    return panel


RATE = 'sum by (handler) (rate(prometheus_http_requests_total{job=~"$job"}[$__rate_interval]))'
MISSING = "Metric that does not exist"


def _self_dashboard() -> dict:
    up_colors = {"mappings": [{"type": "value", "options": {
        "0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}}}]}
    return {
        "uid": "prom-self", "title": "Prometheus about itself", "schemaVersion": 39,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "job", "type": "query", "includeAll": True,
             "current": {"text": "All", "value": "$__all"}},
        ]},
        "panels": [
            _panel(1, "row", "Overview", (0, 0, 24, 1)),
            _panel(2, "stat", "Targets up", (0, 1, 4, 5),
                   [_target('sum(up{job=~"$job"})')], "none"),
            _panel(3, "stat", "Resident memory", (4, 1, 4, 5),
                   [_target('process_resident_memory_bytes{job=~"$job"}')], "bytes"),
            _panel(4, "bargauge", "Requests by handler", (8, 1, 8, 5),
                   [_target('topk(6, prometheus_http_requests_total{job=~"$job"})',
                            "{{handler}}")], "short"),
            _panel(5, "piechart", "Share of requests", (16, 1, 8, 5),
                   [_target("topk(5, sum by (handler) (prometheus_http_requests_total))",
                            "{{handler}}")], "short", options={"pieType": "donut"}),
            _panel(6, "timeseries", "HTTP request rate", (0, 6, 12, 8),
                   [_target(RATE, "{{handler}}")], "reqps"),
            _panel(7, "timeseries", "Memory (stacked)", (12, 6, 12, 8),
                   [_target('process_resident_memory_bytes{job=~"$job"}', "resident"),
                    _target("go_memstats_heap_inuse_bytes", "heap in use", refId="B")],
                   "bytes", defaults={"custom": {"stacking": {"mode": "normal"},
                                                 "fillOpacity": 30}}),
            _panel(8, "status-history", "Target up", (0, 14, 8, 5),
                   [_target('up{job=~"$job"}', "{{instance}}")], "none",
                   defaults=up_colors),
            _panel(9, "state-timeline", "Requests per handler", (8, 14, 8, 5),
                   [_target(RATE, "{{handler}}")], "reqps"),
            _panel(10, "heatmap", "Request latency buckets", (16, 14, 8, 5),
                   [_target("sum by (le) (rate(prometheus_http_request_duration_seconds_bucket"
                            "[$__rate_interval]))", "{{le}}", format="heatmap")], "short"),
            _panel(11, "table", "Build", (0, 19, 12, 5),
                   [_target("prometheus_build_info", format="table", instant=True)]),
            _panel(12, "text", "About", (12, 19, 6, 5),
                   options={"mode": "markdown",
                            "content": "# About\nPrometheus scraping **itself** every second."}),
            _panel(13, "timeseries", MISSING, (18, 19, 6, 5),
                   [_target("drm_metric_that_does_not_exist_total")], "short"),
            _panel(14, "row", "Details", (0, 24, 24, 1), collapsed=True, panels=[
                _panel(15, "timeseries", "Goroutines", (0, 25, 12, 6),
                       [_target("go_goroutines")], "short"),
                _panel(16, "graph", "Old graph panel", (12, 25, 12, 6),
                       [_target("up")]),
            ]),
        ],
    }


DATA_PANELS = ["Targets up", "Resident memory", "Requests by handler", "Share of requests",
               "HTTP request rate", "Memory (stacked)", "Target up", "Requests per handler",
               "Request latency buckets", "Build", "About", "Goroutines"]


def _colourful(pixels) -> int:
    """Pixels with a clear hue: lines, bars, cells; not the greys of frames and text."""
    rgb = pixels[..., :3].reshape(-1, 3)
    spread = rgb.max(axis=1) - rgb.min(axis=1)
    return int((spread > 0.15).sum())  # the greys used for frames and text stay under 0.08


@pytest.mark.integration
def test_render_against_real_prometheus(prometheus, tmp_path: Path) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    from drm_exporter.renderer.draw import HEADER_PX

    url, started = prometheus
    end = time.time()
    start = started
    dashboard = _self_dashboard()
    began = time.perf_counter()
    report = render_dashboards(url, [dashboard], tmp_path, start, end, scrape_interval_s=1)
    assert time.perf_counter() - began < 20
    entry = report.dashboards[0]
    assert entry.path == tmp_path / "prom-self.png"
    assert entry.panels_total == len(DATA_PANELS) + 2, entry.summary()
    assert entry.panels_with_data == len(DATA_PANELS), entry.summary()
    assert entry.no_data == [(MISSING, "queries returned no series"),
                             ("Old graph panel", "unsupported panel type 'graph'")]
    assert not entry.query_errors and not entry.draw_errors
    assert dashboard_has_data(entry) and not dashboard_has_data(entry, every_panel=True)

    assert entry.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(entry.path)
    layout = place_panels(dashboard, 2400, top_px=HEADER_PX)
    assert image.shape[1] == 2400 and image.shape[0] == layout.height_px
    rgb = image[..., :3]
    assert rgb.std() > 0.05
    levels = (rgb * 31).astype(np.uint32)  # 32 levels per channel, packed into one code
    assert len(np.unique(levels[..., 0] << 10 | levels[..., 1] << 5 | levels[..., 2])) > 50
    assert (rgb.min(axis=2) < 0.9).mean() > 0.03  # more than frames: ink everywhere

    # Each panel's own box: drawn panels carry colour, the empty one only grey text.
    for placed in layout.panels:
        title = placed.panel.get("title")
        r = placed.rect
        box = image[int(r.top) + 30:int(r.bottom), int(r.left):int(r.right)]
        if title in ("Build", "About", "Overview", "Details"):
            continue
        if title in (MISSING, "Old graph panel"):
            assert _colourful(box) < 20, title
        else:
            assert _colourful(box) > 150, title


@pytest.mark.integration
def test_run_all_queries_reports_counts_and_errors(prometheus) -> None:
    url, started = prometheus
    dashboard = _self_dashboard()
    dashboard["panels"].append(_panel(20, "stat", "Broken", (0, 40, 6, 4),
                                      [_target("sum(rate(up[", refId="Z")]))
    results = run_all_queries(url, dashboard, started, time.time(), scrape_interval_s=1)
    by_title = {q.panel_title: (count, error) for q, count, error in results}
    assert all(isinstance(q, PanelQuery) for q, _, _ in results)
    assert by_title[MISSING] == (0, None)
    assert by_title["Targets up"] == (1, None)
    assert by_title["HTTP request rate"][0] >= 1
    assert by_title["Goroutines"] == (1, None)
    count, error = by_title["Broken"]
    assert count == 0 and "bad_data" in error and f"{url}/api/v1/query" in error
    for query, count, error in results:
        if query.panel_title not in (MISSING, "Broken"):
            assert error is None and count > 0, query

    with pytest.raises(PrometheusQueryError, match="bad_data"):
        PrometheusClient(url).query("sum(", time.time())
