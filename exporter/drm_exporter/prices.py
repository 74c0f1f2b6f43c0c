"""The built-in price table: USD per hour, on-demand Linux list prices.

Taken on 2026-12-03 from the providers' public price pages for us-east-1 (AWS), us-central1
(GCP) and eastus (Azure), rounded to 4 decimals. They are approximate and region-blind: override
them in config (`cost.prices`) for your regions, discounts and commitments.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

PRICE_TABLE_DATE = "2026-12-03"


@dataclass(frozen=True)
class Price:
    provider: str
    instance_type: str
    usd_per_hour: float
    region: str = "*"  # "*" matches every region; a region-specific entry wins
    source: str = "static"


DEFAULT_PRICES: tuple[Price, ...] = (
    Price("aws", "m5.xlarge", 0.192),
    Price("aws", "m5.2xlarge", 0.384),
    Price("aws", "c5.2xlarge", 0.34),
    Price("aws", "g4dn.xlarge", 0.526),
    Price("aws", "g4dn.2xlarge", 0.752),
    Price("aws", "g5.xlarge", 1.006),
    Price("gcp", "n2-standard-4", 0.1942),
    Price("gcp", "n2-standard-8", 0.3885),
    Price("gcp", "g2-standard-8", 0.8536),
    Price("gcp", "g2-standard-24", 1.9965),
    Price("azure", "Standard_D4s_v5", 0.192),
    Price("azure", "Standard_D8s_v5", 0.384),
    Price("azure", "Standard_NC8as_T4_v3", 0.752),
)


class PriceBook:
    """Prices in three layers, first match wins: `overrides` (config `cost.prices`), then the
    catalog (refreshed in the background, cloud/refresher.py), then the built-in table. Config
    wins over the catalog because an operator who writes a price means it (discounts,
    commitments); the catalog wins over the built-in table because it is newer. Within a layer
    a region-specific entry wins over "*"."""

    def __init__(self, prices: tuple[Price, ...] = DEFAULT_PRICES,
                 overrides: tuple[Price, ...] = ()) -> None:
        self._base = _index(prices)
        self._overrides = _index(overrides)
        self._catalog: dict[tuple[str, str, str], Price] = {}
        # The catalog is swapped from a refresher thread while the engine looks prices up.
        self._lock = threading.Lock()

    def set_catalog(self, prices: tuple[Price, ...]) -> None:
        """Replace the catalog layer as a whole (a refresh returns every price it knows)."""
        catalog = _index(prices)
        with self._lock:
            self._catalog = catalog

    def lookup(self, provider: str, region: str, instance_type: str) -> Price | None:
        with self._lock:
            layers = (self._overrides, self._catalog, self._base)
        for layer in layers:
            p = (layer.get((provider, instance_type, region))
                 or layer.get((provider, instance_type, "*")))
            if p is not None:
                return p
        return None


def _index(prices: tuple[Price, ...]) -> dict[tuple[str, str, str], Price]:
    out: dict[tuple[str, str, str], Price] = {}
    for p in prices:
        if p.usd_per_hour < 0:
            raise ValueError(f"negative price for {p.provider}/{p.instance_type}")
        out[(p.provider, p.instance_type, p.region)] = p
    return out
