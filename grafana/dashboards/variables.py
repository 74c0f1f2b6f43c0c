"""Template variables the dashboards use, and their substitution outside Grafana.

The renderer and the integration test send dashboard expressions straight to Prometheus'
HTTP API, so they need Grafana's variables replaced the way Grafana would replace them.
"""

from __future__ import annotations

import re

DATASOURCE = "datasource"
JOB = "job"
POOL = "pool"
WORKER = "worker"

# What a multi-value variable set to "All" expands to (allValue in the dashboards).
ALL_VALUE = ".*"

# $name or ${name} / ${name:format}; a name starts with a letter or underscore, so regex
# back-references such as "$1" in label_replace are left alone.
_VAR = re.compile(r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)")


def substitute(
    expr: str,
    values: dict[str, str] | None = None,
    rate_interval: str = "1m",
    range_s: int = 3600,
) -> str:
    """Replace Grafana variables in a PromQL expression.

    `values` maps dashboard variables (datasource, job, pool, worker) to their value, already
    in regex form for multi-value variables; missing ones default to ".*" (All). Built-ins:
    `$__rate_interval` -> rate_interval, `$__interval` -> rate_interval, `$__range` ->
    "<range_s>s", `$__range_s` / `$__range_ms`. An unknown variable raises ValueError rather
    than reaching Prometheus as a parse error.
    """
    table: dict[str, str] = {
        DATASOURCE: ALL_VALUE,
        JOB: ALL_VALUE,
        POOL: ALL_VALUE,
        WORKER: ALL_VALUE,
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__range": f"{range_s}s",
        "__range_s": str(range_s),
        "__range_ms": str(range_s * 1000),
    }
    table.update(values or {})

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in table:
            raise ValueError(f"unknown dashboard variable ${name} in {expr!r}")
        return table[name]

    return _VAR.sub(repl, expr)
