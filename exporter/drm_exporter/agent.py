"""`drm-exporter agent`: runs on a worker and reports it to a coordinator.

Every interval the agent reads this host through the same code as `serve` (HostWorker with the
host and GPU collectors, feeding a local engine that holds this worker alone) and PUTs the
worker's full spec and usage to /api/v1/workers/{worker}. A PUT registers or updates, so after
a coordinator restart or an expiry the next report registers the worker again by itself: the
agent keeps no "am I registered" state that could go wrong.

Delays between reports:
  success, or a 4xx refusal      one interval (a 4xx is a configuration problem: bad token,
                                 bad label; waiting longer would not fix it)
  unreachable, 5xx or 429        full jitter: uniform(0, min(cap, interval * 2**n)) after the
                                 n+1-th failure in a row, reset by the next success, so agents
                                 that lost the same coordinator do not come back in lockstep

With --listen-address the agent also serves /metrics and /healthz for this worker alone (its
identity, capacity, measured usage, GPUs and collector health, "coordinator" included), and
advertises that URL in its spec so the coordinator's /sd can hand it to Prometheus.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from . import metrics as m
from .api import ApiError, parse_spec
from .cli import parse_duration
from .client import Client, CoordinatorUnreachable, HttpClient, spec_body
from .clock import Clock, SystemClock
from .collectors.gpu import GpuCollector
from .collectors.host import HostCollector
from .collectors.runner import CollectorRunner
from .collectors.status import CollectorStatus
from .config import API_TOKEN_ENV, parse_listen_address
from .engine import Engine, EngineSettings, WorkerView
from .exposition import SnapshotStore
from .fleet import Usage, WorkerSpec
from .service import HostWorker
from .snapshot import build_families
from .web import ExporterHTTPServer

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0
DEFAULT_BACKOFF_CAP_S = 300.0
WILDCARD_HOSTS = ("0.0.0.0", "::")

AGENT_METRICS = m.AGENT_METRICS
_AGENT_METRIC_NAMES = frozenset(d.name for d in AGENT_METRICS)

# The flag behind each spec field, so a refused value is reported as the flag to fix.
_FLAG_OF_FIELD = {"worker": "--worker", "pool": "--pool", "provider": "--provider",
                  "region": "--region", "instance_type": "--instance-type",
                  "metrics_url": "--advertise-url", "hostname": "hostname"}


@dataclass(frozen=True)
class AgentSettings:
    worker: str
    pool: str = "default"
    provider: str = "onprem"
    region: str = "unknown"
    instance_type: str = "unknown"
    hostname: str = "localhost"
    interval_s: float = DEFAULT_INTERVAL_S
    backoff_cap_s: float = DEFAULT_BACKOFF_CAP_S
    metrics_url: str = ""  # empty: not advertised in /sd
    deregister_on_exit: bool = False

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.backoff_cap_s <= 0:
            raise ValueError("interval and backoff cap must be > 0")


def backoff_bound(base_s: float, cap_s: float, failures: int) -> float:
    """Upper bound of the delay after `failures` (>= 1) failures in a row: base, 2·base,
    4·base, … up to cap. The exponent is clamped so a week-long outage cannot overflow."""
    return min(cap_s, base_s * 2.0 ** min(max(failures - 1, 0), 64))


def host_name() -> str:
    """This machine's name, made acceptable to the API (HOSTNAME_RE) where it is not."""
    name = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()).strip("-.") or "localhost"
    return name[:253]


def check_settings(s: AgentSettings) -> str | None:
    """The coordinator's own validation of the spec, run once at start, so a bad flag is one
    clear error now rather than a 400 every interval. Returns the problem or None."""
    if "/" in s.worker:
        return f"--worker {s.worker!r} must not contain '/'"
    probe = WorkerSpec(s.worker or "?", s.pool or "?", s.provider, s.region, s.instance_type,
                       s.hostname, 1, 1, metrics_url=s.metrics_url)
    body = spec_body(probe) | {"pool": s.pool}
    try:
        parse_spec(s.worker, body)
    except ApiError as e:
        flag = _FLAG_OF_FIELD.get(e.field or "", e.field or "")
        return f"{flag}: {e.message}" if flag else e.message
    return None


def advertise_url(host: str, port: int) -> str | None:
    """http://HOST:PORT/metrics for a concrete listen address; None for a wildcard one, which
    says nothing about how Prometheus can reach this machine."""
    if host in WILDCARD_HOSTS or not host:
        return None
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


def redact(url: str) -> str:
    """A URL for the log: credentials in it (user:password@) stay out."""
    p = urlsplit(url)
    return p._replace(netloc=p.netloc.rpartition("@")[2]).geturl()


class Agent:
    """One worker's reporting loop. `run_once` does one collect-and-report and returns the delay
    before the next; the clock, the random draw and the client are seams for tests."""

    def __init__(self, settings: AgentSettings, client: Client, host: HostCollector,
                 gpu: GpuCollector | None, *, store: SnapshotStore | None = None,
                 clock: Clock | None = None,
                 rand: Callable[[float, float], float] = random.uniform) -> None:
        self.settings = settings
        self._client = client
        self._clock = clock or SystemClock()
        self._rand = rand
        self.store = store or SnapshotStore()
        self.status = CollectorStatus()
        # The local engine holds this worker only, for the local /metrics; it has no policies
        # and never ticks, so it neither scales nor expires anything. Its heartbeat window fits
        # the interval so drm_worker_up stays 1 while the host is being read.
        hb = max(EngineSettings().heartbeat_timeout_s, 3 * settings.interval_s)
        self.engine = Engine(settings=EngineSettings(heartbeat_timeout_s=hb,
                                                     worker_expiry_s=max(hb, 300.0)),
                             clock=self._clock)
        spec = WorkerSpec(worker=settings.worker, pool=settings.pool, provider=settings.provider,
                          region=settings.region, instance_type=settings.instance_type,
                          hostname=settings.hostname, cpu_cores=1, memory_total_bytes=1,
                          metrics_url=settings.metrics_url)  # real capacity on the first read
        hw = HostWorker(self.engine, spec, host, gpu)
        self._gpu_runner = CollectorRunner("gpu", hw.collect_gpu, settings.interval_s,
                                           self.status) if gpu is not None else None
        self._host_runner = CollectorRunner("host", hw.collect_host, settings.interval_s,
                                            self.status)
        self.failures = 0  # outages (unreachable, 5xx, 429) in a row; drives the backoff
        self.last_report_ok = False
        self._reported_before = False
        self._problem: str | None = None
        self._stop = threading.Event()

    # --- one round ---------------------------------------------------------------------------
    def run_once(self) -> float:
        """Read the host, report it, publish the local snapshot; the delay before the next."""
        if self._gpu_runner is not None:  # GPUs first: the host report carries them
            self._gpu_runner.run_once()
        host_ok = self._host_runner.run_once()
        w = self._worker()
        if w is None:  # the host was never read: there is no true capacity to report yet
            self.last_report_ok = False
            delay = self.settings.interval_s
        else:
            # A failed host read must not re-send the last usage as if it were fresh.
            usage = w.usage if host_ok else Usage(gpus=w.usage.gpus)
            delay = self._report(w.spec, usage)
        self.publish()
        return delay

    def _worker(self) -> WorkerView | None:
        return next((w for w in self.engine.view().workers
                     if w.spec.worker == self.settings.worker), None)

    def _report(self, spec: WorkerSpec, usage: Usage) -> float:
        s = self.settings
        start = self._clock.monotonic()
        try:
            created = self._client.put_worker(spec, usage)
        except CoordinatorUnreachable as e:
            return self._outage(start, f"coordinator unreachable: {e}")
        except ApiError as e:
            if e.status >= 500 or e.status == 429:
                return self._outage(start, f"coordinator answered HTTP {e.status}: {e.message}")
            self._record(False, start, f"HTTP {e.status}")
            self.failures = 0  # it answered: not an outage
            hint = " (check --token or $" + API_TOKEN_ENV + ")" if e.status in (401, 403) else ""
            field = f" [{e.field}]" if e.field else ""
            self._log_problem(logging.ERROR,
                              f"coordinator refused worker {s.worker!r}: HTTP {e.status}{field} "
                              f"{e.message}{hint}; retrying every {s.interval_s:g}s")
            return s.interval_s
        self._record(True, start)
        self.failures = 0
        if self._problem is not None:
            log.info("coordinator %s accepts reports again", redact(self._client_base()))
            self._problem = None
        if created:
            log.info("registered worker %s in pool %s with %s%s", s.worker, s.pool,
                     redact(self._client_base()),
                     " again (the coordinator had forgotten it)" if self._reported_before else "")
        else:
            log.debug("reported worker %s", s.worker)
        self._reported_before = True
        return s.interval_s

    def _outage(self, start: float, problem: str) -> float:
        s = self.settings
        self._record(False, start, problem)
        self.failures += 1
        delay = self._rand(0.0, backoff_bound(s.interval_s, s.backoff_cap_s, self.failures))
        self._log_problem(logging.WARNING,
                          f"{problem}; backing off (retry in {delay:.1f}s, "
                          f"at most {s.backoff_cap_s:g}s apart)")
        return delay

    def _record(self, ok: bool, start: float, error: str | None = None) -> None:
        self.last_report_ok = ok
        self.status.record("coordinator", ok, self._clock.monotonic() - start,
                           self._clock.time(), error)

    def _log_problem(self, level: int, message: str) -> None:
        # Once per distinct problem; repeats go to debug so an outage does not flood the log.
        key = message.split("; ")[0]
        log.log(level if key != self._problem else logging.DEBUG, "%s", message)
        self._problem = key

    def _client_base(self) -> str:
        return str(getattr(self._client, "base", "coordinator"))

    def publish(self) -> None:
        fams = build_families(self.engine.view(), self.status.snapshot())
        self.store.publish(f for f in fams if f.metric.name in _AGENT_METRIC_NAMES)

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Report until stop(); the wait between rounds ends at once on stop."""
        while not self._stop.is_set():
            delay = self.run_once()
            if self._stop.wait(delay):
                break

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Deregister when asked to. Off by default: a restarting agent must not drop the
        reservations its worker holds."""
        if not self.settings.deregister_on_exit:
            return
        try:
            released = self._client.deregister(self.settings.worker)
        except ApiError as e:
            if e.status != 404:  # 404: already gone, which is what we wanted
                log.warning("deregistering %s failed: HTTP %d %s", self.settings.worker,
                            e.status, e.message)
            return
        except CoordinatorUnreachable as e:
            log.warning("deregistering %s failed: %s", self.settings.worker, e)
            return
        log.info("deregistered worker %s%s", self.settings.worker,
                 f"; released {', '.join(released)}" if released else "")


def serve_metrics(listen_address: str, store: SnapshotStore) -> ExporterHTTPServer:
    """The worker's own /metrics and /healthz (no API, no /sd), bound but not yet serving."""
    host, port = parse_listen_address(listen_address)
    return ExporterHTTPServer(host, port, store)


# --- the command ---------------------------------------------------------------------------------
def _agent(args: argparse.Namespace) -> int:
    coord = urlsplit(args.coordinator)
    if coord.scheme not in ("http", "https") or not coord.netloc:
        print(f"drm-exporter agent: --coordinator must be an http(s) URL, got "
              f"{redact(args.coordinator)!r}", file=sys.stderr)
        return 2
    name = host_name()
    settings = AgentSettings(
        worker=args.worker or name, pool=args.pool, provider=args.provider, region=args.region,
        instance_type=args.instance_type, hostname=name, interval_s=args.interval,
        backoff_cap_s=args.backoff_cap, metrics_url=args.advertise_url or "",
        deregister_on_exit=args.deregister_on_exit)
    problem = check_settings(settings)
    if problem is None and args.listen_address:
        try:
            parse_listen_address(args.listen_address)
        except ValueError as e:
            problem = f"--listen-address: {e}"
    if problem is None and args.collector_host is False:
        problem = "--no-collector.host: the agent reports this host's reading; it cannot be off"
    if problem:
        print(f"drm-exporter agent: {problem}", file=sys.stderr)
        return 2

    store = SnapshotStore()
    server: ExporterHTTPServer | None = None
    if args.listen_address:
        try:
            server = serve_metrics(args.listen_address, store)
        except OSError as e:
            print(f"drm-exporter agent: cannot listen on {args.listen_address}: {e.strerror}",
                  file=sys.stderr)
            return 1
        host = parse_listen_address(args.listen_address)[0]
        if not settings.metrics_url:
            url = advertise_url(host, server.port)
            if url is None:
                log.warning("listening on a wildcard address: pass --advertise-url so the "
                            "coordinator's /sd can list this worker")
            else:
                settings = replace(settings, metrics_url=url)
    token = args.token or os.environ.get(API_TOKEN_ENV) or None
    agent = Agent(settings, HttpClient(args.coordinator, token=token), HostCollector(),
                  None if args.no_gpu or args.collector_gpu is False
                  else GpuCollector(interval_s=settings.interval_s),
                  store=store)
    if server is not None:
        server.start_background()
        log.info("serving this worker's /metrics on %s:%d (%s)", server.server_address[0],
                 server.port, f"advertised as {settings.metrics_url}" if settings.metrics_url
                 else "not advertised in /sd")
    log.info("agent for worker %s (pool %s) reporting to %s every %gs", settings.worker,
             settings.pool, redact(args.coordinator), settings.interval_s)
    try:
        if args.once:
            agent.run_once()
            ok = agent.last_report_ok
        else:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: agent.stop())
            agent.run()
            log.info("stopping")
            ok = True
        agent.close()
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0 if ok else 1


def add_agent_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser(
        "agent", help="report this worker to a coordinator",
        description="Read this machine (CPU, memory, NVIDIA GPUs) every interval and register "
        "or update it as a worker on a coordinator (`drm-exporter serve`). Retries an "
        "unreachable coordinator with jittered exponential backoff; re-registers by itself "
        "after a coordinator restart.")
    a.add_argument("--coordinator", required=True,
                   help="coordinator base URL, e.g. http://coordinator:9847")
    a.add_argument("--worker", help="worker id (default: this machine's hostname)")
    a.add_argument("--pool", default="default", help="pool to join (default: default)")
    a.add_argument("--provider", default="onprem",
                   help="provider label, used for prices (default: onprem)")
    a.add_argument("--region", default="unknown", help="region label (default: unknown)")
    a.add_argument("--instance-type", default="unknown",
                   help="instance type label, used for prices (default: unknown)")
    a.add_argument("--interval", type=parse_duration, default=DEFAULT_INTERVAL_S,
                   help="seconds between reports, e.g. 10 or 30s (default: 10); also the "
                   "backoff base")
    a.add_argument("--backoff-cap", type=parse_duration, default=DEFAULT_BACKOFF_CAP_S,
                   help="longest wait between retries while the coordinator is down "
                   "(default: 300s)")
    a.add_argument("--token", help=f"bearer token for the coordinator's write endpoints "
                   f"(default: ${API_TOKEN_ENV}; prefer the variable, argv is visible to ps)")
    a.add_argument("--listen-address", metavar="HOST:PORT",
                   help="also serve this worker's own /metrics and /healthz here")
    a.add_argument("--advertise-url", metavar="URL",
                   help="metrics URL the coordinator lists in /sd (default: "
                   "http://<listen address>/metrics when it is not a wildcard like 0.0.0.0)")
    a.add_argument("--no-gpu", action="store_true", help="same as --no-collector.gpu")
    from .collect import add_collector_flags

    add_collector_flags(a, "default: on")
    a.add_argument("--deregister-on-exit", action="store_true",
                   help="deregister on SIGTERM/SIGINT (default off: a restart keeps the "
                   "worker's reservations)")
    a.add_argument("--once", action="store_true",
                   help="report once and exit: 0 if the coordinator accepted it, else 1")
    a.set_defaults(fn=_agent)
