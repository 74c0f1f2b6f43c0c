"""Bad configuration names the key and line and exits 2; good configuration is honoured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drm_exporter.config import ConfigError, load_config, load_config_file

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("text", "expected"), [
    ("pools:\n  cpu:\n    scale_upp: 0.9\n", "x.yml:3: pools.cpu.scale_upp: unknown key"),
    ("pools:\n  cpu:\n    min_workers: many\n",
     "x.yml:3: pools.cpu.min_workers: expected an integer, got 'many'"),
    ("pools:\n  gpu: {scale_up: 0.5}\n", "x.yml:2: pools.gpu: thresholds must satisfy"),
    ("simulator:\n  enabled: yes please\n", "x.yml:2: simulator.enabled: expected true or false"),
    ("listen_address: nowhere\n", "x.yml:1: (top level): listen address must be HOST:PORT"),
    ("cost:\n  prices:\n    - {provider: aws}\n",
     "x.yml:3: cost.prices[0]: missing required keys instance_type, usd_per_hour"),
    ("simulator:\n  seed: 1\n  initial_trend: sideways\n",
     "x.yml:3: simulator.initial_trend: initial_trend must be one of"),
    ("engine:\n  heartbeat_timeout_s: 30\n  worker_expiry_s: 5\n",
     "x.yml:3: engine.worker_expiry_s: worker_expiry_s must be >= heartbeat_timeout_s"),
    ("pools: [1, 2\n", "x.yml:2: not valid YAML"),
])
def test_errors_name_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(text, "x.yml")
    assert str(e.value).startswith(expected), str(e.value)


def test_the_demo_config_loads() -> None:
    cfg = load_config_file(REPO / "deploy" / "local" / "demo.yml")
    assert cfg.simulator.enabled and cfg.simulator.settings.workers == 8
    assert cfg.pools["cpu"].cooldown_up_s == 20 and cfg.pools["gpu"].max_workers == 8
    assert cfg.cost.budgets_usd["aws"] == 500.0


def test_empty_config_is_the_defaults() -> None:
    cfg = load_config("", "x.yml")
    assert cfg.listen_address == "127.0.0.1:9847" and not cfg.simulator.enabled


def test_serve_exits_2_on_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("engine:\n  heartbeat_timeout_s: soon\n")
    p = subprocess.run([sys.executable, "-m", "drm_exporter.cli", "serve", "--config", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert f"{bad}:2: engine.heartbeat_timeout_s: expected a number" in p.stderr
    missing = subprocess.run([sys.executable, "-m", "drm_exporter.cli", "serve", "--config",
                              str(tmp_path / "nope.yml")], capture_output=True, text=True,
                             timeout=30)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


@pytest.mark.parametrize("cmd", ["serve", "render", "dashboards", "demo", "docs"])
def test_every_subcommand_has_help(cmd: str) -> None:
    p = subprocess.run([sys.executable, "-m", "drm_exporter.cli", cmd, "--help"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and f"usage: drm-exporter {cmd}" in p.stdout


def test_metrics_doc_is_fresh() -> None:
    from drm_exporter.docs import metrics_markdown

    committed = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert committed == metrics_markdown(), "docs/metrics.md is stale: run drm-exporter docs"
