"""Health of each collector: drm_exporter_collector_success, _duration_seconds and
_last_success_timestamp_seconds come from here."""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class CollectorState:
    success: bool
    duration_s: float
    last_success_ts: float | None
    error: str | None = None


class CollectorStatus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, CollectorState] = {}

    def record(self, name: str, success: bool, duration_s: float, now: float,
               error: str | None = None) -> None:
        with self._lock:
            prev = self._states.get(name)
            last = now if success else (prev.last_success_ts if prev else None)
            self._states[name] = CollectorState(success, duration_s, last, error)

    def snapshot(self) -> dict[str, CollectorState]:
        with self._lock:
            return dict(self._states)
