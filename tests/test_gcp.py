"""GcpCatalogSource with CloudCatalogClient's transport mocked, as googleapis' own unit tests
do: the gRPC stub's __call__ answers with canned ListSkusResponse pages."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest

pytest.importorskip("google.cloud.billing_v1")

from google.api_core import exceptions  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import billing_v1  # noqa: E402
from google.type import money_pb2  # noqa: E402

from drm_exporter.cloud.gcp import COMPUTE_ENGINE, GcpCatalogSource  # noqa: E402
from drm_exporter.cloud.types import SourceError, Throttled  # noqa: E402
from drm_exporter.prices import Price  # noqa: E402

NOW = datetime(2026, 3, 15, tzinfo=UTC)
API = "cloudbilling:list_skus"


pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network


def money(usd: str) -> money_pb2.Money:
    units, _, frac = usd.partition(".")
    return money_pb2.Money(currency_code="USD", units=int(units),
                           nanos=int((frac + "000000000")[:9]))


def sku(description: str, regions: list[str], tiers: list[tuple[float, str]], unit: str = "h",
        usage_type: str = "OnDemand", family: str = "Compute",
        conversion: float = 1.0) -> billing_v1.Sku:
    return billing_v1.Sku(
        name=f"{COMPUTE_ENGINE}/skus/{abs(hash(description)) % 10**6}",
        description=description,
        category=billing_v1.Category(service_display_name="Compute Engine",
                                     resource_family=family, resource_group="N2Standard",
                                     usage_type=usage_type),
        service_regions=regions,
        pricing_info=[billing_v1.PricingInfo(
            currency_conversion_rate=conversion,
            pricing_expression=billing_v1.PricingExpression(
                usage_unit=unit,
                tiered_rates=[billing_v1.PricingExpression.TierRate(
                    start_usage_amount=start, unit_price=money(price))
                    for start, price in tiers]))],
    )


US = ["us-central1", "us-east1"]
PAGE_1 = [
    # the 0-tier is listed second on purpose: the tier that starts at 0 is taken, not the first
    sku("N2 Instance Core running in Americas", US, [(100, "0.01"), (0, "0.031611")]),
    sku("N2 Instance Core running in Americas", US, [(0, "0.0076")], usage_type="Preemptible"),
    sku("N2 Custom Instance Core running in Americas", US, [(0, "0.033182")]),
    sku("E2 Instance Core running in Americas", US, [(0, "0.021811")]),
]
PAGE_2 = [
    sku("N2 Instance Ram running in Americas", US, [(0, "0.004237")], unit="GiBy.h"),
    sku("E2 Instance Ram running in Americas", US, [(0, "0.002923")], unit="GiBy.h"),
    sku("N2 Instance Core running in Belgium", ["europe-west1"], [(0, "0.034806")]),
    sku("Nvidia L4 GPU running in Americas", US, [(0, "0.56")]),
]


def client_with(answers: list[Any]) -> tuple[billing_v1.CloudCatalogClient, mock.MagicMock]:
    client = billing_v1.CloudCatalogClient(credentials=AnonymousCredentials(), transport="grpc")
    patcher = mock.patch.object(type(client.transport.list_skus), "__call__")
    call = patcher.start()
    call.side_effect = answers
    return client, call


@pytest.fixture(autouse=True)
def _stop_patches() -> Iterator[None]:
    yield
    mock.patch.stopall()


def pages() -> list[billing_v1.ListSkusResponse]:
    return [billing_v1.ListSkusResponse(skus=PAGE_1, next_page_token="page-2"),
            billing_v1.ListSkusResponse(skus=PAGE_2)]


def test_paged_skus_give_machine_prices_to_the_cent() -> None:
    client, call = client_with(pages())
    seen: list[tuple[str, str]] = []
    result = GcpCatalogSource(["us-central1"], client=client).fetch(
        NOW, lambda api, outcome: seen.append((api, outcome)))

    assert seen == [(API, "ok"), (API, "ok")]
    requests = [c.args[0] for c in call.call_args_list]
    assert [r.page_token for r in requests] == ["", "page-2"]
    assert {r.parent for r in requests} == {COMPUTE_ENGINE}
    assert {r.currency_code for r in requests} == {"USD"}

    by_type = {p.instance_type: p for p in result.prices}
    n2 = by_type["n2-standard-8"]
    assert n2.region == "us-central1" and n2.source == "catalog" and n2.provider == "gcp"
    assert round(n2.usd_per_hour, 2) == round(8 * 0.031611 + 32 * 0.004237, 2) == 0.39
    assert n2.usd_per_hour == pytest.approx(8 * 0.031611 + 32 * 0.004237)
    assert by_type["e2-standard-4"].usd_per_hour == pytest.approx(4 * 0.021811 + 16 * 0.002923)
    # no N1 or N2D SKUs in the catalog answer: unpriced, never a guess
    assert "n1-standard-4" not in by_type and "n2d-standard-4" not in by_type


def test_regions_and_custom_machine_types() -> None:
    client, _ = client_with(pages())
    result = GcpCatalogSource(["us-east1", "europe-west1"],
                              machine_types={"n2-standard-4": (4, 16)}, client=client).fetch(
        NOW, lambda api, outcome: None)
    # europe-west1 has a core SKU but no RAM SKU in the answer, so it stays unpriced
    assert result.prices == (Price("gcp", "n2-standard-4", 4 * 0.031611 + 16 * 0.004237,
                                   region="us-east1", source="catalog"),)


def test_other_currency_is_converted_back_to_usd() -> None:
    eur = [billing_v1.ListSkusResponse(skus=[
        sku("N2 Instance Core running in Americas", US, [(0, "0.029")], conversion=0.92),
        sku("N2 Instance Ram running in Americas", US, [(0, "0.0039")], unit="GiBy.h",
            conversion=0.92),
    ])]
    client, call = client_with(eur)
    result = GcpCatalogSource(["us-central1"], {"n2-standard-8": (8, 32)}, currency="EUR",
                              client=client).fetch(NOW, lambda api, outcome: None)
    assert call.call_args.args[0].currency_code == "EUR"
    assert result.prices[0].usd_per_hour == pytest.approx((8 * 0.029 + 32 * 0.0039) / 0.92)


def test_permission_denied_is_a_source_error() -> None:
    client, _ = client_with([exceptions.PermissionDenied("Cloud Billing API has not been used")])
    seen: list[tuple[str, str]] = []
    with pytest.raises(SourceError, match="cloudbilling.googleapis.com"):
        GcpCatalogSource(["us-central1"], client=client).fetch(
            NOW, lambda api, outcome: seen.append((api, outcome)))
    assert seen == [(API, "error")]


def test_permission_denied_on_a_later_page() -> None:
    client, _ = client_with([pages()[0], exceptions.PermissionDenied("revoked")])
    seen: list[tuple[str, str]] = []
    with pytest.raises(SourceError):
        GcpCatalogSource(["us-central1"], client=client).fetch(
            NOW, lambda api, outcome: seen.append((api, outcome)))
    assert [o for _, o in seen] == ["ok", "error"]


def test_quota_is_throttled() -> None:
    client, _ = client_with([exceptions.TooManyRequests("slow down")])
    seen: list[tuple[str, str]] = []
    with pytest.raises(Throttled):
        GcpCatalogSource(["us-central1"], client=client).fetch(
            NOW, lambda api, outcome: seen.append((api, outcome)))
    assert seen == [(API, "throttled")]
