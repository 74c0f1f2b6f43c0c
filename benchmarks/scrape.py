"""Scrape cost at fleet scale: ours vs. prometheus_client vs. the hand-written limit.

    .venv/bin/python benchmarks/scrape.py [--workers 100,1000] [--repeat N]

Each W runs in its own child process (so peak RSS is that W's alone). The child builds a
synthetic fleet of W workers x 8 GPUs through the real Engine (register, a usage report with
8 GpuReadings each, some reservations, one tick), publishes a snapshot (build_families ->
SnapshotStore), serves it with ExporterHTTPServer on 127.0.0.1:0, and times side by side:

  ours      GET /metrics over HTTP keep-alive with Prometheus' Accept header (OpenMetrics
            first) and Accept-Encoding: gzip, against a store wired as `serve` wires it.
            Before each timed scrape, untimed, every worker sends a new usage report and a
            tick marks the snapshot stale: so every timed scrape builds the snapshot from the
            engine (build_families) and formats + gzips it.
            Also: a repeat scrape of the same snapshot (cache hit), two scrapers of a new
            snapshot at once, and the first formatting by a fresh store (cold label cache).
  baseline  what a user would write: prometheus_client labelled Gauges/Counters in a fresh
            CollectorRegistry with the same values, served by prometheus_client's own HTTP
            server (start_wsgi_server) and scraped with the same headers (so it answers
            OpenMetrics, gzip at its default level).
  limit     a minimal hand-written formatter over plain tuples + gzip level 1, in-process.

This is a benchmark, not a test: nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from child import run_child

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "exporter"))

PROM_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
               "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
GPUS = 8
POOLS = ("gpu-a", "gpu-b", "gpu-c", "gpu-d")
TYPES = (("aws", "us-east-1", "g4dn.2xlarge"), ("gcp", "us-central1", "g2-standard-24"),
         ("azure", "eastus", "Standard_NC8as_T4_v3"), ("aws", "eu-west-1", "g5.xlarge"))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# --- the fleet ---------------------------------------------------------------------------------
def gpu_readings(i: int, rnd: int) -> tuple:  # noqa: ANN001
    from drm_exporter.fleet import GpuReading

    return tuple(GpuReading(
        index=g, uuid=f"GPU-{i:08x}-{g:04x}-4e2b-9c1d-{(i * GPUS + g):012x}",
        name="NVIDIA H100 80GB HBM3", driver_version="550.54.15",
        utilization_ratio=((i * 7 + g * 13 + rnd * 11) % 100) / 100.0,
        memory_total_bytes=85_520_809_984,
        memory_used_bytes=(i * 131 + g * 977 + rnd * 4099) % 80_000 * 1_000_000,
        temperature_celsius=30.0 + (i + g + rnd) % 50,
        power_watts=100.0 + (i * 3 + g + rnd * 7) % 600 + 0.5)
        for g in range(GPUS))


def report_all(eng, w: int, rnd: int) -> None:  # noqa: ANN001
    """Round `rnd` of usage reports: every worker sends new CPU, memory and GPU readings."""
    from drm_exporter.fleet import Usage

    for i in range(w):
        eng.report(f"worker-{i:05d}", Usage(cpu_utilization_ratio=((i + rnd) % 97) / 97.0,
                                            memory_used_bytes=((i + rnd) % 500) << 30,
                                            gpus=gpu_readings(i, rnd)))


def build_engine(w: int):  # noqa: ANN201
    from drm_exporter.engine import Engine
    from drm_exporter.fleet import WorkerSpec
    from drm_exporter.scaling import PoolPolicy

    eng = Engine({p: PoolPolicy() for p in POOLS[:2]})  # two managed, two observed pools
    for i in range(w):
        prov, region, itype = TYPES[i % len(TYPES)]
        wid = f"worker-{i:05d}"
        spec = WorkerSpec(worker=wid, pool=POOLS[i % len(POOLS)], provider=prov, region=region,
                          instance_type=itype, hostname=f"host-{i:05d}.example.internal",
                          cpu_cores=96, memory_total_bytes=1_152 << 30, gpus=GPUS,
                          cpu_source="host", memory_source="host")
        eng.register(spec)
    report_all(eng, w, 0)
    for i in range(0, w, 3):  # reservations: CPU, memory and GPUs held on a third of the fleet
        wid = f"worker-{i:05d}"
        eng.reserve(f"task-{i}-a", 8.0, 64 << 30, gpus=2, worker=wid)
        eng.reserve(f"task-{i}-b", 4.5, 32 << 30, gpus=1, worker=wid)
    for p in POOLS:
        eng.set_tasks_pending(p, 3)
    time.sleep(0.01)
    eng.tick()  # accrues cost, samples the managed pools
    return eng


# --- the limit: plain tuples, minimal formatter --------------------------------------------------
def plain_tuples(families) -> list[tuple[str, str, str, tuple[str, ...], list]]:  # noqa: ANN001
    return [(f.metric.name, f.metric.help, f.metric.type, f.metric.labels, list(f.samples))
            for f in families]


def limit_format(rows) -> bytes:  # noqa: ANN001
    """One %-template per family, one C-level format per sample (no escaping)."""
    out: list[str] = []
    app = out.append
    for name, help_, type_, labelnames, samples in rows:
        app(f"# HELP {name} {help_}\n# TYPE {name} {type_}\n")
        inner = ",".join(f'{k}="%s"' for k in labelnames)
        tmpl = f"{name}{{{inner}}} %r\n" if labelnames else f"{name} %r\n"
        for labels, value in samples:
            app(tmpl % (*labels, value))
    return "".join(out).encode()


# --- the baseline: what a user would write with prometheus_client -------------------------------
def baseline_registry(families):  # noqa: ANN001, ANN201
    from prometheus_client import CollectorRegistry, Counter, Gauge

    reg = CollectorRegistry()
    for f in families:
        m = f.metric
        if m.type == "counter":
            c = Counter(m.name.removesuffix("_total"), m.help, m.labels, registry=reg)
            for labels, value in f.samples:
                (c.labels(*labels) if m.labels else c).inc(value)
        else:
            g = Gauge(m.name, m.help, m.labels, registry=reg)
            for labels, value in f.samples:
                (g.labels(*labels) if m.labels else g).set(value)
    return reg


def count_samples(body: bytes, ctype: str) -> int:
    """Samples in a body, parsed by prometheus_client's parser for its content type."""
    if ctype.startswith("application/openmetrics-text"):
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import text_string_to_metric_families
    return sum(len(f.samples) for f in text_string_to_metric_families(body.decode()))


def promtool_check(body: bytes) -> str:
    """`promtool check metrics` on a text-format body: "ok", its complaint, or "skipped"."""
    import shutil
    if shutil.which("promtool") is None:
        return "skipped"
    out = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                         timeout=600)
    return "ok" if out.returncode == 0 else (out.stdout + out.stderr).decode()[:300]


# --- one W, in a child process -------------------------------------------------------------------
def timed(fn, repeat: int, before=None) -> tuple[float, float, object]:  # noqa: ANN001
    """Median wall and CPU seconds of `fn` over `repeat` runs, and its last result. `before`
    runs untimed ahead of each run."""
    walls, cpus, res = [], [], None
    for _ in range(repeat):
        if before is not None:
            before()
        c0, t0 = time.process_time(), time.perf_counter()
        res = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), res


class Scraper:
    """One keep-alive connection sending Prometheus' headers."""

    def __init__(self, port: int, accept: str | None = PROM_ACCEPT, keep_alive: bool = True):
        self.port, self.keep_alive = port, keep_alive
        self.headers = {"Accept-Encoding": "gzip"}
        if accept:
            self.headers["Accept"] = accept
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def __call__(self) -> tuple[bytes, str, str]:
        if not self.keep_alive:  # prometheus_client's server speaks HTTP/1.0: one per scrape
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        self.conn.request("GET", "/metrics", headers=self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        assert resp.status == 200, resp.status
        return body, resp.getheader("Content-Type") or "", resp.getheader("Content-Encoding") or ""

    def close(self) -> None:
        self.conn.close()


def run_one(w: int, repeat: int) -> dict:
    import threading

    import prometheus_client

    from drm_exporter.collectors.status import CollectorState
    from drm_exporter.exposition import OPENMETRICS, Formatter, SnapshotStore
    from drm_exporter.snapshot import LabelKeys, build_families
    from drm_exporter.web import ExporterHTTPServer

    prometheus_client.disable_created_metrics()  # what a careful user does; same sample count
    r: dict = {"W": w}
    t0 = time.perf_counter()
    eng = build_engine(w)
    r["fleet_s"] = time.perf_counter() - t0
    collectors = {"host": CollectorState(True, 0.01, time.time()),
                  "gpu": CollectorState(True, 0.02, time.time())}
    rounds = iter(range(1, 1_000_000))

    def new_tick() -> None:
        report_all(eng, w, next(rounds))
        eng.tick()

    keys = LabelKeys()  # what Service holds across ticks

    def snapshot():  # noqa: ANN202
        return build_families(eng.view(), collectors, keys=keys)

    snapshot()
    build_wall, build_cpu, fams = timed(snapshot, max(1, min(repeat, 3)), before=new_tick)
    r["build_ms"], r["build_cpu_ms"] = build_wall * 1000, build_cpu * 1000
    r["series"] = sum(len(f.keys) for f in fams)
    del fams  # the store holds its own; an extra snapshot here would inflate the RSS
    # As `serve` wires it: a tick invalidates, the next scrape builds and formats.
    store = SnapshotStore(snapshot)
    srv = ExporterHTTPServer("127.0.0.1", 0, store)
    srv.start_background()
    scrape = Scraper(srv.port)
    scrape()  # warm the connection, the code paths and the label text of this fleet

    def next_snapshot() -> None:  # what a tick does, untimed: new reports, snapshot due
        new_tick()
        store.invalidate()

    ours_wall, ours_cpu, (gz_body, ctype, cenc) = timed(scrape, repeat, before=next_snapshot)
    hit_wall, hit_cpu, _ = timed(scrape, repeat)
    r.update(ours_ms=ours_wall * 1000, ours_cpu_ms=ours_cpu * 1000, hit_ms=hit_wall * 1000,
             hit_cpu_ms=hit_cpu * 1000, content_type=ctype, content_encoding=cenc)

    # two scrapers of one new snapshot at once: the second waits for the first's formatting
    # and is then served from the cache, so neither takes twice as long
    second = Scraper(srv.port)
    second()
    pair: list[float] = []

    def both() -> float:
        lat: list[float] = []
        start = threading.Barrier(2)

        def one(s: Scraper) -> None:
            start.wait()
            t = time.perf_counter()
            s()
            lat.append(time.perf_counter() - t)
        ts = [threading.Thread(target=one, args=(s,)) for s in (scrape, second)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        pair.append(max(lat))
        return max(lat)
    timed(both, repeat, before=next_snapshot)
    r["two_ms"] = statistics.median(pair) * 1000
    second.close()

    # The exporter's peak so far: fleet, engine, snapshots, caches, serving. Taken before the
    # cold formatter and the correctness parsers below, which are the benchmark's, not ours.
    r["rss_ours_mib"] = rss_mib()
    fams = store.families
    # cold: a fresh store formats a new snapshot with no label text cached (a restart)
    cold_wall, cold_cpu, _ = timed(lambda: Formatter().gzip_body(fams, OPENMETRICS),
                                   max(1, min(repeat, 3)))
    r.update(cold_ms=cold_wall * 1000, cold_cpu_ms=cold_cpu * 1000)

    plain = gzip.decompress(gz_body) if cenc == "gzip" else gz_body
    r["bytes_plain"], r["bytes_gz"] = len(plain), len(gz_body)
    r["ours_samples"] = count_samples(plain, ctype)
    text_body, text_ctype, _ = Scraper(srv.port, accept=None)()
    text_plain = gzip.decompress(text_body)
    r["text_content_type"] = text_ctype
    r["text_samples"] = count_samples(text_plain, text_ctype)
    r["promtool"] = promtool_check(text_plain)
    del text_body, text_plain, plain
    scrape.close()
    srv.drain(2.0)

    # the limit
    rows = plain_tuples(fams)
    lim_wall, lim_cpu, lim_gz = timed(lambda: gzip.compress(limit_format(rows), 1, mtime=0),
                                      repeat)
    r.update(limit_ms=lim_wall * 1000, limit_cpu_ms=lim_cpu * 1000,
             limit_bytes_gz=len(lim_gz))
    del lim_gz

    # the baseline, served by prometheus_client's own server with the same headers
    t0 = time.perf_counter()
    reg = baseline_registry(fams)
    r["baseline_fill_s"] = time.perf_counter() - t0
    httpd, _ = prometheus_client.start_wsgi_server(0, addr="127.0.0.1", registry=reg)
    base = Scraper(httpd.server_port, keep_alive=False)
    b_repeat = max(1, min(repeat, 3)) if w >= 5000 else repeat
    b_wall, b_cpu, (b_gz, b_ctype, b_enc) = timed(base, b_repeat)
    b_plain = gzip.decompress(b_gz) if b_enc == "gzip" else b_gz
    r.update(baseline_ms=b_wall * 1000, baseline_cpu_ms=b_cpu * 1000,
             baseline_content_type=b_ctype, baseline_bytes_gz=len(b_gz))
    r["baseline_samples"] = count_samples(b_plain, b_ctype)
    httpd.shutdown()
    r["rss_total_mib"] = rss_mib()
    r["samples_match"] = r["ours_samples"] == r["text_samples"] == r["baseline_samples"]
    return r


# --- the parent: one child per W, then the table ----------------------------------------------
TARGET_BASE, TARGET_LIMIT, TARGET_RSS_MIB, TARGET_TWO = 1 / 20, 1.5, 300, 1.5


def table(results: list[dict]) -> str:
    cols = [("W", "{W}"), ("series", "{series}"), ("build ms", "{build_ms:.1f}"),
            ("ours ms", "{ours_ms:.1f}"), ("ours cpu", "{ours_cpu_ms:.1f}"),
            ("ours us/s", "{ours_us:.2f}"), ("hit ms", "{hit_ms:.2f}"),
            ("two ms", "{two_ms:.1f}"), ("cold cpu", "{cold_cpu_ms:.1f}"),
            ("base ms", "{baseline_ms:.1f}"), ("base us/s", "{base_us:.2f}"),
            ("limit ms", "{limit_ms:.1f}"), ("limit us/s", "{limit_us:.2f}"),
            ("plain KB", "{kb_plain:.0f}"), ("gz KB", "{kb_gz:.0f}"),
            ("base gz KB", "{kb_base_gz:.0f}"), ("rss ours MiB", "{rss_ours_mib:.0f}"),
            ("ours/base", "{r_base:.3f}"), ("ours/limit", "{r_limit:.2f}"),
            ("samples ok", "{samples_match}")]
    rows = [[h for h, _ in cols]]
    for r in results:
        n = r["series"]
        d = dict(r, ours_us=r["ours_cpu_ms"] * 1000 / n, base_us=r["baseline_cpu_ms"] * 1000 / n,
                 limit_us=r["limit_cpu_ms"] * 1000 / n, kb_plain=r["bytes_plain"] / 1000,
                 kb_gz=r["bytes_gz"] / 1000, kb_base_gz=r["baseline_bytes_gz"] / 1000,
                 r_base=r["ours_cpu_ms"] / r["baseline_cpu_ms"],
                 r_limit=r["ours_cpu_ms"] / r["limit_cpu_ms"])
        rows.append([f.format(**d) for _, f in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.rjust(wd) for c, wd in zip(row, widths, strict=True))
                     for row in rows)


def verdicts(results: list[dict]) -> list[str]:
    """The targets of issue 8 that this run can judge, each PASS or FAIL."""
    out = []
    by_w = {r["W"]: r for r in results}
    if 1000 in by_w:
        r = by_w[1000]
        rb, rl = r["ours_cpu_ms"] / r["baseline_cpu_ms"], r["ours_cpu_ms"] / r["limit_cpu_ms"]
        out.append(f"W=1000 CPU ours/baseline {rb:.3f} <= {TARGET_BASE:.2f}: "
                   f"{'PASS' if rb <= TARGET_BASE else 'FAIL'}")
        out.append(f"W=1000 CPU ours/limit {rl:.2f} <= {TARGET_LIMIT}: "
                   f"{'PASS' if rl <= TARGET_LIMIT else 'FAIL'}")
    if 10000 in by_w:
        rss = by_w[10000]["rss_ours_mib"]
        out.append(f"W=10000 peak RSS {rss:.0f} MiB <= {TARGET_RSS_MIB}: "
                   f"{'PASS' if rss <= TARGET_RSS_MIB else 'FAIL'}")
    if len(results) >= 2:  # linear: the cost per series does not grow with W
        lo, hi = results[0], results[-1]
        g = (hi["ours_cpu_ms"] / hi["series"]) / (lo["ours_cpu_ms"] / lo["series"])
        out.append(f"us/series W={hi['W']} / W={lo['W']} = {g:.2f} <= 1.5 (linear): "
                   f"{'PASS' if g <= 1.5 else 'FAIL'}")
    for r in results:
        two = r["two_ms"] / r["ours_ms"]
        out.append(f"W={r['W']} two concurrent scrapers {two:.2f}x one <= {TARGET_TWO}: "
                   f"{'PASS' if two <= TARGET_TWO else 'FAIL'}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="100,1000",
                    help="comma-separated fleet sizes (e.g. 100,1000,5000,10000)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.repeat)))
        return 0
    results = []
    for w in (int(x) for x in args.workers.split(",") if x.strip()):
        r = run_child(__file__, w, ["--repeat", str(args.repeat)], 3600)
        if r is None:
            return 2
        results.append(r)
        print(f"W={w}: ours {r['content_type']!r} ({r['content_encoding'] or 'identity'}), "
              f"without Accept {r['text_content_type']!r}; baseline "
              f"{r['baseline_content_type']!r}; fleet built in {r['fleet_s']:.1f} s, baseline "
              f"registry filled in {r['baseline_fill_s']:.1f} s; samples ours "
              f"OpenMetrics={r['ours_samples']} text={r['text_samples']} "
              f"baseline={r['baseline_samples']}; promtool check metrics: {r['promtool']}",
              flush=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, repeat={args.repeat} "
          "(medians; ms = wall per scrape, cpu/us-per-series = process CPU)")
    print(table(results))
    bad = [r["W"] for r in results if not r["samples_match"] or r["promtool"] not in
           ("ok", "skipped")]
    if bad:
        print(f"CORRECTNESS: sample counts differ or promtool complained at W={bad}")
    for v in verdicts(results):
        print("target:", v)
    r = next((x for x in results if x["W"] == 1000), results[-1])
    print(f"W={r['W']} ours_ms={r['ours_ms']:.1f} baseline_ms={r['baseline_ms']:.1f} "
          f"limit_ms={r['limit_ms']:.1f} ours/baseline={r['ours_ms'] / r['baseline_ms']:.3f} "
          f"ours/limit={r['ours_ms'] / r['limit_ms']:.2f} ours_cpu_ms={r['ours_cpu_ms']:.1f} "
          f"baseline_cpu_ms={r['baseline_cpu_ms']:.1f} limit_cpu_ms={r['limit_cpu_ms']:.1f} "
          f"ours_cpu/baseline={r['ours_cpu_ms'] / r['baseline_cpu_ms']:.3f} "
          f"ours_cpu/limit={r['ours_cpu_ms'] / r['limit_cpu_ms']:.2f}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
