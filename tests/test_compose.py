"""The compose bundle, validated statically (no Docker engine here): the compose-spec schema
(check-jsonschema's vendored copy) and Debian's docker-compose `config`, `promtool check config`
on the Prometheus config, then the wiring between exporter, Prometheus, Alertmanager and
Grafana."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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


def test_compose_spec_schema() -> None:
    exe = Path(sys.executable).parent / "check-jsonschema"
    if not exe.exists():
        pytest.fail("check-jsonschema is missing: pip install -e '.[dev]'")
    done = subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec",
                           str(DEPLOY / "docker-compose.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_checks_prometheus_config_and_rule_files_exist() -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: `make test` installs it (deploy/local/bootstrap.sh)")
    prom_dir = REPO / "prometheus"
    prom = yaml.safe_load((prom_dir / "prometheus.yml").read_text())
    # A glob that matches nothing is no error for Prometheus, so check each names a file.
    for pattern in prom["rule_files"]:
        assert list(prom_dir.glob(pattern)), f"rule_files entry {pattern!r} names no file"
    # Relative rule_files resolve against the config's folder, as under /etc/prometheus.
    done = subprocess.run([exe, "check", "config", str(prom_dir / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 0 rule files found" not in done.stdout


def test_healthchecks_gate_startup() -> None:
    for name, svc in SERVICES.items():
        assert svc["healthcheck"]["test"][0] == "CMD", name
        for dep, cond in svc.get("depends_on", {}).items():
            assert cond == {"condition": "service_healthy"}, (name, dep)
    assert set(SERVICES["prometheus"]["depends_on"]) == {"exporter", "alertmanager"}
    assert set(SERVICES["grafana"]["depends_on"]) == {"prometheus"}


def test_prometheus_reloadable_from_mounted_folder() -> None:
    prom = SERVICES["prometheus"]
    assert "--web.enable-lifecycle" in prom["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    # The folder, not single files: an atomic save (rename) stays visible in the container.
    assert "../prometheus:/etc/prometheus:ro" in prom["volumes"]


def test_alertmanager_wired_to_prometheus() -> None:
    am = SERVICES["alertmanager"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in am["volumes"]}
    config_path = next(c.split("=", 1)[1] for c in am["command"]
                       if c.startswith("--config.file="))
    am_cfg = yaml.safe_load((DEPLOY / mounts[config_path]).read_text())
    receivers = {r["name"] for r in am_cfg["receivers"]}
    assert am_cfg["route"]["receiver"] in receivers
    prom = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    targets = [t for am_conf in prom["alerting"]["alertmanagers"]
               for sc in am_conf["static_configs"] for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]
    assert "127.0.0.1:9093:9093" in am["ports"]


def test_state_on_named_volumes_and_provisioning_read_only() -> None:
    named = set(COMPOSE["volumes"])
    graf = SERVICES["grafana"]["volumes"]
    assert "grafana-data:/var/lib/grafana" in graf and "grafana-data" in named
    for vol in graf:
        if "provisioning" in vol:
            assert vol.endswith(":ro"), vol
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            assert src.startswith(".") or src in named, (name, vol)


def test_images_pinned_and_ports_on_loopback() -> None:
    assert set(SERVICES) == {"exporter", "prometheus", "alertmanager", "grafana"}
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
