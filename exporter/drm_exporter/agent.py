"""`drm-exporter agent`: runs on a worker and reports to a coordinator (placeholder)."""

from __future__ import annotations

import argparse


def add_agent_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("agent", help="report this worker to a coordinator")
    a.add_argument("--coordinator", required=True, help="coordinator base URL")
    a.set_defaults(fn=lambda args: 2)
