"""What every cloud source returns, and how it fails. Sources only fetch; the refresher
(cloud/refresher.py) decides when, caches on disk and counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ..prices import Price

WINDOWS = ("month_to_date", "yesterday")

# record(api, outcome) is called once per HTTP request or page, outcome in ok|error|throttled.
Record = Callable[[str, str], None]


@dataclass(frozen=True)
class BilledLine:
    provider: str
    account: str
    service: str
    window: str  # one of WINDOWS
    currency: str
    amount: float


@dataclass(frozen=True)
class BilledResult:
    lines: tuple[BilledLine, ...]
    # (provider, account, window) -> the provider marks the figure as estimated
    estimated: dict[tuple[str, str, str], bool]


@dataclass(frozen=True)
class CatalogPrices:
    prices: tuple[Price, ...]  # source="catalog"


class Throttled(Exception):
    """The provider asked us to slow down; retry_after_s when it said how long."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SourceError(Exception):
    """The call failed (permissions, bad scope, network); the message names what to fix and
    never holds credentials."""


class Source(Protocol):
    provider: str  # aws | azure | gcp
    source: str  # billing | catalog
    api: str  # e.g. ce:GetCostAndUsage, costmanagement:query.usage, cloudbilling:list_skus

    def fetch(self, now: datetime, record: Record) -> BilledResult | CatalogPrices: ...
