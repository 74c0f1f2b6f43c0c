"""The no-Docker local stack: the exporter and Debian's Prometheus as child processes on
loopback. `drm-exporter demo` uses it, and so do the integration tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_PROMETHEUS_YML = REPO_ROOT / "prometheus" / "prometheus.yml"
DASHBOARDS_DIR = REPO_ROOT / "grafana" / "provisioning" / "dashboards"
JOB = "drm-exporter"


class StackError(RuntimeError):
    """The local stack could not start; the message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def derive_prometheus_config(target: str, scrape_interval: str,
                             bundle: Path = BUNDLE_PROMETHEUS_YML) -> dict[str, Any]:
    """The bundle's prometheus.yml, pointed at a loopback target with a shorter interval.
    Rule paths become absolute because the derived file lives elsewhere."""
    cfg = yaml.safe_load(bundle.read_text(encoding="utf-8"))
    cfg["global"]["scrape_interval"] = scrape_interval
    cfg["global"]["evaluation_interval"] = scrape_interval
    cfg["rule_files"] = [str((bundle.parent / p).resolve()) for p in cfg.get("rule_files", [])]
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == JOB]
    if not jobs:
        raise StackError(f"{bundle} has no scrape job {JOB!r}")
    jobs[0]["static_configs"] = [{"targets": [target]}]
    return cfg


class ManagedProcess:
    """A child in its own process group, so stopping it stops everything it started."""

    def __init__(self, name: str, argv: list[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._log.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_http_ok(url: str, proc: ManagedProcess, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StackError(f"{proc.name} exited (code {proc.proc.returncode}); its log "
                             f"{proc.log_path} ends with:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise StackError(f"{proc.name} did not answer {url} within {timeout_s:.0f}s; log "
                     f"{proc.log_path}:\n{proc.log_tail()}")


def start_exporter(config: Path | None, port: int, log_path: Path,
                   extra: list[str] | None = None) -> ManagedProcess:
    argv = [sys.executable, "-m", "drm_exporter.cli", "serve",
            "--listen-address", f"127.0.0.1:{port}", *(extra or [])]
    if config is not None:
        argv[4:4] = ["--config", str(config)]
    p = ManagedProcess("drm-exporter", argv, log_path)
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", p)
    return p


def start_prometheus(run_dir: Path, target: str, port: int,
                     scrape_interval: str = "5s") -> ManagedProcess:
    p = spawn_prometheus(run_dir, derive_prometheus_config(target, scrape_interval), port)
    wait_http_ok(f"http://127.0.0.1:{port}/-/ready", p)
    return p


def spawn_prometheus(run_dir: Path, config: dict[str, Any], port: int,
                     name: str = "prometheus") -> ManagedProcess:
    """Debian's Prometheus on 127.0.0.1:`port` with `config`, its files in `run_dir`; returns
    at once, so several can start side by side (wait_http_ok on /-/ready before use)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise StackError("Prometheus is not installed. On Debian: apt-get install prometheus "
                         "(`make demo` and `make test` do it for you).")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "prometheus.yml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    data = run_dir / "prometheus-data"
    shutil.rmtree(data, ignore_errors=True)
    return ManagedProcess(name, [
        binary, f"--config.file={cfg_path}", f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
    ], run_dir / "prometheus.log")


def prometheus_query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise StackError(f"query {expr!r} failed: {body}")
    return list(body["data"]["result"])


def run_demo(duration_s: float, out_dir: Path, config: Path, exporter_port: int,
             prometheus_port: int, scrape_interval_s: int = 5) -> int:
    """Exporter + Prometheus for `duration_s`, then the five PNGs; stops all it started."""
    from .renderer import PrometheusError, render_dashboards

    for port, who in ((exporter_port, "exporter"), (prometheus_port, "Prometheus")):
        if port_in_use(port):
            print(f"demo: port {port} for the {who} is taken; pass --port/--prometheus-port "
                  "(with make: make demo DEMO_ARGS='--port 9850 --prometheus-port 19091')",
                  file=sys.stderr)
            return 1
    run_dir = out_dir / "run"
    procs: list[ManagedProcess] = []
    signal.signal(signal.SIGTERM, _interrupt)  # the same clean stop as Ctrl-C
    prom = f"http://127.0.0.1:{prometheus_port}"
    try:
        procs.append(start_exporter(config, exporter_port, run_dir / "exporter.log"))
        procs.append(start_prometheus(run_dir, f"127.0.0.1:{exporter_port}", prometheus_port,
                                      f"{scrape_interval_s}s"))
        start = time.time()
        print(f"exporter:   http://127.0.0.1:{exporter_port}/metrics  (log {procs[0].log_path})")
        print(f"prometheus: {prom}  (log {procs[1].log_path})")
        print(f"collecting for {duration_s:.0f}s; Ctrl-C stops everything")
        while (left := start + duration_s - time.time()) > 0:
            time.sleep(min(30.0, left))
            for p in procs:
                if not p.alive():
                    raise StackError(f"{p.name} died; log {p.log_path}:\n{p.log_tail()}")
            workers = prometheus_query(prom, f'count(drm_worker_up{{job="{JOB}"}} == 1)')
            n = workers[0]["value"][1] if workers else "0"
            print(f"  {time.time() - start:4.0f}s: {n} workers up")
        dashboards = [json.loads(f.read_text(encoding="utf-8"))
                      for f in sorted(DASHBOARDS_DIR.glob("*.json"))]
        report = render_dashboards(prom, dashboards, out_dir, start, time.time(),
                                   scrape_interval_s=scrape_interval_s)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the exporter and Prometheus", file=sys.stderr)
        return 130
    except (StackError, PrometheusError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        for p in reversed(procs):
            p.stop()
    empty = print_render_report(report)
    print(f"logs and Prometheus data: {run_dir}")
    return 1 if empty else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def print_render_report(report: Any) -> int:
    """Print what each PNG holds; returns how many dashboards had no data at all."""
    from .renderer import dashboard_has_data

    empty = 0
    for d in report.dashboards:
        print(f"{d.path}: {d.panels_with_data}/{d.panels_total} panels with data")
        for title, reason in d.no_data:
            print(f"    no data: {title} ({reason})")
        for title, err in d.query_errors + d.draw_errors:
            print(f"    error in {title}: {err}")
        if not dashboard_has_data(d):
            print(f"    dashboard {d.title!r} has no data at all", file=sys.stderr)
            empty += 1
    return empty
