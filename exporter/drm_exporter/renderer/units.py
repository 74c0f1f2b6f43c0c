"""Value formatting by Grafana unit id (``fieldConfig.defaults.unit``).

Pure Python so the text a panel shows can be unit-tested without matplotlib. The unit ids and
scaling steps follow Grafana's value formats (``bytes`` is IEC, ``decbytes`` SI, ``short`` uses
K/Mil/Bil, ``currencyUSD`` uses K/M/B). An unknown unit is shown as a plain number followed by the
unit text, which is what Grafana does for a custom unit.
"""

from __future__ import annotations

import math
import time as _time

_SHORT = ("", " K", " Mil", " Bil", " Tri", " Quadr", " Quint")
_CURRENCY = ("", "K", "M", "B", "T")
_SI = ("p", "n", "µ", "m", "", "k", "M", "G", "T", "P", "E")  # index 4 is the base unit
_IEC_BYTES = (" B", " KiB", " MiB", " GiB", " TiB", " PiB", " EiB")
_SI_BYTES = (" B", " kB", " MB", " GB", " TB", " PB", " EB")

# unit id -> (scale kind, text); kinds: si (SI prefixes), short (K/Mil) or plain (no scaling).
_SUFFIXED = {
    "watt": ("si", "W"), "kwatt": ("si", "kW"), "watth": ("si", "Wh"), "kwatth": ("si", "kWh"),
    "volt": ("si", "V"), "amp": ("si", "A"), "hertz": ("si", "Hz"), "joule": ("si", "J"),
    "celsius": ("plain", "°C"), "fahrenheit": ("plain", "°F"), "kelvin": ("plain", "K"),
    "reqps": ("short", " req/s"), "rps": ("short", " rd/s"), "wps": ("short", " wr/s"),
    "iops": ("short", " io/s"), "ops": ("short", " ops/s"), "cps": ("short", " c/s"),
    "pps": ("short", " p/s"), "opm": ("short", " ops/min"), "rpm": ("short", " rd/min"),
}
_CURRENCY_SYMBOLS = {"currencyUSD": "$", "currencyEUR": "€", "currencyGBP": "£",
                     "currencyJPY": "¥", "currencyCHF": "CHF "}
_BYTES = {"bytes": (1024, _IEC_BYTES), "decbytes": (1000, _SI_BYTES),
          "bits": (1024, tuple(s.replace("B", "b") for s in _IEC_BYTES)),
          "decbits": (1000, tuple(s.replace("B", "b") for s in _SI_BYTES)),
          "Bps": (1000, tuple(s + "/s" for s in _SI_BYTES)),
          "binBps": (1024, tuple(s + "/s" for s in _IEC_BYTES)),
          "bps": (1000, tuple(s.replace("B", "b") + "/s" for s in _SI_BYTES)),
          "kbytes": (1024, _IEC_BYTES[1:]), "mbytes": (1024, _IEC_BYTES[2:]),
          "gbytes": (1024, _IEC_BYTES[3:])}
_BOOLEANS = {"bool": ("False", "True"), "bool_yes_no": ("No", "Yes"),
             "bool_on_off": ("Off", "On")}
# seconds per unit, largest first: how Grafana's "s" unit climbs from ms to years
_TIME_STEPS = ((31536000, " year"), (604800, " week"), (86400, " day"), (3600, " hour"),
               (60, " min"), (1, " s"))
_TIME_BASE = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
              "d": 86400.0, "dtdurations": 1.0, "dtdurationms": 1e-3}


def _number(x: float, decimals: int | None) -> str:
    if decimals is not None:
        return f"{x:.{max(0, decimals)}f}"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 100:
        digits = 0
    elif a >= 10:
        digits = 1
    elif a >= 1:
        digits = 2
    elif a >= 0.001:
        digits = 2 - int(math.floor(math.log10(a)))  # three significant figures
    else:
        return f"{x:.2g}"
    text = f"{x:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _scaled(x: float, base: int, suffixes: tuple[str, ...], decimals: int | None) -> str:
    i = 0
    while abs(x) >= base and i < len(suffixes) - 1:
        x /= base
        i += 1
    return _number(x, decimals) + suffixes[i]


def _money(x: float, decimals: int | None) -> str:
    """An amount as money is written: cents from $1 to $999.99 ("$2.00", "$12.50"); below $1
    the significant digits of :func:`_number` ("$0.0926"); K/M/B above."""
    if decimals is None and 1 <= round(x, 2) < 1000:
        return f"{x:.2f}"
    return _scaled(x, 1000, _CURRENCY, decimals)


def _si(x: float, unit: str, decimals: int | None) -> str:
    i = 4
    if x != 0:
        while abs(x) >= 1000 and i < len(_SI) - 1:
            x /= 1000
            i += 1
        while abs(x) < 1 and i > 0:
            x *= 1000
            i -= 1
    return f"{_number(x, decimals)} {_SI[i]}{unit}"


def _duration(seconds: float, decimals: int | None) -> str:
    a = abs(seconds)
    if a == 0:
        return "0 s"
    if a < 1e-6:
        return _number(seconds * 1e9, decimals) + " ns"
    if a < 1e-3:
        return _number(seconds * 1e6, decimals) + " µs"
    if a < 1:
        return _number(seconds * 1e3, decimals) + " ms"
    for size, name in _TIME_STEPS:
        if a >= size:
            return _number(seconds / size, decimals) + name
    return _number(seconds, decimals) + " s"  # unreachable: a >= 1 here


def _from_now(value_ms: float, now: float | None) -> str:
    delta = (now if now is not None else _time.time()) - value_ms / 1000.0
    ago = delta >= 0
    text = _duration(abs(delta), 0)
    return f"{text} ago" if ago else f"in {text}"


def format_value(value: float | None, unit: str | None = None, decimals: int | None = None,
                 *, now: float | None = None) -> str:
    """Format ``value`` the way a Grafana panel with ``unit`` shows it.

    ``now`` (Unix seconds) anchors ``dateTimeFromNow``; Grafana's date units take milliseconds.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    x = float(value)
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    unit = (unit or "none").strip()
    if unit in _BOOLEANS:
        return _BOOLEANS[unit][x != 0]
    if unit in ("none", "", "locale"):
        return _number(x, decimals)
    if unit == "short":
        return _scaled(x, 1000, _SHORT, decimals)
    if unit == "percentunit":
        return _number(x * 100, decimals) + "%"
    if unit == "percent":
        return _number(x, decimals) + "%"
    if unit in _BYTES:
        base, suffixes = _BYTES[unit]
        return _scaled(x, base, suffixes, decimals)
    if unit in _CURRENCY_SYMBOLS:
        sign = "-" if x < 0 else ""
        return sign + _CURRENCY_SYMBOLS[unit] + _money(abs(x), decimals)
    if unit in _TIME_BASE:
        return _duration(x * _TIME_BASE[unit], decimals)
    if unit == "dateTimeAsIso":
        return _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(x / 1000.0))
    if unit == "dateTimeFromNow":
        return _from_now(x, now)
    if unit in _SUFFIXED:
        kind, text = _SUFFIXED[unit]
        if kind == "si":
            return _si(x, text, decimals)
        if kind == "short":
            return _scaled(x, 1000, _SHORT, decimals) + text
        return _number(x, decimals) + text
    kind, _, custom = unit.partition(":")
    if custom:
        if kind == "suffix":
            return _number(x, decimals) + custom
        if kind == "prefix":
            return custom + _number(x, decimals)
        if kind == "si":
            return _si(x, custom, decimals)
        if kind == "currency":
            return ("-" if x < 0 else "") + custom + _money(abs(x), decimals)
        if kind == "count":
            return _scaled(x, 1000, _SHORT, decimals) + " " + custom
    return f"{_number(x, decimals)} {unit}"
