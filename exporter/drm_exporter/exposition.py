"""Prometheus text exposition (format 0.0.4) of immutable metric families.

Hand-written rather than prometheus_client's registry: families are rebuilt from the live
registry each tick (so a departed worker's series vanish without purge code) and a scrape only
formats a ready snapshot, once per snapshot however many scrapers ask.
"""

from __future__ import annotations

import gzip
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .metrics import MetricDef

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[tuple[str, ...], float]


@dataclass(frozen=True)
class Family:
    metric: MetricDef
    samples: tuple[Sample, ...]


def family(metric: MetricDef, samples: Iterable[Sample]) -> Family:
    out = tuple(samples)
    for labels, _ in out:
        if len(labels) != len(metric.labels):
            raise ValueError(f"{metric.name}: {len(labels)} label values for {metric.labels}")
    return Family(metric, out)


def escape_label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def format_text(families: Sequence[Family]) -> bytes:
    lines: list[str] = []
    for f in families:
        m = f.metric
        lines.append(f"# HELP {m.name} {_escape_help(m.help)}")
        lines.append(f"# TYPE {m.name} {m.type}")
        names = m.labels
        for labels, value in f.samples:
            if names:
                inner = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in zip(names, labels,
                                                                                 strict=True))
                lines.append(f"{m.name}{{{inner}}} {format_value(value)}")
            else:
                lines.append(f"{m.name} {format_value(value)}")
    lines.append("")
    return "\n".join(lines).encode("utf-8")


class SnapshotStore:
    """Holds the latest families; formats and compresses each version at most once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: tuple[Family, ...] = ()
        self._version = 0
        self._cache: dict[tuple[int, bool], bytes] = {}

    def publish(self, families: Iterable[Family]) -> None:
        fams = tuple(families)
        with self._lock:
            self._families = fams
            self._version += 1
            self._cache = {}

    @property
    def families(self) -> tuple[Family, ...]:
        return self._families

    def body(self, compressed: bool) -> bytes:
        with self._lock:
            key = (self._version, compressed)
            cached = self._cache.get(key)
            if cached is None:
                plain = self._cache.get((self._version, False))
                if plain is None:
                    plain = self._cache[(self._version, False)] = format_text(self._families)
                # Level 1: a 10x smaller body for a fraction of level 6's CPU.
                cached = gzip.compress(plain, compresslevel=1, mtime=0) if compressed else plain
                self._cache[key] = cached
            return cached
