"""The generated dashboards and recording rules: fresh, well-formed, and querying real metrics."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from drm_dashboards import build, uids
from drm_exporter import metrics, recording
from drm_exporter.renderer.variables import TimeContext, substitute

REPO = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = REPO / "grafana" / "provisioning" / "dashboards"
RULES_FILE = REPO / "prometheus" / "rules" / "recording.yml"
REGENERATE = "run `drm-exporter dashboards` and commit the result"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MODERN_TYPES = {"timeseries", "heatmap", "status-history", "state-timeline", "bargauge", "stat",
                "table", "piechart", "row"}
LEGACY_TYPES = {"graph", "singlestat", "grafana-piechart-panel", "table-old"}
KNOWN_UNITS = {"percentunit", "bytes", "currencyUSD", "short", "s", "celsius", "watt", "reqps",
               "bool"}
# Range windows a dashboard may use besides $__rate_interval / $__range, each with its reason.
FIXED_WINDOWS = {"24h": "the 'Scale events (24h)' card counts a fixed day, as in the seed"}
RULE_WINDOW = "5m"  # recording rules cannot use Grafana's $__rate_interval

# Panels allowed to read a counter outside rate/irate/increase, kubernetes-mixin style:
# (dashboard uid, panel title) -> why. test_counter_exceptions_are_not_stale keeps it honest.
EXACT_COUNT = ("exact per-interval count of a counter; increase() extrapolates and "
               "double-counts across overlapping windows; a counter reset shows as 0 (clamp_min)")
COUNTER_EXCEPTIONS: dict[tuple[str, str], str] = {
    (uids.SCALING, "Decisions per interval by action and reason"): EXACT_COUNT,
    (uids.SCALING, "Workers added and removed"): EXACT_COUNT,
}

GENERATED: dict[str, dict[str, Any]] = build.generate()
KNOWN_NAMES: dict[str, tuple[str, ...]] = {
    **{m.name: m.labels for m in metrics.ALL},
    **{r.record: r.labels for r in recording.RULES},
}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME = re.compile(r'(?<![\w:"$.])(drm[_:][A-Za-z0-9_:]*)')
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_CALL = re.compile(r"\b(rate|irate|increase)\s*\(")
_CALL_ON_SELECTOR = re.compile(
    r"\b(?:rate|irate|increase)\s*\(\s*([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?\s*\[([^\]]+)\]\s*\)")
_WINDOW = re.compile(r"\[([^\]]*)\]")
# clamp_min(sum by (L) (S) - sum by (L) (S offset $__interval), 0): the same grouping and the
# same selector on both sides.
_EXACT_COUNT = re.compile(
    r"clamp_min\(sum by \(([^)]*)\) \((drm_\w+_total\{[^}]*\})\)"
    r" - sum by \(\1\) \(\2 offset \$__interval\), 0\)")


# --- helpers -------------------------------------------------------------------------------------

def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def data_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (p for p in all_panels(dashboard) if p.get("type") != "row")


def exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every PromQL expression: panel targets and annotations."""
    for panel in data_panels(dashboard):
        for t in panel.get("targets", []):
            yield f"{dashboard['uid']} / {panel.get('title')} / {t.get('refId')}", t["expr"]
    for a in dashboard.get("annotations", {}).get("list", []):
        if "expr" in a:
            yield f"{dashboard['uid']} / annotation {a.get('name')}", a["expr"]


def all_exprs() -> list[tuple[str, str]]:
    return [e for d in GENERATED.values() for e in exprs(d)]


def names_in(expr: str) -> list[tuple[int, str]]:
    """(position, name) of every drm metric or recording rule referenced by expr."""
    blanked = _STRING.sub(lambda mt: '"' + " " * (len(mt.group()) - 2) + '"', expr)
    return [(mt.start(1), mt.group(1)) for mt in _NAME.finditer(blanked)]


def selector_matchers(expr: str, pos: int, name: str) -> dict[str, tuple[str, str]] | None:
    rest = expr[pos + len(name):].lstrip()
    if not rest.startswith("{"):
        return None
    body = rest[1:rest.index("}")]
    return {label: (op, value) for label, op, value in _MATCHER.findall(body)}


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES_FILE.read_text())
    return [(r["record"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


# --- freshness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("uid", uids.ALL)
def test_committed_dashboard_is_fresh(uid: str) -> None:
    path = DASHBOARD_DIR / f"{uid}.json"
    assert path.exists(), f"{path} is missing: {REGENERATE}"
    assert json.loads(path.read_text()) == GENERATED[uid], f"{path} is stale: {REGENERATE}"
    assert path.read_text() == build.dumps(GENERATED[uid]), f"{path} is not formatted as " \
        f"generated: {REGENERATE}"


def test_no_stray_dashboard_files() -> None:
    committed = {p.name for p in DASHBOARD_DIR.glob("*.json")}
    assert committed == {f"{uid}.json" for uid in uids.ALL}, REGENERATE


def test_recording_rules_file_is_fresh() -> None:
    assert RULES_FILE.read_text() == recording.render_yaml(), f"{RULES_FILE} is stale: " \
        f"{REGENERATE}"


def test_write_all_writes_what_generate_returns(tmp_path: Path) -> None:
    rules = tmp_path / "rules" / "recording.yml"
    written = build.write_all(tmp_path / "dash", rules)
    assert sorted(p.name for p in written) == sorted([f"{u}.json" for u in uids.ALL]
                                                     + ["recording.yml"])
    for uid in uids.ALL:
        text = (tmp_path / "dash" / f"{uid}.json").read_text()
        assert text.endswith("}\n")
        assert json.loads(text) == GENERATED[uid]
    assert rules.read_text() == recording.render_yaml()


# --- dashboard structure -------------------------------------------------------------------------

def test_uids_are_stable_short_and_unique() -> None:
    assert list(GENERATED) == list(uids.ALL)
    assert len(set(uids.ALL)) == len(uids.ALL) == 5
    for uid, d in GENERATED.items():
        assert d["uid"] == uid
        assert len(uid) <= 40


@pytest.mark.parametrize("uid", uids.ALL)
def test_dashboard_top_level(uid: str) -> None:
    d = GENERATED[uid]
    assert uids.TAG in d["tags"]
    assert "id" not in d, "Grafana assigns the id; a committed one clashes on import"
    assert "__inputs" not in d
    assert "${DS_" not in json.dumps(d)
    assert d["title"] and d["description"]
    assert d["timepicker"]["refresh_intervals"] == ["30s", "1m", "5m"]
    assert d["refresh"] in d["timepicker"]["refresh_intervals"]
    links = [lk for lk in d["links"] if lk["type"] == "dashboards"]
    assert links and links[0]["asDropdown"] and links[0]["tags"] == [uids.TAG]
    assert 8 <= len(list(data_panels(d))) <= 15, "keep a dashboard readable as one PNG"


@pytest.mark.parametrize("uid", uids.ALL)
def test_template_variables(uid: str) -> None:
    variables = {v["name"]: v for v in GENERATED[uid]["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "pool", "worker"]
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert "drm_exporter_build_info" in variables["job"]["query"]
    for name in ("pool", "worker"):
        assert metrics.WORKER_INFO.name in variables[name]["query"]
    assert '$pool' in variables["worker"]["query"], "worker must be filtered by pool"
    for name in ("job", "pool", "worker"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"] == DATASOURCE
        assert var["refresh"] == 2, f"{name}: refresh on time-range change"
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"


@pytest.mark.parametrize("uid", uids.ALL)
def test_panels_and_targets_use_the_datasource_variable(uid: str) -> None:
    d = GENERATED[uid]
    for panel in data_panels(d):
        assert panel.get("datasource") == DATASOURCE, panel.get("title")
        assert panel["targets"], f"{panel.get('title')}: no query"
        for t in panel["targets"]:
            assert t.get("datasource") == DATASOURCE, panel.get("title")
            assert t.get("intervalFactor") == 1, panel.get("title")
        assert 0 < panel.get("maxDataPoints", 0) <= 1000, panel.get("title")
    for a in d["annotations"]["list"]:
        assert a["datasource"] == DATASOURCE, a["name"]


@pytest.mark.parametrize("uid", uids.ALL)
def test_modern_panel_types_only(uid: str) -> None:
    for panel in all_panels(GENERATED[uid]):
        assert panel["type"] in MODERN_TYPES, f"{panel.get('title')}: {panel['type']}"
        assert panel["type"] not in LEGACY_TYPES


@pytest.mark.parametrize("uid", uids.ALL)
def test_panel_ids_unique(uid: str) -> None:
    ids = [p["id"] for p in all_panels(GENERATED[uid])]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("uid", uids.ALL)
def test_grid_within_24_columns_without_overlap(uid: str) -> None:
    boxes = []
    for p in all_panels(GENERATED[uid]):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] >= 1 and g["h"] >= 1, p.get("title")
        assert g["x"] + g["w"] <= 24, p.get("title")
        boxes.append((p.get("title"), g))
    for i, (ta, a) in enumerate(boxes):
        for tb, b in boxes[i + 1:]:
            apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"]
                     or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"])
            assert apart, f"{ta!r} overlaps {tb!r}"


@pytest.mark.parametrize("uid", uids.ALL)
def test_every_panel_has_title_description_and_unit(uid: str) -> None:
    for p in data_panels(GENERATED[uid]):
        assert p.get("title"), p
        assert p.get("description"), p["title"]
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert unit in KNOWN_UNITS, f"{p['title']}: unit {unit!r}"


def _expected_unit(names: set[str]) -> str | None:
    """The unit a panel must have when every series it reads shares one base unit."""
    kinds = set()
    for name in names:
        base = name.split(":")[1] if ":" in name else name
        if name.endswith("_info"):
            continue  # joined for labels only
        if name.endswith(("_ratio", ":ratio")):
            kinds.add("percentunit")
        elif base.endswith("_bytes"):
            kinds.add("bytes")
        elif "_usd" in base:
            kinds.add("currencyUSD")
        elif base.endswith("_celsius"):
            kinds.add("celsius")
        elif base.endswith("_watts"):
            kinds.add("watt")
        elif base.endswith("_seconds"):
            kinds.add("s")
        else:
            return None
    return kinds.pop() if len(kinds) == 1 else None


@pytest.mark.parametrize("uid", uids.ALL)
def test_units_fit_the_metrics(uid: str) -> None:
    for p in data_panels(GENERATED[uid]):
        if any("/" in _STRING.sub('""', t["expr"]) for t in p["targets"]):
            continue  # a quotient (bytes / bytes) has a unit of its own
        names = {n for t in p["targets"] for _, n in names_in(t["expr"])}
        expected = _expected_unit(names)
        if expected:
            assert p["fieldConfig"]["defaults"]["unit"] == expected, p["title"]


@pytest.mark.parametrize("uid", uids.ALL)
def test_rows_are_filled_without_gaps(uid: str) -> None:
    # Panels sharing a row span all 24 columns with one height: no empty area beside them.
    rows: dict[int, list[dict[str, Any]]] = {}
    for p in all_panels(GENERATED[uid]):
        rows.setdefault(p["gridPos"]["y"], []).append(p)
    for y, row in sorted(rows.items()):
        titles = [p.get("title") for p in row]
        assert sum(p["gridPos"]["w"] for p in row) == 24, f"row y={y} leaves a gap: {titles}"
        assert len({p["gridPos"]["h"] for p in row}) == 1, f"row y={y} is ragged: {titles}"


# --- series styling ------------------------------------------------------------------------------

# Series that are a reference to compare against (a target, a bound, a threshold, a budget, a
# capacity), not a part of a whole: never stacked onto other series, never filled, dashed.
REFERENCE_METRICS = {metrics.POOL_TARGET_WORKERS.name, metrics.POOL_MIN_WORKERS.name,
                     metrics.POOL_MAX_WORKERS.name, metrics.SCALING_THRESHOLD.name,
                     metrics.CLOUD_BUDGET.name}
# A legend word, or a metric read (thresholds are named scale_up/scale_down like actions).
REFERENCE_WORDS = {"target", "min", "max", "threshold", "budget", "capacity", "limit"}
# Label values a legend is expanded with, to get the series names Grafana matches overrides on.
LABEL_SAMPLES: dict[str, tuple[str, ...]] = {
    "pool": ("cpu", "gpu"),
    "state": metrics.POOL_STATES,
    "resource": metrics.SCALING_RESOURCES,
    "threshold": metrics.THRESHOLDS,
    "action": metrics.ACTIONS,
    "direction": metrics.DIRECTIONS,
    "reason": tuple(metrics.REASONS),
    "provider": ("aws", "gcp", "azure", "onprem"),
}
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def series_names(legend: str, ref_id: str) -> list[str]:
    """The display names a target's series get: its legend with every label value filled in."""
    if not legend:
        return [ref_id]
    names = [legend]
    for label in dict.fromkeys(_LEGEND_LABEL.findall(legend)):
        names = [re.sub(r"\{\{\s*" + label + r"\s*\}\}", value, n)
                 for n in names for value in LABEL_SAMPLES.get(label, ("x",))]
    return names


def _matches(matcher: dict[str, Any], name: str) -> bool:
    if matcher["id"] == "byName":
        return bool(matcher["options"] == name)
    if matcher["id"] == "byRegexp":
        return re.search(matcher["options"], name) is not None  # Grafana: RegExp.test
    raise AssertionError(f"unexpected override matcher {matcher}")


def field_config(panel: dict[str, Any], name: str) -> dict[str, Any]:
    """`fieldConfig.defaults.custom` of the series `name`, with the matching overrides applied."""
    custom = dict(panel["fieldConfig"]["defaults"].get("custom", {}))
    for override in panel["fieldConfig"].get("overrides", []):
        if _matches(override["matcher"], name):
            for prop in override["properties"]:
                if prop["id"].startswith("custom."):
                    custom[prop["id"].removeprefix("custom.")] = prop["value"]
    return custom


def color_of(panel: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The `color` override applied to the series `name` (the last matching one), if any."""
    color = None
    for override in panel["fieldConfig"].get("overrides", []):
        if _matches(override["matcher"], name):
            for prop in override["properties"]:
                if prop["id"] == "color":
                    color = prop["value"]
    return color


def is_reference(t: dict[str, Any], name: str) -> bool:
    reads = {n for _, n in names_in(t["expr"])}
    words = set(re.split(r"[\s:/]+", name.lower()))
    return bool(reads & REFERENCE_METRICS or words & REFERENCE_WORDS)


def timeseries_panels() -> Iterator[tuple[str, dict[str, Any]]]:
    for uid, d in GENERATED.items():
        for p in data_panels(d):
            if p["type"] == "timeseries":
                yield f"{uid} / {p['title']}", p


def test_series_name_expansion() -> None:
    assert series_names("{{pool}} {{threshold}}", "B") == [
        f"{pool} {t}" for pool in ("cpu", "gpu") for t in metrics.THRESHOLDS]
    assert series_names("", "C") == ["C"]


@pytest.mark.parametrize(("where", "panel"), list(timeseries_panels()),
                         ids=[w for w, _ in timeseries_panels()])
def test_reference_series_are_dashed_unstacked_and_unfilled(where: str,
                                                            panel: dict[str, Any]) -> None:
    # A target/min/max/threshold/budget/capacity stacked on top of the series it bounds reads
    # as their sum (max 40 with 10 workers); filled, it hides what is below it.
    for t in panel["targets"]:
        for name in series_names(t.get("legendFormat", ""), t["refId"]):
            custom = field_config(panel, name)
            stacking = custom.get("stacking", {}).get("mode", "none")
            if is_reference(t, name):
                assert stacking == "none", f"{where}: reference series {name!r} is stacked"
                assert custom.get("fillOpacity") == 0, f"{where}: {name!r} is filled"
                assert custom.get("lineStyle", {}).get("fill") == "dash", \
                    f"{where}: reference series {name!r} is not dashed"
            else:
                assert custom.get("lineStyle", {}).get("fill", "solid") == "solid", \
                    f"{where}: {name!r} is dashed like a reference line but is not one"


@pytest.mark.parametrize(("where", "panel"), list(timeseries_panels()),
                         ids=[w for w, _ in timeseries_panels()])
def test_only_stacked_areas_and_bars_are_filled(where: str, panel: dict[str, Any]) -> None:
    # Overlapping fills of independent lines hide each other and read as a stack.
    custom = panel["fieldConfig"]["defaults"]["custom"]
    stacked = custom["stacking"]["mode"] != "none"
    if custom["drawStyle"] == "line" and not stacked:
        assert custom["fillOpacity"] == 0, where


def test_the_workers_panel_still_stacks_its_states() -> None:
    panel = next(p for w, p in timeseries_panels() if w == f"{uids.SCALING} / Workers by state")
    for state in metrics.POOL_STATES:
        assert field_config(panel, state)["stacking"]["mode"] == "normal"


@pytest.mark.parametrize("uid", uids.ALL)
def test_count_stats_built_on_increase_are_rounded(uid: str) -> None:
    # increase() extrapolates to the window's edges: 3 decisions show as 3.19 unless rounded.
    for p in data_panels(GENERATED[uid]):
        if p["type"] != "stat" or p["fieldConfig"]["defaults"]["unit"] != "short":
            continue
        for t in p["targets"]:
            if "increase(" not in t["expr"]:
                continue
            expr = t["expr"].strip()
            assert expr.startswith("round(") and expr.endswith(")"), \
                f"{p['title']}: a count from increase() must be round(...)d: {expr}"
            assert p["fieldConfig"]["defaults"]["decimals"] == 0, p["title"]


# Gauges and counters that only take whole values: a panel reading nothing else (summed or
# counted, never averaged, divided or rated) shows whole counts, with integer ticks.
INTEGER_METRICS = {m.name for m in (
    metrics.POOL_WORKERS, metrics.POOL_TARGET_WORKERS, metrics.POOL_MIN_WORKERS,
    metrics.POOL_MAX_WORKERS, metrics.POOL_TASKS_PENDING, metrics.WORKER_TASKS_RUNNING,
    metrics.WORKER_INFO, metrics.WORKER_UP, metrics.GPU_INFO, metrics.GPU_UP,
    metrics.GPU_ALLOCATED, metrics.CLOUD_UNPRICED_WORKERS, metrics.SCALING_DECISIONS,
    metrics.SCALING_WORKERS, metrics.WORKERS_EXPIRED, metrics.RESERVATIONS_EXPIRED,
)}
_NOT_WHOLE = re.compile(r"\b(avg|rate|irate|quantile)\b|/")


def is_integer_count(panel: dict[str, Any]) -> bool:
    if panel["type"] not in ("timeseries", "stat") or \
            panel["fieldConfig"]["defaults"]["unit"] != "short":
        return False
    names = {n for t in panel["targets"] for _, n in names_in(t["expr"])}
    ops = " ".join(_STRING.sub('""', t["expr"]) for t in panel["targets"])
    return bool(names) and names <= INTEGER_METRICS and not _NOT_WHOLE.search(ops)


@pytest.mark.parametrize("uid", uids.ALL)
def test_integer_counts_have_no_decimals(uid: str) -> None:
    # Workers, GPUs and pending tasks on an axis ticked 0.5, 1, 1.5 (or shown as 2.67) read as
    # fractions of a worker; decimals 0 gives Grafana and the renderer integer ticks.
    for p in data_panels(GENERATED[uid]):
        if is_integer_count(p):
            assert p["fieldConfig"]["defaults"].get("decimals") == 0, p["title"]


def test_integer_count_detection() -> None:
    counted = {(uid, p["title"]) for uid, d in GENERATED.items() for p in data_panels(d)
               if is_integer_count(p)}
    for key in [(uids.SCALING, "Workers by state"), (uids.SCALING, "Pending tasks"),
                (uids.SCALING, "Workers vs target and bounds"),
                (uids.ALLOCATION, "GPUs: allocated vs capacity"),
                (uids.COST, "Workers by provider"), *COUNTER_EXCEPTIONS]:
        assert key in counted, key
    assert (uids.ALLOCATION, "CPU cores: allocated vs capacity") not in counted  # cgroup cores


def test_each_provider_forecast_pairs_with_its_budget_by_colour() -> None:
    panel = find_panel(uids.COST, "Month-end forecast vs budget")
    assert panel is not None
    colours = []
    for provider in LABEL_SAMPLES["provider"]:
        forecast, budget = color_of(panel, f"{provider} forecast"), \
            color_of(panel, f"{provider} budget")
        assert forecast and forecast.get("mode") == "fixed" and forecast.get("fixedColor"), \
            provider
        assert budget == forecast, f"{provider}: budget {budget} vs forecast {forecast}"
        colours.append(forecast["fixedColor"])
    assert len(set(colours)) == len(colours), f"providers share a colour: {colours}"


@pytest.mark.parametrize("uid", uids.ALL)
def test_tables_put_what_a_row_is_first(uid: str) -> None:
    # A table of workers starts with the worker, a table of prices with the provider; the
    # value comes after the labels that say what it is, and Time (one instant) is hidden.
    for p in data_panels(GENERATED[uid]):
        if p["type"] != "table":
            continue
        organize = [t["options"] for t in p.get("transformations", []) if t["id"] == "organize"]
        assert len(organize) == 1, p["title"]
        options = organize[0]
        assert options["excludeByName"].get("Time") is True, p["title"]
        index = options.get("indexByName") or {}
        assert sorted(index.values()) == list(range(len(index))), p["title"]
        assert "Value" in index and index["Value"] == max(index.values()), p["title"]
        labels = {lbl for t in p["targets"] for _, n in names_in(t["expr"])
                  for lbl in KNOWN_NAMES[n]}
        first = min(index, key=index.__getitem__)
        if "worker" in labels:
            assert first == "worker", f"{p['title']}: rows are workers, first column {first!r}"
        assert first in labels, p["title"]
        assert not set(index) & {k for k, v in options["excludeByName"].items() if v}, \
            p["title"]


@pytest.mark.parametrize("uid", uids.ALL)
def test_ranked_panels_say_what_they_rank_by(uid: str) -> None:
    # "Hottest GPUs" beside "Hottest workers (CPU)" read as ranked by utilization too.
    for p in data_panels(GENERATED[uid]):
        if any(re.search(r"\b(topk|bottomk)\s*\(", t["expr"]) for t in p["targets"]):
            assert re.search(r"\(\w[^)]*\)$", p["title"]), \
                f"{p['title']}: say what it ranks by, e.g. 'Hottest GPUs (temperature)'"


_PER_HOUR = re.compile(r"per hour|USD/h\b|hourly", re.IGNORECASE)


@pytest.mark.parametrize("uid", uids.ALL)
def test_per_hour_money_says_so_in_the_title(uid: str) -> None:
    # A bare "$4.94" reads as a total; the currency unit cannot carry "/hour".
    for p in data_panels(GENERATED[uid]):
        if p["fieldConfig"]["defaults"]["unit"] == "currencyUSD" and \
                _PER_HOUR.search(p["description"]):
            assert "hour" in p["title"], p["title"]


# --- queries -------------------------------------------------------------------------------------

def test_every_referenced_name_is_a_metric_or_recording_rule() -> None:
    sources = list(all_exprs()) + [
        (f"{d['uid']} / variable {v['name']}", v["query"])
        for d in GENERATED.values() for v in d["templating"]["list"] if v["type"] == "query"
    ] + [(f"rule {rec}", expr) for rec, expr in rule_exprs()]
    for where, expr in sources:
        for _, name in names_in(expr):
            assert name in KNOWN_NAMES, f"{where}: unknown metric {name!r} in {expr}"


def test_selectors_filter_on_dashboard_variables() -> None:
    for where, expr in all_exprs():
        for pos, name in names_in(expr):
            matchers = selector_matchers(expr, pos, name)
            assert matchers is not None, f"{where}: bare {name} in {expr}"
            assert matchers.get("job") == ("=~", "$job"), f"{where}: {name} without job filter"
            for label in ("pool", "worker"):
                if label in KNOWN_NAMES[name]:
                    assert matchers.get(label) == ("=~", f"${label}"), \
                        f"{where}: {name} not filtered by ${label}"


def _check_windows(where: str, expr: str, allowed: set[str]) -> None:
    calls = _CALL.findall(expr)
    on_selectors = _CALL_ON_SELECTOR.findall(expr)
    assert len(calls) == len(on_selectors), \
        f"{where}: rate/irate/increase must take a plain selector and range: {expr}"
    for window in _WINDOW.findall(_STRING.sub('""', expr)):
        assert window in allowed, f"{where}: window [{window}] in {expr}"


def test_rates_use_rate_interval_or_a_documented_window() -> None:
    allowed = {"$__rate_interval", "$__range", *FIXED_WINDOWS}
    for where, expr in all_exprs():
        _check_windows(where, expr, allowed)


def test_recording_rules_use_a_fixed_window_and_no_grafana_variables() -> None:
    for record, expr in rule_exprs():
        assert "$" not in expr, record
        _check_windows(record, expr, {RULE_WINDOW})


def bare_counters(expr: str) -> list[str]:
    """The counters `expr` reads outside rate/irate/increase."""
    inside = {mt.start(1) for mt in _CALL_ON_SELECTOR.finditer(expr)}
    return [name for pos, name in names_in(expr) if name.endswith("_total") and pos not in inside]


def find_panel(uid: str, title: str) -> dict[str, Any] | None:
    return next((p for p in data_panels(GENERATED[uid]) if p.get("title") == title), None)


def test_counters_sit_directly_inside_rate_or_increase() -> None:
    sources = [(f"rule {rec}", e) for rec, e in rule_exprs()]
    for uid, d in GENERATED.items():
        for panel in data_panels(d):
            if (uid, panel["title"]) in COUNTER_EXCEPTIONS:
                continue
            sources += [(f"{uid} / {panel['title']} / {t['refId']}", t["expr"])
                        for t in panel["targets"]]
        sources += [(f"{uid} / annotation {a['name']}", a["expr"])
                    for a in d["annotations"]["list"] if "expr" in a]
    for where, expr in sources:
        bare = bare_counters(expr)
        assert not bare, f"{where}: {bare} outside rate/increase in {expr} (or add a " \
            "documented entry to COUNTER_EXCEPTIONS)"


@pytest.mark.parametrize(("uid", "title"), list(COUNTER_EXCEPTIONS))
def test_counter_exceptions_are_not_stale(uid: str, title: str) -> None:
    # Each exception names a panel that exists and still needs it, and that reads its counters
    # the documented way: exact non-overlapping differences, drawn as whole-count bars.
    assert COUNTER_EXCEPTIONS[(uid, title)].strip()
    panel = find_panel(uid, title)
    assert panel is not None, f"stale exception: no panel {title!r} in {uid}"
    assert any(bare_counters(t["expr"]) for t in panel["targets"]), \
        f"stale exception: {uid} / {title} reads no counter outside rate/increase"
    for t in panel["targets"]:
        if bare_counters(t["expr"]):
            assert _EXACT_COUNT.fullmatch(t["expr"]), f"{title}: not an exact count: {t['expr']}"
    assert panel["fieldConfig"]["defaults"]["custom"]["drawStyle"] == "bars", title
    assert panel["fieldConfig"]["defaults"]["decimals"] == 0, title


def test_exact_count_pattern() -> None:
    sel = 'drm_scaling_workers_total{job=~"$job", pool=~"$pool"}'
    good = (f"clamp_min(sum by (pool, direction) ({sel}) - "
            f"sum by (pool, direction) ({sel} offset $__interval), 0)")
    assert _EXACT_COUNT.fullmatch(good)
    assert not _EXACT_COUNT.fullmatch(good.replace("(pool, direction) (" + sel + " offset",
                                                   "(pool) (" + sel + " offset"))
    assert not _EXACT_COUNT.fullmatch(good.replace(", 0)", ", 1)"))


def test_dashboards_show_the_current_cost_rate_not_the_5m_rule() -> None:
    # rate(...[5m]) over a counter younger than 5m underestimates (the extrapolated increase is
    # divided by the full 5m): a forecast built on it climbs from $50 to $1.4K in a 3-minute
    # demo. The rule stays for alerts.
    for where, expr in all_exprs():
        assert recording.CLOUD_COST_RATE.record not in expr, where


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for r in recording.RULES:
        level, metric, ops = r.record.split(":")
        assert level == "drm" and metric and ops, r.record
        assert r.record not in metrics.BY_NAME
    assert len(recording.BY_RECORD) == len(recording.RULES)


# --- promtool ------------------------------------------------------------------------------------

def _promtool_check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=120)


def test_promtool_accepts_the_recording_rules() -> None:
    result = _promtool_check_rules(RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    # One rule file holding every expression (variables substituted), one promtool run.
    sources = all_exprs()
    rules = [{"record": f"dashboard_check:expr_{i}", "expr": _substituted(where, expr)}
             for i, (where, expr) in enumerate(sources)]
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-exprs", "rules": rules}]}))
    result = _promtool_check_rules(path)
    index = "\n".join(f"expr_{i}: {where}" for i, (where, _) in enumerate(sources))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{index}"


# --- variables --------------------------------------------------------------------------------
# Substitution is the renderer's (tested in test_renderer.py); here it only feeds promtool, and
# a variable it does not know is a dashboard bug.
_TIME = TimeContext(start=0.0, end=3600.0, step=15.0, scrape_interval_s=15.0)


def _substituted(where: str, expr: str) -> str:
    out = substitute(expr, _TIME)
    leftover = re.findall(r"\$\{?[A-Za-z_]\w*", out)
    assert not leftover, f"{where}: unknown variables {leftover} in {expr}"
    return out

