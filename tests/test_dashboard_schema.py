"""The committed dashboards against Grafana's own schema, and exported families against their use.

- Every family in `metrics.ALL` is read by some dashboard expression or some recording/alerting
  rule, or is listed with its reason in tests/fixtures/unused_metrics.yml (and every entry there
  names an exported family that is still unused).
- Every dashboard decodes with grafana-foundation-sdk's models for the Grafana version the compose
  file runs (the SDK is generated from Grafana's dashboard schema; pin its build in pyproject.toml),
  every decoded value has the type the schema gives it, and a round trip through the SDK loses
  nothing but the keys listed in ROUND_TRIP_LOST.
"""

from __future__ import annotations

import enum
import json
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from drm_exporter import metrics

sdk = pytest.importorskip("grafana_foundation_sdk", reason="pip install -e '.[dev]'")
from grafana_foundation_sdk.cog import runtime as cogruntime  # noqa: E402
from grafana_foundation_sdk.cog import variants as cogvariants  # noqa: E402
from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.cog.plugins import register_default_plugins  # noqa: E402
from grafana_foundation_sdk.models import dashboard as sdk_dashboard  # noqa: E402
from grafana_foundation_sdk.models import prometheus as sdk_prometheus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = REPO / "grafana" / "provisioning" / "dashboards"
RULES_DIR = REPO / "prometheus" / "rules"
COMPOSE = REPO / "deploy" / "docker-compose.yml"
UNUSED_FILE = REPO / "tests" / "fixtures" / "unused_metrics.yml"
PYPROJECT = REPO / "pyproject.toml"

DASHBOARDS: dict[str, dict[str, Any]] = {
    p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}

register_default_plugins()


# --- 1. every exported family is used or listed ---------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# A metric name: not inside a string, not part of a longer name or of a recording rule's
# level:metric:operations name.
_FAMILY = re.compile(r"(?<![\w:])(drm_\w+)")


def names_in(expr: str) -> set[str]:
    return set(_FAMILY.findall(_STRING.sub('""', expr)))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(where, expr): panel targets, annotation queries and template-variable queries."""
    for uid, d in DASHBOARDS.items():
        for p in all_panels(d):
            for t in p.get("targets", []):
                yield f"{uid} / {p.get('title')} / {t.get('refId')}", t.get("expr", "")
        for a in d.get("annotations", {}).get("list", []):
            yield f"{uid} / annotation {a.get('name')}", a.get("expr", "")
        for v in d.get("templating", {}).get("list", []):
            if isinstance(v.get("query"), str) and v.get("type") == "query":
                yield f"{uid} / variable {v['name']}", v["query"]


def rule_exprs() -> Iterator[tuple[str, str]]:
    """(where, expr) for every recording and alerting rule in prometheus/rules/*.yml."""
    files = sorted(RULES_DIR.glob("*.yml"))
    assert {p.name for p in files} >= {"recording.yml", "alerts.yml"}
    for path in files:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name} / {rule.get('record') or rule.get('alert')}", rule["expr"]


def used_families() -> dict[str, list[str]]:
    """Exported family -> where it is read (a recording rule uses the metrics of its expr)."""
    used: dict[str, list[str]] = {}
    for where, expr in [*dashboard_exprs(), *rule_exprs()]:
        for name in names_in(expr):
            used.setdefault(name, []).append(where)
    return used


def unused_exceptions() -> dict[str, str]:
    doc = yaml.safe_load(UNUSED_FILE.read_text())
    assert isinstance(doc, dict), f"{UNUSED_FILE}: a mapping of metric -> reason"
    return doc


EXPORTED = {m.name for m in metrics.ALL}


def test_name_extraction() -> None:
    expr = ('sum(rate(drm_cloud_cost_usd_total{job=~"$job", x="drm_not_a_metric"}[5m]))'
            ' / drm:cloud_cost_usd:rate5m + on (pool) drm_pool_workers')
    assert names_in(expr) == {"drm_cloud_cost_usd_total", "drm_pool_workers"}


def test_every_name_read_is_exported() -> None:
    # test_dashboards / test_alerts check this per expression; here the same scan must agree,
    # or the unused check below would be reading the wrong names.
    unknown = {n: w for n, w in used_families().items() if n not in EXPORTED}
    assert not unknown, unknown


def test_every_exported_family_is_used_or_listed_as_unused() -> None:
    used = used_families()
    listed = unused_exceptions()
    missing = sorted(EXPORTED - used.keys() - listed.keys())
    assert not missing, (f"exported but read by no dashboard or rule: {missing}; chart or alert "
                         f"on them, or list them with the reason in {UNUSED_FILE.name}")


@pytest.mark.parametrize("name", sorted(unused_exceptions()))
def test_unused_exception_is_not_stale(name: str) -> None:
    reason = unused_exceptions()[name]
    assert isinstance(reason, str) and len(reason.split()) >= 5, f"{name}: give a reason"
    assert name in EXPORTED, f"stale entry: {name} is not exported (metrics.ALL)"
    assert name not in used_families(), \
        f"stale entry: {name} is read by {used_families()[name]}; remove it from {UNUSED_FILE.name}"


# --- 2. Grafana's dashboard schema (grafana-foundation-sdk) ---------------------------------------

# What the round trip may lose, each with why that is not a loss for Grafana 11.4. A path is
# JSON keys from the dashboard root, `*` for any list index or key.
_NULL_MEANS_UNSET = ("grafanalib writes null for an option it leaves unset; the schema types these "
                     "as optional (absent or a value, not null) and Grafana treats null as unset")
ROUND_TRIP_LOST: dict[str, str] = {
    "templating/list/*/useTags": "tag-based variable options were removed in Grafana 8; the "
                                 "schema has no such field and grafanalib still writes false",
    "templating/list/*/definition": "the query editor's display copy of `query`; not in the "
                                    "schema's VariableModel, and Grafana shows `query` without it",
    "annotations/list/*/titleFormat": "Prometheus annotation options: read by the Prometheus "
                                      "datasource's annotation support, outside the core "
                                      "AnnotationQuery schema (which keeps `expr`)",
    "annotations/list/*/textFormat": "as titleFormat",
    "annotations/list/*/tagKeys": "as titleFormat",
    "annotations/list/*/useValueForTime": "as titleFormat",
    # grafanalib's nulls (every one of these is null in the committed JSON; see below)
    "templating/list/*/tagsQuery": _NULL_MEANS_UNSET,
    "templating/list/*/tagValuesQuery": _NULL_MEANS_UNSET,
    "templating/list/*/allValue": _NULL_MEANS_UNSET,
    "templating/list/*/datasource": _NULL_MEANS_UNSET + " (the datasource variable has none)",
    "timepicker/nowDelay": _NULL_MEANS_UNSET,
    "panels/*/fieldConfig/defaults/decimals": _NULL_MEANS_UNSET,
    "panels/*/fieldConfig/defaults/min": _NULL_MEANS_UNSET,
    "panels/*/fieldConfig/defaults/max": _NULL_MEANS_UNSET,
    "panels/*/fieldConfig/defaults/custom/axisSoftMin": _NULL_MEANS_UNSET,
    "panels/*/fieldConfig/defaults/custom/axisSoftMax": _NULL_MEANS_UNSET,
}
# Of ROUND_TRIP_LOST, the keys lost only when null: a value there must survive.
NULL_ONLY = {k for k, why in ROUND_TRIP_LOST.items() if why.startswith(_NULL_MEANS_UNSET)}
# Keys the SDK adds on the way out: its defaults, which are Grafana's defaults for an absent key.
ROUND_TRIP_ADDED = {"repeatDirection", "showLegend", "calcs", "legend", "wideLayout",
                    "showPercentChange", "percentChangeColorMode", "skipUrlSync", "sort",
                    "orientation", "builtIn", "showTypeIcons", "perPage", "frameIndex",
                    "showValue", "selectionMode"}

ENCODED = Any  # a JSON value


def _without_nulls(value: ENCODED) -> ENCODED:
    # The SDK's from_json crashes on a null where the schema wants an object (a variable's
    # `"datasource": null`); null is "unset" for Grafana, so decode without them. What this drops
    # is checked against NULL_ONLY by the round trip.
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def decode(d: dict[str, Any]) -> sdk_dashboard.Dashboard:
    return sdk_dashboard.Dashboard.from_json(_without_nulls(d))


def encode(obj: Any) -> ENCODED:
    return json.loads(json.dumps(obj, cls=JSONEncoder))


def _pattern(path: str) -> re.Pattern[str]:
    return re.compile("/".join("[^/]+" if part == "*" else re.escape(part)
                               for part in path.split("/")) + "$")


_LOST = {path: _pattern(path) for path in ROUND_TRIP_LOST}


def round_trip_diff(before: ENCODED, after: ENCODED, path: str = "") -> Iterator[tuple[str, str]]:
    """(kind, path) for every difference: lost, changed (kept but different) or added."""
    if isinstance(before, dict) and isinstance(after, dict):
        for k in before:
            sub = f"{path}/{k}" if path else k
            if k not in after:
                yield "lost", sub
            else:
                yield from round_trip_diff(before[k], after[k], sub)
        for k in after.keys() - before.keys():
            yield "added", f"{path}/{k}" if path else k
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            yield from round_trip_diff(b, a, f"{path}/{i}")
    elif before != after or type(before) is not type(after):
        yield "changed", path


def _lookup(doc: ENCODED, path: str) -> ENCODED:
    for part in path.split("/"):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def allowed_loss(original: dict[str, Any], path: str) -> str | None:
    """The ROUND_TRIP_LOST entry that excuses losing `path`, if any."""
    for listed, pattern in _LOST.items():
        if pattern.match(path):
            if listed in NULL_ONLY and _lookup(original, path) is not None:
                return None  # set to a value: losing it would lose a setting
            return listed
    return None


@pytest.mark.parametrize("uid", list(DASHBOARDS))
def test_dashboard_round_trips_through_the_sdk(uid: str) -> None:
    original = DASHBOARDS[uid]
    after = encode(decode(original))
    diffs = list(round_trip_diff(original, after))
    changed = [p for kind, p in diffs if kind == "changed"]
    assert not changed, f"{uid}: the SDK changed {changed}"
    lost = [p for kind, p in diffs if kind == "lost" and allowed_loss(original, p) is None]
    assert not lost, f"{uid}: the SDK dropped {lost} (not in Grafana's schema?)"
    added = {p.rsplit("/", 1)[-1] for kind, p in diffs if kind == "added"}
    assert added <= ROUND_TRIP_ADDED, f"{uid}: the SDK added {added - ROUND_TRIP_ADDED}"


def test_round_trip_exceptions_are_not_stale() -> None:
    used: set[str] = set()
    for d in DASHBOARDS.values():
        for kind, p in round_trip_diff(d, encode(decode(d))):
            if kind == "lost" and (listed := allowed_loss(d, p)):
                used.add(listed)
    assert used == set(ROUND_TRIP_LOST), f"stale: {sorted(set(ROUND_TRIP_LOST) - used)}"
    assert all(why.strip() for why in ROUND_TRIP_LOST.values())


def test_round_trip_diff_reports_a_dropped_setting() -> None:
    d = {"panels": [{"type": "stat", "fieldConfig": {"defaults": {"decimals": 0}}}]}
    assert allowed_loss(d, "panels/0/fieldConfig/defaults/decimals") is None
    d["panels"][0]["fieldConfig"]["defaults"]["decimals"] = None
    assert allowed_loss(d, "panels/0/fieldConfig/defaults/decimals") is not None
    assert list(round_trip_diff({"a": {"b": 1}}, {"a": {}})) == [("lost", "a/b")]
    assert list(round_trip_diff({"a": 1}, {"a": 1.0})) == [("changed", "a")]


# Typed decoding: from_json copies values without checking them, so check each decoded value
# against the type the schema-generated model declares (enums, literals, numbers, strings).

def _is_model(value: Any) -> bool:
    return callable(getattr(value, "to_json", None)) and not isinstance(value, type)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _shape_fits(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if value is None:
        return hint is type(None)
    if origin in (list, dict):
        return isinstance(value, origin)
    if origin is None and isinstance(hint, type) and hint not in (object, type(None)):
        return isinstance(value, hint)
    return False


def type_errors(value: Any, hint: Any, path: str) -> list[str]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return model_errors(value, path) if _is_model(value) else []
    if origin in (typing.Union, types.UnionType):
        # Check against the branches of the value's own shape (the list in `list[...] | None`,
        # the Panel in `Panel | RowPanel`), so the errors reported are the ones inside it.
        fitting = [a for a in args if _shape_fits(value, a)] or list(args)
        branches = [type_errors(value, a, path) for a in fitting]
        return [] if any(not b for b in branches) else min(branches, key=len)
    if hint is type(None):
        return [] if value is None else [f"{path}: {value!r} is not null"]
    if origin is typing.Literal:
        return [] if value in args else [f"{path}: {value!r} not one of {args}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {value!r} is not a list"]
        return [e for i, v in enumerate(value) for e in type_errors(v, args[0] if args else Any,
                                                                  f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is not an object"]
        return [e for k, v in value.items() for e in type_errors(v, args[1] if args else Any,
                                                               f"{path}.{k}")]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        valid = isinstance(value, hint) or any(value == m.value for m in hint)
        return [] if valid else [f"{path}: {value!r} not one of {[m.value for m in hint]}"]
    if hint is bool:
        return [] if isinstance(value, bool) else [f"{path}: {value!r} is not a boolean"]
    if hint in (int, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if hint is int and isinstance(value, float):
            ok = value.is_integer()
        return [] if ok else [f"{path}: {value!r} is not a {hint.__name__}"]
    if hint is str:
        return [] if isinstance(value, str) else [f"{path}: {value!r} is not a string"]
    if isinstance(hint, type) and isinstance(value, dict) and hasattr(hint, "from_json"):
        # A few fields (a panel's transformations) are left as plain JSON by from_json: decode
        # them with the model the schema names, check it, and check that it loses no key.
        decoded = hint.from_json(value)
        lost = [p for kind, p in round_trip_diff(value, encode(decoded)) if kind != "added"]
        return [f"{path}.{p}: not in {hint.__name__}" for p in lost] + model_errors(decoded, path)
    if isinstance(hint, type):
        if not isinstance(value, hint):
            return [f"{path}: {type(value).__name__} where the schema wants {hint.__name__}"]
        return model_errors(value, path) if _is_model(value) else []
    return []  # a typing form the models do not use: nothing to check


def model_errors(obj: Any, path: str) -> list[str]:
    if isinstance(obj, cogruntime.UnknownDataquery):
        return [f"{path}: a query of no known datasource type"]
    hints = _hints(type(obj))
    return [e for name, hint in hints.items() if hasattr(obj, name)
            for e in type_errors(getattr(obj, name), hint, f"{path}.{name}")]


def test_type_check_catches_a_bad_value() -> None:
    d = json.loads(json.dumps(next(iter(DASHBOARDS.values()))))
    panel = next(p for p in all_panels(d) if p["type"] == "timeseries")
    panel["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "squiggles"
    panel["gridPos"]["w"] = "wide"
    d["templating"]["list"][1]["refresh"] = 7
    errors = model_errors(decode(d), "dashboard")
    assert any("drawStyle" in e or "draw_style" in e for e in errors), errors
    assert any("grid_pos.w" in e for e in errors), errors
    assert any("refresh" in e for e in errors), errors


# Values that differ from the schema's type, each with why Grafana accepts them. Keyed by the
# path after the dashboard uid, `*` for an index; the error text must match exactly.
TYPE_EXCEPTIONS: dict[str, tuple[str, str]] = {
    "panels[*].options.footer.fields": (
        "'' is not a list",
        "Grafana's own table panel saves `fields: \"\"` for \"all fields\" (its exports carry "
        "it; grafanalib copies it), while the schema types it as a list of field names; the "
        "footer is hidden (show: false) here anyway"),
}


def schema_type_errors(uid: str) -> tuple[list[str], set[str]]:
    """(unexcused errors, the TYPE_EXCEPTIONS entries used) for one dashboard."""
    errors, used = [], set()
    for e in model_errors(decode(DASHBOARDS[uid]), uid):
        where, _, what = e.removeprefix(f"{uid}.").partition(": ")
        key = re.sub(r"\[\d+\]", "[*]", where)
        if key in TYPE_EXCEPTIONS and TYPE_EXCEPTIONS[key][0] == what:
            used.add(key)
        else:
            errors.append(e)
    return errors, used


@pytest.mark.parametrize("uid", list(DASHBOARDS))
def test_dashboard_values_have_the_schema_types(uid: str) -> None:
    errors, _ = schema_type_errors(uid)
    assert not errors, "\n".join(errors)


def test_type_exceptions_are_not_stale() -> None:
    used = set().union(*(schema_type_errors(uid)[1] for uid in DASHBOARDS))
    assert used == set(TYPE_EXCEPTIONS), f"stale: {sorted(set(TYPE_EXCEPTIONS) - used)}"


@pytest.mark.parametrize("uid", list(DASHBOARDS))
def test_every_panel_and_query_decodes_as_its_typed_model(uid: str) -> None:
    # A panel type the SDK does not know keeps options/fieldConfig as untyped dicts, and a query
    # of an unknown datasource becomes an UnknownDataquery bag: neither would be checked.
    board = decode(DASHBOARDS[uid])
    panels: list[Any] = []
    for top in board.panels or []:
        panels.append(top)
        if isinstance(top, sdk_dashboard.RowPanel):
            panels.extend(top.panels or [])
    raw = list(all_panels(DASHBOARDS[uid]))
    assert len(panels) == len(raw)
    for p, src in zip(panels, raw, strict=True):
        if src["type"] == "row":
            assert isinstance(p, sdk_dashboard.RowPanel), src.get("title")
            continue
        where = f"{uid} / {src.get('title')}"
        assert isinstance(p, sdk_dashboard.Panel), where
        config = cogruntime.panelcfg_config(src["type"])
        assert config is not None, f"{where}: panel type {src['type']!r} is not in the schema"
        if "options" in src:
            assert _is_model(p.options), f"{where}: options not decoded by the {src['type']} model"
        if src.get("fieldConfig", {}).get("defaults", {}).get("custom"):
            assert _is_model(p.field_config.defaults.custom), f"{where}: fieldConfig.custom"
        for t in p.targets or []:
            assert isinstance(t, sdk_prometheus.Dataquery), f"{where}: {type(t).__name__}"
            assert isinstance(t, cogvariants.Dataquery)
    for a in board.annotations.list_val or []:
        assert isinstance(a, sdk_dashboard.AnnotationQuery)


# --- the pinned build ---------------------------------------------------------------------------

def _grafana_version() -> tuple[int, int]:
    found = re.search(r"grafana/grafana(?:-oss|-enterprise)?:(\d+)\.(\d+)", COMPOSE.read_text())
    assert found, f"no grafana image in {COMPOSE}"
    return int(found.group(1)), int(found.group(2))


def test_sdk_build_matches_the_grafana_the_compose_file_runs() -> None:
    from importlib.metadata import version

    installed = version("grafana-foundation-sdk")  # e.g. 1769699520!11.4.0
    pinned = re.search(r'"grafana-foundation-sdk==([^"]+)"', PYPROJECT.read_text())
    assert pinned, "pin grafana-foundation-sdk==<epoch>!<grafana version> in the dev extra"
    assert installed == pinned.group(1), f"installed {installed}, pinned {pinned.group(1)}"
    sdk_grafana = tuple(int(x) for x in installed.split("!")[-1].split(".")[:2])
    assert sdk_grafana == _grafana_version(), \
        f"SDK built for Grafana {sdk_grafana}, compose runs {_grafana_version()}"
