"""What a render produced: one entry per dashboard, and the checks CI and the CLI make on it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DashboardReport:
    """One dashboard's PNG and which of its panels showed data.

    ``panels_total`` counts every panel except rows. A panel "has data" when its box on the PNG
    shows data: a query returned a non-NaN value, or it is a text panel with content. Every other
    panel is in ``no_data`` with the reason (no series, all NaN, query failed, unsupported type).
    """

    title: str
    uid: str | None
    path: Path
    panels_total: int = 0
    panels_with_data: int = 0
    no_data: list[tuple[str, str]] = field(default_factory=list)  # (panel title, reason)
    query_errors: list[tuple[str, str]] = field(default_factory=list)  # (panel title, error)
    draw_errors: list[tuple[str, str]] = field(default_factory=list)  # (panel title, error)
    seconds: float = 0.0

    def summary(self) -> str:
        line = (f"{self.title}: {self.panels_with_data}/{self.panels_total} panels with data "
                f"-> {self.path} ({self.seconds:.1f}s)")
        details = [f"  no data: {t!r}: {r}" for t, r in self.no_data]
        details += [f"  query error: {t!r}: {e}" for t, e in self.query_errors]
        details += [f"  draw error: {t!r}: {e}" for t, e in self.draw_errors]
        return "\n".join([line, *details])


@dataclass
class RenderReport:
    prometheus_url: str
    start: float
    end: float
    dashboards: list[DashboardReport] = field(default_factory=list)

    def __iter__(self) -> Iterator[DashboardReport]:
        return iter(self.dashboards)

    def __len__(self) -> int:
        return len(self.dashboards)

    def by_title(self, title: str) -> DashboardReport:
        for entry in self.dashboards:
            if entry.title == title:
                return entry
        raise KeyError(title)

    def summary(self) -> str:
        return "\n".join(entry.summary() for entry in self.dashboards)


def dashboard_has_data(entry: DashboardReport, *, every_panel: bool = False) -> bool:
    """True when at least one panel of the dashboard showed data.

    With ``every_panel=True``: every panel showed data and no query or drawing failed.
    """
    if not every_panel:
        return entry.panels_with_data > 0
    return (entry.panels_with_data == entry.panels_total > 0 and not entry.no_data
            and not entry.query_errors and not entry.draw_errors)
