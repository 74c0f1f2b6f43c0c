"""A panel's field config (``fieldConfig.defaults``, ``overrides`` and ``options``) read into one
dataclass.

Only what the renderer draws is read: unit, decimals, min/max, display name, colour mode and
thresholds, value mappings, stacking, draw style, line style, fill and transform, the legend and
the reducer. ``fieldConfig.overrides`` are kept as :class:`Override` rules;
:meth:`FieldConfig.for_field` applies the ones whose matcher picks a series (``byName``,
``byNames``, ``byRegexp``, ``byFrameRefID``, ``byType``) in order, later rules winning, as Grafana
does.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

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
    "super-light-yellow": "#FFF899", "super-light-orange": "#FFCB7D",
    "super-light-blue": "#C0D8FF", "super-light-purple": "#DEB6F2",
    "text": "#464C54", "transparent": "#FFFFFF00",
    # CSS names Grafana's colour picker also accepts
    "white": "#FFFFFF", "black": "#000000", "gray": "#808080", "grey": "#808080",
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
    name = str(name).strip()
    if name in GRAFANA_COLORS:
        return GRAFANA_COLORS[name]
    if name.lower() in GRAFANA_COLORS:
        return GRAFANA_COLORS[name.lower()]
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
class Override:
    """One ``fieldConfig.overrides`` rule: a matcher and the properties it sets."""

    matcher: str
    options: object
    properties: tuple[tuple[str, object], ...]

    def matches(self, name: str, ref_id: str | None) -> bool:
        if self.matcher == "byName":
            return isinstance(self.options, str) and self.options == name
        if self.matcher == "byNames":
            opts = self.options if isinstance(self.options, Mapping) else {}
            names = [str(n) for n in opts.get("names") or []]
            found = name in names
            return not found if opts.get("mode") == "exclude" else found
        if self.matcher == "byRegexp":
            pattern = _js_regex(str(self.options or ""))
            return bool(pattern and pattern.search(name))
        if self.matcher == "byFrameRefID":
            return ref_id is not None and str(self.options) == ref_id
        if self.matcher == "byType":
            return self.options == "number"  # every value the renderer draws is a number
        return False  # byValue and other matchers are not evaluated


@functools.lru_cache(maxsize=256)
def _js_regex(text: str) -> re.Pattern[str] | None:
    """A JavaScript regex as Grafana takes it: ``pattern`` or ``/pattern/flags``."""
    flags = 0
    match = re.fullmatch(r"/(.*)/([a-z]*)", text, flags=re.DOTALL)
    if match:
        text = match.group(1)
        flags = re.IGNORECASE if "i" in match.group(2) else 0
    try:
        return re.compile(text, flags)
    except re.error:
        return None


def _thresholds(block: Mapping) -> tuple[Threshold, ...]:
    steps = []
    for step in block.get("steps") or []:
        value = step.get("value")
        steps.append(Threshold(-math.inf if value is None else float(value),
                               grafana_color(step.get("color"))))
    steps.sort(key=lambda t: t.value)
    return tuple(steps)


_LABEL_VAR = re.compile(r"\$\{__field\.labels\.([\w.]+)\}")
_NAME_VAR = re.compile(r"\$\{__(?:series\.name|field\.name|field\.displayName)\}")


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
    stack_group: str = "A"
    fill_opacity: float = 0.0
    line_width: float = 1.0
    draw_style: str = "line"  # line | bars | points
    line_style: str = "solid"  # solid | dash | dot
    dash: tuple[float, ...] = ()  # Grafana's dash pattern in pixels, e.g. (10, 10)
    transform: str | None = None  # "negative-Y" draws the series below zero
    display_name: str | None = None
    hide_viz: bool = False
    hide_legend: bool = False
    bar_width_factor: float = 0.6
    bar_alignment: int = 0  # -1 bar before the time, 0 centred, 1 after
    calcs: tuple[str, ...] = ("lastNotNull",)
    legend_show: bool = True
    legend_calcs: tuple[str, ...] = ()
    options: dict = field(default_factory=dict)
    overrides: tuple[Override, ...] = ()

    @classmethod
    def from_panel(cls, panel: Mapping) -> FieldConfig:
        field_config = panel.get("fieldConfig") or {}
        defaults = field_config.get("defaults") or {}
        custom = defaults.get("custom") or {}
        options = dict(panel.get("options") or {})
        color = defaults.get("color") or {}
        thresholds_block = defaults.get("thresholds") or {}
        steps = _thresholds(thresholds_block)
        legend = options.get("legend") or {}
        reduce = options.get("reduceOptions") or {}
        stacking_block = custom.get("stacking") or {}
        stacking = stacking_block.get("mode") or "none"
        decimals = defaults.get("decimals")
        line_style = custom.get("lineStyle") or {}
        hide = custom.get("hideFrom") or {}
        overrides = []
        for rule in field_config.get("overrides") or []:
            if not isinstance(rule, Mapping):
                continue
            matcher = rule.get("matcher") or {}
            props = tuple((str(p.get("id")), p.get("value"))
                          for p in rule.get("properties") or []
                          if isinstance(p, Mapping) and p.get("id"))
            if isinstance(matcher, Mapping) and matcher.get("id") and props:
                overrides.append(Override(str(matcher["id"]), matcher.get("options"), props))
        return cls(
            unit=defaults.get("unit") or None,
            decimals=int(decimals) if decimals is not None else None,
            min=_number(defaults.get("min")),
            max=_number(defaults.get("max")),
            color_mode=color.get("mode"),
            fixed_color=grafana_color(color["fixedColor"]) if color.get("fixedColor") else None,
            thresholds=steps or (Threshold(-math.inf, GRAFANA_COLORS["green"]),
                                 Threshold(80.0, GRAFANA_COLORS["red"])),
            thresholds_explicit=bool(steps),
            thresholds_percentage=thresholds_block.get("mode") == "percentage",
            mappings=tuple(m for m in defaults.get("mappings") or [] if isinstance(m, dict)),
            stacking=str(stacking),
            stack_group=str(stacking_block.get("group") or "A"),
            fill_opacity=float(custom.get("fillOpacity") or 0),
            line_width=float(custom.get("lineWidth") or 1),
            draw_style=str(custom.get("drawStyle") or "line"),
            line_style=str(line_style.get("fill") or "solid"),
            dash=_dash(line_style.get("dash")),
            transform=custom.get("transform") or None,
            display_name=defaults.get("displayName") or None,
            hide_viz=bool(hide.get("viz")),
            hide_legend=bool(hide.get("legend")),
            bar_width_factor=_number(custom.get("barWidthFactor")) or 0.6,
            bar_alignment=int(_number(custom.get("barAlignment")) or 0),
            calcs=tuple(reduce.get("calcs") or ("lastNotNull",)),
            legend_show=legend.get("showLegend", True) is not False
            and legend.get("displayMode") != "hidden",
            legend_calcs=tuple(legend.get("calcs") or ()),
            options=options,
            overrides=tuple(overrides),
        )

    def display(self, name: str, labels: Mapping[str, str] | None = None) -> str:
        """The name Grafana shows for a series: ``displayName`` (with ``${__field.labels.x}``
        filled in) when set, else the legend text ``name``."""
        if not self.display_name:
            return name
        text = _LABEL_VAR.sub(lambda m: str((labels or {}).get(m.group(1), "")),
                              self.display_name)
        return _NAME_VAR.sub(lambda _m: name, text)

    def for_field(self, name: str, ref_id: str | None = None,
                  labels: Mapping[str, str] | None = None) -> FieldConfig:
        """This config with the overrides that match the series applied.

        ``name`` is the series' legend text; matchers compare against its display name (the
        panel default ``displayName`` filled in, else the legend text) and ``ref_id`` is the
        query's ``refId``. The result carries the final display name in :attr:`display_name`,
        so :meth:`display` gives the name to draw.
        """
        shown = self.display(name, labels)
        base = replace(self, display_name=shown) if self.display_name else self
        matching = [rule for rule in self.overrides if rule.matches(shown, ref_id)
                    or (shown != name and rule.matches(name, ref_id))]
        if not matching:
            return base
        changes: dict[str, object] = {}
        for rule in matching:
            for prop, value in rule.properties:
                changes.update(_property_changes(prop, value))
        result = replace(base, **changes)  # type: ignore[arg-type]
        if "display_name" in changes:
            result = replace(result, display_name=result.display(name, labels))
        return result

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


def _dash(value: object) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        return ()
    numbers = [_number(v) for v in value]
    return tuple(n for n in numbers if n is not None and n >= 0)


def _property_changes(prop: str, value: object) -> dict[str, object]:
    """FieldConfig fields set by one override property (unknown properties set nothing)."""
    block = value if isinstance(value, Mapping) else {}
    if prop == "unit":
        return {"unit": str(value) if value else None}
    if prop == "decimals":
        number = _number(value)
        return {"decimals": int(number) if number is not None else None}
    if prop in ("min", "max"):
        return {prop: _number(value)}
    if prop in ("displayName", "displayNameFromDS"):
        return {"display_name": str(value) if value else None}
    if prop == "color":
        fixed = block.get("fixedColor")
        return {"color_mode": block.get("mode") or None,
                "fixed_color": grafana_color(fixed) if fixed else None}
    if prop == "thresholds":
        steps = _thresholds(block)
        return {"thresholds": steps, "thresholds_explicit": True,
                "thresholds_percentage": block.get("mode") == "percentage"} if steps else {}
    if prop == "mappings":
        items = value if isinstance(value, list | tuple) else []
        return {"mappings": tuple(m for m in items if isinstance(m, dict))}
    if prop == "custom.transform":
        return {"transform": str(value) if value else None}
    if prop == "custom.lineStyle":
        return {"line_style": str(block.get("fill") or "solid"), "dash": _dash(block.get("dash"))}
    if prop == "custom.stacking":
        return {"stacking": str(block.get("mode") or "none"),
                "stack_group": str(block.get("group") or "A")}
    if prop == "custom.fillOpacity":
        return {"fill_opacity": float(_number(value) or 0)}
    if prop == "custom.lineWidth":
        return {"line_width": float(_number(value) or 1)}
    if prop == "custom.drawStyle":
        return {"draw_style": str(value or "line")}
    if prop == "custom.hideFrom":
        return {"hide_viz": bool(block.get("viz")), "hide_legend": bool(block.get("legend"))}
    if prop == "custom.barWidthFactor":
        return {"bar_width_factor": _number(value) or 0.6}
    return {}


def _number(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
