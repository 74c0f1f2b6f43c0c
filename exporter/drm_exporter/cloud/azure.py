"""Azure billed spend from the Cost Management Query API (`query.usage`), per configured scope.

For each scope and each window (month_to_date, yesterday; UTC) one query of actual cost summed
per ServiceName, no date granularity. The SDK reaches Azure only through the `transport` and
`credential` given here, which is the seam tests replace.

The account label is the subscription id when the scope is a subscription or a resource group
inside one (`/subscriptions/<id>/...`), otherwise the whole scope string (billing account,
management group, ...). Azure does not mark figures as estimated, so `estimated` stays empty
rather than guessing.

Why the pipeline is set up by hand:
- the Query API's quota is shared by the whole tenant, and azure-core's RetryPolicy would retry
  a 429 on its own (reading only Retry-After, not the cost-management headers); retries are
  switched off so a 429 reaches us once and the refresher backs off;
- the SDK returns `next_link` but does not follow it: the next page is a POST of the same body
  to that URL, sent through the client's own pipeline (auth, user agent) by `send_request`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .types import BilledLine, BilledResult, Record, SourceError, Throttled

# Each names the seconds to wait for one of the cost-management quotas; the longest wins.
RETRY_AFTER_HEADERS = (
    "x-ms-ratelimit-microsoft.costmanagement-qpu-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-entity-retry-after",
    "x-ms-ratelimit-microsoft.costmanagement-tenant-retry-after",
    "Retry-After",
)
# The aggregation alias we ask for, then the source column names some scopes answer with.
COST_COLUMNS = ("totalCost", "Cost", "PreTaxCost")
SERVICE_COLUMN = "ServiceName"
CURRENCY_COLUMN = "Currency"
WIRE_TIME = "%Y-%m-%dT%H:%M:%SZ"
MAX_PAGES = 50  # a runaway next_link loop must not spend the tenant's quota


def account_of(scope: str) -> str:
    parts = [p for p in scope.strip("/").split("/") if p]
    if len(parts) >= 2 and parts[0].lower() == "subscriptions":
        return parts[1]
    return scope


def windows(now: datetime) -> dict[str, tuple[datetime, datetime]]:
    """(from, to) per window, both inclusive as the Query API reads them; UTC days."""
    now = now.astimezone(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    last_second = timedelta(days=1) - timedelta(seconds=1)
    return {
        "month_to_date": (today.replace(day=1), today + last_second),
        "yesterday": (yesterday, yesterday + last_second),
    }


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    values: list[float] = []
    for name in RETRY_AFTER_HEADERS:
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            values.append(float(raw))
        except ValueError:
            continue  # an HTTP date in Retry-After: the cost-management headers are seconds
    return max(values) if values else None


def _json_of(response: Any) -> Any:
    return json.loads(response.text()) if response.status_code == 200 else None  # 204: empty


def decode(properties: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """(service, currency, amount) per row, columns found by name: their order is not fixed."""
    columns = [c.get("name") for c in (properties.get("columns") or [])]
    index = {name: i for i, name in enumerate(columns)}
    cost = next((index[c] for c in COST_COLUMNS if c in index), None)
    if cost is None or SERVICE_COLUMN not in index or CURRENCY_COLUMN not in index:
        raise SourceError(f"azure: unexpected Cost Management columns {columns}")
    service, currency = index[SERVICE_COLUMN], index[CURRENCY_COLUMN]
    return [(str(row[service] or "unknown"), str(row[currency]), float(row[cost]))
            for row in (properties.get("rows") or [])]


class AzureCostSource:
    provider = "azure"
    source = "billing"
    api = "costmanagement:query.usage"

    def __init__(self, scopes: list[str], credential: Any = None, transport: Any = None,
                 client_type: str = "drm-exporter", *, cost_column: str = "Cost") -> None:
        """cost_column: "Cost" (Microsoft Customer Agreement, pay-as-you-go) or "PreTaxCost"
        (older Enterprise Agreement scopes)."""
        if not scopes:
            raise ValueError("azure: at least one Cost Management scope is needed")
        self.scopes = list(scopes)
        self.client_type = client_type
        self.cost_column = cost_column
        self._credential = credential
        self._transport = transport
        self._client: Any = None

    def _get_client(self) -> Any:
        if self._client is None:
            from azure.mgmt.costmanagement import CostManagementClient

            credential = self._credential
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            kwargs: dict[str, Any] = {"retry_total": 0}
            if self._transport is not None:
                kwargs["transport"] = self._transport
            self._client = CostManagementClient(credential, **kwargs)
        return self._client

    def _definition(self, start: datetime, end: datetime) -> dict[str, Any]:
        """A QueryDefinition in its wire form: both SDK majors (4: msrest, 5: typespec) accept
        it, and the next_link page needs the very same body."""
        return {
            "type": "ActualCost",
            "timeframe": "Custom",
            "timePeriod": {"from": start.strftime(WIRE_TIME), "to": end.strftime(WIRE_TIME)},
            "dataset": {
                "aggregation": {"totalCost": {"name": self.cost_column, "function": "Sum"}},
                "grouping": [{"type": "Dimension", "name": SERVICE_COLUMN}],
            },
        }

    def fetch(self, now: datetime, record: Record) -> BilledResult:
        totals: dict[tuple[str, str, str, str], float] = {}
        for scope in self.scopes:
            account = account_of(scope)
            for window, (start, end) in windows(now).items():
                for service, currency, amount in self._query(scope, start, end, record):
                    key = (account, service, window, currency)
                    totals[key] = totals.get(key, 0.0) + amount
        lines = tuple(BilledLine(self.provider, account, service, window, currency, amount)
                      for (account, service, window, currency), amount in sorted(totals.items()))
        return BilledResult(lines=lines, estimated={})

    def _query(self, scope: str, start: datetime, end: datetime,
               record: Record) -> list[tuple[str, str, float]]:
        from azure.core.exceptions import AzureError, HttpResponseError
        from azure.core.rest import HttpRequest

        client = self._get_client()
        definition = self._definition(start, end)
        headers = {"ClientType": self.client_type}
        rows: list[tuple[str, str, float]] = []
        try:
            # cls hands back the raw JSON: the typed QueryResult differs between SDK majors
            body = client.query.usage(scope.strip("/"), definition, headers=headers,
                                      cls=lambda pipeline_response, _model, _headers:
                                      _json_of(pipeline_response.http_response))
            record(self.api, "ok")
            properties = (body or {}).get("properties")
            for _ in range(MAX_PAGES):
                if properties is None:
                    break
                rows.extend(decode(properties))
                next_link = properties.get("nextLink")
                if not next_link:
                    break
                response = client.send_request(HttpRequest(
                    "POST", next_link, headers=headers, json=definition))
                if response.status_code >= 400:
                    raise HttpResponseError(response=response)
                record(self.api, "ok")
                properties = (_json_of(response) or {}).get("properties")
            else:
                raise SourceError(f"azure: more than {MAX_PAGES} pages for scope {scope}")
        except HttpResponseError as exc:
            raise self._failure(exc, scope, record) from None
        except AzureError as exc:  # no response at all: network, credential chain
            record(self.api, "error")
            raise SourceError(f"azure: Cost Management query for {scope} failed: "
                              f"{type(exc).__name__}") from None
        return rows

    def _failure(self, exc: Any, scope: str, record: Record) -> Exception:
        response = getattr(exc, "response", None)
        if response is None:  # raised by the credential before any request was sent
            return SourceError("azure: no credential from DefaultAzureCredential "
                               "(az login, managed identity or AZURE_* environment)")
        status = response.status_code
        if status == 429:
            record(self.api, "throttled")
            return Throttled(f"azure: Cost Management throttled queries for {scope}",
                             retry_after_s=retry_after_s(response.headers))
        record(self.api, "error")
        if status in (401, 403):
            return SourceError(f"azure: HTTP {status} on {scope}: the identity needs the "
                               "Cost Management Reader role (or Reader) on that scope")
        code = getattr(getattr(exc, "error", None), "code", None) or ""
        return SourceError(f"azure: Cost Management query for {scope} failed: HTTP {status} "
                           f"{code}".rstrip())
