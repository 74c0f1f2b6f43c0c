"""The whole pipeline on real parts: the exporter as its own process, Debian's Prometheus
scraping it over HTTP with the bundle's config and recording rules, every query of every panel
of the five dashboards, and the five PNGs drawn from the same JSON."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from drm_exporter import metrics
from drm_exporter.localstack import (
    DASHBOARDS_DIR,
    free_port,
    prometheus_query,
    start_exporter,
    start_prometheus,
)
from drm_exporter.recording import RULES
from drm_exporter.renderer import render_dashboards, run_all_queries

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SCRAPE_S = 1

# Panels that may legitimately be empty on a simulated fleet, and why.
MAY_BE_EMPTY: dict[str, str] = {
    metrics.CLOUD_BILLED_COST.name: "billing refreshers come in issue 6",
    metrics.CLOUD_BILLED_ESTIMATED.name: "billing refreshers come in issue 6",
    metrics.CLOUD_API_REQUESTS.name: "cloud refreshers come in issue 6",
    metrics.CLOUD_REFRESH_SUCCESS.name: "cloud refreshers come in issue 6",
    metrics.CLOUD_REFRESH_LAST_SUCCESS.name: "cloud refreshers come in issue 6",
}


# Queries that are legitimately empty while a condition holds, checked against Prometheus at
# the end of the run: (regex on the expression, PromQL that is empty when it holds, reason).
EMPTY_WHEN: list[tuple[str, str, str]] = [
    (r"gpu_efficiency|drm_gpu_allocated\{[^}]*\} == 1", "sum(drm_gpu_allocated) > 0",
     "GPU efficiency is used ÷ reserved: undefined while no GPU is reserved"),
]


def dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.fail("Debian's prometheus is not installed: run `make test`, which installs it")
    run = tmp_path_factory.mktemp("stack")
    eport, pport = free_port(), free_port()
    exporter = start_exporter(REPO / "tests" / "fixtures" / "integration.yml", eport,
                              run / "exporter.log")
    prom = None
    try:
        prom = start_prometheus(run, f"127.0.0.1:{eport}", pport, f"{SCRAPE_S}s")
        base = f"http://127.0.0.1:{pport}"
        start = time.time()
        # Wait until Prometheus holds both scale directions and enough samples for rates.
        deadline = start + 90
        while True:
            assert exporter.alive(), exporter.log_tail()
            ups = prometheus_query(base, 'sum(drm_scaling_workers_total{direction="up"})')
            downs = prometheus_query(base, 'sum(drm_scaling_workers_total{direction="down"})')
            if (time.time() - start > 25 and ups and downs
                    and float(ups[0]["value"][1]) > 0 and float(downs[0]["value"][1]) > 0):
                break
            assert time.time() < deadline, "no scale-up and scale-down within 90 s"
            time.sleep(1)
        time.sleep(2 * SCRAPE_S)  # one more rule evaluation after the last scrape
        yield {"base": base, "start": start, "run": run, "eport": eport}
    finally:
        if prom is not None:
            prom.stop()
        exporter.stop()


def test_prometheus_scrapes_the_exporter(stack) -> None:
    [up] = prometheus_query(stack["base"], 'up{job="drm-exporter"}')
    assert up["value"][1] == "1"
    workers = prometheus_query(stack["base"], "count(drm_worker_info)")
    assert int(workers[0]["value"][1]) >= 5  # simulated fleet plus this host


def test_every_recording_rule_has_data(stack) -> None:
    for rule in RULES:
        assert prometheus_query(stack["base"], rule.record), f"{rule.record} is empty"


def test_every_panel_query_returns_data(stack) -> None:
    end = time.time()
    excused = [re.compile(rx) for rx, cond, _ in EMPTY_WHEN
               if not prometheus_query(stack["base"], cond)]
    empty, errors, checked = [], [], 0
    for dash in dashboards():
        for q, count, err in run_all_queries(stack["base"], dash, stack["start"], end,
                                             scrape_interval_s=SCRAPE_S):
            checked += 1
            where = f"{dash['uid']} / {q.panel_title} / {q.ref_id}: {q.expr}"
            if err:
                errors.append(f"{where}: {err}")
            elif (count == 0 and not any(name in q.expr for name in MAY_BE_EMPTY)
                  and not any(rx.search(q.expr) for rx in excused)):
                empty.append(where)
    assert not errors, "\n".join(errors)
    assert not empty, "panels without data:\n" + "\n".join(empty)
    assert checked >= 40


def test_five_pngs_render_with_data(stack, tmp_path: Path) -> None:
    from matplotlib import image

    report = render_dashboards(stack["base"], dashboards(), tmp_path, stack["start"],
                               time.time(), scrape_interval_s=SCRAPE_S)
    assert len(report.dashboards) == 5
    for d in report.dashboards:
        assert d.path.exists() and d.path.stat().st_size > 20_000, d.path
        assert not d.query_errors and not d.draw_errors, (d.title, d.query_errors,
                                                           d.draw_errors)
        assert d.panels_with_data >= d.panels_total - 4, (d.title, d.no_data)
        px = image.imread(d.path)
        assert px.shape[1] >= 1600 and px.std() > 0.05, d.path  # not blank
    assert {d.uid for d in report.dashboards} == {
        "drm-utilization", "drm-scaling", "drm-allocation", "drm-efficiency", "drm-cost"}
