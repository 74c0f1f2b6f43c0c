"""deploy/kubernetes/: committed files equal freshly generated ones, and the objects hang
together (no cluster and no offline Kubernetes schemas here, so the checks are structural)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from drm_dashboards.build import generate
from drm_exporter import kubernetes
from drm_exporter.config import load_config, parse_listen_address

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "deploy" / "kubernetes"
REGENERATE = "regenerate with `.venv/bin/python -m drm_exporter.kubernetes`"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((OUT / name).read_text(encoding="utf-8")) if d]


def objects() -> list[dict[str, Any]]:
    names = load("kustomization.yaml")[0]["resources"]
    return [doc for name in names for doc in load(name)]


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    [obj] = [o for o in objects() if o["kind"] == kind
             and (name is None or o["metadata"]["name"] == name)]
    return obj


def test_committed_files_are_fresh() -> None:
    # Rules files are read at generation time: a new or edited prometheus/rules/*.yml (such as
    # alerts.yml) makes prometheusrule.yaml stale until regenerated.
    fresh = kubernetes.render()
    committed = {p.name: p.read_text(encoding="utf-8") for p in OUT.glob("*.yaml")}
    assert set(committed) == set(fresh), REGENERATE
    for name, text in fresh.items():
        assert committed[name] == text, f"deploy/kubernetes/{name} is stale: {REGENERATE}"


def test_kustomization_lists_every_other_file() -> None:
    [kust] = load("kustomization.yaml")
    assert sorted(kust["resources"]) == sorted(
        p.name for p in OUT.glob("*.yaml") if p.name != "kustomization.yaml")


def test_every_object_has_api_version_kind_and_name() -> None:
    objs = objects()
    assert objs
    for obj in objs:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"], obj.get("kind")
        labels = obj["metadata"].get("labels", {})
        assert all(isinstance(v, str) for v in labels.values()), obj["metadata"]["name"]
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys))


def test_deployment_service_and_monitor_select_each_other() -> None:
    dep, svc, mon = one("Deployment"), one("Service"), one("ServiceMonitor")
    template = dep["spec"]["template"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    [container] = template["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert [e["port"] for e in mon["spec"]["endpoints"]] == ["http-metrics"]
    assert "http-metrics" in svc_ports and svc_ports["http-metrics"]["targetPort"] in port_names
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and get["port"] in port_names


def test_deployment_runs_the_configmap_config_as_non_root() -> None:
    dep, cm = one("Deployment"), one("ConfigMap", "drm-exporter-config")
    pod = dep["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["image"] == "drm-exporter:0.1.0"
    args = container["args"]
    assert args[0] == "serve"
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[str(config_path.parent)]]["configMap"]["name"] == "drm-exporter-config"
    text = cm["data"][config_path.name]
    assert text == (REPO / "deploy" / "exporter.yml").read_text(encoding="utf-8")
    cfg = load_config(text, "configmap")
    host, port = parse_listen_address(cfg.listen_address)
    assert host == "0.0.0.0" and container["ports"][0]["containerPort"] == port
    assert Path(cfg.state_file).parent.as_posix() in mounts  # writable under a read-only root
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_prometheus_rule_holds_every_rules_file() -> None:
    rule = one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    expected = [g for p in sorted((REPO / "prometheus" / "rules").glob("*.yml"))
                for g in yaml.safe_load(p.read_text(encoding="utf-8"))["groups"]]
    assert rule["spec"]["groups"] == expected, REGENERATE


def test_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: `make test` installs it (deploy/local/bootstrap.sh)")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": one("PrometheusRule")["spec"]["groups"]}))
    done = subprocess.run([exe, "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_one_dashboard_configmap_per_dashboard() -> None:
    fresh = generate()
    maps = [o for o in objects() if o["kind"] == "ConfigMap"
            and o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    seen: dict[str, Any] = {}
    for cm in maps:
        [(key, text)] = cm["data"].items()
        assert key.endswith(".json")
        seen[key.removesuffix(".json")] = json.loads(text)
    assert seen == fresh
