"""Where each panel goes on the PNG: Grafana's grid (24 columns, 30 px rows, 8 px gaps).

Pure geometry in pixels with the origin at the top left, so it is unit-testable without
matplotlib. Rows with nested panels (collapsed rows) are expanded in place, pushing everything
below them down, so the picture shows every panel. Panels without a ``gridPos`` (pre-5.0
dashboards) flow left to right after the positioned ones, ``span`` of 12 giving their width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .queries import dashboard_model

GRID_COLUMNS = 24
ROW_PX = 30  # Grafana's GRID_CELL_HEIGHT
GAP_PX = 8  # Grafana's GRID_CELL_VMARGIN / margin between panels
PAGE_PAD_PX = 16
DEFAULT_PANEL_H = 8


@dataclass(frozen=True)
class Rect:
    left: float
    top: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def inset(self, left: float = 0, top: float = 0, right: float = 0,
              bottom: float = 0) -> Rect:
        return Rect(self.left + left, self.top + top, max(1.0, self.width - left - right),
                    max(1.0, self.height - top - bottom))

    def figure_fraction(self, fig_width: float, fig_height: float
                        ) -> tuple[float, float, float, float]:
        """``(left, bottom, width, height)`` in figure coordinates (origin bottom left)."""
        return (self.left / fig_width, 1.0 - self.bottom / fig_height,
                self.width / fig_width, self.height / fig_height)


@dataclass(frozen=True)
class GridPos:
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class PlacedPanel:
    index: int  # position in queries.iter_panels()
    panel: dict
    grid: GridPos
    rect: Rect


@dataclass(frozen=True)
class Layout:
    panels: list[PlacedPanel]
    width_px: int
    height_px: int


def _grid(panel: Mapping) -> GridPos | None:
    pos = panel.get("gridPos")
    if not isinstance(pos, Mapping) or "y" not in pos:
        return None
    w = max(1, min(GRID_COLUMNS, int(pos.get("w") or GRID_COLUMNS)))
    x = max(0, min(GRID_COLUMNS - w, int(pos.get("x") or 0)))
    return GridPos(x, max(0, int(pos.get("y") or 0)), w, max(1, int(pos.get("h") or 1)))


def _grid_positions(dashboard: Mapping) -> list[tuple[int, dict, GridPos | None]]:
    """(index, panel, grid) in iter_panels() order, collapsed rows expanded."""
    dashboard = dashboard_model(dashboard)
    out: list[tuple[int, dict, GridPos | None]] = []
    index = 0
    shift = 0  # rows pushed down by the contents of expanded rows above
    for panel in dashboard.get("panels") or []:
        grid = _grid(panel)
        if grid is not None:
            grid = GridPos(grid.x, grid.y + shift, grid.w, grid.h)
        out.append((index, panel, grid))
        index += 1
        nested = (panel.get("panels") or []) if panel.get("type") == "row" else []
        nested_grids = [_grid(p) for p in nested]
        known = [g for g in nested_grids if g is not None]
        base = min((g.y for g in known), default=0)
        below = (grid.y + grid.h) if grid is not None else None
        for child, g in zip(nested, nested_grids, strict=True):
            if g is not None and below is not None:
                g = GridPos(g.x, g.y - base + below, g.w, g.h)
            out.append((index, child, g))
            index += 1
        if known and below is not None:
            shift += max(g.y + g.h for g in known) - base
    for row in dashboard.get("rows") or []:  # pre-5.0 layout: no gridPos anywhere
        out.append((index, {"type": "row", "title": row.get("title", "")}, None))
        index += 1
        for child in row.get("panels") or []:
            out.append((index, child, None))
            index += 1
    return out


def _flow(items: list[tuple[int, dict, GridPos | None]]) -> list[tuple[int, dict, GridPos]]:
    """Give a grid position to panels that have none, after the positioned ones."""
    y = max((g.y + g.h for _, _, g in items if g is not None), default=0)
    x, line_h = 0, 0
    placed = []
    for index, panel, grid in items:
        if grid is None:
            is_row = panel.get("type") == "row"
            span = panel.get("span")
            w = GRID_COLUMNS if is_row or not span else max(1, min(24, round(float(span) * 2)))
            h = 1 if is_row else DEFAULT_PANEL_H
            if x + w > GRID_COLUMNS or (is_row and x > 0):
                y, x, line_h = y + line_h, 0, 0
            grid = GridPos(x, y, w, h)
            x, line_h = x + w, max(line_h, h)
            if is_row:
                y, x, line_h = y + 1, 0, 0
        placed.append((index, panel, grid))
    return placed


def place_panels(dashboard: Mapping, width_px: int = 2400, top_px: int = 0) -> Layout:
    """Pixel rectangles for every panel; ``top_px`` leaves room for the dashboard header."""
    pitch_x = (width_px - 2 * PAGE_PAD_PX + GAP_PX) / GRID_COLUMNS
    pitch_y = ROW_PX + GAP_PX
    placed = []
    bottom_rows = 0
    for index, panel, g in _flow(_grid_positions(dashboard)):
        rect = Rect(PAGE_PAD_PX + g.x * pitch_x, top_px + g.y * pitch_y,
                    g.w * pitch_x - GAP_PX, g.h * ROW_PX + (g.h - 1) * GAP_PX)
        placed.append(PlacedPanel(index, panel, g, rect))
        bottom_rows = max(bottom_rows, g.y + g.h)
    height = top_px + bottom_rows * pitch_y - GAP_PX + PAGE_PAD_PX
    return Layout(placed, width_px, max(int(round(height)), top_px + PAGE_PAD_PX))
