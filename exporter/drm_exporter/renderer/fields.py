"""A panel's field config (``fieldConfig.defaults`` and ``options``) read into one dataclass.

Only what the renderer draws is read: unit, decimals, min/max, colour mode and thresholds, value
mappings, stacking and fill, the legend and the reducer. Overrides are not applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .units import format_value

# Grafana's named colours (light theme) so thresholds look as they do in Grafana.
GRAFANA_COLORS = {
    "green": "#73BF69", "semi-dark-green": "#56A64B", "dark-green": "#37872D",
    "light-green": "#96D98D", "super-light-green": "#C8F2C2",
    "red": "#F2495C", "semi-dark-red": "#E02F44", "dark-red": "#C4162A",
    "light-red": "#FF7383", "super-light-red": "#FFA6B0",
    "yellow": "#FADE2A", "semi-dark-yellow": "#F2CC0C", "dark-yellow": "#E0B400",
    "light-yellow": "#FFEE52",
    "orange": "#FF9830", "semi-dark-orange": "#FF780A", "dark-orange": "#FA6400",
    "light-orange": "#FFB357",
    "blue": "#5794F2", "semi-dark-blue": "#3274D9", "dark-blue": "#1F60C4",
    "light-blue": "#8AB8FF",
    "purple": "#B877D9", "semi-dark-purple": "#A352CC", "dark-purple": "#8F3BB8",
    "light-purple": "#CA95E5",
    "text": "#464C54", "transparent": "#FFFFFF00",
}
# Grafana's "classic palette", the default series colours.
CLASSIC_PALETTE = (
    "#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A9", "#705DA0",
    "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C", "#6D1F62", "#584477",
    "#B7DBAB", "#F4D598", "#70DBED", "#F9BA8F", "#F29191", "#82B5D8", "#E5A8E2", "#AEA2E0",
)
# Grafana colour schemes -> matplotlib colormaps
SCHEMES = {
    "continuous-GrYlRd": "RdYlGn_r", "continuous-RdYlGr": "RdYlGn", "continuous-BlYlRd": "RdYlBu_r",
    "continuous-YlRd": "YlOrRd", "continuous-BlPu": "BuPu", "continuous-YlBl": "YlGnBu",
    "continuous-blues": "Blues", "continuous-reds": "Reds", "continuous-greens": "Greens",
    "continuous-purples": "Purples", "continuous-viridis": "viridis",
}
DEFAULT_COLOR = "#1F60C4"


def grafana_color(name: str | None, default: str = DEFAULT_COLOR) -> str:
    """A hex colour for a Grafana colour name or CSS colour."""
    if not name:
        return default
    name = str(name)
    if name in GRAFANA_COLORS:
        return GRAFANA_COLORS[name]
    if name.startswith("#") or name.startswith("rgb"):
        return _css_rgb(name) if name.startswith("rgb") else name
    return default


def _css_rgb(text: str) -> str:
    try:
        parts = [float(p) for p in text[text.index("(") + 1:text.rindex(")")].split(",")][:3]
        return "#" + "".join(f"{max(0, min(255, round(p))):02X}" for p in parts)
    except ValueError:
        return DEFAULT_COLOR


@dataclass(frozen=True)
class Threshold:
    value: float  # -inf for Grafana's base step (value null)
    color: str


@dataclass(frozen=True)
class FieldConfig:
    unit: str | None = None
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    color_mode: str | None = None
    fixed_color: str | None = None
    thresholds: tuple[Threshold, ...] = ()
    thresholds_explicit: bool = False  # a panel that never set them gets no threshold colours
    thresholds_percentage: bool = False
    mappings: tuple[dict, ...] = ()
    stacking: str = "none"
    fill_opacity: float = 0.0
    line_width: float = 1.0
    calcs: tuple[str, ...] = ("lastNotNull",)
    legend_show: bool = True
    legend_calcs: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)

    @classmethod
    def from_panel(cls, panel: Mapping) -> FieldConfig:
        defaults = (panel.get("fieldConfig") or {}).get("defaults") or {}
        custom = defaults.get("custom") or {}
        options = dict(panel.get("options") or {})
        color = defaults.get("color") or {}
        thresholds_block = defaults.get("thresholds") or {}
        steps = []
        for step in thresholds_block.get("steps") or []:
            value = step.get("value")
            steps.append(Threshold(-math.inf if value is None else float(value),
                                   grafana_color(step.get("color"))))
        steps.sort(key=lambda t: t.value)
        legend = options.get("legend") or {}
        reduce = options.get("reduceOptions") or {}
        stacking = (custom.get("stacking") or {}).get("mode") or "none"
        decimals = defaults.get("decimals")
        return cls(
            unit=defaults.get("unit") or None,
            decimals=int(decimals) if decimals is not None else None,
            min=_number(defaults.get("min")),
            max=_number(defaults.get("max")),
            color_mode=color.get("mode"),
            fixed_color=grafana_color(color["fixedColor"]) if color.get("fixedColor") else None,
            thresholds=tuple(steps) or (Threshold(-math.inf, GRAFANA_COLORS["green"]),
                                        Threshold(80.0, GRAFANA_COLORS["red"])),
            thresholds_explicit=bool(steps),
            thresholds_percentage=thresholds_block.get("mode") == "percentage",
            mappings=tuple(m for m in defaults.get("mappings") or [] if isinstance(m, dict)),
            stacking=str(stacking),
            fill_opacity=float(custom.get("fillOpacity") or 0),
            line_width=float(custom.get("lineWidth") or 1),
            calcs=tuple(reduce.get("calcs") or ("lastNotNull",)),
            legend_show=legend.get("showLegend", True) is not False
            and legend.get("displayMode") != "hidden",
            legend_calcs=tuple(legend.get("calcs") or ()),
            options=options,
        )

    def format(self, value: float | None, *, now: float | None = None) -> str:
        text = self.map_text(value)
        return text if text is not None else format_value(value, self.unit, self.decimals,
                                                          now=now)

    def threshold_color(self, value: float, lo: float = 0.0, hi: float = 100.0) -> str:
        """The colour of the highest threshold step at or below ``value``."""
        chosen = self.thresholds[0].color
        for step in self.thresholds:
            limit = step.value
            if self.thresholds_percentage and math.isfinite(limit):
                limit = lo + (hi - lo) * limit / 100.0
            if value >= limit:
                chosen = step.color
        return chosen

    def _mapping_result(self, value: float | None) -> dict | None:
        if value is None:
            return None
        for mapping in self.mappings:
            kind = mapping.get("type")
            options = mapping.get("options") or {}
            if kind == "value":
                for key, result in options.items():
                    if _number(key) is not None and _number(key) == value:
                        return result
            elif kind == "range":
                lo, hi = _number(options.get("from")), _number(options.get("to"))
                if (lo is None or value >= lo) and (hi is None or value <= hi):
                    return options.get("result") or {}
            elif kind == "special" and isinstance(value, float) and math.isnan(value) \
                    and options.get("match") in ("nan", "null+nan"):
                return options.get("result") or {}
        return None

    def map_text(self, value: float | None) -> str | None:
        result = self._mapping_result(value)
        return result.get("text") if result and result.get("text") else None

    def map_color(self, value: float | None) -> str | None:
        result = self._mapping_result(value)
        return grafana_color(result["color"]) if result and result.get("color") else None

    def value_colors(self) -> list[tuple[float, str, str]]:
        """(value, colour, text) for each value mapping that sets a colour."""
        out = []
        for mapping in self.mappings:
            if mapping.get("type") != "value":
                continue
            for key, result in (mapping.get("options") or {}).items():
                number = _number(key)
                if number is not None and isinstance(result, dict) and result.get("color"):
                    out.append((number, grafana_color(result["color"]),
                                str(result.get("text") or key)))
        return out


def _number(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
