"""Dashboard uids and the shared tag: stable, defined once (links and tests import them)."""

from __future__ import annotations

TAG = "drm"

UTILIZATION = "drm-utilization"
SCALING = "drm-scaling"
ALLOCATION = "drm-allocation"
EFFICIENCY = "drm-efficiency"
COST = "drm-cost"

ALL: tuple[str, ...] = (UTILIZATION, SCALING, ALLOCATION, EFFICIENCY, COST)
