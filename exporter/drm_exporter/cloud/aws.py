"""AWS billed spend from Cost Explorer (`ce:GetCostAndUsage`), month to date and yesterday.

Each page costs about $0.01, so this source only fetches: the refresher (refresher.py) decides
when. Credentials come from boto3's default chain (environment, profile, instance role); this
module never sees a key. Exposition it feeds:

    drm_cloud_billed_cost{provider="aws",account="123456789012",service="Amazon Elastic
        Compute Cloud - Compute",window="month_to_date",currency="USD"} 412.5
    drm_cloud_billed_cost_estimated{provider="aws",account="123456789012",
        window="month_to_date"} 1
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from .types import BilledLine, BilledResult, Record, SourceError, Throttled

API = "ce:GetCostAndUsage"
METRIC = "UnblendedCost"


def billing_windows(now: datetime) -> dict[str, tuple[date, date]]:
    """UTC [start, end) per window; Cost Explorer's End is exclusive. Today is left out of
    both: its figures are still arriving. On the 1st of a month month-to-date is empty
    (start == end), which Cost Explorer rejects, so the window is left out."""
    today = now.astimezone(UTC).date()
    out = {"yesterday": (today - timedelta(days=1), today)}
    first = today.replace(day=1)
    if first < today:
        out["month_to_date"] = (first, today)
    return out


class AwsCostExplorerSource:
    provider = "aws"
    source = "billing"
    api = API

    def __init__(self, accounts: tuple[str, ...] = (), tag_key: str = "",
                 tag_values: tuple[str, ...] = (), client: Any = None) -> None:
        """`accounts` limits the query to these linked accounts (empty: all the payer sees);
        `tag_key`/`tag_values` to resources with that cost allocation tag (the fleet's)."""
        self._accounts = tuple(accounts)
        self._tag_key, self._tag_values = tag_key, tuple(tag_values)
        self._client = client

    def _ce(self) -> Any:
        if self._client is None:  # created on first use: no import or credential lookup before
            import boto3

            self._client = boto3.client("ce")
        return self._client

    def _filter(self) -> dict[str, Any] | None:
        parts: list[dict[str, Any]] = []
        if self._accounts:
            parts.append({"Dimensions": {"Key": "LINKED_ACCOUNT",
                                         "Values": list(self._accounts)}})
        if self._tag_key:
            parts.append({"Tags": {"Key": self._tag_key, "Values": list(self._tag_values),
                                   **({} if self._tag_values else {"MatchOptions": ["PRESENT"]})}})
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"And": parts}

    def fetch(self, now: datetime, record: Record) -> BilledResult:
        lines: list[BilledLine] = []
        estimated: dict[tuple[str, str, str], bool] = {}
        for window, (start, end) in billing_windows(now).items():
            totals: dict[tuple[str, str, str], float] = {}
            request: dict[str, Any] = {
                "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
                "Granularity": "DAILY" if window == "yesterday" else "MONTHLY",
                "Metrics": [METRIC],
                "GroupBy": [{"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"},
                            {"Type": "DIMENSION", "Key": "SERVICE"}],
            }
            flt = self._filter()
            if flt is not None:
                request["Filter"] = flt
            # boto3 has no paginator for GetCostAndUsage: follow NextPageToken here.
            token: str | None = None
            while True:
                page = self._page(request, token, record)
                for rbt in page.get("ResultsByTime", []):
                    accounts_seen = set()
                    for g in rbt.get("Groups", []):
                        account, service = g["Keys"][0], g["Keys"][1]
                        m = g["Metrics"][METRIC]
                        key = (account, service, m.get("Unit", "USD"))
                        totals[key] = totals.get(key, 0.0) + float(m["Amount"])
                        accounts_seen.add(account)
                    for account in accounts_seen:
                        k = (self.provider, account, window)
                        estimated[k] = estimated.get(k, False) or bool(rbt.get("Estimated"))
                token = page.get("NextPageToken")
                if not token:
                    break
            lines.extend(BilledLine(self.provider, a, s, window, cur, round(v, 10))
                         for (a, s, cur), v in sorted(totals.items()))
        return BilledResult(tuple(lines), estimated)

    def _page(self, request: dict[str, Any], token: str | None, record: Record) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs = dict(request, NextPageToken=token) if token else request
        try:
            page = self._ce().get_cost_and_usage(**kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("LimitExceededException", "ThrottlingException"):
                record(API, "throttled")
                raise Throttled(f"Cost Explorer: {code}") from None
            record(API, "error")
            raise SourceError(f"Cost Explorer: {code or 'error'}: check the role's "
                              "ce:GetCostAndUsage permission and the account ids") from None
        except BotoCoreError as e:  # no credentials, no network
            record(API, "error")
            raise SourceError(f"Cost Explorer: {type(e).__name__}") from None
        record(API, "ok")
        return page
