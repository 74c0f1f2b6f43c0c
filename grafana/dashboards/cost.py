"""Cloud cost: accrued cost by provider, pool and instance type, billed spend, budget."""

from __future__ import annotations

from typing import Any

from grafanalib.core import Dashboard

from drm_exporter import metrics as m

from . import uids
from .common import dashboard, increase, rate, sel, with_pool
from .panels import (
    NEUTRAL,
    by_name,
    by_regex,
    dashed,
    fixed_color,
    piechart,
    stat,
    state_timeline,
    table,
    target,
    timeseries,
)

_HOUR = 3600

# One fixed colour per provider, the same in every panel of this dashboard that draws one
# series per provider, so a forecast pairs with its budget and a provider reads alike
# everywhere.
PROVIDER_COLORS: dict[str, str] = {
    "aws": "orange",
    "gcp": "green",
    "azure": "blue",
    "onprem": "purple",
}


def _provider_colors(suffix: str = "") -> list[dict[str, Any]]:
    """Colour overrides for series named `<provider>` (or `<provider> <suffix>`)."""
    if not suffix:
        return [fixed_color(by_name(p), c) for p, c in PROVIDER_COLORS.items()]
    return [fixed_color(by_regex(f"^{p} {suffix}$"), c) for p, c in PROVIDER_COLORS.items()]


def _cost_rate(by: str = "") -> str:
    """The cost rate now, USD per hour: rate() over $__rate_interval, not the 5m recording
    rule, which underestimates for the first 5 minutes of a counter (the extrapolated increase
    is divided by the full 5m) and lags behind a change."""
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} ({rate(m.CLOUD_COST)}) * {_HOUR}"


def _cost_over_range(by: str) -> str:
    return f"sum by ({by}) ({increase(m.CLOUD_COST, window='$__range')})"


def _gpus_by_type() -> str:
    # GPUs per priced instance type, to divide that type's cost rate by.
    gpus = with_pool(sel(m.GPU_INFO), "provider", "region", "instance_type")
    return f"count by (provider, region, instance_type) ({gpus})"


def _hours_left_in_month() -> str:
    return "((days_in_month() - day_of_month()) * 24 + 24 - hour() - minute() / 60)"


def build() -> Dashboard:
    gpus = _gpus_by_type()
    gpu_type_cost = (f"sum by (provider, region, instance_type) ({rate(m.CLOUD_COST)}) * {_HOUR}"
                     f" and on (provider, region, instance_type) {gpus}")
    accrued_rate = _cost_rate("provider")
    billed = sel(m.CLOUD_BILLED_COST, 'window="month_to_date"', 'currency="USD"')
    forecast = (
        f"(sum by (provider) ({billed})"
        f" + {accrued_rate} * scalar({_hours_left_in_month()}))"
        f" or {accrued_rate} * 24 * scalar(days_in_month())"
    )
    panels = [
        stat("Cost rate (USD/hour)",
             "What the selected pools cost now, in USD per hour (accrued: hourly price x "
             "uptime).",
             [target(_cost_rate())], "currencyUSD", w=6, spec=NEUTRAL),
        stat("Cost over range", "Accrued cost over the dashboard's time range.",
             [target(f"sum({increase(m.CLOUD_COST, window='$__range')})", instant=True)],
             "currencyUSD", w=6, spec=NEUTRAL, graph=False),
        stat("Cost per GPU-hour",
             "Cost rate of the instance types that carry GPUs / the number of their GPUs "
             "(USD per GPU-hour).",
             [target(f"sum({gpu_type_cost}) / sum({gpus})")], "currencyUSD", w=6,
             spec=NEUTRAL),
        stat("Unpriced workers",
             "Workers whose instance type has no known price: their cost is missing from "
             "every figure here.",
             [target(f"sum({sel(m.CLOUD_UNPRICED_WORKERS)})")], "short", w=6,
             spec=(("green", None), ("orange", 1.0)), decimals=0),
        timeseries("Cost rate by provider (USD/hour)",
                   "Accrued cost rate per provider, USD per hour, stacked to the total.",
                   [target(_cost_rate("provider"), "{{provider}}")], "currencyUSD",
                   stack=True, overrides=_provider_colors()),
        timeseries("Workers by provider",
                   "Workers per cloud provider (onprem is the local host).",
                   [target(f"count by (provider) ({sel(m.WORKER_INFO)})", "{{provider}}")],
                   "short", stack=True, decimals=0, overrides=_provider_colors()),
        timeseries("Cost rate by pool (USD/hour)",
                   "Accrued cost rate per pool, USD per hour, stacked to the total.",
                   [target(_cost_rate("pool"), "{{pool}}")], "currencyUSD", stack=True),
        piechart("Cost over range by provider", "Accrued cost over the time range.",
                 [target(_cost_over_range("provider"), "{{provider}}", instant=True)],
                 "currencyUSD"),
        piechart("Cost over range by pool", "Accrued cost over the time range.",
                 [target(_cost_over_range("pool"), "{{pool}}", instant=True)],
                 "currencyUSD"),
        timeseries(
            "Month-end forecast vs budget",
            "Forecast = billed month-to-date + the current cost rate for the hours left "
            "in the month; without billing data, the current rate for the whole month. "
            "Dashed: the provider's monthly budget from the config, in the colour of its "
            "forecast.",
            [
                target(forecast, "{{provider}} forecast"),
                target(f"max by (provider) ({sel(m.CLOUD_BUDGET)})", "{{provider}} budget"),
            ],
            "currencyUSD",
            overrides=[dashed(by_regex("^.* budget$")),
                       *_provider_colors("(forecast|budget)")]),
        piechart("Cost over range by instance type", "Accrued cost over the time range.",
                 [target(_cost_over_range("instance_type"), "{{instance_type}}",
                         instant=True)],
                 "currencyUSD"),
        timeseries(
            "Billed month-to-date",
            "Spend the providers' billing APIs report for this month, per provider and "
            "service (USD only). GCP shows none without a BigQuery billing export.",
            [target(f"sum by (provider, service) ({billed})", "{{provider}} {{service}}")],
            "currencyUSD", w=6),
        state_timeline(
            "Billing and pricing refreshes",
            "Whether each provider's last billing/pricing refresh succeeded.",
            [target(f"max by (provider, source) ({sel(m.CLOUD_REFRESH_SUCCESS)})",
                    "{{provider}} {{source}}")],
            {0: ("failed", "red"), 1: ("ok", "green")}),
        timeseries(
            "Cloud API calls",
            "Billing and pricing API requests per second by provider, API and outcome "
            "(the refreshers are rate-capped: these calls can cost money).",
            [target(f"sum by (provider, api, outcome) ({rate(m.CLOUD_API_REQUESTS)})",
                    "{{provider}} {{api}} {{outcome}}")],
            "reqps", h=7),
        table(
            "Prices (USD/hour)",
            "Hourly price per instance type and where it comes from (static config or the "
            "provider's catalog).",
            [target(f"max by (provider, region, instance_type, source) "
                    f"({sel(m.CLOUD_PRICE)})", instant=True, table=True)],
            "currencyUSD", value_name="USD/h",
            columns=("provider", "region", "instance_type", "source"), w=24),
    ]
    return dashboard(
        uids.COST,
        "DRM / Cloud cost",
        "Accrued cost of the DRM's workers, billed spend, the month-end forecast against "
        "budget, and the health of the billing refreshers.",
        panels,
    )
