"""The compose bundle, validated statically (no Docker engine here): schema via Debian's
docker-compose `config`, then the wiring between exporter, Prometheus and Grafana."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from drm_exporter.cli import build_parser
from drm_exporter.config import load_config_file, parse_listen_address

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is missing: `make test` installs it "
                    "(deploy/local/bootstrap.sh)")
    clean = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    return subprocess.run([exe, "-f", str(DEPLOY / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, env=clean | env, timeout=60)


def test_schema_valid_and_password_has_no_default() -> None:
    ok = compose_config({"GRAFANA_ADMIN_PASSWORD": "s3cret"})
    assert ok.returncode == 0, ok.stderr
    assert "s3cret" in ok.stdout
    missing = compose_config({})
    assert missing.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in missing.stderr


def test_images_pinned_and_ports_on_loopback() -> None:
    assert set(SERVICES) == {"exporter", "prometheus", "grafana"}
    for name, svc in SERVICES.items():
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    pw = SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", pw)


def test_mounts_exist() -> None:
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), (name, vol)


def test_exporter_command_config_and_scrape_target_agree() -> None:
    exp = SERVICES["exporter"]
    args = build_parser().parse_args(exp["command"])
    assert args.command == "serve"
    mount = next(v for v in exp["volumes"] if v.split(":")[1] == str(args.config))
    cfg = load_config_file(DEPLOY / mount.split(":")[0])
    host, port = parse_listen_address(cfg.listen_address)
    assert host == "0.0.0.0" and cfg.simulator.enabled  # reachable from Prometheus' container
    assert exp["ports"] == [f"127.0.0.1:{port}:{port}"]
    prom = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    targets = [t for j in prom["scrape_configs"] if j["job_name"] == "drm-exporter"
               for sc in j["static_configs"] for t in sc["targets"]]
    assert targets == [f"exporter:{port}"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile and re.search(r"^FROM \S+:\S+", dockerfile, re.M)


def test_grafana_provisioning_matches_mounts_and_prometheus() -> None:
    graf = SERVICES["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in graf["volumes"]}
    ds_dir = DEPLOY / "../grafana/provisioning/datasources"
    assert mounts["../grafana/provisioning/datasources"] == \
        "/etc/grafana/provisioning/datasources"
    [ds_file] = list(ds_dir.glob("*.yml"))
    [ds] = yaml.safe_load(ds_file.read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "drm-prometheus"
    assert ds["url"] == "http://prometheus:9090"
    dash_mount = mounts["../grafana/provisioning/dashboards"]
    providers = [yaml.safe_load(p.read_text()) for p in
                 (REPO / "grafana/provisioning/dashboards").glob("*.yml")]
    [prov] = [p for doc in providers for p in doc["providers"]]
    assert prov["options"]["path"] == dash_mount
    assert len(list((REPO / "grafana/provisioning/dashboards").glob("*.json"))) == 5
