"""benchmarks/render.py still works end to end at a tiny size: simulate, backfill with promtool,
Prometheus, the five dashboards rendered. Timings are never asserted: that is the benchmark's
job, on a quiet machine, not CI's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def parse_result_line(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split())


def test_render_benchmark_runs_at_tiny_size(tmp_path: Path) -> None:
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"Debian's {tool} is not installed: run `make test`, which installs it")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "render.py"), "--workers", "5", "--hours",
         "0.1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=180, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = parse_result_line(done.stdout.strip().splitlines()[-1])
    assert result["workers"] == "5" and result["hours"] == "0.1"
    assert float(result["render_s"]) > 0 and float(result["cpu_s"]) >= 0
    assert result["ok"] in ("True", "False")  # whether 30 s was met is not this test's business
    with_data, total = (int(n) for n in result["panels_with_data"].split("/"))
    assert 0 < with_data <= total
    assert int(result["range_queries"]) > 0 and int(result["points"]) > 0
    per_dashboard = dict(item.split(":") for item in result["per_dashboard"].split(","))
    assert set(per_dashboard) == {"drm-allocation", "drm-cost", "drm-efficiency", "drm-scaling",
                                  "drm-utilization"}
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        f"{uid}.png" for uid in per_dashboard)
