"""docs/metrics.md, generated from the metric contract (metrics.py); a test fails on drift."""

from __future__ import annotations

from . import metrics as m


def metrics_markdown() -> str:
    out = [
        "# Metrics",
        "",
        "Generated from `exporter/drm_exporter/metrics.py` by `drm-exporter docs`; do not edit.",
        "",
        "| metric | type | labels | help |",
        "|---|---|---|---|",
    ]
    for d in m.ALL:
        later = m.NOT_YET_PRODUCED.get(d.name)
        note = f" *Not produced yet: {later}.*" if later else ""
        if d.name in m.ONLY_WHEN:
            note += f" *Only when {m.ONLY_WHEN[d.name]}.*"
        out.append(f"| `{d.name}` | {d.type} | {', '.join(d.labels) or '—'} | {d.help}{note} |")
    out += ["", "## Scaling reasons", "", "| action | reason | meaning |", "|---|---|---|"]
    for action, reasons in m.REASONS_BY_ACTION.items():
        for r in reasons:
            out.append(f"| {action} | `{r}` | {m.REASONS[r].split(': ', 1)[1]} |")
    out += ["", "## Bounded label values", "",
            f"- `state` (drm_pool_workers): {', '.join(m.POOL_STATES)}",
            f"- `resource` (drm_scaling_utilization_ratio): {', '.join(m.SCALING_RESOURCES)}; "
            "`overall` is the bottleneck, the largest of the others the pool has",
            f"- `threshold`: {', '.join(m.THRESHOLDS)}",
            f"- `action`: {', '.join(m.ACTIONS)}; `direction`: {', '.join(m.DIRECTIONS)}",
            f"- `outcome` ({m.SCALING_HOOK_DELIVERIES.name}): {', '.join(m.HOOK_OUTCOMES)}",
            f"- `cpu_source`, `memory_source` ({m.WORKER_CAPACITY_INFO.name}): "
            f"{', '.join(m.CAPACITY_SOURCES)}",
            ""]
    return "\n".join(out)
