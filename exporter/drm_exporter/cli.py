"""The `drm-exporter` command: serve, agent, collect, render, dashboards, demo, policy
explain."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from . import __version__
from .config import DEFAULT_LISTEN_ADDRESS, Config, ConfigError, load_config_file

log = logging.getLogger("drm_exporter")

# The bundle (dashboards, rules, prometheus.yml) sits beside the package in a checkout and in
# the container image; an installed wheel has no bundle, so the commands take paths.
REPO_ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS_DIR = REPO_ROOT / "grafana" / "provisioning" / "dashboards"
RULES_DIR = REPO_ROOT / "prometheus" / "rules"


def parse_duration(text: str) -> float:
    """'90', '90s', '3m', '1h' → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 3m)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be > 0: {text!r}")
    return value


def _serve(args: argparse.Namespace) -> int:
    from .collect import apply_collector_flags
    from .config import resolve_state_file
    from .service import Service
    from .state import StateError

    cfg = load_config_file(args.config) if args.config else Config()
    if args.listen_address:
        cfg = replace(cfg, listen_address=args.listen_address)
    if args.web_config_file:
        cfg = replace(cfg, web_config_file=str(args.web_config_file))
    if args.simulate is not None or args.seed is not None:
        sim = cfg.simulator
        settings = replace(sim.settings, seed=args.seed) if args.seed is not None \
            else sim.settings
        cfg = replace(cfg, simulator=replace(
            sim, enabled=sim.enabled if args.simulate is None else args.simulate,
            settings=settings))
    if args.host_worker is not None:
        cfg = replace(cfg, host_worker=replace(cfg.host_worker, enabled=args.host_worker))
    cfg = replace(cfg, collectors=apply_collector_flags(cfg.collectors, args))
    if args.no_state:
        cfg = replace(cfg, state_file="")
    elif args.state_file is not None:
        cfg = replace(cfg, state_file=str(args.state_file))
    state_file = resolve_state_file(cfg, os.environ)
    cfg = replace(cfg, state_file=str(state_file) if state_file else "")
    try:
        svc = Service(cfg, reset_state=args.reset_state)
    except StateError as e:
        hint = " (--reset-state moves it aside and starts empty)" if e.movable else ""
        print(f"drm-exporter: state file {e}{hint}", file=sys.stderr)
        return 2
    # Counted before start(): what the file held, not what the simulator adds next.
    restored = (len(svc.engine.workers()), len(svc.engine.reservations()))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        svc.start()
    except OSError as e:
        print(f"drm-exporter: cannot listen on {cfg.listen_address}: {e.strerror}",
              file=sys.stderr)
        svc.engine.close()
        return 1
    assert svc.http is not None
    log.info("serving /metrics on %s://%s:%d (simulator %s, host worker %s)", svc.http.scheme,
             cfg.listen_address.rpartition(":")[0], svc.http.port,
             "on" if svc.simulator else "off", "on" if svc.host_worker else "off")
    # Where the secrets come from, never what they are.
    log.info("basic auth %s; API write endpoints %s",
             "on" if svc.web.basic_auth else "off",
             f"need the token from {svc.token_source}" if svc.api_token else "are open")
    if state_file:
        log.info("state file %s: restored %s and %s", state_file,
                 _count(restored[0], "worker"), _count(restored[1], "reservation"))
    else:
        log.info("no state file: a restart forgets workers, reservations, cost and counters")
    stop.wait()
    log.info("stopping")
    svc.stop()
    return 0


def _render(args: argparse.Namespace) -> int:
    import json

    from .localstack import print_render_report
    from .renderer import PrometheusError, render_dashboards

    files = sorted(args.dashboards.glob("*.json")) if args.dashboards.is_dir() else \
        [args.dashboards]
    if not files:
        print(f"drm-exporter render: no dashboard JSON in {args.dashboards}", file=sys.stderr)
        return 2
    dashboards = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    end = time.time()
    try:
        report = render_dashboards(args.prometheus, dashboards, args.out, end - args.range,
                                   end, scrape_interval_s=args.scrape_interval)
    except (PrometheusError, ValueError) as e:
        print(f"drm-exporter render: {e}", file=sys.stderr)
        return 1
    return 1 if print_render_report(report) else 0


def _dashboards(args: argparse.Namespace) -> int:
    from drm_dashboards.build import write_all

    paths = write_all(args.out, rules_path=args.rules, alerts_path=args.alerts)
    for p in paths:
        print(p)
    return 0


def _docs(args: argparse.Namespace) -> int:
    from .docs import metrics_markdown

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(metrics_markdown(), encoding="utf-8")
    print(args.out)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .localstack import run_demo

    return run_demo(duration_s=args.duration, out_dir=args.out, config=args.config,
                    exporter_port=args.port, prometheus_port=args.prometheus_port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="drm-exporter", description=__doc__)
    p.add_argument("--version", action="version", version=f"drm-exporter {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve /metrics for the DRM engine and this host",
                       description="Serve /metrics and /healthz for the DRM engine, with this "
                       "host as a worker and optionally a simulated fleet.")
    s.add_argument("--config", type=Path, help="YAML config file (see README)")
    s.add_argument("--listen-address", help=f"HOST:PORT (default {DEFAULT_LISTEN_ADDRESS})")
    s.add_argument("--web.config.file", dest="web_config_file", type=Path, metavar="FILE",
                   help="TLS and basic auth for every endpoint, in the Prometheus "
                   "exporter-toolkit format (overrides web_config_file in --config)")
    s.add_argument("--simulate", action=argparse.BooleanOptionalAction, default=None,
                   help="run the seeded simulated fleet (default: from config, else off)")
    s.add_argument("--seed", type=int, help="simulator seed")
    st = s.add_mutually_exclusive_group()
    st.add_argument("--state-file", type=Path, metavar="PATH",
                    help="SQLite file that keeps workers, reservations, cost and scaling "
                    "counters across restarts (default: state_file in --config, else "
                    "$XDG_STATE_HOME/drm-exporter/state.db or "
                    "~/.local/state/drm-exporter/state.db; docs/state.md)")
    st.add_argument("--no-state", action="store_true",
                    help="keep everything in memory only: a restart forgets the fleet")
    s.add_argument("--reset-state", action="store_true",
                   help="if the state file is corrupt or unreadable, move it aside to "
                   "<name>.corrupt-<timestamp> and start empty (a healthy file is kept)")
    s.add_argument("--host-worker", action=argparse.BooleanOptionalAction, default=None,
                   help="report this machine as a worker (default on)")
    from .collect import add_collect_parser, add_collector_flags

    add_collector_flags(s, "default: collectors.<name>.enabled in --config, else on")
    s.set_defaults(fn=_serve)

    r = sub.add_parser("render", help="draw the dashboards to PNG from a Prometheus",
                       description="Run every panel's queries against Prometheus and draw each "
                       "dashboard as one PNG. Exits 1 if a whole dashboard has no data.")
    r.add_argument("--prometheus", required=True, help="Prometheus base URL")
    r.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out)")
    r.add_argument("--dashboards", type=Path, default=DASHBOARDS_DIR,
                   help="dashboard JSON file or folder (default: the bundle's)")
    r.add_argument("--range", type=parse_duration, default=parse_duration("15m"),
                   help="time range ending now (default 15m)")
    r.add_argument("--scrape-interval", type=parse_duration, default=15.0,
                   help="Prometheus scrape interval, for $__rate_interval (default 15s)")
    r.set_defaults(fn=_render)

    d = sub.add_parser("dashboards",
                       help="generate the dashboard JSON, recording rules and alerting rules",
                       description="Generate the five dashboards (grafanalib) as JSON, the "
                       "recording rules they use and the alerting rules.")
    d.add_argument("--out", type=Path, default=DASHBOARDS_DIR, help="JSON output folder")
    d.add_argument("--rules", type=Path, default=RULES_DIR / "recording.yml",
                   help="recording rules output file")
    d.add_argument("--alerts", type=Path, default=RULES_DIR / "alerts.yml",
                   help="alerting rules output file")
    d.set_defaults(fn=_dashboards)

    from .agent import add_agent_parser

    add_agent_parser(sub)
    add_collect_parser(sub)

    from .explain import add_policy_parser

    add_policy_parser(sub)

    g = sub.add_parser("docs", help="generate docs/metrics.md from the metric contract",
                       description="Write the metrics reference (every family, type, labels, "
                       "scaling reasons) generated from metrics.py.")
    g.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "metrics.md",
                   help="output file (default docs/metrics.md)")
    g.set_defaults(fn=_docs)

    m = sub.add_parser("demo", help="exporter + Prometheus + five PNGs on this machine",
                       description="Start the exporter with a simulated fleet plus this host, "
                       "a local Prometheus, wait, render the five dashboards, stop everything.")
    m.add_argument("--duration", type=parse_duration, default=parse_duration("3m"),
                   help="how long to collect before rendering (default 3m)")
    m.add_argument("--out", type=Path, default=Path("out"), help="output folder (default out)")
    m.add_argument("--config", type=Path, default=REPO_ROOT / "deploy" / "local" / "demo.yml",
                   help="exporter config (default deploy/local/demo.yml)")
    m.add_argument("--port", type=int, default=9847, help="exporter port (default 9847)")
    m.add_argument("--prometheus-port", type=int, default=19090,
                   help="Prometheus port (default 19090)")
    m.set_defaults(fn=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args))
    except ConfigError as e:
        print(f"drm-exporter: config error: {e}", file=sys.stderr)
        return 2


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


if __name__ == "__main__":
    sys.exit(main())
