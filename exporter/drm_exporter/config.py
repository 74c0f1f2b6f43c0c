"""Configuration from YAML, checked against dataclasses; every error names the key and line.

    listen_address: 127.0.0.1:9847
    tick_interval_s: 1
    engine: {heartbeat_timeout_s: 30, cost_max_gap_s: 300, provisioning_timeout_s: 900}
    pools:
      cpu: {scale_up: 0.8, scale_down: 0.3, target: 0.7, cooldown_up_s: 300,
            cooldown_down_s: 600, min_workers: 1, max_workers: 20, max_step: 4,
            evaluation_interval_s: 60}
    simulator: {enabled: false, seed: 42, workers: 8, gpu_workers: 3, ...}
    host_worker: {enabled: true, worker: "", pool: local, provider: onprem, region: local,
                  instance_type: host}
    collectors: {host: {enabled: true, interval_s: 5}, gpu: {enabled: true, interval_s: 5,
                timeout_s: 5}}     # --collector.<name> / --no-collector.<name> win
    cost:
      budgets_usd: {aws: 1000}
      prices: [{provider: aws, instance_type: m5.2xlarge, usd_per_hour: 0.384, region: "*"}]
    cloud:                       # off unless configured; credentials from default chains only
      aws: {min_interval_s: 28800, daily_request_cap: 20, accounts: ["123456789012"],
            tag_key: fleet, tag_values: [drm]}
      azure: {scopes: [/subscriptions/<id>], min_interval_s: 43200}
      gcp: {regions: [us-central1]}
      cache_file: cloud-cache.json   # default beside the state file
    api: {token: ""}             # DRM_EXPORTER_API_TOKEN, when set, wins
    web_config_file: web.yml     # TLS and basic auth (exporter-toolkit format, webconfig.py)
    state_file: state.db         # default $XDG_STATE_HOME/drm-exporter/state.db; "" = memory only
    hooks:                       # per pool, exactly one of url / command (hooks.py)
      gpu: {url: "http://provisioner:8080/scale", timeout_s: 5, retries: 3, backoff_s: 1,
            headers: {Authorization: "Bearer ..."}, queue_size: 100}
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .engine import EngineSettings
from .hooks import HookConfig
from .prices import Price
from .scaling import PoolPolicy
from .simulator import POOL_SHAPES, SimulatorSettings

DEFAULT_PORT = 9847
DEFAULT_LISTEN_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
API_TOKEN_ENV = "DRM_EXPORTER_API_TOKEN"


class ConfigError(ValueError):
    """Bad configuration: the message names the file, line and key."""


class FieldError(ValueError):
    """Raised by a dataclass's checks to blame one key below it (a path of keys), so the error
    points at that key's line rather than at the start of the mapping."""

    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class HostWorkerConfig:
    enabled: bool = True
    worker: str = ""  # empty: this machine's hostname
    pool: str = "local"
    provider: str = "onprem"
    region: str = "local"
    instance_type: str = "host"


@dataclass(frozen=True)
class CollectorConfig:
    enabled: bool = True
    interval_s: float = 5.0
    # How long one run may take before it counts as failed; None: the interval, at most 10 s
    # (collectors/runner.py).
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")


def _collector(description: str) -> Any:
    return field(default_factory=CollectorConfig, metadata={"help": description})


@dataclass(frozen=True)
class CollectorsConfig:
    """Every collector this exporter knows, each a field: the field's name is the config key
    and the --collector.<name> flag (collect.py), its help the flag's help."""
    host: CollectorConfig = _collector("this machine's CPU and memory (psutil)")
    gpu: CollectorConfig = _collector("NVIDIA GPUs through NVML")


def collector_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(CollectorsConfig))


@dataclass(frozen=True)
class SimulatorConfig:
    enabled: bool = False
    settings: SimulatorSettings = field(default_factory=SimulatorSettings)


@dataclass(frozen=True)
class CostConfig:
    budgets_usd: dict[str, float] = field(default_factory=dict)
    prices: tuple[Price, ...] = ()  # added to (and overriding) the built-in table


# Paid APIs are never called more often than this, whatever the config says.
MIN_CLOUD_INTERVAL_S = 3600.0


def _check_leash(min_interval_s: float, daily_request_cap: int) -> None:
    if min_interval_s < MIN_CLOUD_INTERVAL_S:
        raise ValueError(f"min_interval_s must be >= {MIN_CLOUD_INTERVAL_S:.0f} (paid API)")
    if daily_request_cap < 1:
        raise ValueError("daily_request_cap must be >= 1")


@dataclass(frozen=True)
class AwsCloudConfig:
    """AWS Cost Explorer; credentials from boto3's default chain, never from here."""
    enabled: bool = True
    min_interval_s: float = 8 * 3600.0  # each page costs about $0.01
    daily_request_cap: int = 20
    accounts: tuple[str, ...] = ()  # linked account ids; empty: all the payer sees
    tag_key: str = ""  # a cost allocation tag marking the fleet
    tag_values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_leash(self.min_interval_s, self.daily_request_cap)
        for a in self.accounts:
            if not (len(a) == 12 and a.isdigit()):
                raise ValueError(f"accounts must be 12-digit AWS account ids, got {a!r}")
        if self.tag_values and not self.tag_key:
            raise ValueError("tag_values need a tag_key")


@dataclass(frozen=True)
class AzureCloudConfig:
    """Azure Cost Management query.usage per scope; DefaultAzureCredential."""
    enabled: bool = True
    scopes: tuple[str, ...] = ()  # e.g. /subscriptions/<id>
    min_interval_s: float = 12 * 3600.0  # the query quota is shared by the whole tenant
    daily_request_cap: int = 20
    client_type: str = "drm-exporter"

    def __post_init__(self) -> None:
        _check_leash(self.min_interval_s, self.daily_request_cap)
        if self.enabled and not self.scopes:
            raise ValueError("scopes must list at least one scope, e.g. /subscriptions/<id>")
        for sc in self.scopes:
            if not sc.startswith("/"):
                raise ValueError(f"scopes must start with '/', got {sc!r}")


@dataclass(frozen=True)
class GcpCloudConfig:
    """GCP Cloud Billing Catalog prices for machine types; google.auth.default()."""
    enabled: bool = True
    regions: tuple[str, ...] = ()
    min_interval_s: float = 24 * 3600.0  # list prices change rarely
    daily_request_cap: int = 50

    def __post_init__(self) -> None:
        _check_leash(self.min_interval_s, self.daily_request_cap)
        if self.enabled and not self.regions:
            raise ValueError("regions must list at least one region, e.g. us-central1")


@dataclass(frozen=True)
class CloudConfig:
    """Off unless a provider is configured (and not enabled: false)."""
    aws: AwsCloudConfig | None = None
    azure: AzureCloudConfig | None = None
    gcp: GcpCloudConfig | None = None
    # The refreshers' cache (cloud/cache.py), relative to the config file's folder; None:
    # beside the state file, or $XDG_CACHE_HOME/drm-exporter/ when state is memory only;
    # "": memory only (a restart calls again).
    cache_file: str | None = None

    def enabled(self) -> bool:
        return any(p is not None and p.enabled for p in (self.aws, self.azure, self.gcp))


def resolve_cloud_cache(cfg: Config, environ: Mapping[str, str]) -> Path | None:
    if cfg.cloud.cache_file is not None:
        return Path(cfg.cloud.cache_file).expanduser() if cfg.cloud.cache_file else None
    if cfg.state_file:
        return Path(cfg.state_file).expanduser().parent / "cloud-cache.json"
    base = environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and Path(base).is_absolute() else \
        Path(environ.get("HOME") or Path.home()) / ".cache"
    return root / "drm-exporter" / "cloud-cache.json"


@dataclass(frozen=True)
class MetricsConfig:
    # false: for workers whose agent serves its own /metrics (a metrics URL in /sd), leave
    # the series the agent serves to it (docs/scale-out.md); pool, reservation, scaling and
    # cost series, and liveness, stay on the coordinator.
    agent_worker_series: bool = True


@dataclass(frozen=True)
class ApiConfig:
    token: str = ""  # empty: write endpoints are open (bind to localhost, or set one)


def api_token(api: ApiConfig, environ: Mapping[str, str]) -> str:
    """The token write endpoints need: the environment variable wins over the file so a secret
    store can inject it without writing it to disk; an empty variable counts as unset, so an
    accidentally blank one cannot switch the token off."""
    return environ.get(API_TOKEN_ENV) or api.token


def default_state_file(environ: Mapping[str, str]) -> Path:
    """$XDG_STATE_HOME/drm-exporter/state.db, else ~/.local/state/drm-exporter/state.db (the
    XDG base directory spec's place for state that should survive a restart)."""
    base = environ.get("XDG_STATE_HOME")
    # The spec ignores a relative value; so do we.
    root = Path(base) if base and Path(base).is_absolute() else \
        Path(environ.get("HOME") or Path.home()) / ".local" / "state"
    return root / "drm-exporter" / "state.db"


def resolve_state_file(cfg: Config, environ: Mapping[str, str]) -> Path | None:
    """Where `serve` keeps its state: the configured file, the default location when none is
    configured, or None (memory only) for ""."""
    if cfg.state_file is None:
        return default_state_file(environ)
    return Path(cfg.state_file).expanduser() if cfg.state_file else None


@dataclass(frozen=True)
class Config:
    listen_address: str = DEFAULT_LISTEN_ADDRESS
    tick_interval_s: float = 1.0
    engine: EngineSettings = field(default_factory=EngineSettings)
    pools: dict[str, PoolPolicy] = field(default_factory=dict)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    host_worker: HostWorkerConfig = field(default_factory=HostWorkerConfig)
    collectors: CollectorsConfig = field(default_factory=CollectorsConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    web_config_file: str = ""  # relative to the config file's folder
    # The state file (docs/state.md), relative to the config file's folder; None: the default
    # location, filled in by `serve` (see resolve_state_file); "": memory only.
    state_file: str | None = None
    hooks: dict[str, HookConfig] = field(default_factory=dict)  # pool -> where decisions go

    def __post_init__(self) -> None:
        if self.tick_interval_s <= 0:
            raise ValueError("tick_interval_s must be > 0")
        parse_listen_address(self.listen_address)
        # A hook on a pool nobody scales would never fire: almost surely a typo.
        scaled = set(self.pools) | (set(POOL_SHAPES) if self.simulator.enabled else set())
        for pool in self.hooks:
            if pool not in scaled:
                raise FieldError(("hooks", pool), f"pool {pool!r} has no scaling policy (known: "
                                 f"{', '.join(sorted(scaled)) or 'none'}); add it under pools")


def parse_listen_address(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"listen address must be HOST:PORT, got {addr!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


_KIND = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _where(source: str, node: yaml.Node) -> str:
    return f"{source}:{node.start_mark.line + 1}"


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")


def locate(node: yaml.Node, path: tuple[str, ...]) -> yaml.Node:
    """The key node at the end of `path` below `node` (an error about an entry points at its
    line), or the deepest node the document has on the way there."""
    for i, part in enumerate(path):
        if not isinstance(node, yaml.MappingNode):
            return node
        for kn, vn in node.value:
            if isinstance(kn, yaml.ScalarNode) and kn.value == part:
                if i == len(path) - 1:
                    return kn
                node = vn
                break
        else:
            return node
    return node


def line_of(source: str, root: yaml.Node | None, path: tuple[str, ...]) -> str:
    """`source:line` of the key at `path` (or of the nearest node above it)."""
    if root is None:
        return source
    return _where(source, locate(root, path))


class _Builder:
    def __init__(self, source: str, loader: yaml.SafeLoader) -> None:
        self.source, self.loader = source, loader

    def fail(self, node: yaml.Node, key: str, msg: str) -> typing.NoReturn:
        raise ConfigError(f"{_where(self.source, node)}: {key}: {msg}")

    def build(self, tp: Any, node: yaml.Node, key: str) -> Any:
        origin = typing.get_origin(tp)
        if origin is Literal:
            choices = typing.get_args(tp)
            v = self.scalar(str, node, key)
            if v not in choices:
                self.fail(node, key, f"expected one of {', '.join(choices)}, got {v!r}")
            return v
        if dataclasses.is_dataclass(tp):
            return self._dataclass(tp, node, key)
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                self.fail(node, key, "expected a mapping")
            _, vt = typing.get_args(tp)
            out = {}
            for kn, vn in node.value:
                k = self.scalar(str, kn, key)
                out[k] = self.build(vt, vn, f"{key}.{k}")
            return out
        if origin is tuple:
            if not isinstance(node, yaml.SequenceNode):
                self.fail(node, key, "expected a list")
            (et, _) = typing.get_args(tp)
            return tuple(self.build(et, n, f"{key}[{i}]") for i, n in enumerate(node.value))
        return self.scalar(tp, node, key)

    def scalar(self, tp: Any, node: yaml.Node, key: str) -> Any:
        want = _KIND.get(tp, tp.__name__)
        if not isinstance(node, yaml.ScalarNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
            self.fail(node, key, f"expected {want}, got {kind}")
        if _is_null(node):  # YAML's spelling, not Python's None
            self.fail(node, key, f"expected {want}, got null")
        v = self.loader.construct_object(node)
        if tp is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if tp is str and isinstance(v, int | float) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, tp) or (tp is not bool and isinstance(v, bool)):
            self.fail(node, key, f"expected {want}, got {v!r}")
        return v

    def _dataclass(self, tp: Any, node: yaml.Node, key: str) -> Any:
        if _is_null(node):
            try:
                return tp()
            except ValueError as e:  # a dataclass whose defaults are not enough (a hook)
                self.fail(node, key or "(top level)", str(e))
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key or "(top level)", "expected a mapping")
        hints = typing.get_type_hints(tp)
        fields = {f.name for f in dataclasses.fields(tp)}
        if tp is SimulatorConfig:  # simulator settings sit flat beside `enabled`
            fields |= {f.name for f in dataclasses.fields(SimulatorSettings)}
        kwargs: dict[str, Any] = {}
        sim: dict[str, Any] = {}
        for kn, vn in node.value:
            k = self.scalar(str, kn, key)
            full = f"{key}.{k}" if key else k
            if k not in fields:
                self.fail(kn, full, f"unknown key (known: {', '.join(sorted(fields))})")
            if tp is SimulatorConfig and k != "enabled":
                st = typing.get_type_hints(SimulatorSettings)[k]
                sim[k] = self.build(st, vn, full)
                continue
            t = hints[k]
            if isinstance(t, types.UnionType):
                if type(None) in typing.get_args(t) and _is_null(vn):
                    kwargs[k] = None
                    continue
                t = next(a for a in typing.get_args(t) if a is not type(None))
            kwargs[k] = self.build(t, vn, full)
        target = SimulatorSettings if tp is SimulatorConfig else tp
        given = sim if tp is SimulatorConfig else kwargs
        missing = [f.name for f in dataclasses.fields(target) if f.name not in given
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            self.fail(node, key or "(top level)",
                      f"missing required key{'s' if len(missing) > 1 else ''} "
                      f"{', '.join(missing)}")
        try:
            if tp is SimulatorConfig:
                return SimulatorConfig(kwargs.get("enabled", False), SimulatorSettings(**sim))
            return tp(**kwargs)
        except FieldError as e:
            self.fail(locate(node, e.path), ".".join(([key] if key else []) + list(e.path)), str(e))
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            # Validation messages start with the field they are about: point at its line.
            first = str(e).split(" ", 1)[0]
            if first in given and isinstance(node, yaml.MappingNode):
                self.fail(locate(node, (first,)), f"{key}.{first}" if key else first, str(e))
            self.fail(node, key or "(top level)", str(e))


def parse_yaml(tp: Any, text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """YAML text → dataclass `tp`, and the document's root node (to place later errors, such as
    an unreadable file the config names); an empty document is `tp()`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return tp(), None
        return _Builder(source, loader).build(tp, node, ""), node
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {getattr(e, 'problem', e)}") from e
    finally:
        loader.dispose()


def load_config(text: str, source: str = "<config>") -> Config:
    return typing.cast(Config, parse_yaml(Config, text, source)[0])


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e


def load_config_file(path: Path) -> Config:
    cfg = load_config(read_text(path), str(path))
    if cfg.web_config_file and not Path(cfg.web_config_file).is_absolute():
        # like the paths in prometheus.yml: relative to the file that names them
        cfg = dataclasses.replace(cfg, web_config_file=str(path.parent / cfg.web_config_file))
    if cfg.state_file and not Path(cfg.state_file).expanduser().is_absolute():
        cfg = dataclasses.replace(cfg, state_file=str(path.parent / cfg.state_file))
    cache = cfg.cloud.cache_file
    if cache and not Path(cache).expanduser().is_absolute():
        cfg = dataclasses.replace(cfg, cloud=dataclasses.replace(
            cfg.cloud, cache_file=str(path.parent / cache)))
    return cfg
