"""Generate the dashboards' JSON (and the recording rules they use) for provisioning.

`generate()` is plain data; `write_all()` writes what is committed under
grafana/provisioning/dashboards/, prometheus/rules/recording.yml and prometheus/rules/alerts.yml.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafanalib._gen import DashboardEncoder
from grafanalib.core import Dashboard

from drm_exporter import alerts, recording

from . import allocation, cost, efficiency, scaling, uids, utilization

BUILDERS: dict[str, Callable[[], Dashboard]] = {
    uids.UTILIZATION: utilization.build,
    uids.SCALING: scaling.build,
    uids.ALLOCATION: allocation.build,
    uids.EFFICIENCY: efficiency.build,
    uids.COST: cost.build,
}


def _tidy(panel: dict[str, Any]) -> dict[str, Any]:
    # grafanalib writes every Panel attribute; unset ones (span, height, repeat...) are noise.
    out = {k: v for k, v in panel.items() if v is not None and k not in ("error", "editable")}
    if "panels" in out:
        out["panels"] = [_tidy(p) for p in out["panels"]]
    return out


def to_data(dashboard: Dashboard) -> dict[str, Any]:
    """A grafanalib dashboard as plain JSON data (DashboardEncoder, round-tripped)."""
    data: dict[str, Any] = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    data["panels"] = [_tidy(p) for p in data["panels"]]
    return data


def generate() -> dict[str, dict[str, Any]]:
    """uid -> dashboard JSON, for every DRM dashboard."""
    out: dict[str, dict[str, Any]] = {}
    for uid, build in BUILDERS.items():
        data = to_data(build())
        if data["uid"] != uid:
            raise ValueError(f"{build.__module__} built uid {data['uid']!r}, expected {uid!r}")
        out[uid] = data
    return out


def dumps(data: dict[str, Any]) -> str:
    """The committed form of one dashboard's JSON."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_all(out_dir: Path, rules_path: Path | None = None,
              alerts_path: Path | None = None) -> list[Path]:
    """Write `<uid>.json` for each dashboard into out_dir and, when rules_path / alerts_path
    are given, the recording / alerting rules files there. Returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for uid, data in generate().items():
        path = out_dir / f"{uid}.json"
        path.write_text(dumps(data), encoding="utf-8")
        written.append(path)
    if rules_path is not None:
        rules_path = Path(rules_path)
        rules_path.parent.mkdir(parents=True, exist_ok=True)
        rules_path.write_text(recording.render_yaml(), encoding="utf-8")
        written.append(rules_path)
    if alerts_path is not None:
        alerts_path = Path(alerts_path)
        alerts_path.parent.mkdir(parents=True, exist_ok=True)
        alerts_path.write_text(alerts.render_yaml(), encoding="utf-8")
        written.append(alerts_path)
    return written
