"""`drm-exporter collect --once [--json]`: what the collectors see on this machine, printed,
so an operator can check a GPU box in one command. Also the --collector.<name> flags that
`serve`, `agent` and `collect` share.

    $ drm-exporter collect --once
    collector  status  duration  error
    host       ok      0.20s
    gpu        ok      0.03s

    host
      cpu_cores              8
      cpu_utilization_ratio  12.5%
      memory_total_bytes     31.2 GiB
      memory_used_bytes      9.8 GiB
      cpu_source             host
      memory_source          host

    gpu  name      uuid   util  memory              temp  power   up
    0    Tesla T4  GPU-1  37%   4.0 GiB / 16.0 GiB  51°C  27.5 W  yes

Exit status 1 when an enabled collector failed (the reason is in the table), else 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from .collectors.gpu import GpuCollector
from .collectors.host import HostCollector, HostReading
from .collectors.runner import CollectorRunner
from .collectors.status import CollectorState, CollectorStatus
from .config import CollectorsConfig, collector_names, load_config_file
from .fleet import GpuReading

GIB = 1024**3


# --- the --collector.<name> flags ------------------------------------------------------------
def _flag_dest(name: str) -> str:
    return f"collector_{name}"


def add_collector_flags(p: argparse.ArgumentParser, default_note: str) -> None:
    """--collector.<name> / --no-collector.<name> for every collector in CollectorsConfig."""
    g = p.add_argument_group("collectors", "turn a collector on or off; the flag wins over "
                             "collectors.<name>.enabled in the config")
    for f in dataclasses.fields(CollectorsConfig):
        g.add_argument(f"--collector.{f.name}", dest=_flag_dest(f.name),
                       action=argparse.BooleanOptionalAction, default=None,
                       help=f"{f.metadata.get('help', f.name)} ({default_note})")


def apply_collector_flags(cfg: CollectorsConfig, args: argparse.Namespace) -> CollectorsConfig:
    """The config's collectors with each flag given on the command line applied."""
    changes: dict[str, Any] = {}
    for name in collector_names():
        flag = getattr(args, _flag_dest(name), None)
        if flag is not None:
            changes[name] = replace(getattr(cfg, name), enabled=flag)
    return replace(cfg, **changes)


# --- one collection --------------------------------------------------------------------------
@dataclass
class Collection:
    """What one run of the enabled collectors saw; a reading is None when its collector is off
    or failed."""
    status: dict[str, CollectorState] = field(default_factory=dict)
    host: HostReading | None = None
    gpus: tuple[GpuReading, ...] | None = None

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.status.items() if not s.success]


def collect_once(cfg: CollectorsConfig, host: HostCollector | None = None,
                 gpu: GpuCollector | None = None) -> Collection:
    """Each enabled collector once, through the same runner (and timeout) as `serve`. The
    collectors are the seams (a test passes ones over fakes); both are cheap to make, and
    NVML is loaded on the first GPU read only."""
    out, status = Collection(), CollectorStatus()
    host_c, gpu_c = host or HostCollector(), gpu or GpuCollector()

    def read_host() -> None:
        out.host = host_c.read()

    def read_gpu() -> None:
        out.gpus = gpu_c.read()

    for name, fn in (("host", read_host), ("gpu", read_gpu)):
        c = getattr(cfg, name)
        if c.enabled:
            CollectorRunner(name, fn, c.interval_s, status, c.timeout_s).run_once()
    out.status = status.snapshot()
    return out


# --- printing --------------------------------------------------------------------------------
def to_json(c: Collection) -> dict[str, Any]:
    return {
        "collectors": {n: {"success": s.success, "duration_seconds": round(s.duration_s, 6),
                           "error": s.error} for n, s in c.status.items()},
        "host": dataclasses.asdict(c.host) if c.host is not None else None,
        "gpus": [dataclasses.asdict(g) for g in c.gpus] if c.gpus is not None else None,
    }


def _value(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key.endswith("_bytes") and isinstance(v, int | float):
        return f"{v / GIB:.1f} GiB"
    if key.endswith("_ratio") and isinstance(v, int | float):
        return f"{v * 100:.1f}%"
    return str(v)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _gpu_row(g: GpuReading) -> list[str]:
    if not g.up:
        return [str(g.index), g.name or "-", g.uuid or "-", "-", "-", "-", "-", "no (lost)"]
    mem = "-" if g.memory_total_bytes is None else \
        f"{_value('_bytes', g.memory_used_bytes)} / {_value('_bytes', g.memory_total_bytes)}"
    util = "-" if g.utilization_ratio is None else f"{g.utilization_ratio * 100:.0f}%"
    if g.mig_mode == "enabled" and g.utilization_ratio is None:
        util = "MIG"
    temp = "-" if g.temperature_celsius is None else f"{g.temperature_celsius:.0f}°C"
    power = "-" if g.power_watts is None else f"{g.power_watts:.1f} W"
    return [str(g.index), g.name, g.uuid, util, mem, temp, power, "yes"]


def print_text(c: Collection, out: TextIO) -> None:
    rows = [["collector", "status", "duration", "error"]]
    for n, s in c.status.items():
        rows.append([n, "ok" if s.success else "FAILED", f"{s.duration_s:.2f}s", s.error or ""])
    if len(rows) == 1:
        rows.append(["(none)", "all collectors are disabled", "", ""])
    lines = _table(rows)
    if c.host is not None:
        host = dataclasses.asdict(c.host)  # every field, the capacity source included if any
        width = max(len(k) for k in host)
        lines += ["", "host"] + [f"  {k.ljust(width)}  {_value(k, v)}" for k, v in host.items()]
    if c.gpus is not None:
        lines.append("")
        if c.gpus:
            lines += _table([["gpu", "name", "uuid", "util", "memory", "temp", "power", "up"]]
                            + [_gpu_row(g) for g in c.gpus])
        else:
            lines.append("gpu: none found (no NVIDIA library or no device)")
    print("\n".join(lines), file=out)


# --- the command -----------------------------------------------------------------------------
def _collect(args: argparse.Namespace) -> int:
    from .config import Config

    cfg = load_config_file(args.config) if args.config else Config()
    collectors = apply_collector_flags(cfg.collectors, args)
    # Kept across rounds: CPU utilization is measured between two reads.
    host, gpu = HostCollector(), GpuCollector()
    while True:
        c = collect_once(collectors, host, gpu)
        if args.json:
            print(json.dumps(to_json(c), indent=2))
        else:
            print_text(c, sys.stdout)
        for name in c.failed:
            print(f"drm-exporter collect: collector {name} failed: {c.status[name].error}",
                  file=sys.stderr)
        rc = 1 if c.failed else 0
        if args.once:
            return rc
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return rc
        print(flush=True)


def add_collect_parser(sub: argparse._SubParsersAction) -> None:
    from .cli import parse_duration

    c = sub.add_parser(
        "collect", help="print what the host and GPU collectors see on this machine",
        description="Run every enabled collector (host, GPUs through NVML) on this machine and "
        "print what they read: a table, or JSON with --json. Exits 1 if an enabled collector "
        "failed (the reason is printed), else 0.")
    c.add_argument("--once", action="store_true",
                   help="collect once and exit (default: repeat every --interval until Ctrl-C)")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.add_argument("--interval", type=parse_duration, default=5.0,
                   help="seconds between collections without --once (default 5)")
    c.add_argument("--config", type=Path,
                   help="YAML config file: its collectors section (enabled, timeout_s)")
    add_collector_flags(c, "default: on")
    c.set_defaults(fn=_collect)
