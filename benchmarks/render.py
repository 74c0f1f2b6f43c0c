"""Render cost: the five committed dashboards over a window of a simulated fleet, on a real
Prometheus.

    .venv/bin/python benchmarks/render.py [--workers 100] [--hours 1] [--repeat 1] [--out DIR]

Setup (not timed as the result):

1. simulate  The project's own fleet on a ManualClock: `Service` with the simulator enabled
             and `run_for` (simulator.step, engine.tick, simulator.apply) every tick; every 15 s
             of simulated time `build_families(engine.view(), ...)` is sampled, as a 15 s
             scrape would. A 10-minute warm-up precedes the window so rates and the engine's
             evaluation window have history at its start.
2. backfill  The samples are written as OpenMetrics with timestamps (our own writer below,
             labelled job/instance like a scrape) and imported with
             `promtool tsdb create-blocks-from openmetrics`.
3. rules     Prometheus serves those blocks; every recording rule of
             prometheus/rules/recording.yml is evaluated with query_range at the evaluation
             interval (what `promtool tsdb create-blocks-from rules` does). The results join
             the raw samples in one OpenMetrics file, which is imported again into a fresh data
             dir, and Prometheus restarts on it. One import, not two sets of blocks: blocks
             that overlap in time would be merged by Prometheus' compactor about a minute after
             start, in the middle of the timed render.

Measured: `render_dashboard` for each of grafana/provisioning/dashboards/*.json over the window
(query_range/query to Prometheus plus matplotlib drawing and PNG writing), wall and CPU seconds
of this process and CPU seconds of Prometheus. The last line is machine-readable.

This is a benchmark, not a test: tests/test_render_benchmark_smoke.py only checks that a tiny
run works end to end.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))

from drm_exporter.localstack import (  # noqa: E402  (after the path above)
    DASHBOARDS_DIR,
    JOB,
    ManagedProcess,
    StackError,
    free_port,
    wait_http_ok,
)
from drm_exporter.renderer import (  # noqa: E402
    PrometheusClient,
    PrometheusError,
    Series,
    render_dashboard,
)

RULES_FILE = ROOT / "prometheus" / "rules" / "recording.yml"
STEP_S = 15  # the bundle's scrape and evaluation interval (prometheus/prometheus.yml)
WARMUP_S = 600  # simulated before the window: rate(...[5m]) and the engine's 300 s window
INSTANCE = "127.0.0.1:9847"  # the instance label a scrape of the default listen address adds
TARGET_S = 30.0  # issue 8: five dashboards, 1 h of 100 workers, <= 30 s
GPU_SHARE = 3 / 8  # the simulator's default mix (8 workers, 3 with GPUs)
MAX_POINTS = 10_000  # query_range answers at most 11 000 points per series

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]  # (metric name, sorted label pairs)
Points = list[tuple[float, float]]  # (unix s, value) in time order


# --- 1. simulate ---------------------------------------------------------------------------------
@dataclass
class Samples:
    """Every (timestamp, value) per series, in time order: what the TSDB will hold."""

    series: dict[SeriesKey, Points] = field(default_factory=dict)
    fleet_sizes: list[int] = field(default_factory=list)

    def add(self, name: str, labels: Iterable[tuple[str, str]], ts: float, value: float) -> None:
        self.series.setdefault((name, tuple(sorted(labels))), []).append((ts, value))

    @property
    def count(self) -> int:
        return sum(len(points) for points in self.series.values())


def simulate(workers: int, start: float, end: float, seed: int) -> Samples:
    """The fleet from `start` to `end` (unix s), sampled every STEP_S from `start` on."""
    from drm_exporter.clock import ManualClock
    from drm_exporter.config import Config, HostWorkerConfig, SimulatorConfig
    from drm_exporter.scaling import PoolPolicy
    from drm_exporter.service import Service
    from drm_exporter.simulator import SimulatorSettings, run_for
    from drm_exporter.snapshot import build_families

    gpu_workers = max(1, round(workers * GPU_SHARE)) if workers > 1 else 0
    sizes = {"cpu": workers - gpu_workers, "gpu": gpu_workers}
    # Bounds around the starting size so the fleet stays "W workers" give or take 20 % while
    # demand still moves it both ways (the default max_workers of 20 would shrink it at once).
    pools = {p: PoolPolicy(min_workers=max(1, round(n * 0.8)),
                           max_workers=max(2, round(n * 1.2))) for p, n in sizes.items() if n}
    # Workers report every STEP_S rather than the simulator's 5 s: a report only replaces the
    # last usage, so the ones between two samples are never seen, and skipping them makes the
    # simulation 2-3x faster. The tick stays the exporter's default 1 s.
    settings = SimulatorSettings(seed=seed, workers=workers, gpu_workers=gpu_workers,
                                 report_interval_s=float(STEP_S))
    config = Config(state_file="", pools=pools, simulator=SimulatorConfig(True, settings),
                    host_worker=HostWorkerConfig(enabled=False))
    clock = ManualClock(start)
    service = Service(config, clock=clock)  # not started: no HTTP server, no threads
    assert service.simulator is not None
    out = Samples()
    try:
        service.simulator.start()
        while clock.time() <= end:
            view = service.engine.view()
            ts = clock.time()
            out.fleet_sizes.append(len(view.workers))
            base = (("job", JOB), ("instance", INSTANCE))
            out.add("up", base, ts, 1.0)
            for fam in build_families(view, service.status.snapshot(), service.hooks.counts()):
                # The only coupling to exposition.Family: its MetricDef and (labels, value)
                # samples, the shape snapshot.build_families hands to any formatter.
                name, label_names = fam.metric.name, fam.metric.labels
                for label_values, value in fam.samples:
                    out.add(name, (*base, *zip(label_names, label_values, strict=True)), ts,
                            float(value))
            run_for(service.simulator, service.engine, clock, STEP_S, config.tick_interval_s)
    finally:
        service.hooks.stop()
        service.engine.close()
    return out


# --- 2. backfill -------------------------------------------------------------------------------
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def openmetrics_lines(series: dict[SeriesKey, Points]) -> Iterator[str]:
    """OpenMetrics with a timestamp on every sample, for promtool.

    Families stay contiguous (OpenMetrics requires it) and each series' points are in time
    order (the block writer rejects out-of-order samples). No TYPE lines: blocks do not keep
    metadata, and a counter's TYPE would have to drop the `_total` suffix.
    """
    for (name, labels) in sorted(series):
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
        prefix = f"{name}{{{inner}}} " if inner else f"{name} "
        for ts, value in series[(name, labels)]:
            yield f"{prefix}{_number(value)} {ts:.3f}\n"
    yield "# EOF\n"


def write_openmetrics(path: Path, series: dict[SeriesKey, Points]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(openmetrics_lines(series))


def promtool(*args: str) -> None:
    binary = shutil.which("promtool")
    if binary is None:
        raise StackError("promtool is not installed. On Debian: apt-get install prometheus")
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise StackError(f"promtool {' '.join(args[:3])} failed ({done.returncode}):\n{tail}")


def import_blocks(run_dir: Path, name: str,
                  series: dict[SeriesKey, Points]) -> Path:
    """A fresh Prometheus data dir holding `series`."""
    om = run_dir / f"{name}.om"
    write_openmetrics(om, series)
    data = run_dir / name
    data.mkdir()
    promtool("tsdb", "create-blocks-from", "openmetrics", "--quiet", str(om), str(data))
    om.unlink()  # hundreds of MB at large W; the blocks hold it now
    return data


def start_prometheus(run_dir: Path, data: Path, hours: float) -> tuple[ManagedProcess, str]:
    """Prometheus on `data` with nothing to scrape and no rules: it only answers queries."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise StackError("Prometheus is not installed. On Debian: apt-get install prometheus")
    cfg = run_dir / "prometheus.yml"
    cfg.write_text(yaml.safe_dump({"global": {"scrape_interval": f"{STEP_S}s",
                                              "evaluation_interval": f"{STEP_S}s"}}),
                   encoding="utf-8")
    port = free_port()
    retention_h = max(24 * 15, math.ceil(hours) + 24)  # never drop the window at start
    proc = ManagedProcess("prometheus", [
        binary, f"--config.file={cfg}", f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--storage.tsdb.retention.time={retention_h}h",
    ], run_dir / f"prometheus-{data.name}.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/-/ready", proc, timeout_s=60)
    except BaseException:
        proc.stop()
        raise
    return proc, base


# --- 3. rules ------------------------------------------------------------------------------------
def recording_rules(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [r for g in doc.get("groups") or [] for r in g.get("rules") or [] if "record" in r]


def inline_recorded(rules: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, str]]]:
    """(record, expr, labels) with references to earlier recorded series replaced by their
    expression. Evaluated on the same step grid this gives the same values, and it spares a
    second import round (promtool's rule backfill cannot chain rules either)."""
    done: dict[str, str] = {}
    out = []
    for rule in rules:
        expr = str(rule["expr"])
        for record, inner in done.items():
            pattern = re.compile(rf"(?<![\w:]){re.escape(record)}(?![\w:])")
            for m in pattern.finditer(expr):
                if expr[m.end():m.end() + 1] in ("{", "["):
                    raise StackError(f"cannot inline {record} with a selector in {rule['record']}")
            expr = pattern.sub(lambda _m, inner=inner: f"({inner})", expr)
        done[str(rule["record"])] = expr
        out.append((str(rule["record"]), expr, dict(rule.get("labels") or {})))
    return out


def evaluate_rules(base: str, start: float, end: float) -> dict[SeriesKey, Points]:
    """Every recording rule over [start, end] at STEP_S, as recorded series."""
    client = PrometheusClient(base, timeout_s=120)
    out: dict[SeriesKey, Points] = {}
    for record, expr, static in inline_recorded(recording_rules(RULES_FILE)):
        t = start
        while t <= end:  # in chunks below the 11 000 points a query_range may return
            chunk_end = min(end, t + (MAX_POINTS - 1) * STEP_S)
            for s in client.query_range(expr, t, chunk_end, STEP_S):
                labels = {k: v for k, v in s.labels.items() if k != "__name__"}
                labels.update(static)
                key = (record, tuple(sorted(labels.items())))
                out.setdefault(key, []).extend(zip(s.timestamps, s.values, strict=True))
            t = chunk_end + STEP_S
    return out


# --- the timed part ------------------------------------------------------------------------------
class CountingClient:
    """PrometheusClient that counts calls, series and points (queries run on 8 threads)."""

    def __init__(self, inner: PrometheusClient) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self.range_calls = self.instant_calls = self.series = self.points = 0
        self.query_s = 0.0  # summed over threads, so it may exceed wall time

    def _count(self, result: list[Series], began: float, instant: bool) -> list[Series]:
        with self._lock:
            self.query_s += time.perf_counter() - began
            if instant:
                self.instant_calls += 1
            else:
                self.range_calls += 1
            self.series += len(result)
            self.points += sum(len(s.timestamps) for s in result)
        return result

    # The protocol names the parameter `time`, which hides the module here: hence _now().
    def query(self, expr: str, time: float) -> list[Series]:
        began = _now()
        return self._count(self.inner.query(expr, time), began, True)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        began = _now()
        return self._count(self.inner.query_range(expr, start, end, step), began, False)


def _now() -> float:
    return time.perf_counter()


def proc_cpu_s(pid: int) -> float:
    """utime + stime of another process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class DashboardRun:
    uid: str
    wall_s: float
    cpu_s: float
    prometheus_cpu_s: float
    panels_total: int
    panels_with_data: int
    range_calls: int
    instant_calls: int
    series: int
    points: int
    query_s: float
    errors: list[str]
    no_data: list[str]


def render_all(base: str, prom_pid: int, start: float, end: float, out_dir: Path
               ) -> list[DashboardRun]:
    """Each committed dashboard through the renderer's public render_dashboard, timed."""
    client = PrometheusClient(base)
    client.check()
    runs = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        counting = CountingClient(client)
        p0 = proc_cpu_s(prom_pid)
        c0, t0 = time.process_time(), time.perf_counter()
        report = render_dashboard(counting, dashboard, out_dir / f"{dashboard['uid']}.png",
                                  start, end, STEP_S, source=base)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        errors = [f"{t}: {e}" for t, e in report.query_errors + report.draw_errors]
        runs.append(DashboardRun(dashboard["uid"], wall, cpu, proc_cpu_s(prom_pid) - p0,
                                 report.panels_total, report.panels_with_data,
                                 counting.range_calls, counting.instant_calls, counting.series,
                                 counting.points, counting.query_s, errors,
                                 [f"{t} ({why})" for t, why in report.no_data]))
    return runs


def median_runs(repeats: list[list[DashboardRun]]) -> list[DashboardRun]:
    """Per dashboard, the median of the timings over repeats (the counts do not change)."""
    out = []
    for same in zip(*repeats, strict=True):
        first = same[0]
        out.append(DashboardRun(
            first.uid, statistics.median(r.wall_s for r in same),
            statistics.median(r.cpu_s for r in same),
            statistics.median(r.prometheus_cpu_s for r in same), first.panels_total,
            first.panels_with_data, first.range_calls, first.instant_calls, first.series,
            first.points, statistics.median(r.query_s for r in same), first.errors,
            first.no_data))
    return out


# --- main ----------------------------------------------------------------------------------------
def print_table(runs: list[DashboardRun], totals: tuple[float, float, float]) -> None:
    head = (f"{'dashboard':<17} {'panels':>6} {'data':>5} {'range q':>7} {'inst q':>6} "
            f"{'series':>7} {'points':>8} {'query s*':>8} {'wall s':>7} {'cpu s':>6} "
            f"{'prom cpu s':>10}")
    print(head)
    for r in runs:
        print(f"{r.uid:<17} {r.panels_total:>6} {r.panels_with_data:>5} {r.range_calls:>7} "
              f"{r.instant_calls:>6} {r.series:>7} {r.points:>8} {r.query_s:>8.2f} "
              f"{r.wall_s:>7.2f} {r.cpu_s:>6.2f} {r.prometheus_cpu_s:>10.2f}")
    wall, cpu, prom_cpu = totals
    print(f"{'total':<17} {sum(r.panels_total for r in runs):>6} "
          f"{sum(r.panels_with_data for r in runs):>5} {sum(r.range_calls for r in runs):>7} "
          f"{sum(r.instant_calls for r in runs):>6} {sum(r.series for r in runs):>7} "
          f"{sum(r.points for r in runs):>8} {sum(r.query_s for r in runs):>8.2f} "
          f"{wall:>7.2f} {cpu:>6.2f} {prom_cpu:>10.2f}")
    print("* query s: time inside query calls summed over the 8 query threads")
    for r in runs:
        for panel in r.no_data:
            print(f"  {r.uid}: no data: {panel}")


def run(args: argparse.Namespace) -> int:
    window_s = max(STEP_S, round(args.hours * 3600 / STEP_S) * STEP_S)
    # A minute back from now on the step grid: recent enough for any retention, and in the past
    # so nothing the render asks for lies in the (empty) head.
    end = math.floor(time.time() / STEP_S) * STEP_S - 60
    start = end - window_s
    data_start = start - WARMUP_S
    run_dir = Path(tempfile.mkdtemp(prefix="drm-render-bench-"))
    if args.keep:
        print(f"run folder (kept): {run_dir}")
    out_dir = Path(args.out) if args.out else run_dir / "png"
    out_dir.mkdir(parents=True, exist_ok=True)
    prom: ManagedProcess | None = None
    previous = signal.signal(signal.SIGTERM, _interrupt)  # the same cleanup as Ctrl-C
    try:
        t0 = time.perf_counter()
        samples = simulate(args.workers, data_start, end, args.seed)
        sim_s = time.perf_counter() - t0
        sizes = samples.fleet_sizes
        print(f"simulate: {len(samples.series)} series, {samples.count} samples, fleet "
              f"{min(sizes)}..{max(sizes)} workers (mean {statistics.mean(sizes):.0f}), "
              f"{sim_s:.1f}s")

        t0 = time.perf_counter()
        raw = import_blocks(run_dir, "raw", samples.series)
        prom, base = start_prometheus(run_dir, raw, args.hours)
        recorded = evaluate_rules(base, data_start, end)
        prom.stop()
        prom = None
        shutil.rmtree(raw)
        data = import_blocks(run_dir, "data", {**samples.series, **recorded})
        del samples
        prom, base = start_prometheus(run_dir, data, args.hours)
        print(f"backfill: {len(recorded)} recorded series, blocks and Prometheus ready in "
              f"{time.perf_counter() - t0:.1f}s")

        repeats = []
        for i in range(args.repeat):
            c0, p0, t0 = time.process_time(), proc_cpu_s(prom.proc.pid), time.perf_counter()
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            runs = render_all(base, prom.proc.pid, start, end, out_dir)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            totals = (time.perf_counter() - t0, time.process_time() - c0,
                      proc_cpu_s(prom.proc.pid) - p0)
            repeats.append((runs, totals))
            if args.repeat > 1:
                print(f"  render {i + 1}/{args.repeat}: {totals[0]:.2f}s wall, "
                      f"{totals[1]:.2f}s cpu")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (StackError, PrometheusError, subprocess.TimeoutExpired) as e:
        print(f"render benchmark: {e}", file=sys.stderr)
        return 1
    finally:
        if prom is not None:
            prom.stop()
        signal.signal(signal.SIGTERM, previous)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)

    runs = median_runs([r for r, _ in repeats])
    totals = tuple(statistics.median(t[i] for _, t in repeats) for i in range(3))
    render_s, cpu_s, prom_cpu_s = totals
    print(f"\nrender: {len(runs)} dashboards, {args.workers} workers, {window_s / 3600:g} h at "
          f"{STEP_S}s, median of {args.repeat}; PNGs in "
          f"{out_dir if args.out or args.keep else '(removed)'}")
    print_table(runs, (render_s, cpu_s, prom_cpu_s))
    errors = [f"{r.uid}: {e}" for r in runs for e in r.errors]
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    with_data = sum(r.panels_with_data for r in runs)
    total = sum(r.panels_total for r in runs)
    per = ",".join(f"{r.uid}:{r.wall_s:.2f}" for r in runs)
    ok = render_s <= TARGET_S and not errors and all(r.panels_with_data for r in runs)
    print(f"workers={args.workers} hours={args.hours:g} render_s={render_s:.2f} "
          f"cpu_s={cpu_s:.2f} prometheus_cpu_s={prom_cpu_s:.2f} per_dashboard={per} "
          f"panels_with_data={with_data}/{total} "
          f"range_queries={sum(r.range_calls for r in runs)} "
          f"instant_queries={sum(r.instant_calls for r in runs)} "
          f"points={sum(r.points for r in runs)} target_s={TARGET_S:g} ok={ok}")
    # The exit status says whether the run worked, not whether it was fast enough (ok= does).
    return 1 if errors or not all(r.panels_with_data for r in runs) else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=100, help="simulated fleet size (default 100)")
    p.add_argument("--hours", type=float, default=1.0, help="window to render (default 1)")
    p.add_argument("--repeat", type=int, default=1, help="renders; medians are reported")
    p.add_argument("--seed", type=int, default=42, help="simulator seed")
    p.add_argument("--out", help="keep the PNGs in this folder")
    p.add_argument("--profile", metavar="FILE",
                   help="cProfile the (last) render into FILE (the main thread: drawing; the "
                        "query threads are not profiled). Timings then include its overhead")
    p.add_argument("--keep", action="store_true",
                   help="keep the run folder (blocks, Prometheus logs, PNGs) and print it")
    args = p.parse_args(argv)
    if args.workers < 1 or args.hours <= 0 or args.repeat < 1:
        p.error("need --workers >= 1, --hours > 0 and --repeat >= 1")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
