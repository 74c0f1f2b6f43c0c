"""The leash (refresher, cache, cap) and the accrued-cost meter, on a simulated clock."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import spec

from drm_exporter.clock import ManualClock
from drm_exporter.cloud.cache import CloudCache
from drm_exporter.cloud.refresher import CloudRefreshers, Leash, Refresher
from drm_exporter.cloud.types import BilledLine, BilledResult, CatalogPrices, Record
from drm_exporter.engine import Engine, EngineSettings
from drm_exporter.prices import Price, PriceBook
from drm_exporter.snapshot import build_families

START = datetime(2026, 12, 3, 9, 30, tzinfo=UTC).timestamp()


pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network


class PagedSource:
    provider, source, api = "aws", "billing", "ce:GetCostAndUsage"

    def __init__(self, pages: int = 2) -> None:
        self.pages, self.calls = pages, 0

    def fetch(self, now: datetime, record: Record) -> BilledResult:
        for _ in range(self.pages):
            self.calls += 1
            record(self.api, "ok")
        return BilledResult((BilledLine("aws", "1", "EC2", "yesterday", "USD", 3.5),),
                            {("aws", "1", "yesterday"): False})


def test_a_day_of_scrapes_calls_on_the_schedule_only(tmp_path: Path) -> None:
    clock = ManualClock(START)
    src = PagedSource(pages=2)
    group = CloudRefreshers([Refresher(src, Leash(8 * 3600, 20), CloudCache(tmp_path / "c"),
                                       clock)])
    engine = Engine(clock=clock)
    stop = threading.Event()
    scrapes = [0, 0]

    def scraper(i: int) -> None:
        while not stop.is_set():
            build_families(engine.view(), {}, None, group.view())
            scrapes[i] += 1

    threads = [threading.Thread(target=scraper, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(86400 // 15):  # the main scraper, every 15 s of simulated time
            group.refreshers[0].step()
            build_families(engine.view(), {}, None, group.view())
            clock.advance(15)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert min(scrapes) > 0
    assert src.calls == 3 * 2  # at 0 h, 8 h, 16 h; two pages each
    assert group.view().requests[("aws", "ce:GetCostAndUsage", "ok")] == 6


def test_restart_with_cache_neither_calls_nor_forgets(tmp_path: Path) -> None:
    clock = ManualClock(START)
    src = PagedSource()
    Refresher(src, Leash(8 * 3600, 20), CloudCache(tmp_path / "c.json"), clock).step()
    clock.advance(3600)
    again = PagedSource()
    r = Refresher(again, Leash(8 * 3600, 20), CloudCache(tmp_path / "c.json"), clock)
    assert r.step() == pytest.approx(7 * 3600)
    assert again.calls == 0
    v = CloudRefreshers([r]).view()
    assert [b.amount for b in v.billed] == [3.5]
    assert v.last_success == {("aws", "billing"): START}


def test_daily_cap() -> None:
    clock = ManualClock(START)
    src = PagedSource(pages=3)
    r = Refresher(src, Leash(3600, 7), CloudCache(None), clock)
    per_day: dict[str, int] = {}
    for _ in range(72):  # three days, hourly
        before = src.calls
        r.step()
        day = datetime.fromtimestamp(clock.time(), UTC).date().isoformat()
        per_day[day] = per_day.get(day, 0) + src.calls - before
        clock.advance(3600)
    # three pages a refresh, seven a day: two refreshes fit, a third would pass the cap
    assert list(per_day.values())[1:3] == [6, 6]
    assert max(per_day.values()) <= 7


def test_catalog_prices_sit_between_config_and_built_in_table() -> None:
    book = PriceBook((Price("gcp", "n2-standard-4", 0.19),),
                     overrides=(Price("gcp", "n2-standard-4", 0.10, "europe-west1"),))
    book.set_catalog((Price("gcp", "n2-standard-4", 0.2, "us-central1", "catalog"),))
    assert book.lookup("gcp", "us-central1", "n2-standard-4").source == "catalog"
    assert book.lookup("gcp", "europe-west1", "n2-standard-4").usd_per_hour == 0.10
    assert book.lookup("gcp", "asia-east1", "n2-standard-4").usd_per_hour == 0.19

    class Catalog:
        provider, source, api = "gcp", "catalog", "cloudbilling:list_skus"

        def fetch(self, now: datetime, record: Record) -> CatalogPrices:
            record(self.api, "ok")
            return CatalogPrices((Price("gcp", "g2-standard-8", 0.9, "us-central1",
                                        "catalog"),))

    Refresher(Catalog(), Leash(86400, 5), CloudCache(None), ManualClock(START),
              on_catalog=lambda c: book.set_catalog(c.prices)).step()
    assert book.lookup("gcp", "us-central1", "g2-standard-8").usd_per_hour == 0.9


def test_accrual_to_the_cent_with_a_join_and_a_leave() -> None:
    clock = ManualClock(START)
    book = PriceBook((Price("aws", "m5.2xlarge", 0.384), Price("aws", "g5.xlarge", 1.006)))
    engine = Engine(settings=EngineSettings(heartbeat_timeout_s=120, worker_expiry_s=10**6),
                    prices=book, clock=clock)
    engine.register(spec("a"))
    engine.register(spec("b"))
    for minute in range(240):  # four hours, a tick a minute
        if minute == 60:
            engine.register(spec("g", pool="gpu", instance_type="g5.xlarge"))
        if minute == 180:
            engine.tick()
            engine.deregister("b")
        clock.advance(60)
        for w in engine.workers():
            engine.report(w, engine_usage())
        engine.tick()
    cost = engine.view().cost_usd
    m5 = cost[("aws", "us-east-1", "m5.2xlarge", "cpu")]
    g5 = cost[("aws", "us-east-1", "g5.xlarge", "gpu")]
    assert round(m5, 2) == round(0.384 * (4 + 3), 2)  # a: 4 h, b: 3 h
    assert round(g5, 2) == round(1.006 * 3, 2)  # joined at 1 h
    assert round(m5 + g5, 2) == 5.71


def engine_usage():
    from drm_exporter.fleet import Usage

    return Usage()


def test_service_with_every_provider_configured_but_no_credentials(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real wiring: config → refreshers → /metrics. Offline and without credentials every
    provider fails, and that shows as data (success 0, error counted) while /metrics serves."""
    import time
    import urllib.request

    from drm_exporter.config import load_config
    from drm_exporter.service import Service

    for var in ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AZURE_CLIENT_ID",
                "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = load_config(f"""
listen_address: 127.0.0.1:0
host_worker: {{enabled: false}}
cloud:
  cache_file: {tmp_path / 'cloud.json'}
  aws: {{}}
  azure: {{scopes: [/subscriptions/00000000-0000-0000-0000-000000000000]}}
  gcp: {{regions: [us-central1]}}
""", "cloud.yml")
    svc = Service(cfg)
    svc.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            svc.publish()
            with urllib.request.urlopen(f"http://127.0.0.1:{svc.http.port}/metrics",
                                        timeout=5) as r:
                text = r.read().decode()
            ok = [ln for ln in text.splitlines() if ln.startswith("drm_cloud_refresh_success")]
            if len(ok) == 3:
                break
            assert time.monotonic() < deadline, text[-2000:]
            time.sleep(0.5)
        assert all(float(ln.rsplit(" ", 1)[1]) == 0 for ln in ok), ok
        assert {p for p in ("aws", "azure", "gcp") if f'provider="{p}"' in " ".join(ok)} == {
            "aws", "azure", "gcp"}
        assert "drm_cloud_billed_cost{" not in text  # never a made-up figure
    finally:
        svc.stop()
