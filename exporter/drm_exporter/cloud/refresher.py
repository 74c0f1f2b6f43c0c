"""Paid calls on a leash: each configured source refreshes on its own background thread,
never inside a scrape, at most once per minimum interval and within a daily request cap,
backing off when throttled. On failure the last good values stay and refresh_success says 0.

Exposition it feeds:

    drm_cloud_api_requests_total{provider="aws",api="ce:GetCostAndUsage",outcome="ok"} 4
    drm_cloud_refresh_success{provider="aws",source="billing"} 1
    drm_cloud_refresh_last_success_timestamp_seconds{provider="aws",source="billing"} 1.7e9

Timing uses wall time (clock.time()), because it must survive a restart through the cache.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from ..clock import Clock, SystemClock
from .cache import CloudCache, SourceRecord
from .types import BilledLine, BilledResult, CatalogPrices, Source, SourceError, Throttled

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "error", "throttled")


@dataclass(frozen=True)
class Leash:
    min_interval_s: float
    daily_request_cap: int
    # The first retry after a failure; doubles per failure in a row, never past min_interval_s.
    backoff_s: float = 900.0


@dataclass(frozen=True)
class CloudView:
    """What a scrape shows, copied under the refreshers' locks."""
    billed: tuple[BilledLine, ...] = ()
    estimated: dict[tuple[str, str, str], bool] = field(default_factory=dict)
    requests: dict[tuple[str, str, str], int] = field(default_factory=dict)
    success: dict[tuple[str, str], bool] = field(default_factory=dict)
    last_success: dict[tuple[str, str], float] = field(default_factory=dict)


def _utc_day(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC).replace(hour=0, minute=0, second=0,
                                                            microsecond=0)


class Refresher:
    def __init__(self, source: Source, leash: Leash, cache: CloudCache,
                 clock: Clock | None = None,
                 on_catalog: Callable[[CatalogPrices], None] | None = None,
                 sleep: Callable[[float], bool] | None = None) -> None:
        """`on_catalog` receives every good catalog (the cached one at once, so a restart
        without network still prices workers). `sleep(seconds)` returns True to stop; the
        default waits on the stop event, tests pass one that advances a ManualClock."""
        self.source, self.leash, self._cache = source, leash, cache
        self._clock = clock or SystemClock()
        self._on_catalog = on_catalog
        self.key = f"{source.provider}/{source.source}"
        self._lock = threading.Lock()
        self._rec = cache.load(self.key)
        self._requests: dict[tuple[str, str], int] = {(source.api, o): 0 for o in OUTCOMES}
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait
        self._thread: threading.Thread | None = None
        if isinstance(self._rec.result, CatalogPrices) and on_catalog is not None:
            on_catalog(self._rec.result)

    def record(self) -> SourceRecord:
        with self._lock:
            return replace(self._rec)

    def requests(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._requests)

    def step(self) -> float:
        """Refresh when due and the cap allows; returns the seconds until the next check."""
        now = self._clock.time()
        day = _utc_day(now)
        with self._lock:
            if self._rec.day != day.date().isoformat():
                self._rec.day, self._rec.requests_today = day.date().isoformat(), 0
            if now < self._rec.next_due:
                return self._rec.next_due - now
            # Start only if the pages the last refresh took still fit under today's cap.
            if self._rec.requests_today + max(1, self._rec.pages_last) \
                    > self.leash.daily_request_cap:
                return ((day + timedelta(days=1)).timestamp() - now) or 1.0
        pages = 0

        def record(api: str, outcome: str) -> None:
            nonlocal pages
            pages += 1
            with self._lock:
                self._requests[(api, outcome)] = self._requests.get((api, outcome), 0) + 1
                self._rec.requests_today += 1

        result: BilledResult | CatalogPrices | None = None
        retry_after: float | None = None
        try:
            result = self.source.fetch(datetime.fromtimestamp(now, UTC), record)
        except Throttled as e:
            retry_after = e.retry_after_s
            log.warning("%s refresh throttled: %s", self.key, e)
        except SourceError as e:
            log.warning("%s refresh failed: %s", self.key, e)
        except Exception:  # a bug in a source must not end its thread
            log.exception("%s refresh failed", self.key)
        with self._lock:
            rec = self._rec
            rec.last_attempt = now
            if result is not None:
                rec.result, rec.success, rec.last_success = result, True, now
                rec.pages_last, rec.failures = pages, 0
                rec.next_due = now + self.leash.min_interval_s
            else:
                rec.success = False
                backoff = min(self.leash.backoff_s * 2 ** rec.failures,
                              self.leash.min_interval_s)
                rec.failures += 1
                rec.next_due = now + (retry_after if retry_after is not None else backoff)
            self._cache.save(self.key, rec)
            delay = rec.next_due - now
        if isinstance(result, CatalogPrices) and self._on_catalog is not None:
            self._on_catalog(result)
        return delay

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.step()
            except Exception:  # e.g. the cache's disk: try again later, never die
                log.exception("%s refresher step failed", self.key)
                delay = self.leash.backoff_s
            if self._sleep(max(delay, 1.0)):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"cloud-{self.key}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


class CloudRefreshers:
    """Every configured source's refresher, and the view scrapes read."""

    def __init__(self, refreshers: list[Refresher]) -> None:
        self.refreshers = refreshers

    def start(self) -> None:
        for r in self.refreshers:
            r.start()

    def stop(self) -> None:
        for r in self.refreshers:
            r.stop()

    def view(self) -> CloudView:
        billed: list[BilledLine] = []
        estimated: dict[tuple[str, str, str], bool] = {}
        requests: dict[tuple[str, str, str], int] = {}
        success: dict[tuple[str, str], bool] = {}
        last: dict[tuple[str, str], float] = {}
        for r in self.refreshers:
            rec = r.record()
            p, s = r.source.provider, r.source.source
            for (api, outcome), n in r.requests().items():
                requests[(p, api, outcome)] = requests.get((p, api, outcome), 0) + n
            if rec.success is not None:
                success[(p, s)] = rec.success
            if rec.last_success is not None:
                last[(p, s)] = rec.last_success
            if isinstance(rec.result, BilledResult):
                billed.extend(rec.result.lines)
                estimated.update(rec.result.estimated)
        return CloudView(tuple(billed), estimated, requests, success, last)
