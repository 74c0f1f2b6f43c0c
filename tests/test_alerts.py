"""The generated alerting rules: fresh, well-formed, documented, and covered by promtool tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from drm_dashboards import build
from drm_exporter import alerts, metrics, recording, thresholds

REPO = Path(__file__).resolve().parents[1]
RULES_DIR = REPO / "prometheus" / "rules"
ALERTS_FILE = RULES_DIR / "alerts.yml"
PROMTOOL_TESTS = REPO / "prometheus" / "tests" / "alerts_test.yml"
RUNBOOK = REPO / "docs" / "runbook.md"
REGENERATE = "run `drm-exporter dashboards` and commit the result"

KNOWN_NAMES = {m.name for m in metrics.ALL} | set(recording.BY_RECORD)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME = re.compile(r'(?<![\w:"$.])(drm[_:][A-Za-z0-9_:]*)')
_WINDOW_FN = re.compile(r"\b(?:max|min|avg|last)_over_time\(|\bchanges\(")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=REPO,
                          check=False)


def _anchors(markdown: str) -> set[str]:
    # GitHub's slugs for the headings used here: lower case, spaces to dashes.
    return {h.strip().lower().replace(" ", "-")
            for h in re.findall(r"^#{1,6} (.+)$", markdown, re.M)}


def _test_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(PROMTOOL_TESTS.read_text())
    return doc


# --- generation ----------------------------------------------------------------------------------

def test_alerts_file_is_fresh() -> None:
    assert ALERTS_FILE.read_text() == alerts.render_yaml(), f"{ALERTS_FILE} is stale: {REGENERATE}"


def test_write_all_writes_the_alerts_file(tmp_path: Path) -> None:
    path = tmp_path / "rules" / "alerts.yml"
    written = build.write_all(tmp_path / "dash", alerts_path=path)
    assert path in written
    assert path.read_text() == alerts.render_yaml()


def test_the_bundled_prometheus_loads_the_alerts_and_scrapes_the_job() -> None:
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    loaded = {p for pattern in config["rule_files"]
              for p in (REPO / "prometheus").glob(pattern)}
    assert ALERTS_FILE in loaded
    assert alerts.EXPORTER_JOB in {j["job_name"] for j in config["scrape_configs"]}


# --- rule hygiene --------------------------------------------------------------------------------

def test_at_least_the_designed_alerts_exist() -> None:
    assert len(alerts.ALERTS) >= 14
    assert len(alerts.BY_NAME) == len(alerts.ALERTS), "duplicate alert names"
    for a in alerts.ALERTS:
        assert re.fullmatch(r"DRM(?:[A-Z][A-Za-z0-9]*)+", a.name), a.name


def test_every_alert_has_for_severity_summary_description_and_runbook() -> None:
    anchors = _anchors(RUNBOOK.read_text())
    doc = yaml.safe_load(ALERTS_FILE.read_text())
    (group,) = doc["groups"]
    assert group["name"] == alerts.GROUP_NAME
    for rule in group["rules"]:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), name
        assert rule["labels"]["severity"] in alerts.SEVERITIES, name
        ann = rule["annotations"]
        assert ann["summary"] and "{{" not in ann["summary"], f"{name}: summary must be static"
        assert "{{ $labels." in ann["description"] or "{{ $value" in ann["description"], name
        url = ann["runbook_url"]
        assert url == f"{alerts.RUNBOOK_URL}#{name.lower()}", name
        assert url.split("#", 1)[1] in anchors, f"{name}: no section in {RUNBOOK}"


def test_every_runbook_alert_section_is_an_alert() -> None:
    sections = set(re.findall(r"^## (DRM\w+)$", RUNBOOK.read_text(), re.M))
    assert sections == set(alerts.BY_NAME)


def test_every_threshold_is_used_and_listed_in_the_runbook() -> None:
    runbook = RUNBOOK.read_text()
    rules = ALERTS_FILE.read_text()
    for name, value in vars(thresholds).items():
        if not name.isupper():
            continue
        assert f"| `{name}` | `{value}` |" in runbook, f"{name} = {value} not in the runbook table"
        assert str(value) in rules, f"{name} is not used by any alert"


def test_every_referenced_name_is_a_metric_or_recording_rule() -> None:
    for a in alerts.ALERTS:
        for name in _NAME.findall(_STRING.sub('""', a.expr)):
            assert name in KNOWN_NAMES, f"{a.name}: unknown metric {name!r}"


def test_rules_reading_exporter_series_survive_a_missed_scrape() -> None:
    # `up` and absent() are Prometheus' own; every other rule reads a window.
    exempt = {alerts.EXPORTER_DOWN.name, alerts.EXPORTER_ABSENT.name}
    for a in alerts.ALERTS:
        if a.name not in exempt:
            assert _WINDOW_FN.search(a.expr), f"{a.name}: bare instant value"


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", *sorted(str(p) for p in RULES_DIR.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


# --- promtool unit tests -------------------------------------------------------------------------

def test_promtool_unit_tests_cover_every_alert_firing_and_silent() -> None:
    doc = _test_doc()
    assert doc["rule_files"] == ["../rules/recording.yml", "../rules/alerts.yml"]
    firing: set[str] = set()
    silent: set[str] = set()
    for group in doc["tests"]:
        for case in group.get("alert_rule_test", []):
            name = case["alertname"]
            assert name in alerts.BY_NAME, name
            if not case.get("exp_alerts"):
                silent.add(name)
                continue
            firing.add(name)
            a = alerts.BY_NAME[name]
            for exp in case["exp_alerts"]:
                assert exp["exp_labels"]["severity"] == a.severity, name
                ann = exp["exp_annotations"]
                assert ann["summary"] == a.summary, name
                assert ann["runbook_url"] == a.runbook_url, name
                assert ann["description"] and "{{" not in ann["description"], name
    assert firing == set(alerts.BY_NAME), f"no firing case: {set(alerts.BY_NAME) - firing}"
    assert silent == set(alerts.BY_NAME), f"no silent case: {set(alerts.BY_NAME) - silent}"


def test_promtool_test_rules() -> None:
    result = _promtool("test", "rules", str(PROMTOOL_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
