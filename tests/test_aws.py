"""AWS Cost Explorer through botocore's Stubber: no request leaves the process."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

boto3 = pytest.importorskip("boto3")
from botocore.stub import Stubber  # noqa: E402

from drm_exporter.clock import ManualClock  # noqa: E402
from drm_exporter.cloud.aws import AwsCostExplorerSource, billing_windows  # noqa: E402
from drm_exporter.cloud.cache import CloudCache  # noqa: E402
from drm_exporter.cloud.refresher import CloudRefreshers, Leash, Refresher  # noqa: E402

NOW = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)
ACCT = "123456789012"


pytestmark = pytest.mark.usefixtures("offline")  # conftest: no network


def page(amounts: dict[str, str], estimated: bool, token: str | None = None) -> dict:
    out: dict = {"ResultsByTime": [{
        "TimePeriod": {"Start": "2026-12-01", "End": "2026-12-03"}, "Estimated": estimated,
        "Total": {}, "Groups": [{"Keys": [ACCT, svc],
                                 "Metrics": {"UnblendedCost": {"Amount": a, "Unit": "USD"}}}
                                for svc, a in amounts.items()]}],
        "DimensionValueAttributes": []}
    if token:
        out["NextPageToken"] = token
    return out


def expected(window: str, token: str | None = None) -> dict:
    start, end = billing_windows(NOW)[window]
    req = {"TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
           "Granularity": "DAILY" if window == "yesterday" else "MONTHLY",
           "Metrics": ["UnblendedCost"],
           "GroupBy": [{"Type": "DIMENSION", "Key": "LINKED_ACCOUNT"},
                       {"Type": "DIMENSION", "Key": "SERVICE"}],
           "Filter": {"Dimensions": {"Key": "LINKED_ACCOUNT", "Values": [ACCT]}}}
    if token:
        req["NextPageToken"] = token
    return req


@pytest.fixture
def ce():
    client = boto3.client("ce", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    with Stubber(client) as stub:
        yield client, stub


def test_windows_are_utc_days_with_exclusive_end() -> None:
    w = billing_windows(NOW)
    assert [d.isoformat() for d in w["yesterday"]] == ["2026-12-02", "2026-12-03"]
    assert [d.isoformat() for d in w["month_to_date"]] == ["2026-12-01", "2026-12-03"]
    first = billing_windows(datetime(2026, 12, 1, 0, 30, tzinfo=UTC))
    assert "month_to_date" not in first  # Start == End: Cost Explorer would reject it
    assert [d.isoformat() for d in first["yesterday"]] == ["2026-11-30", "2026-12-01"]


def test_two_pages_summed_and_counted(ce) -> None:
    client, stub = ce
    stub.add_response("get_cost_and_usage", page({"EC2": "1.25"}, False), expected("yesterday"))
    stub.add_response("get_cost_and_usage", page({"EC2": "10.50", "S3": "1"}, True, "t1"),
                      expected("month_to_date"))
    stub.add_response("get_cost_and_usage", page({"EC2": "2.25"}, True),
                      expected("month_to_date", "t1"))
    calls: list[tuple[str, str]] = []
    res = AwsCostExplorerSource((ACCT,), client=client).fetch(NOW, lambda a, o: calls.append(
        (a, o)))
    stub.assert_no_pending_responses()
    got = {(x.window, x.service): x.amount for x in res.lines}
    assert got == {("yesterday", "EC2"): 1.25, ("month_to_date", "EC2"): 12.75,
                   ("month_to_date", "S3"): 1.0}
    assert res.estimated == {("aws", ACCT, "yesterday"): False,
                             ("aws", ACCT, "month_to_date"): True}
    assert calls == [("ce:GetCostAndUsage", "ok")] * 3


def test_throttling_keeps_last_good_and_estimated_updates(ce) -> None:
    client, stub = ce
    clock = ManualClock(NOW.timestamp())
    r = Refresher(AwsCostExplorerSource((ACCT,), client=client), Leash(8 * 3600, 20, 600),
                  CloudCache(None), clock)
    group = CloudRefreshers([r])
    stub.add_response("get_cost_and_usage", page({"EC2": "1"}, True), expected("yesterday"))
    stub.add_response("get_cost_and_usage", page({"EC2": "5"}, True), expected("month_to_date"))
    assert r.step() == 8 * 3600
    v = group.view()
    assert v.success == {("aws", "billing"): True}
    assert v.estimated[("aws", ACCT, "month_to_date")] is True

    clock.advance(8 * 3600)  # still 2026-12-03 UTC
    stub.add_client_error("get_cost_and_usage", "LimitExceededException", "slow down")
    assert r.step() == 600  # backoff, not the full interval
    v = group.view()
    assert v.success == {("aws", "billing"): False}
    assert v.last_success == {("aws", "billing"): NOW.timestamp()}
    assert {(b.window, b.amount) for b in v.billed} == {("yesterday", 1.0),
                                                        ("month_to_date", 5.0)}
    assert v.requests[("aws", "ce:GetCostAndUsage", "throttled")] == 1

    clock.advance(600)
    stub.add_response("get_cost_and_usage", page({"EC2": "1"}, False), expected("yesterday"))
    stub.add_response("get_cost_and_usage", page({"EC2": "4.5"}, False),
                      expected("month_to_date"))  # restated downwards: a credit
    r.step()
    v = group.view()
    assert v.success == {("aws", "billing"): True}
    assert v.estimated[("aws", ACCT, "month_to_date")] is False
    assert {(b.window, b.amount) for b in v.billed} == {("yesterday", 1.0),
                                                        ("month_to_date", 4.5)}
    assert v.requests[("aws", "ce:GetCostAndUsage", "ok")] == 4
