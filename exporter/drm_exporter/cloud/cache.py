"""The refreshers' memory across restarts: one JSON file holding, per source, the last good
result, when it was fetched, when the next call is due and how many requests today used.
A restart therefore neither calls a paid API again before its interval nor loses figures,
and a host without network still prices workers from the last catalog."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..prices import Price
from .types import BilledLine, BilledResult, CatalogPrices

log = logging.getLogger(__name__)

VERSION = 1


@dataclass
class SourceRecord:
    result: BilledResult | CatalogPrices | None = None
    success: bool | None = None  # None: never tried
    last_attempt: float | None = None  # unix time
    last_success: float | None = None
    next_due: float = 0.0  # unix time of the earliest next call
    day: str = ""  # the UTC day requests_today counts
    requests_today: int = 0
    pages_last: int = 0  # requests the last good refresh took (the cap check's estimate)
    failures: int = field(default=0)  # in a row, for the backoff


def _encode_result(r: BilledResult | CatalogPrices | None) -> dict[str, Any] | None:
    if isinstance(r, BilledResult):
        return {"kind": "billed", "lines": [asdict(x) for x in r.lines],
                "estimated": [[*k, v] for k, v in sorted(r.estimated.items())]}
    if isinstance(r, CatalogPrices):
        return {"kind": "catalog", "prices": [asdict(p) for p in r.prices]}
    return None


def _decode_result(d: dict[str, Any] | None) -> BilledResult | CatalogPrices | None:
    if d is None:
        return None
    if d["kind"] == "billed":
        return BilledResult(tuple(BilledLine(**x) for x in d["lines"]),
                            {(p, a, w): bool(v) for p, a, w, v in d["estimated"]})
    return CatalogPrices(tuple(Price(**p) for p in d["prices"]))


class CloudCache:
    """`path` None: memory only (nothing survives a restart)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("version") == VERSION:
                    self._records = dict(data.get("sources", {}))
            except (OSError, ValueError) as e:
                # A broken cache costs one refresh, never the start.
                log.warning("cloud cache %s unreadable (%s): starting without it", path, e)

    def load(self, key: str) -> SourceRecord:
        with self._lock:
            d = self._records.get(key)
        if d is None:
            return SourceRecord()
        try:
            d = dict(d)
            result = _decode_result(d.pop("result", None))
            return SourceRecord(result=result, **d)
        except (KeyError, TypeError, ValueError) as e:
            log.warning("cloud cache entry %s unreadable (%s): ignored", key, e)
            return SourceRecord()

    def save(self, key: str, rec: SourceRecord) -> None:
        d = asdict(rec)
        d["result"] = _encode_result(rec.result)
        with self._lock:
            self._records[key] = d
            if self.path is None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(json.dumps({"version": VERSION, "sources": self._records},
                                          indent=1, sort_keys=True), encoding="utf-8")
                os.replace(tmp, self.path)  # a crash leaves the old file or the new, never half
            except OSError as e:
                log.warning("cloud cache %s not written: %s", self.path, e)
