"""Grafana template variables in PromQL, substituted without a Grafana server.

Grafana rewrites a panel's query before it reaches Prometheus; this module does the same:

* ``$datasource`` / ``${datasource}`` (and any variable of type ``datasource``, or named ``DS_*``)
  become the empty string: the renderer talks to one Prometheus, so there is nothing to select.
* Dashboard variables (``$job``, ``${pool}``, ``${worker:regex}``, ``[[worker]]``) take the value
  given by the caller, else the variable's "All" value: its ``allValue`` when set, otherwise
  ``.*``. ``job``, ``pool`` and ``worker`` are always known, even in a dashboard that does not
  declare them. Constants take their value; interval variables their current value.
* Built-ins follow Grafana's Prometheus data source: ``$__interval`` is the step,
  ``$__rate_interval`` is ``max(4 × scrape interval, step + scrape interval)``, ``$__range`` is
  ``"<N>s"``, ``$__range_s`` is ``N``; the ``_ms`` forms and ``$__from``/``$__to`` are
  milliseconds.

A ``$name`` that names no known variable is left alone, as Grafana does, so ``"$1"`` in
``label_replace`` survives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ALL_VALUE = ".*"
DEFAULT_VARIABLES = ("job", "pool", "worker")
DISPLAY_ALL = "All"

# Grafana's variable regex: $name | [[name:format]] | ${name.fieldPath:format}
_VARIABLE_RE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}"
)
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
                   "w": 604800.0, "y": 31536000.0}
# Characters Prometheus' RE2 treats specially; escaped with a doubled backslash because the
# value lands inside a double-quoted PromQL string (Grafana's prometheusSpecialRegexEscape).
_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")

Value = str | Sequence[str] | None


def format_duration(seconds: float) -> str:
    """A PromQL duration: whole seconds as ``"60s"``, anything finer in milliseconds."""
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {seconds}")
    if abs(seconds - round(seconds)) < 1e-9:
        return f"{round(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus/Grafana duration such as ``"1m30s"``, ``"15s"`` or ``"500ms"``."""
    text = text.strip().lstrip(">")  # Grafana's min-interval field accepts a leading ">"
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"not a duration: {text!r}")
    return total


def choose_step(start: float, end: float, max_points: int, min_step: float) -> float:
    """The range-query step Grafana would pick: range ÷ max data points, at least ``min_step``.

    Rounded up to whole seconds so ``$__interval`` stays a clean PromQL duration.
    """
    if end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    raw = (end - start) / max(1, max_points)
    step = max(min_step, raw)
    return float(math.ceil(step)) if step >= 1 else step


@dataclass(frozen=True)
class TimeContext:
    """The time range of one query, from which Grafana's ``$__*`` built-ins are derived."""

    start: float
    end: float
    step: float
    scrape_interval_s: float = 15.0

    @property
    def rate_interval_s(self) -> float:
        return max(4 * self.scrape_interval_s, self.step + self.scrape_interval_s)

    @property
    def range_s(self) -> int:
        return round(self.end - self.start)

    def builtins(self) -> dict[str, str]:
        step_ms = round(self.step * 1000)
        return {
            "__interval": format_duration(self.step),
            "__interval_ms": str(step_ms),
            "__rate_interval": format_duration(self.rate_interval_s),
            "__rate_interval_ms": str(round(self.rate_interval_s * 1000)),
            "__range": f"{self.range_s}s",
            "__range_s": str(self.range_s),
            "__range_ms": str(self.range_s * 1000),
            "__from": str(round(self.start * 1000)),
            "__to": str(round(self.end * 1000)),
        }


def _regex_escape(value: str) -> str:
    value = value.replace("\\", "\\\\\\\\")
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value)


def _format_value(value: Value, fmt: str | None, all_value: str) -> str:
    if value is None:  # "All": Grafana inserts the all value as is, whatever the format
        return all_value
    values = [value] if isinstance(value, str) else [str(v) for v in value]
    if fmt in ("csv", "raw", "text"):
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "glob":
        return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"
    if fmt == "json":
        return "[" + ",".join('"' + v.replace('"', '\\"') + '"' for v in values) + "]"
    if fmt == "regex" or len(values) > 1 or not isinstance(value, str):
        escaped = [_regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    return values[0]  # a single value given as a string, default format: inserted as is


@dataclass(frozen=True)
class Variables:
    """What each variable of one dashboard stands for: a value, a list, or ``None`` for "All"."""

    values: Mapping[str, Value] = field(default_factory=dict)
    all_values: Mapping[str, str] = field(default_factory=dict)
    blank: frozenset[str] = frozenset({"datasource"})

    @classmethod
    def from_dashboard(cls, dashboard: Mapping | None,
                       given: Mapping[str, Value] | None = None) -> Variables:
        values: dict[str, Value] = dict.fromkeys(DEFAULT_VARIABLES)
        all_values: dict[str, str] = {}
        blank = {"datasource"}
        templating = (dashboard or {}).get("templating") or {}
        for var in templating.get("list") or []:
            name = var.get("name")
            if not name:
                continue
            kind = var.get("type")
            if kind == "datasource":
                blank.add(name)
                continue
            values[name] = None
            current = var.get("current") or {}
            current_value = current.get("value")
            if kind == "constant":
                values[name] = str(var.get("query") or current_value or "")
            elif kind in ("interval", "textbox") and isinstance(current_value, str) \
                    and current_value and not current_value.startswith("$__auto"):
                values[name] = current_value
            if var.get("allValue"):
                all_values[name] = str(var["allValue"])
        for name, value in (given or {}).items():
            values[name] = value
        return cls(values=values, all_values=all_values, blank=frozenset(blank))

    def _lookup(self, name: str, fmt: str | None, time: TimeContext | None,
                display: bool) -> str | None:
        if name in self.blank or name.startswith("DS_"):
            return ""
        if time is not None and name.startswith("__"):
            return time.builtins().get(name)
        if name not in self.values:
            return None
        value = self.values[name]
        if display:
            if value is None:
                return DISPLAY_ALL
            return value if isinstance(value, str) else " + ".join(map(str, value))
        return _format_value(value, fmt, self.all_values.get(name, ALL_VALUE))

    def _replace(self, text: str, time: TimeContext | None, display: bool) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2) or match.group(4)
            fmt = match.group(3) or match.group(6)
            replacement = self._lookup(name, fmt, time, display)
            return match.group(0) if replacement is None else replacement

        return _VARIABLE_RE.sub(one, text)

    def substitute(self, expr: str, time: TimeContext | None = None) -> str:
        """``expr`` as Prometheus should receive it."""
        return self._replace(expr, time, display=False)

    def display(self, text: str) -> str:
        """``text`` (a panel title) as Grafana shows it: "All" rather than ``.*``."""
        return self._replace(text, None, display=True)

    def describe(self) -> str:
        """One line naming each user-facing variable and its value, for the PNG header."""
        parts = []
        for name, value in self.values.items():
            if value is None:
                shown = DISPLAY_ALL
            elif isinstance(value, str):
                shown = value
            else:
                shown = "+".join(map(str, value))
            parts.append(f"{name}={shown}")
        return ", ".join(parts)


def substitute(expr: str, time: TimeContext, values: Mapping[str, Value] | None = None,
               dashboard: Mapping | None = None) -> str:
    """Substitute every variable in ``expr``; see the module docstring for the rules."""
    return Variables.from_dashboard(dashboard, values).substitute(expr, time)
