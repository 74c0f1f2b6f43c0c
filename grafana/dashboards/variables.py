"""Template variable names the dashboards use (defined once). Outside Grafana, the renderer
substitutes them (drm_exporter.renderer.variables)."""

from __future__ import annotations

DATASOURCE = "datasource"
JOB = "job"
POOL = "pool"
WORKER = "worker"

# What a multi-value variable set to "All" expands to (allValue in the dashboards).
ALL_VALUE = ".*"
