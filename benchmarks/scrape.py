"""Scrape cost at fleet scale: ours vs. prometheus_client vs. the hand-written limit.

    .venv/bin/python benchmarks/scrape.py [--workers 100,1000] [--repeat N]

Each W runs in its own child process (so peak RSS is that W's alone). The child builds a
synthetic fleet of W workers x 8 GPUs through the real Engine (register, a usage report with
8 GpuReadings each, some reservations, one tick), publishes a snapshot (build_families ->
SnapshotStore), serves it with ExporterHTTPServer on 127.0.0.1:0, and times side by side:

  ours      GET /metrics over HTTP with Prometheus' Accept header and Accept-Encoding: gzip,
            store.publish() before each timed scrape so every scrape formats + gzips anew
            (a "first scrape of a new snapshot"); also the cache-hit scrape.
  baseline  prometheus_client labelled Gauges/Counters in a fresh CollectorRegistry with the
            same values; generate_latest(registry) + gzip level 6, in-process.
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
def build_engine(w: int):  # noqa: ANN201
    from drm_exporter.engine import Engine
    from drm_exporter.fleet import GpuReading, Usage, WorkerSpec
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
        gpus = tuple(GpuReading(
            index=g, uuid=f"GPU-{i:08x}-{g:04x}-4e2b-9c1d-{(i * GPUS + g):012x}",
            name="NVIDIA H100 80GB HBM3", driver_version="550.54.15",
            utilization_ratio=((i * 7 + g * 13) % 100) / 100.0,
            memory_total_bytes=85_520_809_984,
            memory_used_bytes=(i * 131 + g * 977) % 80_000 * 1_000_000,
            temperature_celsius=30.0 + (i + g) % 50, power_watts=100.0 + (i * 3 + g) % 600 + 0.5)
            for g in range(GPUS))
        eng.report(wid, Usage(cpu_utilization_ratio=(i % 97) / 97.0,
                              memory_used_bytes=(i % 500) << 30, gpus=gpus))
        if i % 3 == 0:  # some reservations: CPU, memory and GPUs held on a third of the fleet
            eng.reserve(f"task-{i}-a", 8.0, 64 << 30, gpus=2, worker=wid)
            eng.reserve(f"task-{i}-b", 4.5, 32 << 30, gpus=1, worker=wid)
    for p in POOLS:
        eng.set_tasks_pending(p, 3)
    time.sleep(0.01)
    eng.tick()  # accrues cost, samples the managed pools
    return eng


# --- the limit: plain tuples, minimal formatter --------------------------------------------------
def plain_tuples(families) -> list[tuple[str, str, str, tuple[str, ...], list]]:  # noqa: ANN001
    return [(f.metric.name, f.metric.help, f.metric.type, f.metric.labels,
             [(labels, value) for labels, value in f.samples]) for f in families]


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


def count_samples(text: str) -> int:
    from prometheus_client.parser import text_string_to_metric_families
    return sum(len(f.samples) for f in text_string_to_metric_families(text))


# --- one W, in a child process -------------------------------------------------------------------
def timed(fn, repeat: int) -> tuple[float, float, object]:  # noqa: ANN001
    """Median wall and CPU seconds of `fn` over `repeat` runs, and its last result."""
    walls, cpus, res = [], [], None
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        res = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), res


def run_one(w: int, repeat: int) -> dict:
    import prometheus_client

    from drm_exporter.collectors.status import CollectorState
    from drm_exporter.exposition import SnapshotStore
    from drm_exporter.snapshot import build_families
    from drm_exporter.web import ExporterHTTPServer

    prometheus_client.disable_created_metrics()  # what a careful user does; same sample count
    r: dict = {"W": w}
    t0 = time.perf_counter()
    eng = build_engine(w)
    r["fleet_s"] = time.perf_counter() - t0
    collectors = {"host": CollectorState(True, 0.01, time.time()),
                  "gpu": CollectorState(True, 0.02, time.time())}

    def snapshot():  # noqa: ANN202
        return build_families(eng.view(), collectors)

    build_wall, _, fams = timed(snapshot, max(1, min(repeat, 3)))
    r["build_ms"] = build_wall * 1000
    r["series"] = sum(len(f.samples) for f in fams)
    store = SnapshotStore()
    store.publish(fams)
    srv = ExporterHTTPServer("127.0.0.1", 0, store)
    srv.start_background()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    headers = {"Accept": PROM_ACCEPT, "Accept-Encoding": "gzip"}

    def scrape() -> tuple[bytes, str, str]:
        conn.request("GET", "/metrics", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, resp.status
        return body, resp.getheader("Content-Type") or "", resp.getheader("Content-Encoding") or ""

    scrape()  # warm the connection and the code paths

    def scrape_new() -> tuple[bytes, str, str]:
        store.publish(fams)  # a new version: this scrape formats and gzips
        return scrape()

    ours_wall, ours_cpu, (gz_body, ctype, cenc) = timed(scrape_new, repeat)
    hit_wall, hit_cpu, _ = timed(scrape, repeat)
    r.update(ours_ms=ours_wall * 1000, ours_cpu_ms=ours_cpu * 1000, hit_ms=hit_wall * 1000,
             hit_cpu_ms=hit_cpu * 1000, content_type=ctype, content_encoding=cenc)
    plain = gzip.decompress(gz_body) if cenc == "gzip" else gz_body
    r["bytes_plain"], r["bytes_gz"] = len(plain), len(gz_body)
    r["ours_samples"] = count_samples(plain.decode())
    conn.close()
    srv.drain(2.0)
    r["rss_ours_mib"] = rss_mib()

    # the limit
    rows = plain_tuples(fams)
    lim_wall, lim_cpu, lim_gz = timed(lambda: gzip.compress(limit_format(rows), 1, mtime=0),
                                      repeat)
    r.update(limit_ms=lim_wall * 1000, limit_cpu_ms=lim_cpu * 1000,
             limit_bytes_plain=len(limit_format(rows)), limit_bytes_gz=len(lim_gz))

    # the baseline
    t0 = time.perf_counter()
    reg = baseline_registry(fams)
    r["baseline_fill_s"] = time.perf_counter() - t0
    gen = prometheus_client.generate_latest
    b_repeat = max(1, min(repeat, 3)) if w >= 5000 else repeat
    b_wall, b_cpu, b_gz = timed(lambda: gzip.compress(gen(reg), 6, mtime=0), b_repeat)
    b_plain = gen(reg)
    r.update(baseline_ms=b_wall * 1000, baseline_cpu_ms=b_cpu * 1000,
             baseline_bytes_plain=len(b_plain), baseline_bytes_gz=len(b_gz))
    r["baseline_samples"] = count_samples(b_plain.decode())
    r["rss_total_mib"] = rss_mib()
    r["samples_match"] = r["ours_samples"] == r["baseline_samples"]
    return r


# --- the parent: one child per W, then the table ----------------------------------------------
def table(results: list[dict]) -> str:
    cols = [("W", "{W}"), ("series", "{series}"), ("build ms", "{build_ms:.1f}"),
            ("ours ms", "{ours_ms:.1f}"), ("ours cpu", "{ours_cpu_ms:.1f}"),
            ("ours us/s", "{ours_us:.2f}"), ("hit ms", "{hit_ms:.2f}"),
            ("base ms", "{baseline_ms:.1f}"), ("base us/s", "{base_us:.2f}"),
            ("limit ms", "{limit_ms:.1f}"), ("limit us/s", "{limit_us:.2f}"),
            ("plain KB", "{kb_plain:.0f}"), ("gz KB", "{kb_gz:.0f}"),
            ("base gz KB", "{kb_base_gz:.0f}"), ("rss ours MiB", "{rss_ours_mib:.0f}"),
            ("rss all MiB", "{rss_total_mib:.0f}"), ("ours/base", "{r_base:.3f}"),
            ("ours/limit", "{r_limit:.2f}"), ("samples ok", "{samples_match}")]
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
        out = subprocess.run([sys.executable, __file__, "--one", str(w), "--repeat",
                              str(args.repeat)], capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            print(f"W={w}: the measuring process failed (exit {out.returncode})")
            return 2
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"W={w}: served {r['content_type']!r} ({r['content_encoding'] or 'identity'}); "
              f"fleet built in {r['fleet_s']:.1f} s, baseline registry filled in "
              f"{r['baseline_fill_s']:.1f} s; samples ours={r['ours_samples']} "
              f"baseline={r['baseline_samples']}", flush=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, repeat={args.repeat} "
          "(medians; ms = wall per scrape, cpu/us-per-series = process CPU)")
    print(table(results))
    bad = [r["W"] for r in results if not r["samples_match"]]
    if bad:
        print(f"CORRECTNESS: sample counts differ from the baseline at W={bad}")
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
