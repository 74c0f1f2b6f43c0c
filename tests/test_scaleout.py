"""Scale-out end to end (docs/scale-out.md): 300 real agents, each serving its own /metrics on a
loopback port and registered with a real coordinator through the API with its metrics URL; the
coordinator's /sd listing all of them; three real Prometheus servers running the shard configs
of drm_exporter.sharding, each scraping exactly its hashmod share; and all three remote-writing
to a local receiver that decodes what they send.

The agents are drm_exporter.agent.Agent with the agent's own HTTP server (serve_metrics); only
psutil behind their host collector is a fake, so 300 of them read no real host."""

from __future__ import annotations

import http.server
import json
import shutil
import struct
import subprocess
import threading
import time
import urllib.request
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from drm_exporter import sharding
from drm_exporter.agent import Agent, AgentSettings, advertise_url, serve_metrics
from drm_exporter.client import HttpClient
from drm_exporter.collectors.cgroup import SOURCE_HOST, CgroupReading
from drm_exporter.collectors.host import HostCollector
from drm_exporter.config import Config, HostWorkerConfig
from drm_exporter.exposition import SnapshotStore
from drm_exporter.localstack import free_port, prometheus_query, spawn_prometheus, wait_http_ok
from drm_exporter.service import Service
from drm_exporter.web import ExporterHTTPServer

pytestmark = pytest.mark.integration

AGENTS = 300
SHARDS = 3
DEADLINE_S = 30.0  # for each wait below; a pass needs well under 10 s of it

T = TypeVar("T")


# --- the committed example configs ---------------------------------------------------------------
def test_committed_shard_configs_are_fresh() -> None:
    committed = {p.name: p.read_text(encoding="utf-8")
                 for p in sharding.OUT_DIR.glob("shard-*.yml")}
    assert committed == sharding.render(), \
        "prometheus/sharding/ is stale: run `python -m drm_exporter.sharding`"


def test_promtool_accepts_every_shard_config() -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is missing: `make test` installs it (deploy/local/bootstrap.sh)")
    files = sorted(sharding.OUT_DIR.glob("shard-*.yml"))
    assert len(files) == sharding.ShardSettings().shards
    done = subprocess.run([exe, "check", "config", *map(str, files)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_each_shard_keeps_its_own_share_and_labels_what_it_sends() -> None:
    s = sharding.ShardSettings(shards=4)
    for n in range(4):
        cfg = sharding.shard_config(n, s)
        [agents] = [j for j in cfg["scrape_configs"] if j["job_name"] == sharding.AGENTS_JOB]
        assert agents["http_sd_configs"] == [{"url": s.sd_url,
                                              "refresh_interval": s.sd_refresh_interval}]
        hashmod, keep = agents["relabel_configs"]
        assert hashmod["action"] == "hashmod" and hashmod["modulus"] == 4
        assert hashmod["source_labels"] == ["__address__"]
        assert keep == {"source_labels": [hashmod["target_label"]], "regex": str(n),
                        "action": "keep"}
        assert cfg["global"]["external_labels"][sharding.SHARD_LABEL] == str(n)
        assert cfg["remote_write"][0]["url"] == s.remote_write_url
        jobs = {j["job_name"] for j in cfg["scrape_configs"]}
        assert (sharding.COORDINATOR_JOB in jobs) is (n == sharding.COORDINATOR_SHARD)
    with pytest.raises(ValueError):
        sharding.shard_config(4, s)


# --- the fleet ---------------------------------------------------------------------------------
CpuTimes = namedtuple("CpuTimes", "user idle")
Mem = namedtuple("Mem", "total available")


class FakePs:
    """psutil for HostCollector: a worker 25 % busy with 8 cores and 32 GiB, half used."""

    def __init__(self) -> None:
        self.reads = 0

    def cpu_times(self) -> CpuTimes:
        self.reads += 1
        return CpuTimes(user=10.0 * self.reads, idle=30.0 * self.reads)

    def cpu_count(self, logical: bool = True) -> int:
        return 8

    def virtual_memory(self) -> Mem:
        return Mem(total=32 << 30, available=16 << 30)


def no_cgroup() -> CgroupReading:
    return CgroupReading(SOURCE_HOST)


@dataclass
class RemoteWrite:
    """What one POST carried: its headers, and the label sets of its series."""

    headers: dict[str, str]
    series: list[dict[str, str]]


@dataclass
class Receiver:
    """A stand-in for the store's write endpoint on 127.0.0.1 that records every POST."""

    server: http.server.ThreadingHTTPServer
    writes: list[RemoteWrite] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/write"

    def snapshot(self) -> list[RemoteWrite]:
        with self.lock:
            return list(self.writes)


def start_receiver() -> Receiver:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                series = write_request_series(snappy_decompress(body))
            except (ValueError, IndexError, KeyError) as e:  # recorded: the test names it
                with rec.lock:
                    rec.errors.append(f"{type(e).__name__}: {e}")
                series = []
            with rec.lock:
                rec.writes.append(RemoteWrite(dict(self.headers.items()), series))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    rec = Receiver(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    rec.server.daemon_threads = True
    threading.Thread(target=rec.server.serve_forever, name="receiver", daemon=True).start()
    return rec


# --- remote write's wire format, decoded by hand (no snappy or protobuf schema installed) --------
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def snappy_decompress(buf: bytes) -> bytes:
    """Snappy's block format, which remote write uses (not the framed stream format)."""
    size, i = _varint(buf, 0)
    out = bytearray()
    while i < len(buf):
        tag, kind = buf[i], buf[i] & 3
        i += 1
        if kind == 0:  # literal
            n = tag >> 2
            if n >= 60:
                extra = n - 59
                n = int.from_bytes(buf[i:i + extra], "little")
                i += extra
            out += buf[i:i + n + 1]
            i += n + 1
            continue
        if kind == 1:
            length, offset = ((tag >> 2) & 7) + 4, ((tag >> 5) << 8) | buf[i]
            i += 1
        elif kind == 2:
            length, offset = (tag >> 2) + 1, struct.unpack_from("<H", buf, i)[0]
            i += 2
        else:
            length, offset = (tag >> 2) + 1, struct.unpack_from("<I", buf, i)[0]
            i += 4
        if not 0 < offset <= len(out):
            raise ValueError(f"snappy copy offset {offset} outside {len(out)} bytes")
        for _ in range(length):  # byte by byte: a copy may overlap what it produces
            out.append(out[-offset])
    if len(out) != size:
        raise ValueError(f"snappy: {len(out)} bytes decoded, header says {size}")
    return bytes(out)


def _fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    """(field number, value) of a protobuf message; length-delimited values as bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield num, value


def write_request_series(msg: bytes) -> list[dict[str, str]]:
    """prometheus.WriteRequest: field 1 TimeSeries { field 1 Label { 1 name, 2 value } }."""
    out = []
    for num, ts in _fields(msg):
        if num != 1:
            continue  # 3: metadata
        labels = {}
        for lnum, label in _fields(ts):
            if lnum == 1:
                kv = dict(_fields(label))
                labels[kv[1].decode()] = kv[2].decode()
        out.append(labels)
    return out


# --- polling ---------------------------------------------------------------------------------
def wait_until(probe: Callable[[], T], done: Callable[[T], bool],
               alive: Callable[[], str | None] = lambda: None) -> T:
    """probe() until done(result) or DEADLINE_S; the last result either way (the caller's
    assertions then say what was wrong). `alive` names a dead process, which ends the wait."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        dead = alive()
        assert dead is None, dead
        result = probe()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.25)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


@dataclass
class Fleet:
    coordinator: str
    workers: dict[str, str]  # worker -> address host:port that /sd lists
    shards: list[str]  # Prometheus base URL per shard
    receiver: Receiver
    alive: Callable[[], str | None]


def shutdown_all(servers: list[ExporterHTTPServer]) -> None:
    # In parallel: each shutdown() waits up to serve_forever's 0.5 s poll.
    threads = [threading.Thread(target=s.shutdown) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in servers:
        s.server_close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if shutil.which("prometheus") is None:
        pytest.fail("Debian's prometheus is not installed: run `make test`, which installs it")
    run = tmp_path_factory.mktemp("scaleout")
    with ExitStack() as stack:
        svc = Service(Config(listen_address="127.0.0.1:0",
                             host_worker=HostWorkerConfig(enabled=False)), environ={})
        svc.start()
        stack.callback(svc.stop)
        assert svc.http is not None
        coord = f"127.0.0.1:{svc.http.port}"

        servers: list[ExporterHTTPServer] = []
        stack.callback(shutdown_all, servers)
        workers = {}
        client = HttpClient(f"http://{coord}")
        for i in range(AGENTS):
            name = f"agent-{i:03d}"
            server = serve_metrics("127.0.0.1:0", store := SnapshotStore())
            servers.append(server)
            server.start_background()
            url = advertise_url("127.0.0.1", server.port)
            assert url is not None
            agent = Agent(AgentSettings(worker=name, pool=("ci", "gpu")[i % 2],
                                        hostname=f"{name}.test", metrics_url=url),
                          client, HostCollector(ps=FakePs(), prime_s=0, cgroup=no_cgroup),
                          None, store=store)
            agent.run_once()  # registers through the API and publishes the agent's /metrics
            assert agent.last_report_ok, name
            workers[name] = f"127.0.0.1:{server.port}"

        receiver = start_receiver()
        stack.callback(receiver.server.server_close)
        stack.callback(receiver.server.shutdown)

        settings = sharding.ShardSettings(
            shards=SHARDS, sd_url=f"http://{coord}/sd", coordinator=coord,
            remote_write_url=receiver.url, scrape_interval="1s", sd_refresh_interval="1s")
        procs, bases = [], []
        for n in range(SHARDS):
            port = free_port()
            cfg = sharding.shard_config(n, settings)
            for job in cfg["scrape_configs"]:  # each shard watches itself on its own port
                if job["job_name"] == "prometheus":
                    job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
            cfg["remote_write"][0]["queue_config"]["batch_send_deadline"] = "1s"
            proc = spawn_prometheus(run / f"shard-{n}", cfg, port, name=f"prometheus shard {n}")
            stack.callback(proc.stop)
            procs.append(proc)
            bases.append(f"http://127.0.0.1:{port}")
        for proc, base in zip(procs, bases, strict=True):
            wait_http_ok(f"{base}/-/ready", proc)

        def alive() -> str | None:
            for p in procs:
                if not p.alive():
                    return f"{p.name} exited; log {p.log_path}:\n{p.log_tail()}"
            return None

        yield Fleet(coord, workers, bases, receiver, alive)


# --- the fleet's tests -------------------------------------------------------------------------
def active_agent_targets(base: str) -> dict[str, dict[str, Any]]:
    """address -> active target of the agents' job on one Prometheus."""
    targets = get_json(f"{base}/api/v1/targets?state=active")["data"]["activeTargets"]
    return {t["discoveredLabels"]["__address__"]: t for t in targets
            if t["scrapePool"] == sharding.AGENTS_JOB}


def test_sd_lists_every_agent_with_its_labels(fleet: Fleet) -> None:
    groups = get_json(f"http://{fleet.coordinator}/sd")
    listed = {g["labels"]["worker"]: g for g in groups}
    assert set(listed) == set(fleet.workers)
    for name, g in listed.items():
        assert g["targets"] == [fleet.workers[name]]
        assert g["labels"]["pool"] in ("ci", "gpu") and g["labels"]["__scheme__"] == "http"


def test_every_agent_is_scraped_by_exactly_one_shard(fleet: Fleet) -> None:
    def probe() -> list[dict[str, dict[str, Any]]]:
        return [active_agent_targets(b) for b in fleet.shards]

    def done(per_shard: list[dict[str, dict[str, Any]]]) -> bool:
        return (sum(map(len, per_shard)) >= AGENTS
                and all(t["health"] == "up" for s in per_shard for t in s.values()))

    per_shard = wait_until(probe, done, fleet.alive)
    addresses = [set(s) for s in per_shard]
    everyone = set(fleet.workers.values())
    assert set().union(*addresses) == everyone
    for i in range(SHARDS):
        for j in range(i + 1, SHARDS):
            assert not addresses[i] & addresses[j], f"shards {i} and {j} share targets"
    # Not degenerate: about a third each (a shard under a sixth is six sigma away).
    assert all(len(a) >= AGENTS // (2 * SHARDS) for a in addresses), list(map(len, addresses))
    # Prometheus' hashmod is the one sharding.shard_of computes, so operators can use it.
    for n, a in enumerate(addresses):
        assert {sharding.shard_of(addr, SHARDS) for addr in a} == {n}
    down = [(addr, t["lastError"]) for s in per_shard for addr, t in s.items()
            if t["health"] != "up"]
    assert not down, down[:5]
    # The agent's identity survives: worker from its own /metrics equals worker from /sd.
    by_address = {addr: name for name, addr in fleet.workers.items()}
    for s in per_shard:
        for addr, t in s.items():
            assert t["labels"]["worker"] == by_address[addr]


def test_each_shard_stores_the_series_of_its_own_agents(fleet: Fleet) -> None:
    owned = [{name for name, addr in fleet.workers.items()
              if sharding.shard_of(addr, SHARDS) == n} for n in range(SHARDS)]

    def probe() -> list[set[str]]:
        return [{r["metric"]["worker"] for r in prometheus_query(
            base, f'drm_worker_info{{job="{sharding.AGENTS_JOB}"}}')} for base in fleet.shards]

    stored = wait_until(probe, lambda got: got == owned, fleet.alive)
    assert stored == owned
    up = [prometheus_query(b, f'count(up{{job="{sharding.AGENTS_JOB}"}} == 1)')
          for b in fleet.shards]
    counts = [int(r[0]["value"][1]) if r else 0 for r in up]
    assert counts == [len(o) for o in owned] and sum(counts) == AGENTS
    for base in fleet.shards:
        # honor_labels: the /sd labels do not push the agent's own aside as exported_*.
        assert not prometheus_query(base, '{exported_worker!=""} or {exported_pool!=""}')
        # ... and series without a worker label still get the target's (pool from /sd).
        for r in prometheus_query(base, 'drm_exporter_collector_success{collector="host"}'):
            assert r["metric"]["worker"] in fleet.workers and r["metric"]["pool"] in ("ci", "gpu")


def test_only_the_first_shard_scrapes_the_coordinator(fleet: Fleet) -> None:
    def probe() -> list[list[dict[str, Any]]]:
        return [prometheus_query(b, f'up{{job="{sharding.COORDINATOR_JOB}"}}')
                for b in fleet.shards]

    ups = wait_until(probe, lambda u: bool(u[sharding.COORDINATOR_SHARD]), fleet.alive)
    for n, result in enumerate(ups):
        if n == sharding.COORDINATOR_SHARD:
            assert [r["value"][1] for r in result] == ["1"]
        else:
            assert result == [], f"shard {n} scrapes the coordinator too"


def test_every_shard_remote_writes_its_agents_with_its_shard_label(fleet: Fleet) -> None:
    def probe() -> dict[str, str]:
        """worker -> shard label of the `up` series received for the agents' job."""
        return {s["worker"]: s[sharding.SHARD_LABEL]
                for w in fleet.receiver.snapshot() for s in w.series
                if s.get("__name__") == "up" and s.get("job") == sharding.AGENTS_JOB}

    got = wait_until(probe, lambda g: len(g) >= AGENTS, fleet.alive)
    assert not fleet.receiver.errors, fleet.receiver.errors[:3]
    assert set(got) == set(fleet.workers)
    for name, shard in got.items():
        assert shard == str(sharding.shard_of(fleet.workers[name], SHARDS)), name
    writes = fleet.receiver.snapshot()
    assert {s[sharding.SHARD_LABEL] for w in writes for s in w.series} == \
        {str(n) for n in range(SHARDS)}
    for w in writes:
        assert w.headers["Content-Encoding"] == "snappy"
        assert w.headers["Content-Type"] == "application/x-protobuf"
        assert w.headers["X-Prometheus-Remote-Write-Version"].startswith("0.1.")
        assert all(s.get("cluster") == "drm" for s in w.series)
