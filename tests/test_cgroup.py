"""Containers: cgroup v1/v2 limits from fixture trees, a worker limited to 1.5 CPUs and 512 MiB
offering exactly that, the fallback to the host, and the capacity source through the API and
/metrics."""

from __future__ import annotations

import shutil
import urllib.request
from collections import namedtuple
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from drm_exporter import metrics as m
from drm_exporter.api import Api, ApiError, parse_spec
from drm_exporter.client import spec_body
from drm_exporter.clock import ManualClock
from drm_exporter.collectors.cgroup import CgroupReader, CgroupReading
from drm_exporter.collectors.host import HostCollector
from drm_exporter.config import Config
from drm_exporter.engine import Engine
from drm_exporter.exposition import format_text
from drm_exporter.fleet import WorkerSpec
from drm_exporter.reservations import InsufficientCapacity
from drm_exporter.service import HostWorker, Service
from drm_exporter.snapshot import build_families

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
MIB, GIB = 2**20, 2**30
CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")
Mem = namedtuple("Mem", "total available")


def reader(case: str, base: Path = FIXTURES) -> CgroupReader:
    return CgroupReader(base / case / "sys" / "fs" / "cgroup", base / case / "proc" / "self" /
                        "cgroup")


class FakePsutil:
    """A 64-core, 16 GiB host, 6 GiB of it in use; the test moves the CPU counters."""

    def __init__(self, cores: int = 64) -> None:
        self.cores = cores
        self.times = CpuTimes(100, 0, 50, 800, 50, 0, 0, 0, 0, 0)

    def cpu_times(self):
        return self.times

    def cpu_count(self, logical=True):
        return self.cores

    def virtual_memory(self):
        return Mem(16 * GIB, 10 * GIB)


# --- cgroup.py against the fixture trees --------------------------------------------------------
@pytest.mark.parametrize("case, expected", [
    # 300 MiB usage less 100 MiB inactive file cache is a 200 MiB working set everywhere
    ("v2_limited", CgroupReading("cgroup_v2", 1.5, 512 * MIB, 200 * MIB, 5.0)),
    ("v2_max", CgroupReading("cgroup_v2", None, None, 200 * MIB, 5.0)),
    # v1: total_inactive_file (the hierarchy's) wins over the cgroup's own inactive_file (50 MiB)
    ("v1_limited", CgroupReading("cgroup_v1", 1.5, 512 * MIB, 200 * MIB, 5.0)),
    ("v1_unlimited", CgroupReading("cgroup_v1", None, None, 200 * MIB, 5.0)),
    ("none", CgroupReading("host")),
])
def test_limits_per_tree(case: str, expected: CgroupReading) -> None:
    assert reader(case).read() == expected


def test_an_ancestor_limit_binds_and_usage_is_read_where_it_is_set(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "v2_limited", tmp_path / "t")
    root = tmp_path / "t" / "sys" / "fs" / "cgroup" / "system.slice" / "docker-abc.scope"
    child = root / "app"
    child.mkdir()
    (child / "cpu.max").write_text("max 100000\n")
    (child / "memory.max").write_text("max\n")
    (child / "memory.current").write_text("1048576\n")
    (child / "cpu.stat").write_text("usage_usec 1000000\n")
    (tmp_path / "t" / "proc" / "self" / "cgroup").write_text(
        "0::/system.slice/docker-abc.scope/app\n")
    r = reader("t", tmp_path).read()
    assert (r.cpu_limit_cores, r.memory_limit_bytes) == (1.5, 512 * MIB)
    assert (r.memory_used_bytes, r.cpu_usage_seconds) == (200 * MIB, 5.0)


# --- HostCollector in a container --------------------------------------------------------------
def test_a_container_worker_offers_its_quota_and_limit_and_measures_against_them(
        tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "v2_limited", tmp_path / "c")
    cpu_stat = tmp_path / "c/sys/fs/cgroup/system.slice/docker-abc.scope/cpu.stat"
    ps = FakePsutil()
    clock = iter([0.0, 10.0, 10.0, 20.0, 20.0])
    host = HostCollector(ps, prime_s=0.2, sleep=pytest.fail, monotonic=lambda: next(clock),
                         cgroup=reader("c", tmp_path).read)
    # 10 s of wall time: the host's 64 cores were barely busy, the container used 12 CPU s of
    # the 15 its 1.5-CPU quota allows
    ps.times = ps.times._replace(user=112, idle=1428)
    cpu_stat.write_text("usage_usec 17000000\n")
    r = host.read()
    assert (r.cpu_cores, r.memory_total_bytes, r.memory_used_bytes) == (1.5, 512 * MIB, 200 * MIB)
    assert (r.cpu_source, r.memory_source) == ("cgroup_v2", "cgroup_v2")
    assert r.cpu_utilization_ratio == pytest.approx(12 / 15)
    cpu_stat.write_text("usage_usec 47000000\n")  # 30 CPU s in 10 s: clamped, never above 1
    assert host.read().cpu_utilization_ratio == 1.0

    # The engine and /metrics see the container, not the machine it runs on.
    engine = Engine(clock=ManualClock())
    spec = WorkerSpec("box", "cpu", "onprem", "local", "host", "box", 1, 1)
    hw = HostWorker(engine, spec, HostCollector(ps, prime_s=0.0, cgroup=reader("c", tmp_path).read),
                    None)
    hw.collect_host()
    [w] = engine.view().workers
    assert (w.spec.cpu_cores, w.spec.memory_total_bytes) == (1.5, 512 * MIB)
    engine.reserve("t1", 1.0, 256 * MIB, worker="box")
    with pytest.raises(InsufficientCapacity):  # 1 of 1.5 cores is held: one more does not fit
        engine.reserve("t2", 1.0, 0, worker="box")
    text = format_text(build_families(engine.view(), {})).decode()
    assert 'drm_worker_cpu_cores{worker="box"} 1.5' in text
    assert f'drm_worker_memory_total_bytes{{worker="box"}} {512 * MIB}' in text
    assert ('drm_worker_capacity_info{worker="box",cpu_source="cgroup_v2",'
            'memory_source="cgroup_v2"} 1') in text


@pytest.mark.parametrize("case", ["v2_max", "v1_unlimited", "none"])
def test_no_limit_falls_back_to_the_host(case: str) -> None:
    ps = FakePsutil()
    clock = iter([0.0, 10.0, 10.0])
    host = HostCollector(ps, prime_s=0.2, sleep=pytest.fail, monotonic=lambda: next(clock),
                         cgroup=reader(case).read)
    ps.times = ps.times._replace(user=130, idle=810)  # 30 busy of 40 s on the host counters
    r = host.read()
    assert (r.cpu_cores, r.memory_total_bytes, r.memory_used_bytes) == (64, 16 * GIB, 6 * GIB)
    assert (r.cpu_source, r.memory_source) == ("host", "host")
    assert r.cpu_utilization_ratio == pytest.approx(0.75)


def test_a_limit_looser_than_the_host_is_the_host() -> None:
    # a 1.5-CPU quota on a 1-core machine still only has the one core
    r = HostCollector(FakePsutil(cores=1), prime_s=0.0, cgroup=reader("v1_limited").read).read()
    assert (r.cpu_cores, r.cpu_source, r.memory_source) == (1, "host", "cgroup_v1")


# --- the capacity source through /metrics and the API -------------------------------------------
def test_the_host_worker_reports_where_its_capacity_comes_from() -> None:
    """This machine's real /sys/fs/cgroup: whatever it says, /metrics must say the same."""
    s = Service(Config(listen_address="127.0.0.1:0", tick_interval_s=0.1))
    s.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.http.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        s.stop()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    [info] = fams[m.WORKER_CAPACITY_INFO.name].samples
    cg = CgroupReader().read()
    host_cores, host_mem = psutil.cpu_count(logical=True), psutil.virtual_memory().total
    cpu_limited = cg.cpu_limit_cores is not None and cg.cpu_limit_cores < host_cores
    mem_limited = cg.memory_limit_bytes is not None and cg.memory_limit_bytes < host_mem
    assert info.labels["cpu_source"] in m.CAPACITY_SOURCES
    assert info.labels["cpu_source"] == (cg.source if cpu_limited else "host")
    assert info.labels["memory_source"] == (cg.source if mem_limited else "host")
    [cores] = fams[m.WORKER_CPU_CORES.name].samples
    assert cores.value == (cg.cpu_limit_cores if cpu_limited else host_cores)


BODY = {"pool": "cpu", "provider": "onprem", "cpu_cores": 1.5, "memory_total_bytes": 512 * MIB}


def test_the_api_accepts_a_capacity_source_and_names_a_bad_one() -> None:
    api = Api(Engine(clock=ManualClock()))
    api.handle("PUT", "/api/v1/workers/c1",
               BODY | {"capacity_source": {"cpu": "cgroup_v2", "memory": "host"}})
    api.handle("PUT", "/api/v1/workers/c2", BODY | {"capacity_source": "cgroup_v1"})
    _, c1 = api.handle("GET", "/api/v1/workers/c1")
    _, c2 = api.handle("GET", "/api/v1/workers/c2")
    assert c1["capacity_source"] == {"cpu": "cgroup_v2", "memory": "host"}
    assert c2["capacity_source"] == {"cpu": "cgroup_v1", "memory": "cgroup_v1"}
    for bad, field in [({"cpu": "docker", "memory": "host"}, "capacity_source.cpu"),
                       ({"cpu": "host"}, "capacity_source.memory"),
                       ({"cpu": "host", "memory": "host", "gpu": "host"}, "capacity_source.gpu"),
                       ("cgroup_v3", "capacity_source"), (7, "capacity_source")]:
        with pytest.raises(ApiError) as e:
            api.handle("PUT", "/api/v1/workers/c3", BODY | {"capacity_source": bad})
        assert (e.value.status, e.value.field) == (400, field), bad
    assert [w.spec.worker for w in api.engine.view().workers] == ["c1", "c2"]


def test_an_agent_in_a_container_sends_its_capacity_source() -> None:
    spec = WorkerSpec("a1", "cpu", "onprem", "local", "host", "a1", 1.5, 512 * MIB,
                      cpu_source="cgroup_v2", memory_source="cgroup_v2")
    assert spec_body(spec)["capacity_source"] == {"cpu": "cgroup_v2", "memory": "cgroup_v2"}
    assert parse_spec("a1", spec_body(spec))[0] == spec
    plain = WorkerSpec("a2", "cpu", "onprem", "local", "host", "a2", 2, GIB)
    assert "capacity_source" not in spec_body(plain)
