"""AzureCostSource against a scripted azure-core transport: no network, no real credential."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

pytest.importorskip("azure.mgmt.costmanagement")

from azure.core.credentials import AccessToken  # noqa: E402
from azure.core.pipeline.transport import HttpTransport  # noqa: E402
from azure.core.rest import HttpResponse  # noqa: E402

from drm_exporter.cloud.azure import AzureCostSource, account_of  # noqa: E402
from drm_exporter.cloud.types import BilledLine, SourceError, Throttled  # noqa: E402

NOW = datetime(2026, 3, 15, 10, 30, tzinfo=UTC)
NEXT = ("https://management.azure.com/subscriptions/sub-1/providers/Microsoft.CostManagement/"
        "query?api-version=2025-03-01&$skiptoken=page2")


pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network


class FakeCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-token", int(time.time()) + 3600)


class CannedResponse(HttpResponse):
    def __init__(self, request: Any, status: int, body: Any, headers: dict[str, str]) -> None:
        self._request = request
        self._status = status
        self._content = json.dumps(body).encode() if body is not None else b""
        self._headers = {"Content-Type": "application/json", **headers}

    request = property(lambda self: self._request)
    status_code = property(lambda self: self._status)
    headers = property(lambda self: self._headers)
    reason = property(lambda self: "scripted")
    content_type = property(lambda self: "application/json")
    is_closed = property(lambda self: True)
    is_stream_consumed = property(lambda self: True)
    encoding = property(lambda self: "utf-8")
    url = property(lambda self: self._request.url)
    content = property(lambda self: self._content)

    def text(self, encoding: str | None = None) -> str:
        return self._content.decode()

    def json(self) -> Any:
        return json.loads(self._content) if self._content else None

    def raise_for_status(self) -> None:
        pass

    def read(self) -> bytes:
        return self._content

    def iter_raw(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._content

    def iter_bytes(self, **kwargs: Any) -> Iterator[bytes]:
        yield self._content

    def close(self) -> None:
        pass

    def __enter__(self) -> CannedResponse:
        return self

    def __exit__(self, *args: Any) -> None:
        pass


class ScriptedTransport(HttpTransport):
    """Answers each request with the next canned (status, body, headers) and keeps the
    requests; running out of answers is a failure, so an unexpected retry shows."""

    def __init__(self, answers: list[tuple[int, Any, dict[str, str]]]) -> None:
        self.answers = list(answers)
        self.requests: list[Any] = []

    def send(self, request: Any, **kwargs: Any) -> CannedResponse:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        status, body, headers = self.answers.pop(0)
        return CannedResponse(request, status, body, headers)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __exit__(self, *args: Any) -> None:
        pass


def page(columns: list[str], rows: list[list[Any]], next_link: str | None = None) -> dict:
    types = {"Cost": "Number", "PreTaxCost": "Number"}
    return {"id": "q", "name": "q", "type": "Microsoft.CostManagement/query",
            "properties": {"nextLink": next_link,
                           "columns": [{"name": c, "type": types.get(c, "String")}
                                       for c in columns],
                           "rows": rows}}


def source(transport: ScriptedTransport, scopes: list[str] | None = None) -> AzureCostSource:
    return AzureCostSource(scopes or ["/subscriptions/sub-1"], credential=FakeCredential(),
                           transport=transport, client_type="drm-exporter-test")


def calls() -> tuple[list[tuple[str, str]], Any]:
    seen: list[tuple[str, str]] = []
    return seen, lambda api, outcome: seen.append((api, outcome))


def test_pages_summed_columns_by_name_currency_kept() -> None:
    transport = ScriptedTransport([
        # month to date, page 1 then page 2 with the columns in another order
        (200, page(["Currency", "Cost", "ServiceName"],
                   [["EUR", 10.0, "Virtual Machines"], ["EUR", 1.25, "Storage"]], NEXT), {}),
        (200, page(["ServiceName", "Currency", "Cost"],
                   [["Virtual Machines", "EUR", 2.5]]), {}),
        # yesterday
        (200, page(["Cost", "ServiceName", "Currency"], [[0.75, "Virtual Machines", "EUR"]]), {}),
    ])
    seen, record = calls()
    result = source(transport).fetch(NOW, record)

    assert set(result.lines) == {
        BilledLine("azure", "sub-1", "Virtual Machines", "month_to_date", "EUR", 12.5),
        BilledLine("azure", "sub-1", "Storage", "month_to_date", "EUR", 1.25),
        BilledLine("azure", "sub-1", "Virtual Machines", "yesterday", "EUR", 0.75),
    }
    assert result.estimated == {}
    assert seen == [("costmanagement:query.usage", "ok")] * 3

    first, second, third = transport.requests
    assert first.method == second.method == "POST"
    assert first.url.startswith("https://management.azure.com/subscriptions/sub-1/providers/"
                                "Microsoft.CostManagement/query?")
    assert second.url == NEXT
    assert all(r.headers["ClientType"] == "drm-exporter-test" for r in transport.requests)
    assert all(r.headers["Authorization"] == "Bearer fake-token" for r in transport.requests)
    body = json.loads(first.content)
    assert json.loads(second.content) == body  # the next page repeats the query
    assert body["type"] == "ActualCost" and body["timeframe"] == "Custom"
    assert body["timePeriod"] == {"from": "2026-03-01T00:00:00Z", "to": "2026-03-15T23:59:59Z"}
    assert body["dataset"]["grouping"] == [{"type": "Dimension", "name": "ServiceName"}]
    assert body["dataset"]["aggregation"] == {"totalCost": {"name": "Cost", "function": "Sum"}}
    assert json.loads(third.content)["timePeriod"] == {"from": "2026-03-14T00:00:00Z",
                                                       "to": "2026-03-14T23:59:59Z"}


RATE_LIMITED = {
    "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after": "30",
    "x-ms-ratelimit-microsoft.costmanagement-entity-retry-after": "5",
    "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after": "60",
    "Retry-After": "10",
}
TOO_MANY = {"error": {"code": "429", "message": "Too many requests"}}


def test_429_raises_throttled_with_the_longest_wait_and_is_not_retried() -> None:
    transport = ScriptedTransport([(429, TOO_MANY, RATE_LIMITED)])
    seen, record = calls()
    with pytest.raises(Throttled) as caught:
        source(transport).fetch(NOW, record)
    assert caught.value.retry_after_s == 60
    assert seen == [("costmanagement:query.usage", "throttled")]
    assert len(transport.requests) == 1  # azure-core's RetryPolicy did not try again


def test_429_on_next_link_page() -> None:
    transport = ScriptedTransport([
        (200, page(["Cost", "ServiceName", "Currency"], [[1.0, "Storage", "USD"]], NEXT), {}),
        (429, TOO_MANY, {"x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after": "12"}),
    ])
    seen, record = calls()
    with pytest.raises(Throttled) as caught:
        source(transport).fetch(NOW, record)
    assert caught.value.retry_after_s == 12
    assert [o for _, o in seen] == ["ok", "throttled"]


def test_forbidden_names_the_role() -> None:
    error = {"error": {"code": "AuthorizationFailed", "message": "no"}}
    transport = ScriptedTransport([(403, error, {})])
    seen, record = calls()
    with pytest.raises(SourceError, match="Cost Management Reader"):
        source(transport).fetch(NOW, record)
    assert [o for _, o in seen] == ["error"]


def test_unexpected_columns_are_an_error() -> None:
    transport = ScriptedTransport([(200, page(["Cost", "ResourceGroup"], [[1.0, "rg"]]), {})])
    with pytest.raises(SourceError, match="columns"):
        source(transport).fetch(NOW, lambda api, outcome: None)


def test_account_label() -> None:
    assert account_of("/subscriptions/abc/resourceGroups/rg") == "abc"
    scope = "/providers/Microsoft.Billing/billingAccounts/123"
    assert account_of(scope) == scope


def test_network_is_blocked() -> None:
    with pytest.raises(OSError, match="test tried"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)
