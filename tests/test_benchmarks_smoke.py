"""The benchmarks still run. Tiny sizes, never a timing assertion: benchmarks are not tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_engine_benchmark_runs_and_its_last_line_parses() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "engine.py"), "--workers", "50",
         "--repeat", "1", "--reports", "40"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=", 1) for kv in last.split())
    assert fields["W"] == "50"
    for key in ("tick_ms", "eval_ms", "reports_per_s", "api_reports_per_s"):
        assert float(fields[key]) >= 0, key
    assert fields["tick"] in ("pass", "fail") and fields["reports"] in ("pass", "fail")


def test_scrape_benchmark_runs_checks_correctness_and_its_last_line_parses() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scrape.py"), "--workers", "20",
         "--repeat", "1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    # exit 1 would mean CORRECTNESS: our bodies did not parse or differed from the baseline
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ours 'application/openmetrics-text; version=1.0.0" in out.stdout
    assert "promtool check metrics: ok" in out.stdout
    last = out.stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=", 1) for kv in last.split())
    assert fields["W"] == "20"
    for key in ("ours_ms", "baseline_ms", "limit_ms", "ours_cpu/baseline", "ours_cpu/limit"):
        assert float(fields[key]) > 0, key
