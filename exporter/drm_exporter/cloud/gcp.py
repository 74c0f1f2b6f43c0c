"""GCP on-demand prices from the public Cloud Billing Catalog (`CloudCatalogClient.list_skus`).

Compute Engine bills a predefined machine type as vCPU-hours plus GiB-hours of its family, so a
machine type's hourly price is vCPUs x core SKU + GiB x RAM SKU, per region. The SKUs used are
the On-Demand ones whose description reads "<FAMILY> [AMD ][Predefined ]Instance Core|Ram
running in <place>"; custom, spot, commitment and sole-tenant SKUs do not match.

GPUs are not priced here: a GPU machine type (a2, a3, g2, ...) also pays for its attached GPUs,
which this shape (vCPUs, GiB) cannot express, so those keep their static-table price rather than
a catalog price that is too low.

The catalog is public: any credential from `google.auth.default` on a project with the Cloud
Billing API (cloudbilling.googleapis.com) enabled can read it; no billing role is needed.
Prices are converted back to USD with the catalog's own conversion rate, whatever currency is
requested.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from ..prices import Price
from .types import CatalogPrices, Record, SourceError, Throttled

COMPUTE_ENGINE = "services/6F81-5844-456A"

# instance type -> (vCPUs, GiB); predefined shapes from the Compute Engine machine type pages.
DEFAULT_MACHINE_TYPES: dict[str, tuple[float, float]] = {
    "n2-standard-2": (2, 8),
    "n2-standard-4": (4, 16),
    "n2-standard-8": (8, 32),
    "n2-standard-16": (16, 64),
    "n2-highmem-8": (8, 64),
    "n2-highcpu-8": (8, 8),
    "n2d-standard-4": (4, 16),
    "n2d-standard-8": (8, 32),
    "e2-standard-2": (2, 8),
    "e2-standard-4": (4, 16),
    "e2-standard-8": (8, 32),
    "n1-standard-4": (4, 15),
    "n1-standard-8": (8, 30),
    "c3-standard-8": (8, 32),
}

SKU_DESCRIPTION = re.compile(
    r"^(?P<family>[A-Z][A-Z0-9]*)(?: AMD)?(?: Predefined)? Instance (?P<kind>Core|Ram) running in ")
UNITS = {"Core": "h", "Ram": "GiBy.h"}


def family_of(instance_type: str) -> str:
    return instance_type.split("-", 1)[0].upper()


def unit_price(sku: Any) -> float | None:
    """USD per unit of the tier that starts at 0, or None when the SKU has no such tier."""
    if not sku.pricing_info:
        return None
    info = sku.pricing_info[0]  # the current price; later entries are history when asked for
    for tier in info.pricing_expression.tiered_rates:
        if tier.start_usage_amount == 0:
            price = tier.unit_price.units + tier.unit_price.nanos / 1e9
            rate = info.currency_conversion_rate or 1.0
            return price / rate
    return None


class GcpCatalogSource:
    provider = "gcp"
    source = "catalog"
    api = "cloudbilling:list_skus"

    def __init__(self, regions: list[str], machine_types: dict[str, tuple[float, float]] | None
                 = None, currency: str = "USD", client: Any = None) -> None:
        if not regions:
            raise ValueError("gcp: at least one region is needed for catalog prices")
        self.regions = list(regions)
        self.machine_types = dict(DEFAULT_MACHINE_TYPES if machine_types is None
                                  else machine_types)
        self.currency = currency
        self._client = client

    def _get_client(self) -> Any:
        if self._client is None:
            import google.auth
            from google.cloud import billing_v1

            credentials, _project = google.auth.default()
            self._client = billing_v1.CloudCatalogClient(credentials=credentials)
        return self._client

    def fetch(self, now: datetime, record: Record) -> CatalogPrices:
        from google.api_core import exceptions
        from google.auth.exceptions import DefaultCredentialsError

        # (family, "Core"|"Ram", region) -> USD per vCPU-hour or GiB-hour
        rates: dict[tuple[str, str, str], float] = {}
        wanted_regions = set(self.regions)
        wanted_families = {family_of(t) for t in self.machine_types}
        try:
            pager = self._get_client().list_skus(
                request={"parent": COMPUTE_ENGINE, "currency_code": self.currency})
            for response in pager.pages:
                record(self.api, "ok")
                for sku in response.skus:
                    self._collect(sku, wanted_regions, wanted_families, rates)
        except DefaultCredentialsError:
            raise SourceError("gcp: no credential from google.auth.default (set "
                              "GOOGLE_APPLICATION_CREDENTIALS or run on GCP)") from None
        except exceptions.PermissionDenied:
            record(self.api, "error")
            raise SourceError("gcp: permission denied on the Cloud Billing Catalog: enable the "
                              "Cloud Billing API (cloudbilling.googleapis.com) on the "
                              "credential's project; no billing role is needed") from None
        except (exceptions.TooManyRequests, exceptions.ResourceExhausted):
            record(self.api, "throttled")
            raise Throttled("gcp: Cloud Billing Catalog quota exceeded") from None
        except exceptions.GoogleAPIError as exc:
            record(self.api, "error")
            raise SourceError(f"gcp: Cloud Billing Catalog list_skus failed: "
                              f"{type(exc).__name__}") from None

        prices = []
        for region in self.regions:
            for instance_type, (vcpus, gib) in sorted(self.machine_types.items()):
                family = family_of(instance_type)
                core = rates.get((family, "Core", region))
                ram = rates.get((family, "Ram", region))
                if core is None or ram is None:
                    continue  # unpriced beats wrongly priced
                prices.append(Price(self.provider, instance_type, vcpus * core + gib * ram,
                                    region=region, source="catalog"))
        return CatalogPrices(prices=tuple(prices))

    @staticmethod
    def _collect(sku: Any, regions: set[str], families: set[str],
                 rates: dict[tuple[str, str, str], float]) -> None:
        category = sku.category
        if category.resource_family != "Compute" or category.usage_type != "OnDemand":
            return
        match = SKU_DESCRIPTION.match(sku.description)
        if match is None or match["family"] not in families:
            return
        kind = match["kind"]
        if not sku.pricing_info or (sku.pricing_info[0].pricing_expression.usage_unit
                                    != UNITS[kind]):
            return
        price = unit_price(sku)
        if price is None:
            return
        for region in set(sku.service_regions) & regions:
            rates[(match["family"], kind, region)] = price
