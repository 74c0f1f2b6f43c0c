"""`drm-exporter serve` assembled: engine, simulator, this host as a worker, collectors, the
loop that ticks the engine and publishes snapshots, and the HTTP server."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from .api import Api
from .client import LocalClient
from .clock import Clock, SystemClock
from .cloud.cache import CloudCache
from .cloud.refresher import CloudRefreshers, Leash, Refresher
from .collectors.gpu import GpuCollector, gpu_budget
from .collectors.host import HostCollector
from .collectors.runner import CollectorRunner
from .collectors.status import CollectorStatus
from .config import (
    API_TOKEN_ENV,
    CloudConfig,
    Config,
    ConfigError,
    api_token,
    parse_listen_address,
    resolve_cloud_cache,
)
from .engine import Engine
from .exposition import Family, SnapshotStore
from .fleet import GpuReading, Usage, WorkerSpec
from .hooks import HookDispatcher
from .prices import DEFAULT_PRICES, PriceBook
from .scaling import PoolPolicy
from .simulator import Simulator
from .snapshot import LabelKeys, build_families
from .state import StateStore, open_state
from .web import ExporterHTTPServer
from .webconfig import WebSecurity, load_web_config_file

log = logging.getLogger(__name__)

SIMULATED_POOLS = ("cpu", "gpu")
# How long a stop waits for in-flight requests, then for a running tick.
DRAIN_TIMEOUT_S = 10.0


class HostWorker:
    """This machine as one worker of the fleet, fed by the host and GPU collectors."""

    def __init__(self, engine: Engine, spec: WorkerSpec, host: HostCollector,
                 gpu: GpuCollector | None) -> None:
        self._engine, self._spec, self._host, self._gpu = engine, spec, host, gpu
        self._lock = threading.Lock()
        self._gpus: tuple[GpuReading, ...] = ()
        self._registered = False

    def collect_host(self) -> None:
        r = self._host.read()
        with self._lock:
            self._spec = replace(self._spec, cpu_cores=r.cpu_cores,
                                 memory_total_bytes=r.memory_total_bytes,
                                 cpu_source=r.cpu_source, memory_source=r.memory_source,
                                 gpus=max(self._spec.gpus, len(self._gpus)))
            self._engine.register(self._spec, Usage(r.cpu_utilization_ratio, r.memory_used_bytes,
                                                     self._gpus))
            self._registered = True

    def collect_gpu(self) -> None:
        assert self._gpu is not None
        try:
            gpus = self._gpu.read()
        except Exception:
            with self._lock:
                self._gpus = ()  # no frozen old values while NVML is broken
            raise
        with self._lock:
            self._gpus = gpus


def cloud_refreshers(cfg: CloudConfig, cache_path: Path | None, prices: PriceBook,
                     clock: Clock) -> CloudRefreshers:
    """One refresher per enabled provider. The SDKs are imported here, only when configured,
    so the core install needs none of them."""
    cache = CloudCache(cache_path)
    out: list[Refresher] = []
    try:
        if cfg.aws is not None and cfg.aws.enabled:
            import boto3  # noqa: F401  (fail now, not on the first refresh)

            from .cloud.aws import AwsCostExplorerSource
            out.append(Refresher(AwsCostExplorerSource(cfg.aws.accounts, cfg.aws.tag_key,
                                                       cfg.aws.tag_values),
                                 Leash(cfg.aws.min_interval_s, cfg.aws.daily_request_cap),
                                 cache, clock))
        if cfg.azure is not None and cfg.azure.enabled:
            from .cloud.azure import AzureCostSource
            out.append(Refresher(AzureCostSource(list(cfg.azure.scopes),
                                                 client_type=cfg.azure.client_type),
                                 Leash(cfg.azure.min_interval_s, cfg.azure.daily_request_cap),
                                 cache, clock))
        if cfg.gcp is not None and cfg.gcp.enabled:
            from .cloud.gcp import GcpCatalogSource
            out.append(Refresher(GcpCatalogSource(list(cfg.gcp.regions)),
                                 Leash(cfg.gcp.min_interval_s, cfg.gcp.daily_request_cap),
                                 cache, clock,
                                 on_catalog=lambda c: prices.set_catalog(c.prices)))
    except ImportError as e:
        raise ConfigError(f"cloud: {e.name or e} is not installed: pip install "
                          "'drm-exporter[aws,azure,gcp]' (or the one extra you use)") from e
    return CloudRefreshers(out)


class Service:
    def __init__(self, config: Config, clock: Clock | None = None,
                 environ: Mapping[str, str] | None = None, reset_state: bool = False) -> None:
        """`config.state_file` None or "" keeps everything in memory here; `serve` has already
        turned None into the default location (config.resolve_state_file). A state file that
        cannot be used is a StateError, unless `reset_state` moves it aside."""
        self.config = config
        env = os.environ if environ is None else environ
        self.api_token = api_token(config.api, env)
        self.token_source = API_TOKEN_ENV if env.get(API_TOKEN_ENV) else "config api.token"
        # Loaded here, before anything starts, so a bad web config (or certificate) is a
        # ConfigError and exit 2.
        self.web = load_web_config_file(Path(config.web_config_file)) \
            if config.web_config_file else WebSecurity(None, None)
        clock = clock or SystemClock()
        policies = dict(config.pools)
        if config.simulator.enabled:
            for pool in SIMULATED_POOLS:
                policies.setdefault(pool, PoolPolicy())
        prices = PriceBook(DEFAULT_PRICES, overrides=config.cost.prices)
        # Built before anything starts, so a missing SDK is a ConfigError and exit 2.
        self.cloud = cloud_refreshers(config.cloud, resolve_cloud_cache(config, env), prices,
                                      clock) if config.cloud.enabled() else None
        self.state: StateStore | None = open_state(Path(config.state_file), reset_state) \
            if config.state_file else None
        self.engine = Engine(policies, config.engine, prices, config.cost.budgets_usd, clock,
                             store=self.state)
        self.api = Api(self.engine)
        # Scale decisions go to the pools' hooks on their own threads, never blocking a tick.
        self.hooks = HookDispatcher(config.hooks, self.engine.clock)
        self.status = CollectorStatus()
        # Snapshots are built when a scraper asks for a newer one than it last got, not every
        # tick: at 10,000 workers a build costs ~0.3 s of CPU, and Prometheus scrapes every
        # 15 s while the engine ticks every second.
        self._label_keys = LabelKeys()
        self.store = SnapshotStore(self._families)
        # The simulator goes through the API's validation like any fleet, minus the socket.
        self.simulator = Simulator(LocalClient(self.api), self.engine.clock,
                                   config.simulator.settings) \
            if config.simulator.enabled else None
        self.runners: list[CollectorRunner] = []
        self.host_worker: HostWorker | None = None
        hw = config.host_worker
        if hw.enabled and config.collectors.host.enabled:
            gc = config.collectors.gpu
            gpu = GpuCollector(interval_s=gc.interval_s,
                               timeout_s=gpu_budget(gc.interval_s, gc.timeout_s)) \
                if gc.enabled else None
            host = HostCollector()
            name = socket.gethostname()
            spec = WorkerSpec(worker=hw.worker or name, pool=hw.pool, provider=hw.provider,
                              region=hw.region, instance_type=hw.instance_type, hostname=name,
                              cpu_cores=1, memory_total_bytes=1)  # real values on first read
            self.host_worker = HostWorker(self.engine, spec, host, gpu)
            if gpu is not None:
                self.runners.append(CollectorRunner("gpu", self.host_worker.collect_gpu,
                                                    config.collectors.gpu.interval_s, self.status,
                                                    config.collectors.gpu.timeout_s))
            self.runners.append(CollectorRunner("host", self.host_worker.collect_host,
                                                config.collectors.host.interval_s, self.status,
                                                config.collectors.host.timeout_s))
        elif hw.enabled and config.collectors.gpu.enabled:
            # The GPU readings travel in the host worker's report: no host, no place for them.
            log.warning("the host collector is disabled, so this machine is no worker and its "
                        "GPUs are not collected either")
        self._stop = threading.Event()
        self._loop_thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.http: ExporterHTTPServer | None = None

    def tick(self) -> None:
        if self.simulator is not None:
            self.simulator.step()
        decisions = self.engine.tick()
        self.hooks.submit(decisions)
        if self.simulator is not None:
            self.simulator.apply(decisions)
        for d in decisions:
            if d.action != "maintain":
                log.info("pool %s: %s %d (%s, utilization %.2f)%s", d.pool, d.action, d.count,
                         d.reason, d.utilization,
                         f" workers {', '.join(d.worker_ids)}" if d.worker_ids else "")
        self.publish()

    def publish(self) -> None:
        """A new snapshot is due: the next scrape builds it from the state of that moment."""
        self.store.invalidate()

    def _families(self) -> list[Family]:
        return build_families(self.engine.view(), self.status.snapshot(), self.hooks.counts(),
                              self.cloud.view() if self.cloud else None, self._label_keys,
                              self.config.metrics.agent_worker_series)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.tick_interval_s):
            try:
                self.tick()
            except Exception:  # the loop must survive a bad tick; the next one may be fine
                log.exception("engine tick failed")

    def start(self) -> None:
        """Collect once in the foreground so the first scrape already has the host, then
        run everything in the background."""
        if self.simulator is not None:
            self.simulator.start()
        for r in sorted(self.runners, key=lambda r: r.name != "gpu"):
            r.run_once()
        self.publish()
        host, port = parse_listen_address(self.config.listen_address)
        self.http = ExporterHTTPServer(host, port, self.store, self.api,
                                       api_token=self.api_token or None,
                                       ssl_context=self.web.ssl_context,
                                       basic_auth=self.web.basic_auth)
        self.http.start_background()
        for r in self.runners:
            r.start_after_first()
        if self.cloud is not None:
            self.cloud.start()
        self._loop_thread.start()

    def stop(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), stop the loop, then write
        the last cost and close the state file."""
        self._stop.set()
        for r in self.runners:
            r.stop()
        if self.cloud is not None:
            self.cloud.stop()
        if self.http is not None:
            self.http.drain(DRAIN_TIMEOUT_S)
        if self._loop_thread.is_alive():
            self._loop_thread.join(DRAIN_TIMEOUT_S)
        self.hooks.stop()
        self.engine.close()
