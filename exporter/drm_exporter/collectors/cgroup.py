"""This process's cgroup: the CPU quota, memory limit and usage a container really has.

A container sees the host's CPU count and RAM through /proc, so a worker limited to 1.5 CPUs
on a 64-core machine would offer 64 cores. The cgroup files say the truth. The root of the
cgroup mount and /proc/self/cgroup are parameters, so tests point them at fixture trees
(tests/fixtures/cgroup/).

cgroup v2 (unified) is recognised by `cgroup.controllers` at the root; v1 by `cpu/` and
`memory/` below it. Within the mount, the process's own cgroup is the path /proc/self/cgroup
names; where that path is not there (a private cgroup namespace, or a container that mounts
only its own cgroup) the mount root is that cgroup. Limits set on an ancestor bind as well, so
the tightest one from the own cgroup up to the root wins, and usage is read where it was set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..metrics import CAPACITY_SOURCES

SOURCE_HOST, SOURCE_V1, SOURCE_V2 = CAPACITY_SOURCES
DEFAULT_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PROC_CGROUP = Path("/proc/self/cgroup")
# v1 writes "no limit" as LONG_MAX rounded down to a page (9223372036854771712); anything this
# large is no limit on any real machine.
V1_UNLIMITED_BYTES = 2**62


@dataclass(frozen=True)
class CgroupReading:
    """None means no limit (or not readable): the host's own figure applies."""

    source: str  # SOURCE_V2, SOURCE_V1, or SOURCE_HOST when there are no cgroup files
    cpu_limit_cores: float | None = None
    memory_limit_bytes: int | None = None
    # The working set, as the kernel's OOM logic and cAdvisor see it: usage minus the
    # inactive file cache the kernel can drop without pressure.
    memory_used_bytes: int | None = None
    cpu_usage_seconds: float | None = None  # cumulative CPU time of the cgroup


def _text(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _int(p: Path) -> int | None:
    t = _text(p)
    return None if t is None else int(t)


def _stat(p: Path, *keys: str) -> int | None:
    """The first of `keys` found in a flat-keyed file (memory.stat, cpu.stat)."""
    t = _text(p)
    if t is None:
        return None
    values = dict(line.split(maxsplit=1) for line in t.splitlines() if " " in line)
    return next((int(values[k]) for k in keys if k in values), None)


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    if usage is None:
        return None
    return max(0, usage - (inactive_file or 0))


class CgroupReader:
    """Reads the cgroup afresh at each call: limits can change under a running container
    (`docker update`), and the files are a few bytes each."""

    def __init__(self, root: Path | str = DEFAULT_ROOT,
                 proc_cgroup: Path | str = DEFAULT_PROC_CGROUP) -> None:
        self.root = Path(root)
        self.proc_cgroup = Path(proc_cgroup)

    def read(self) -> CgroupReading:
        if (self.root / "cgroup.controllers").is_file():
            return self._v2()
        if (self.root / "cpu").is_dir() and (self.root / "memory").is_dir():
            return self._v1()
        return CgroupReading(SOURCE_HOST)

    # --- paths ---------------------------------------------------------------------------------
    def _own_paths(self) -> dict[str, str]:
        """Controller (v2: "") to cgroup path, from lines like `4:cpu,cpuacct:/docker/abc`."""
        out: dict[str, str] = {}
        for line in (_text(self.proc_cgroup) or "").splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3:
                for controller in parts[1].split(",") if parts[1] else [""]:
                    out[controller] = parts[2]
        return out

    @staticmethod
    def _chain(mount: Path, path: str) -> list[Path]:
        """The own cgroup directory, then its ancestors up to the mount root."""
        rel = Path(path.lstrip("/"))
        own = mount / rel
        if ".." in rel.parts or not own.is_dir():
            return [mount]
        return [own, *(p for p in own.parents if p.is_relative_to(mount))]

    # --- v2 ------------------------------------------------------------------------------------
    def _v2(self) -> CgroupReading:
        chain = self._chain(self.root, self._own_paths().get("", "/"))
        cpu_dir, cpu = _tightest(chain, _v2_cpu_limit)
        mem_dir, mem = _tightest(chain, lambda d: _v2_limit(d / "memory.max"))
        usec = _stat(cpu_dir / "cpu.stat", "usage_usec")
        return CgroupReading(
            SOURCE_V2, cpu, None if mem is None else int(mem),
            _working_set(_int(mem_dir / "memory.current"),
                         _stat(mem_dir / "memory.stat", "inactive_file")),
            None if usec is None else usec / 1e6)

    # --- v1 ------------------------------------------------------------------------------------
    def _v1(self) -> CgroupReading:
        own = self._own_paths()
        cpu_chain = self._chain(self.root / "cpu", own.get("cpu", "/"))
        mem_chain = self._chain(self.root / "memory", own.get("memory", "/"))
        acct_mount = self.root / "cpuacct"
        if not acct_mount.is_dir():
            acct_mount = self.root / "cpu"  # co-mounted as cpu,cpuacct without the link
        acct_chain = self._chain(acct_mount, own.get("cpuacct", own.get("cpu", "/")))
        _, cpu = _tightest(cpu_chain, _v1_cpu_limit)
        mem_dir, mem = _tightest(mem_chain, _v1_memory_limit)
        ns = _int(acct_chain[0] / "cpuacct.usage")
        return CgroupReading(
            SOURCE_V1, cpu, None if mem is None else int(mem),
            _working_set(_int(mem_dir / "memory.usage_in_bytes"),
                         _stat(mem_dir / "memory.stat", "total_inactive_file", "inactive_file")),
            None if ns is None else ns / 1e9)


def _tightest(chain: list[Path], limit_of: Callable[[Path], float | None]
              ) -> tuple[Path, float | None]:
    """The smallest limit along the chain and the directory that sets it; with no limit
    anywhere, the own cgroup and None."""
    best: tuple[Path, float | None] = (chain[0], None)
    for d in chain:
        v = limit_of(d)
        if v is not None and (best[1] is None or v < best[1]):
            best = (d, v)
    return best


def _v2_limit(p: Path) -> int | None:
    t = _text(p)
    return None if t is None or t == "max" else int(t)


def _v2_cpu_limit(d: Path) -> float | None:
    t = _text(d / "cpu.max")  # "150000 100000", or "max 100000" for none
    if t is None:
        return None
    quota, _, period = t.partition(" ")
    return None if quota == "max" else int(quota) / int(period or 100000)


def _v1_cpu_limit(d: Path) -> float | None:
    quota, period = _int(d / "cpu.cfs_quota_us"), _int(d / "cpu.cfs_period_us")
    return None if quota is None or quota < 0 or not period else quota / period


def _v1_memory_limit(d: Path) -> int | None:
    v = _int(d / "memory.limit_in_bytes")
    return None if v is None or v >= V1_UNLIMITED_BYTES else v
