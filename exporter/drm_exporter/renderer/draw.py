"""Drawing dashboards with matplotlib: one function per Grafana panel type.

This module imports matplotlib and numpy at the top; :mod:`drm_exporter.renderer` imports it only
when a PNG is drawn, so the query side works on an install without the ``render`` extra.
No pyplot: each dashboard is one :class:`~matplotlib.figure.Figure` saved through the Agg
canvas, so nothing global (backend, open-figure registry) changes in the caller's process.

Series are laid on a common time grid as a ``series × steps`` numpy array (NaN where Prometheus
had no point, which also breaks lines at gaps); every drawer works on whole arrays.
"""

from __future__ import annotations

import math
import re
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from dataclasses import field as dc_field

import matplotlib
import numpy as np
from matplotlib import colors as mcolors
from matplotlib import dates as mdates
from matplotlib import ticker
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from .fields import CLASSIC_PALETTE, DEFAULT_COLOR, SCHEMES, FieldConfig
from .layout import Rect
from .prometheus import Series
from .queries import QueryResult
from .units import format_value

DPI = 100
HEADER_PX = 92
TITLE_BAND_PX = 30
BORDER = "#C7D0D9"
TEXT = "#22252B"
MUTED = "#6E7580"
GAP_COLOR = "#EEF0F2"  # grid cells without a sample
MAX_LEGEND_LABEL = 60
ROW_LABEL_MAX_PT = 8.0  # heatmap / status-history row labels: shrink from here...
ROW_LABEL_MIN_PT = 6.0  # ...down to this before labelling only every n-th row
ROW_LABEL_LEADING = 1.2  # row height needed per label, in font heights
RC = {
    "font.size": 10, "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 8,
    "axes.edgecolor": "#9AA3AD", "axes.linewidth": 0.8, "axes.labelcolor": TEXT,
    "xtick.color": "#464C54", "ytick.color": "#464C54", "timezone": "UTC",
    "axes.formatter.useoffset": False,
}


def pt(px: float) -> float:
    """Font size in points for a height in pixels at :data:`DPI`."""
    return px * 72.0 / DPI


@dataclass
class PanelContext:
    """Everything a drawer needs: where to draw, the panel's JSON, its data."""

    fig: Figure
    rect: Rect  # the content area under the panel title, in pixels from the top left
    panel: dict
    field: FieldConfig
    results: list[QueryResult]
    start: float
    end: float
    fig_width: float
    fig_height: float

    def axes(self, rect: Rect | None = None) -> Axes:
        ax = self.fig.add_axes((rect or self.rect).figure_fraction(self.fig_width,
                                                                   self.fig_height))
        ax.set_facecolor("white")
        return ax

    def text(self, x_px: float, y_px: float, text: str, **kwargs) -> None:
        """Text placed in pixels from the figure's top left."""
        self.fig.text(x_px / self.fig_width, 1.0 - y_px / self.fig_height, plain(text),
                      **kwargs)

    @property
    def panel_type(self) -> str:
        return str(self.panel.get("type") or "")


# --- series helpers -------------------------------------------------------------------------

_LEGEND_RE = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")


def series_name(series: Series, legend_format: str, expr: str) -> str:
    """The legend text Grafana shows: ``legendFormat`` with ``{{label}}`` filled in."""
    if legend_format and legend_format != "__auto":
        return _LEGEND_RE.sub(lambda m: series.labels.get(m.group(1), ""), legend_format)
    labels = {k: v for k, v in series.labels.items() if k != "__name__"}
    name = series.labels.get("__name__", "")
    if not labels:
        return name or expr
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


@dataclass
class Grid:
    """Series of one or more queries on one time grid."""

    names: list[str]
    times: np.ndarray  # Unix seconds, one per column
    values: np.ndarray  # rows × columns, NaN where no sample
    labels: list[dict[str, str]]
    formats: list[str]
    ref_ids: list[str] = dc_field(default_factory=list)  # the query (refId) of each row

    @property
    def x(self) -> np.ndarray:  # matplotlib date numbers (days since the 1970 epoch)
        return self.times / 86400.0 + mdates.date2num(np.datetime64("1970-01-01T00:00:00"))


def time_grid(results: Sequence[QueryResult], start: float, end: float) -> Grid:
    """Lay every range series of ``results`` onto the finest step among them."""
    ranged = [r for r in results if r.series and r.step > 0]
    step = min((r.step for r in ranged), default=max(1.0, (end - start) / 100))
    first = min((r.start for r in ranged), default=start)
    count = int(math.floor((end - first) / step + 1e-9)) + 1
    times = first + step * np.arange(count)
    rows, names, labels, formats, refs = [], [], [], [], []
    for result in results:
        for series in result.series:
            row = np.full(count, np.nan)
            ts = np.asarray(series.timestamps, dtype=float)
            if ts.size:
                idx = np.rint((ts - first) / step).astype(int)
                ok = (idx >= 0) & (idx < count)
                row[idx[ok]] = np.asarray(series.values, dtype=float)[ok]
            rows.append(row)
            names.append(series_name(series, result.query.legend_format, result.expr))
            labels.append(series.labels)
            formats.append(result.query.format)
            refs.append(result.query.ref_id)
    values = np.vstack(rows) if rows else np.empty((0, count))
    return Grid(names, times, values, labels, formats, refs)


def reduce_values(values: np.ndarray, calc: str) -> np.ndarray:
    """Grafana's reducers over the last axis (``lastNotNull``, ``mean``, ``max``...)."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    finite = ~np.isnan(values)
    any_finite = finite.any(axis=1)
    out = np.full(values.shape[0], np.nan)
    if not values.size:
        return out
    with np.errstate(all="ignore"):
        if calc in ("lastNotNull", "last"):
            idx = values.shape[1] - 1 - np.argmax(finite[:, ::-1], axis=1)
            out = values[np.arange(values.shape[0]), idx]
        elif calc in ("firstNotNull", "first"):
            out = values[np.arange(values.shape[0]), np.argmax(finite, axis=1)]
        elif calc == "mean":
            counts = finite.sum(axis=1)
            out = np.nansum(values, axis=1) / np.maximum(counts, 1)
        elif calc == "max":
            out = np.nanmax(np.where(finite, values, -np.inf), axis=1)
        elif calc == "min":
            out = np.nanmin(np.where(finite, values, np.inf), axis=1)
        elif calc == "sum":
            out = np.nansum(values, axis=1)
        elif calc == "count":
            out = finite.sum(axis=1).astype(float)
        elif calc in ("range", "delta", "diff"):
            first = reduce_values(values, "firstNotNull")
            last = reduce_values(values, "lastNotNull")
            out = (reduce_values(values, "max") - reduce_values(values, "min")
                   if calc == "range" else last - first)
        else:
            return reduce_values(values, "lastNotNull")
    return np.where(any_finite, out, np.nan)


def instant_values(ctx: PanelContext) -> tuple[list[str], np.ndarray, list[FieldConfig]]:
    """One (display name, value, field config) per series, reduced with the panel's first calc;
    the field config has the overrides that match the series applied."""
    names, rows, fields = [], [], []
    calc = ctx.field.calcs[0] if ctx.field.calcs else "lastNotNull"
    for result in ctx.results:
        for series in result.series:
            name = series_name(series, result.query.legend_format, result.expr)
            field = ctx.field.for_field(name, result.query.ref_id, series.labels)
            if field.hide_viz:
                continue
            names.append(field.display(name, series.labels))
            fields.append(field)
            rows.append(float(reduce_values(np.asarray(series.values, dtype=float)[None, :],
                                            calc)[0]) if series.values else math.nan)
    return names, np.asarray(rows, dtype=float), fields


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(1, limit - 1)] + "…"


def plain(text: str) -> str:
    """Text with ``$`` escaped, so "$2 to $4" is not read as matplotlib mathtext."""
    return text.replace("$", r"\$") if "$" in text and r"\$" not in text else text


def text_width(fig: Figure, text: str, size: float, weight: str = "normal") -> float:
    """The width in pixels ``text`` takes at font ``size`` (points), measured by the renderer."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    width, _height, _descent = renderer.get_text_width_height_descent(
        text, FontProperties(size=size, weight=weight), ismath=False)
    return float(width)


def fit_text(fig: Figure, text: str, size: float, width_px: float,
             weight: str = "normal") -> str:
    """``text``, cut with "…" where needed so it is no wider than ``width_px``."""
    if text_width(fig, text, size, weight) <= width_px:
        return text
    lo, hi = 1, len(text) - 1  # the longest prefix that fits, by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text_width(fig, shorten(text, mid), size, weight) <= width_px:
            lo = mid
        else:
            hi = mid - 1
    return shorten(text, lo)


def _darken(color: str, amount: float = 0.2) -> tuple[float, float, float]:
    r, g, b = mcolors.to_rgb(color)
    return (r * (1 - amount), g * (1 - amount), b * (1 - amount))


class _UnitFormatter(ticker.Formatter):
    """Axis ticks in the panel's unit; money ticks drop the cents when every tick is whole
    ("$400", "$800" rather than "$400.00"), as the values in stats and tables keep them."""

    def __init__(self, field: FieldConfig, end: float) -> None:
        self.field = field
        self.end = end

    def __call__(self, x: float, pos: int | None = None) -> str:
        return plain(format_value(x, self.field.unit, self.field.decimals, now=self.end))

    def format_ticks(self, values) -> list[str]:  # type: ignore[override]
        texts = [self(v, i) for i, v in enumerate(values)]
        if self.field.decimals is None and all(re.search(r"\.\d\d$", t) is None or
                                               t.endswith(".00") for t in texts):
            texts = [t[:-3] if t.endswith(".00") else t for t in texts]
        return texts


def _unit_formatter(field: FieldConfig, end: float) -> ticker.Formatter:
    return _UnitFormatter(field, end)


def _style_axes(ax: Axes) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(True, color="#E4E7EB", linewidth=0.7)
    ax.set_axisbelow(True)


def _time_axis(ax: Axes, start: float, end: float) -> None:
    locator = mdates.AutoDateLocator(minticks=3, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    # year, month, day, hour, minute, second ticks; always a clock time below a day
    formats = ["%Y", "%b", "%b %d", "%H:%M", "%H:%M", "%H:%M:%S"]
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(
        locator, formats=formats, zero_formats=["", "%Y", "%b %d", "%b %d", "%H:%M", "%H:%M"],
        show_offset=False))
    epoch = mdates.date2num(np.datetime64("1970-01-01T00:00:00"))
    ax.set_xlim(start / 86400.0 + epoch, end / 86400.0 + epoch)


def _legend(ctx: PanelContext, ax: Axes, handles: list, labels: list[str], plot: Rect,
            width_px: float) -> None:
    """The series list to the right of the plot, cut to what fits with a "+N more" line."""
    fits = max(1, int((ctx.rect.height - 8) // 14))
    chars = max(8, min(MAX_LEGEND_LABEL, int(width_px / 6.3)))
    shown_handles, shown = list(handles), [shorten(t, chars) for t in labels]
    if len(shown) > fits:
        extra = len(shown) - (fits - 1)
        shown_handles = shown_handles[: fits - 1] + [Patch(color="none")]
        shown = shown[: fits - 1] + [f"+{extra} more series"]
    ax.legend(shown_handles, [plain(t) for t in shown], loc="upper left",
              bbox_to_anchor=(1.0 + 12 / max(plot.width, 1.0), 1.0), borderaxespad=0.0,
              frameon=False, handlelength=2.0, handletextpad=0.5, labelspacing=0.25,
              fontsize=8, borderpad=0.2)


# --- frame, header, messages ----------------------------------------------------------------

def draw_frame(fig: Figure, rect: Rect, title: str, fig_width: float, fig_height: float,
               note: str | None = None) -> Rect:
    """Panel border and title; returns the content rectangle under the title."""
    left, bottom, width, height = rect.figure_fraction(fig_width, fig_height)
    fig.patches.append(Rectangle((left, bottom), width, height, transform=fig.transFigure,
                                 facecolor="white", edgecolor=BORDER, linewidth=1.0,
                                 zorder=-10))
    chars = max(6, int((rect.width - 24) / 8.2))
    fig.text((rect.left + 10) / fig_width, 1.0 - (rect.top + 8) / fig_height,
             shorten(title or "(untitled)", chars), ha="left", va="top", fontsize=11.5,
             fontweight="bold", color=TEXT)
    if note:
        fig.text((rect.right - 10) / fig_width, 1.0 - (rect.top + 9) / fig_height, note,
                 ha="right", va="top", fontsize=8.5, color="#C4162A")
    return rect.inset(left=8, top=TITLE_BAND_PX, right=8, bottom=6)


def draw_header(fig: Figure, title: str, lines: Sequence[str], fig_width: float,
                fig_height: float) -> None:
    fig.text(16 / fig_width, 1.0 - 12 / fig_height, title, ha="left", va="top", fontsize=22,
             fontweight="bold", color=TEXT)
    for i, line in enumerate(lines):
        fig.text(16 / fig_width, 1.0 - (50 + 19 * i) / fig_height, line, ha="left", va="top",
                 fontsize=11, color=MUTED)
    fig.text(1.0 - 16 / fig_width, 1.0 - 16 / fig_height, "drm-exporter renderer", ha="right",
             va="top", fontsize=9, color=MUTED)
    fig.add_artist(Line2D(
        [16 / fig_width, 1.0 - 16 / fig_width], [1.0 - (HEADER_PX - 8) / fig_height] * 2,
        color=BORDER, linewidth=1.0))


def draw_message(ctx: PanelContext, message: str, detail: str | None = None,
                 color: str = MUTED) -> None:
    cx = ctx.rect.left + ctx.rect.width / 2
    cy = ctx.rect.top + ctx.rect.height / 2
    size = max(11.0, min(22.0, pt(ctx.rect.height * 0.22)))
    ctx.text(cx, cy - (8 if detail else 0), message, ha="center", va="center", fontsize=size,
             color=color, fontweight="bold")
    if detail:
        wrapped = textwrap.wrap(detail, max(20, int(ctx.rect.width / 6.5)))[:3]
        ctx.text(cx, cy + size * 0.9 + 4, "\n".join(wrapped), ha="center", va="top",
                 fontsize=8.5, color=MUTED)


def draw_no_data(ctx: PanelContext, reason: str) -> None:
    draw_message(ctx, "No data", reason)


def draw_unsupported(ctx: PanelContext) -> None:
    left, bottom, width, height = ctx.rect.figure_fraction(ctx.fig_width, ctx.fig_height)
    ctx.fig.patches.append(Rectangle((left, bottom), width, height, transform=ctx.fig.transFigure,
                                     facecolor="#F7F8FA", edgecolor="#D8DDE3",
                                     linestyle="--", linewidth=1.0))
    draw_message(ctx, f"unsupported panel type {ctx.panel_type or '(none)'!r}",
                 "the renderer draws " + ", ".join(sorted(DRAWERS)) + " and row panels")


# --- panel types ----------------------------------------------------------------------------

def _y_limits(values: np.ndarray, field: FieldConfig, include_zero: bool
              ) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if include_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = hi - lo
    pad = span * 0.05 if span else max(abs(hi) * 0.1, 1e-9 if hi else 1.0)
    lo = field.min if field.min is not None else (lo if include_zero and lo == 0 else lo - pad)
    hi = field.max if field.max is not None else hi + pad
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _area_polygons(x: np.ndarray, tops: np.ndarray, bottoms: np.ndarray
                   ) -> tuple[list[np.ndarray], list[int]]:
    """One polygon per unbroken run of samples, so areas stop at gaps as the lines do."""
    polygons, owners = [], []
    finite = np.isfinite(tops)
    edges = np.diff(np.pad(finite, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    for row in np.flatnonzero(finite.any(axis=1)):
        starts = np.flatnonzero(edges[row] == 1)
        stops = np.flatnonzero(edges[row] == -1)
        for a, b in zip(starts, stops, strict=True):
            upper = np.column_stack([x[a:b], tops[row, a:b]])
            lower = np.column_stack([x[a:b], bottoms[row, a:b]])[::-1]
            polygons.append(np.concatenate([upper, lower]))
            owners.append(int(row))
    return polygons, owners


def _series_color(field: FieldConfig, index: int, values: np.ndarray) -> str:
    """A series' colour: a fixed colour, the threshold colour of its last value, or the
    classic palette by position (Grafana counts hidden and recoloured series too)."""
    if field.color_mode in ("fixed", "shades") and field.fixed_color:
        return field.fixed_color
    if field.color_mode == "thresholds" and field.thresholds_explicit:
        last = float(reduce_values(values, "lastNotNull")[0])
        if math.isfinite(last):
            return field.threshold_color(last)
    return CLASSIC_PALETTE[index % len(CLASSIC_PALETTE)]


def _line_dashes(field: FieldConfig, width: float) -> str | tuple[float, tuple[float, ...]]:
    """A matplotlib line style for Grafana's ``custom.lineStyle`` (dash lengths in pixels)."""
    if field.line_style not in ("dash", "dot"):
        return "solid"
    pattern = field.dash or ((10.0, 10.0) if field.line_style == "dash" else (0.0, 10.0))
    if len(pattern) < 2:
        pattern = (pattern[0] if pattern else 10.0, 10.0)
    scale = 72.0 / DPI / max(width, 0.1)  # px → points, then per unit of line width
    if field.line_style == "dot":  # butt caps hide a zero-length dash: draw 1.5 px dots
        pattern = (max(1.5, pattern[0]), pattern[1])
    return (0.0, tuple(max(0.1, float(v) * scale) for v in pattern))


_LEGEND_DASHES = {"dash": (0.0, (2.0, 1.5)), "dot": (0.0, (0.6, 1.2))}  # × line width 2


def _integer_axis(field: FieldConfig, values: np.ndarray) -> bool:
    """Counts get whole-number ticks: unit ``short`` with 0 decimals, or whole values only."""
    if field.unit in ("percentunit", "percent", "bytes", "bits", "binBps", "kbytes", "mbytes",
                      "gbytes", "dateTimeAsIso", "dateTimeFromNow"):
        return False
    if field.decimals is not None and field.decimals > 0:
        return False
    if field.unit == "short" and field.decimals == 0:
        return True
    finite = values[np.isfinite(values)]
    return bool(finite.size) and bool(np.all(finite == np.round(finite)))


@dataclass
class _Stacks:
    tops: np.ndarray
    bottoms: np.ndarray
    stacked: np.ndarray  # bool per series


def _stack(values: np.ndarray, fields: Sequence[FieldConfig]) -> _Stacks:
    """Grafana's stacking: per stack group, and apart for series drawn below zero."""
    tops = values.copy()
    bottoms = np.zeros_like(values)
    stacked = np.zeros(len(fields), dtype=bool)
    groups: dict[tuple[str, str, bool], list[int]] = {}
    for i, field in enumerate(fields):
        if field.stacking in ("normal", "percent"):
            key = (field.stack_group, field.stacking, field.transform == "negative-Y")
            groups.setdefault(key, []).append(i)
            stacked[i] = True
    for (_group, mode, _negative), members in groups.items():
        filled = np.nan_to_num(values[members], nan=0.0)
        if mode == "percent":
            totals = np.abs(filled).sum(axis=0)
            filled = np.divide(filled, totals, out=np.zeros_like(filled), where=totals != 0)
        cumulative = np.cumsum(filled, axis=0)
        tops[members] = cumulative
        bottoms[members] = np.vstack([np.zeros((1, values.shape[1])), cumulative[:-1]])
    return _Stacks(tops, bottoms, stacked)


def _bar_polygons(ctx: PanelContext, plot: Rect, x: np.ndarray, step_days: float,
                  rows: list[int], fields: Sequence[FieldConfig], values: np.ndarray,
                  stacks: _Stacks) -> tuple[np.ndarray, list[int], bool]:
    """Rectangles ``(n, 4, 2)`` for bar series, one per time bucket, with each one's series.

    A stack is one bar per bucket; unstacked bar series stand side by side in the bucket (series
    drawn below zero pair up with those above), unless that would make them thinner than 2 px.
    """
    slots: dict[tuple, int] = {}
    counters = {False: 0, True: 0}
    slot_of: dict[int, int] = {}
    for row in rows:
        field = fields[row]
        if stacks.stacked[row]:
            key: tuple = ("stack", field.stack_group, field.stacking)
        else:
            negative = field.transform == "negative-Y"
            key = ("series", counters[negative])
            counters[negative] += 1
        slot_of[row] = slots.setdefault(key, len(slots))
    n = max(1, len(slots))
    total = step_days * (min(0.8, max(0.6, ctx.field.bar_width_factor)) if n > 1
                         else ctx.field.bar_width_factor)
    span_days = max((ctx.end - ctx.start) / 86400.0, 1e-12)
    if total / n / span_days * plot.width < 2.0:
        n, slot_of = 1, dict.fromkeys(rows, 0)
    width = total / n
    shift = ctx.field.bar_alignment * total / 2
    pieces, owners = [], []
    for row in rows:
        ok = np.isfinite(values[row]) & (stacks.tops[row] != stacks.bottoms[row])
        if not ok.any():
            continue
        left = x[ok] + shift - total / 2 + width * slot_of[row]
        right = left + width
        low, high = stacks.bottoms[row, ok], stacks.tops[row, ok]
        pieces.append(np.stack([np.column_stack([left, low]), np.column_stack([left, high]),
                                np.column_stack([right, high]), np.column_stack([right, low])],
                               axis=1))
        owners.extend([row] * int(ok.sum()))
    verts = np.concatenate(pieces) if pieces else np.empty((0, 4, 2))
    return verts, owners, width / span_days * plot.width >= 4.0


def draw_timeseries(ctx: PanelContext) -> None:
    """Lines (one LineCollection for all series), filled or stacked areas and bars as one
    PolyCollection each; field overrides style each series."""
    grid = time_grid(ctx.results, ctx.start, ctx.end)
    panel_field = ctx.field
    every = [panel_field.for_field(name, ref, labels) for name, ref, labels in
             zip(grid.names, grid.ref_ids, grid.labels, strict=True)]
    keep = [i for i, f in enumerate(every) if not f.hide_viz]
    fields = [every[i] for i in keep]
    raw = grid.values[keep]
    names = [fields[k].display(grid.names[i], grid.labels[i]) for k, i in enumerate(keep)]
    colors = [_series_color(fields[k], i, grid.values[i]) for k, i in enumerate(keep)]
    legend_w = (min(440.0, max(170.0, ctx.rect.width * 0.26))
                if panel_field.legend_show else 0.0)
    plot = ctx.rect.inset(left=78, top=4, right=legend_w + (14 if legend_w else 4), bottom=24)
    ax = ctx.axes(plot)
    _style_axes(ax)
    count, steps = raw.shape
    x = grid.x
    sign = np.array([-1.0 if f.transform == "negative-Y" else 1.0 for f in fields])
    values = raw * sign[:, None] if count else raw
    stacks = _stack(values, fields)
    is_bar = np.array([f.draw_style == "bars" for f in fields], dtype=bool)
    is_points = np.array([f.draw_style == "points" for f in fields], dtype=bool)
    widths = [max(1.2, f.line_width * 1.25) for f in fields]
    alphas = np.array([f.fill_opacity / 100 if f.fill_opacity else
                       (0.6 if bar else 0.45 if stacked else 0.0)
                       for f, bar, stacked in zip(fields, is_bar, stacks.stacked, strict=True)])
    lines_y = np.where(np.isnan(values), np.nan, stacks.tops)
    faces = np.array([mcolors.to_rgba(c, a) for c, a in zip(colors, alphas, strict=True)])
    edges = np.array([mcolors.to_rgba(c) for c in colors])
    area_rows = [i for i in range(count) if alphas[i] > 0 and not is_bar[i] and not is_points[i]]
    if area_rows:
        polygons, owners = _area_polygons(x, lines_y[area_rows], stacks.bottoms[area_rows])
        ax.add_collection(PolyCollection(
            polygons, facecolors=faces[np.asarray(area_rows)[owners]], linewidths=0),
            autolim=False)
    bar_rows = [i for i in range(count) if is_bar[i]]
    if bar_rows:
        step_days = (float(grid.times[1] - grid.times[0]) if steps > 1
                     else (ctx.end - ctx.start) / 100) / 86400.0
        verts, owners, edged = _bar_polygons(ctx, plot, x, step_days, bar_rows, fields, values,
                                             stacks)
        ax.add_collection(PolyCollection(
            verts, facecolors=faces[owners], edgecolors=edges[owners],
            linewidths=0.6 if edged else 0.0, zorder=2), autolim=False)
    line_rows = [i for i in range(count) if not is_bar[i] and not is_points[i]]
    if line_rows:
        ax.add_collection(LineCollection(
            np.stack([np.broadcast_to(x, (len(line_rows), steps)), lines_y[line_rows]], axis=-1),
            colors=[colors[i] for i in line_rows], linewidths=[widths[i] for i in line_rows],
            linestyles=[_line_dashes(fields[i], widths[i]) for i in line_rows], zorder=2.5),
            autolim=False)
    finite = np.isfinite(lines_y)
    padded = np.pad(finite, ((0, 0), (1, 1)), constant_values=False)
    lone = finite & ~padded[:, :-2] & ~padded[:, 2:]  # points no line segment can show
    lone[is_bar] = False
    lone[is_points] = finite[is_points]
    if lone.any():
        rows, cols = np.nonzero(lone)
        ax.scatter(x[cols], lines_y[rows, cols], s=10, c=[colors[r] for r in rows],
                   linewidths=0, zorder=3)
    _time_axis(ax, ctx.start, ctx.end)
    drawn = [lines_y[~is_bar].ravel()]
    filled = is_bar | (alphas > 0)
    if filled.any():
        drawn += [np.where(np.isnan(values[filled]), np.nan, stacks.tops[filled]).ravel(),
                  stacks.bottoms[filled].ravel()]
    ax.set_ylim(*_y_limits(np.concatenate(drawn), panel_field, include_zero=bool(filled.any())))
    ax.yaxis.set_major_formatter(_unit_formatter(panel_field, ctx.end))
    integer = (not any(f.stacking == "percent" for f in fields)
               and _integer_axis(panel_field, values))
    ax.yaxis.set_major_locator(_value_locator(panel_field, max(2, int(plot.height // 45)),
                                              integer=integer))
    if legend_w:
        listed = [i for i in range(count) if not fields[i].hide_legend]
        labels = [names[i] for i in listed]
        if panel_field.legend_calcs:
            stats = {c: reduce_values(raw, c) for c in panel_field.legend_calcs}
            labels = [names[i] + "  " + "  ".join(
                f"{c}: {fields[i].format(float(stats[c][i]), now=ctx.end)}" for c in stats)
                for i in listed]
        handles = [Patch(facecolor=mcolors.to_rgba(colors[i], max(alphas[i], 0.6)),
                         edgecolor=colors[i], linewidth=0.8) if is_bar[i]
                   else Line2D([], [], color=colors[i], linewidth=2,
                               linestyle=_LEGEND_DASHES.get(fields[i].line_style, "solid"))
                   for i in listed]
        _legend(ctx, ax, handles, labels, plot, legend_w)


class _BinaryLocator(ticker.Locator):
    """Ticks at round numbers of KiB/MiB/GiB rather than of bytes."""

    def __init__(self, nbins: int) -> None:
        self._inner = ticker.MaxNLocator(nbins=nbins, steps=[1, 2, 2.5, 4, 5, 8, 10])

    def __call__(self) -> list[float]:
        lo, hi = self.axis.get_view_interval()
        return self.tick_values(lo, hi)

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        big = max(abs(vmin), abs(vmax))
        scale = 1024.0 ** max(0, int(math.log(big, 1024))) if big >= 1024 else 1.0
        return list(np.asarray(self._inner.tick_values(vmin / scale, vmax / scale)) * scale)


def _value_locator(field: FieldConfig, nbins: int, integer: bool = False) -> ticker.Locator:
    if field.unit in ("bytes", "bits", "binBps", "kbytes", "mbytes", "gbytes"):
        return _BinaryLocator(nbins)
    return ticker.MaxNLocator(nbins=nbins, integer=integer)


def _heatmap_rows(grid: Grid) -> Grid:
    """Histogram buckets (``le``) ordered bottom-up, de-accumulated for format heatmap."""
    les = [labels.get("le") for labels in grid.labels]
    if not grid.names or any(le is None for le in les):
        return grid
    order = np.argsort([float(le) for le in les])
    values = grid.values[order]
    if all(f == "heatmap" for f in grid.formats):
        values = np.where(np.isnan(values), np.nan,
                          np.diff(np.nan_to_num(values), axis=0, prepend=0.0))
    names = [f"le {les[i]}" for i in order][::-1]
    return Grid(names, grid.times, values[::-1], [grid.labels[i] for i in order][::-1],
                grid.formats)


def _colormap(ctx: PanelContext) -> mcolors.Colormap:
    if ctx.panel_type == "heatmap":
        color_opts = ctx.field.options.get("color") or {}
        scheme = color_opts.get("scheme")
        if scheme:
            for candidate in (scheme, scheme.lower()):
                if candidate in matplotlib.colormaps:
                    cmap = matplotlib.colormaps[candidate]
                    return cmap.reversed() if color_opts.get("reverse") else cmap
        legacy = str((ctx.panel.get("color") or {}).get("colorScheme") or "")
        if legacy.startswith("interpolate") and legacy[11:] in matplotlib.colormaps:
            return matplotlib.colormaps[legacy[11:]]  # pre-9 heatmap: "interpolateOranges"
    name = SCHEMES.get(ctx.field.color_mode or "", "viridis")
    return matplotlib.colormaps[name]


def _value_range(ctx: PanelContext, values: np.ndarray) -> tuple[float, float]:
    opts = (ctx.field.options.get("color") or {}) if ctx.panel_type == "heatmap" else {}
    lo = opts.get("min", ctx.field.min)
    hi = opts.get("max", ctx.field.max)
    finite = values[np.isfinite(values)]
    if lo is None:
        lo = 0.0 if ctx.field.unit == "percentunit" else (float(finite.min()) if finite.size
                                                          else 0.0)
    if hi is None:
        hi = 1.0 if ctx.field.unit == "percentunit" else (float(finite.max()) if finite.size
                                                          else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def _calculated_heatmap(ctx: PanelContext, grid: Grid) -> tuple[Grid, FieldConfig]:
    """Grafana's ``calculate: true`` heatmap: per step, how many series fall in each value bucket.

    Buckets come from ``options.calculation.yBuckets`` (a size or a count, 10 by default) over
    the y axis min..max (else the data's); empty buckets are left blank as Grafana does.
    """
    opts = ctx.field.options
    y_axis = opts.get("yAxis") or {}
    buckets = (opts.get("calculation") or {}).get("yBuckets") or {}
    values = grid.values
    finite = np.isfinite(values)
    lo = _first_number(y_axis.get("min"), ctx.field.min,
                       values[finite].min() if finite.any() else 0.0)
    hi = _first_number(y_axis.get("max"), ctx.field.max,
                       values[finite].max() if finite.any() else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    amount = _first_number(buckets.get("value"), 0.0)
    if buckets.get("mode") == "size" and amount > 0:
        count = max(1, min(200, math.ceil((hi - lo) / amount - 1e-9)))
        size = amount if count < 200 else (hi - lo) / count
    else:
        count = int(amount) if buckets.get("mode") == "count" and amount >= 1 else 10
        count = max(1, min(200, count))
        size = (hi - lo) / count
    index = np.clip(np.floor((np.nan_to_num(values, nan=lo) - lo) / size), 0, count - 1)
    columns = np.broadcast_to(np.arange(values.shape[1]), values.shape)
    counts = np.zeros((count, values.shape[1]))
    np.add.at(counts, (index[finite].astype(int), columns[finite]), 1)
    counts[counts == 0] = np.nan
    unit = y_axis.get("unit") or ctx.field.unit
    names = [f"{format_value(lo + b * size, unit)}–{format_value(lo + (b + 1) * size, unit)}"
             for b in range(count)][::-1]
    cell_unit = (opts.get("cellValues") or {}).get("unit") or "short"
    field = replace(ctx.field, unit=cell_unit, decimals=None, min=None, max=None,
                    color_mode=None, mappings=(), thresholds_explicit=False)
    return Grid(names, grid.times, counts[::-1], [{} for _ in names], ["heatmap"] * count), field


def _first_number(*candidates: object) -> float:
    for candidate in candidates:
        try:
            if candidate is not None and candidate != "":
                return float(candidate)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return 0.0


def row_label_layout(rows: int, height_px: float) -> tuple[float, int]:
    """(font size in points, label every n-th row) for ``rows`` rows over ``height_px``.

    Every row gets a label, the font shrinking with the rows down to :data:`ROW_LABEL_MIN_PT`;
    only rows thinner than that font are thinned out.
    """
    row_px = height_px / max(rows, 1)
    size = min(ROW_LABEL_MAX_PT, pt(row_px / ROW_LABEL_LEADING))
    if size >= ROW_LABEL_MIN_PT:
        return size, 1
    per_label = ROW_LABEL_MIN_PT * DPI / 72.0 * ROW_LABEL_LEADING
    fits = max(1, int(height_px // per_label))
    return ROW_LABEL_MIN_PT, max(1, math.ceil(rows / fits))


def draw_grid(ctx: PanelContext) -> None:
    """status-history, state-timeline and heatmap: one row per series, one column per step."""
    grid = time_grid(ctx.results, ctx.start, ctx.end)
    field = ctx.field
    if ctx.panel_type == "heatmap":
        if ctx.field.options.get("calculate"):
            grid, field = _calculated_heatmap(ctx, grid)
            ctx = replace(ctx, field=field)
        else:
            grid = _heatmap_rows(grid)
    elif len(grid.ref_ids) == len(grid.names):  # display names from the field overrides
        grid = replace(grid, names=[
            field.for_field(name, ref, labels).display(name, labels)
            for name, ref, labels in zip(grid.names, grid.ref_ids, grid.labels, strict=True)])
    values = grid.values
    rows = len(grid.names)
    value_colors = field.value_colors()
    finite = values[np.isfinite(values)]
    mapped_only = bool(value_colors) and np.isin(finite, [v for v, _, _ in value_colors]).all()
    side_w = 150.0 if mapped_only else 86.0
    plot_height = max(1.0, ctx.rect.height - 4 - 24)
    size, every = row_label_layout(rows, plot_height)
    ticks = list(range(0, rows, every))
    names = [shorten(grid.names[i], 48) for i in ticks]
    measured = max((text_width(ctx.fig, n, size) for n in names), default=0.0)
    label_w = min(ctx.rect.width * 0.28, max(40.0, measured + 10))
    names = [fit_text(ctx.fig, n, size, label_w - 10) for n in names]
    plot = ctx.rect.inset(left=label_w, top=4, right=side_w, bottom=24)
    ax = ctx.axes(plot)
    lo, hi = _value_range(ctx, values)
    if field.color_mode == "thresholds" and field.thresholds_explicit:
        steps = field.thresholds
        bounds = [s.value for s in steps[1:]]
        cmap = mcolors.ListedColormap([s.color for s in steps])
        edges = [min(lo, bounds[0] - 1) if bounds else lo, *bounds,
                 max(hi, bounds[-1] + 1) if bounds else hi]
        norm = mcolors.BoundaryNorm(edges, cmap.N)
    else:
        cmap = _colormap(ctx)
        color_opts = ctx.field.options.get("color") or {}
        if ctx.panel_type == "heatmap" and color_opts.get("scale") == "exponential":
            norm = mcolors.PowerNorm(float(color_opts.get("exponent") or 0.5), lo, hi)
        else:
            norm = mcolors.Normalize(lo, hi)
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    rgba = mappable.to_rgba(np.nan_to_num(values, nan=lo))
    for value, color, _text in value_colors:
        rgba[values == value] = mcolors.to_rgba(color)
    rgba[np.isnan(values)] = mcolors.to_rgba(GAP_COLOR)
    step = float(grid.times[1] - grid.times[0]) if grid.times.size > 1 else 60.0
    x = grid.x
    half = step / 86400.0 / 2
    ax.imshow(rgba, aspect="auto", interpolation="nearest", origin="upper",
              extent=(x[0] - half, x[-1] + half, rows - 0.5, -0.5))
    _time_axis(ax, ctx.start, ctx.end)
    ax.set_xlim(max(ax.get_xlim()[0], x[0] - half), x[-1] + half)
    ax.set_yticks(ticks)
    ax.set_yticklabels([plain(n) for n in names], fontsize=size)
    ax.tick_params(axis="y", length=0, pad=3)
    if every > 1:
        ctx.text(ctx.rect.left, ctx.rect.bottom, f"1 label per {every} rows", ha="left",
                 va="bottom", fontsize=6.5, color=MUTED)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if mapped_only:
        handles = [Patch(color=color, label=text) for _v, color, text in value_colors]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0 + 12 / plot.width, 1),
                  frameon=False, fontsize=8, borderaxespad=0)
        return
    bar = Rect(plot.right + 10, plot.top, 14, plot.height)
    cax = ctx.axes(bar)
    colorbar = ctx.fig.colorbar(mappable, cax=cax)
    colorbar.ax.yaxis.set_major_formatter(_unit_formatter(field, ctx.end))
    if _integer_axis(field, finite):
        colorbar.ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    colorbar.ax.tick_params(labelsize=8)
    colorbar.outline.set_edgecolor(BORDER)


def _stat_grid(count: int, width: float, height: float) -> tuple[int, int]:
    best = (1, count)
    best_score = math.inf
    for cols in range(1, count + 1):
        rows = math.ceil(count / cols)
        aspect = (width / cols) / (height / rows)
        score = abs(math.log(aspect / 2.2))
        if score < best_score:
            best, best_score = (cols, rows), score
    return best


def _value_color(field: FieldConfig, value: float, lo: float, hi: float) -> str:
    mapped = field.map_color(value)
    if mapped:
        return mapped
    if field.color_mode == "fixed" and field.fixed_color:
        return field.fixed_color
    if field.thresholds_explicit or field.color_mode == "thresholds":
        return field.threshold_color(value, lo, hi) if math.isfinite(value) else MUTED
    return DEFAULT_COLOR


def draw_stat(ctx: PanelContext) -> None:
    names, values, fields = instant_values(ctx)
    limit = 24
    shown = min(len(values), limit)
    cols, rows = _stat_grid(shown, ctx.rect.width, ctx.rect.height - (14 if len(values) > limit
                                                                         else 0))
    cell_w = ctx.rect.width / cols
    cell_h = (ctx.rect.height - (14 if len(values) > limit else 0)) / rows
    lo = ctx.field.min if ctx.field.min is not None else 0.0
    hi = ctx.field.max if ctx.field.max is not None else 100.0
    background = ctx.field.options.get("colorMode") == "background"
    show_names = shown > 1 and ctx.field.options.get("textMode") not in ("value",)
    for i in range(shown):
        row, col = divmod(i, cols)
        left = ctx.rect.left + col * cell_w
        top = ctx.rect.top + row * cell_h
        value = float(values[i])
        text = fields[i].format(value, now=ctx.end)
        color = _value_color(fields[i], value, lo, hi)
        if background:
            cell = Rect(left + 2, top + 2, cell_w - 4, cell_h - 4)
            fl, fb, fw, fh = cell.figure_fraction(ctx.fig_width, ctx.fig_height)
            ctx.fig.patches.append(Rectangle((fl, fb), fw, fh, transform=ctx.fig.transFigure,
                                             facecolor=color, edgecolor="none", zorder=-5))
            text_color = "white"
        else:
            text_color = _darken(color, 0.15)
        name_px = min(15.0, cell_h * 0.16) if show_names else 0.0
        value_px = min(cell_h * (0.55 if show_names else 0.62),
                       (cell_w - 12) / (0.62 * max(len(text), 1) + 0.3), 110.0)
        value_px = max(value_px, 9.0)
        cy = top + cell_h / 2 + (name_px * 0.6 if show_names else 0)
        ctx.text(left + cell_w / 2, cy, text, ha="center", va="center",
                 fontsize=pt(value_px), fontweight="bold", color=text_color)
        if show_names:
            ctx.text(left + cell_w / 2, cy - value_px * 0.6 - 3,
                     shorten(names[i], max(6, int(cell_w / (name_px * 0.62)))),
                     ha="center", va="bottom", fontsize=pt(name_px),
                     color="white" if background else MUTED)
    if len(values) > limit:
        ctx.text(ctx.rect.right, ctx.rect.bottom, f"+{len(values) - limit} more", ha="right",
                 va="bottom", fontsize=8, color=MUTED)


def draw_bargauge(ctx: PanelContext) -> None:
    names, values, fields = instant_values(ctx)
    field = ctx.field
    fits = max(1, int(ctx.rect.height // 20))
    more = len(values) - fits if len(values) > fits else 0
    count = len(values) - more
    names, values, fields = names[:count], values[:count], fields[:count]
    finite = values[np.isfinite(values)]
    lo = field.min if field.min is not None else min(0.0, float(finite.min()) if finite.size
                                                     else 0.0)
    hi = field.max if field.max is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    texts = [f.format(float(v), now=ctx.end) for f, v in zip(fields, values, strict=True)]
    # label and value columns as wide as their longest text measures (tick pad: 3 pt ≈ 4 px)
    names = [shorten(n, MAX_LEGEND_LABEL) for n in names]
    label_w = min(ctx.rect.width * 0.4,
                  max(40.0, max(text_width(ctx.fig, n, 9) for n in names) + 10))
    names = [fit_text(ctx.fig, n, 9, label_w - 10) for n in names]
    value_w = max(50.0, max(text_width(ctx.fig, t, 9.5, "bold") for t in texts) + 16)
    plot = ctx.rect.inset(left=label_w, right=value_w, bottom=14 if more else 0)
    ax = ctx.axes(plot)
    positions = np.arange(count)
    colors = []
    for i, (f, v) in enumerate(zip(fields, values, strict=True)):
        if f.color_mode in ("fixed", "shades") and f.fixed_color:
            colors.append(f.fixed_color)
        elif f.color_mode in ("palette-classic", "palette-classic-by-name"):
            colors.append(CLASSIC_PALETTE[i % len(CLASSIC_PALETTE)])
        else:
            colors.append(_value_color(f, float(v), lo, hi))
    ax.barh(positions, np.full(count, hi - lo), left=lo, height=0.72, color="#F1F3F5")
    ax.barh(positions, np.nan_to_num(values - lo, nan=0.0), left=lo, height=0.72,
            color=colors)
    ax.set_xlim(lo, hi)
    slots = max(count, plot.height / 40)  # bars no thicker than ~30 px, from the top
    ax.set_ylim(slots - 0.5, -0.5)
    ax.set_yticks(positions)
    ax.set_yticklabels([plain(n) for n in names], fontsize=9)
    ax.tick_params(axis="y", length=0, pad=3)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    for i, text in enumerate(texts):
        ax.annotate(plain(text), (1.0, i), xycoords=("axes fraction", "data"), xytext=(6, 0),
                    textcoords="offset points", va="center", ha="left", fontsize=9.5,
                    fontweight="bold", color=_darken(colors[i], 0.2))
    if more:
        ctx.text(ctx.rect.right, ctx.rect.bottom, f"+{more} more", ha="right", va="bottom",
                 fontsize=8, color=MUTED)


def _table_columns(ctx: PanelContext) -> tuple[list[str], list[list[str]], list[str]]:
    """Merge instant series by label set into rows (Grafana's merge transformation)."""
    multiple = len(ctx.results) > 1
    label_keys: list[str] = []
    rows: dict[tuple, dict[str, str]] = {}
    value_cols: list[str] = []
    fields: dict[str, FieldConfig] = {}  # per value column, overrides by column name or refId
    for result in ctx.results:
        column = f"Value #{result.query.ref_id}" if multiple else "Value"
        if column not in value_cols:
            value_cols.append(column)
            fields[column] = ctx.field.for_field(column, result.query.ref_id)
        for series in result.series:
            labels = {k: v for k, v in series.labels.items() if k != "__name__"}
            for key in labels:
                if key not in label_keys:
                    label_keys.append(key)
            row = rows.setdefault(tuple(sorted(labels.items())), dict(labels))
            value = series.values[-1] if series.values else math.nan
            row[column] = fields[column].format(value, now=ctx.end)
            row["\0" + column] = value  # type: ignore[assignment]  # raw value for sorting
    columns = sorted(label_keys) + value_cols
    organize = {}
    for transform in ctx.panel.get("transformations") or []:
        if transform.get("id") == "organize":
            organize = transform.get("options") or {}
    excluded = {k for k, v in (organize.get("excludeByName") or {}).items() if v}
    columns = [c for c in columns if c not in excluded]
    index = organize.get("indexByName") or {}
    if index:
        position = {c: i for i, c in enumerate(columns)}  # list.sort empties the list meanwhile
        columns.sort(key=lambda c: (index.get(c, len(position) + position[c])))
    ordered = list(rows.values())
    for sort in (ctx.field.options.get("sortBy") or [])[:1]:
        key = sort.get("displayName")
        raw = "\0" + key if key and "\0" + key in (ordered[0] if ordered else {}) else key
        if raw:
            ordered.sort(key=lambda r, k=raw: _sort_key(r.get(k)), reverse=bool(sort.get("desc")))
    renames = organize.get("renameByName") or {}
    headers = [renames.get(c) or (fields.get(c) or ctx.field.for_field(c)).display(c)
               for c in columns]
    return headers, [[str(r.get(c, "")) for c in columns] for r in ordered], columns


def _sort_key(value: object) -> tuple[int, float | str]:
    if isinstance(value, float):
        return (0, -math.inf if math.isnan(value) else value)
    return (1, str(value or ""))


def draw_table(ctx: PanelContext) -> None:
    headers, rows, _columns = _table_columns(ctx)
    row_px = 21.0
    fits = max(1, int(ctx.rect.height // row_px) - 1)
    more = len(rows) - fits if len(rows) > fits else 0
    if more:
        fits = max(1, fits - 1)
        more = len(rows) - fits
    shown = rows[:fits]
    widths = np.array([max([len(h)] + [len(r[i]) for r in shown]) for i, h in enumerate(headers)],
                      dtype=float)
    widths = np.clip(widths, 4, 40)
    widths = widths / widths.sum()
    chars = [max(4, int(w * ctx.rect.width / 6.6)) for w in widths]
    cells = [[shorten(v, chars[i]) for i, v in enumerate(r)] for r in shown]
    height_px = row_px * (len(shown) + 1)
    ax = ctx.axes(Rect(ctx.rect.left, ctx.rect.top, ctx.rect.width, height_px))
    ax.axis("off")
    table = ax.table(cellText=cells, colLabels=[shorten(h, chars[i]) for i, h in
                                                  enumerate(headers)],
                     colWidths=list(widths), loc="upper left", cellLoc="left",
                     bbox=(0, 0, 1, 1))
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (row, _col), cell in table.get_celld().items():
        cell.set_edgecolor("#E4E7EB")
        cell.set_linewidth(0.6)
        cell.PAD = 0.02
        if row == 0:
            cell.set_facecolor("#F4F5F5")
            cell.set_text_props(fontweight="bold", color=TEXT)
        elif row % 2 == 0:
            cell.set_facecolor("#FAFBFC")
    if more:
        ctx.text(ctx.rect.right, ctx.rect.bottom, f"showing {fits} of {len(rows)} rows",
                 ha="right", va="bottom", fontsize=8, color=MUTED)


def draw_piechart(ctx: PanelContext) -> None:
    names, values, all_fields = instant_values(ctx)
    keep = np.isfinite(values) & (values > 0)
    names = [n for n, k in zip(names, keep, strict=True) if k]
    fields = [f for f, k in zip(all_fields, keep, strict=True) if k]
    palette = [CLASSIC_PALETTE[i % len(CLASSIC_PALETTE)] for i in np.flatnonzero(keep)]
    values = values[keep]
    if not values.size:
        draw_message(ctx, "All values are 0", "a pie chart needs a positive value")
        return
    side = min(ctx.rect.height, ctx.rect.width * 0.5)
    pie_rect = Rect(ctx.rect.left + 6, ctx.rect.top + (ctx.rect.height - side) / 2, side, side)
    ax = ctx.axes(pie_rect)
    colors = [f.fixed_color if f.color_mode in ("fixed", "shades") and f.fixed_color else c
              for f, c in zip(fields, palette, strict=True)]
    donut = ctx.field.options.get("pieType") == "donut"
    wedges, _ = ax.pie(values, colors=colors, startangle=90, counterclock=False,
                       wedgeprops={"linewidth": 1, "edgecolor": "white",
                                   **({"width": 0.45} if donut else {})})
    ax.set_aspect("equal")
    total = float(values.sum())
    legend_w = ctx.rect.right - pie_rect.right - 16
    chars = max(8, int(legend_w / 6.3) - 18)
    labels = [plain(f"{shorten(n, chars)}  {f.format(float(v), now=ctx.end)}"
                    f"  ({100 * v / total:.1f}%)")
              for n, v, f in zip(names, values, fields, strict=True)]
    fits = max(1, int((ctx.rect.height - 8) // 14))
    handles: list = list(wedges)
    if len(labels) > fits:
        extra = len(labels) - (fits - 1)
        handles = handles[: fits - 1] + [Patch(color="none")]
        labels = labels[: fits - 1] + [f"+{extra} more"]
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0 + 16 / side, 1.0),
              frameon=False, fontsize=8.5, borderaxespad=0, labelspacing=0.3)


_TAGS = re.compile(r"<[^>]+>")
_MARKUP = re.compile(r"\*\*|__|`|^>\s?|^\s*[-*]\s+(?=\S)")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def text_content(panel: dict) -> str:
    options = panel.get("options") or {}
    content = str(options.get("content") or panel.get("content") or "")
    if (options.get("mode") or panel.get("mode")) == "html":
        content = _TAGS.sub("", content)
    return content.strip()


def _markdown_lines(content: str, width: int) -> list[tuple[str, bool]]:
    """(line, is_heading) with emphasis, code ticks and link targets dropped."""
    out: list[tuple[str, bool]] = []
    for raw in content.splitlines():
        heading = raw.lstrip().startswith("#")
        text = raw.lstrip().lstrip("#").strip() if heading else raw
        bullet = bool(re.match(r"^\s*[-*]\s+\S", text))
        text = _MARKUP.sub("", _LINK.sub(r"\1", text))
        if bullet:
            text = "• " + text
        wrapped = textwrap.wrap(text, width) or [""]
        out.extend((line, heading) for line in wrapped)
    return out


def draw_text(ctx: PanelContext) -> None:
    width = max(20, int(ctx.rect.width / 6.6))
    lines = _markdown_lines(text_content(ctx.panel), width)
    y = ctx.rect.top + 2
    for line, heading in lines:
        size = 12.0 if heading else 9.5
        if y + size * 1.6 > ctx.rect.bottom:
            ctx.text(ctx.rect.left + 2, y, "…", ha="left", va="top", fontsize=9.5, color=MUTED)
            break
        ctx.text(ctx.rect.left + 2, y, line, ha="left", va="top", fontsize=size, color=TEXT,
                 fontweight="bold" if heading else "normal")
        y += size * 1.75


def draw_row(fig: Figure, rect: Rect, title: str, fig_width: float, fig_height: float) -> None:
    left, bottom, width, height = rect.figure_fraction(fig_width, fig_height)
    fig.patches.append(Rectangle((left, bottom), width, height, transform=fig.transFigure,
                                 facecolor="#EEF1F5", edgecolor="none", zorder=-10))
    fig.text((rect.left + 10) / fig_width, 1.0 - (rect.top + rect.height / 2) / fig_height,
             title or "(row)", ha="left", va="center", fontsize=13, fontweight="bold",
             color=TEXT)


DRAWERS: dict[str, Callable[[PanelContext], None]] = {
    "timeseries": draw_timeseries,
    "status-history": draw_grid,
    "state-timeline": draw_grid,
    "heatmap": draw_grid,
    "stat": draw_stat,
    "bargauge": draw_bargauge,
    "gauge": draw_bargauge,  # a gauge's arc becomes a bar: same value, unit and colour
    "table": draw_table,
    "piechart": draw_piechart,
    "text": draw_text,
}


def new_figure(width_px: int, height_px: int) -> Figure:
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str, title: str) -> None:
    fig.savefig(path, format="png", dpi=DPI, facecolor="white",
                metadata={"Title": title, "Software": "drm-exporter renderer"})
    fig.clear()


def format_range(start: float, end: float) -> str:
    """"2024-05-01 10:00:00 → 11:00:00 UTC (1h)" for the PNG header."""
    fmt = "%Y-%m-%d %H:%M:%S"
    same_day = time.strftime("%Y-%m-%d", time.gmtime(start)) == \
        time.strftime("%Y-%m-%d", time.gmtime(end))
    first = time.strftime(fmt, time.gmtime(start))
    last = time.strftime("%H:%M:%S" if same_day else fmt, time.gmtime(end))
    return f"{first} → {last} UTC ({compact_duration(end - start)})"


def compact_duration(seconds: float) -> str:
    """``"1h"``, ``"1h30m"``, ``"2d"``: the largest two units, as Grafana's time picker shows."""
    parts = []
    remaining = round(seconds)
    for size, name in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if remaining >= size:
            parts.append(f"{remaining // size}{name}")
            remaining %= size
    return "".join(parts[:2]) or "0s"
