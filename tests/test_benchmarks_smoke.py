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
