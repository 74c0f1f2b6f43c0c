"""The state file: every persisted field through a fresh engine, the kill -9 image, failed
writes, schema versions and migrations, bad files, graceful shutdown, and `serve` itself
restarted after kill -9 and SIGTERM."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import GIB, spec
from prometheus_client.parser import text_string_to_metric_families

from drm_exporter.client import HttpClient
from drm_exporter.clock import ManualClock
from drm_exporter.config import (
    Config,
    default_state_file,
    load_config,
    load_config_file,
    resolve_state_file,
)
from drm_exporter.engine import Engine, EngineSettings
from drm_exporter.exposition import SnapshotStore
from drm_exporter.fleet import Usage
from drm_exporter.localstack import free_port
from drm_exporter.scaling import PoolPolicy
from drm_exporter.state import MIGRATIONS, SCHEMA_VERSION, StateError, StateStore, open_state
from drm_exporter.web import ExporterHTTPServer

REPO = Path(__file__).resolve().parents[1]
POLICIES = {
    "cpu": PoolPolicy(cooldown_up_s=30, cooldown_down_s=60, evaluation_interval_s=10,
                      evaluation_window_s=0, min_workers=2, max_workers=6, max_step=2),
    # Two workers against a maximum of one: the first evaluation drains one of them.
    "batch": PoolPolicy(cooldown_up_s=30, cooldown_down_s=60, evaluation_interval_s=10,
                        evaluation_window_s=0, min_workers=0, max_workers=1),
}
SETTINGS = EngineSettings(heartbeat_timeout_s=30, worker_expiry_s=60)


def engine_on(path: Path, clock: ManualClock) -> Engine:
    return Engine(POLICIES, SETTINGS, clock=clock, store=StateStore.open(path))


def busy_engine(path: Path, clock: ManualClock) -> Engine:
    """An engine with something in every persisted field."""
    e = engine_on(path, clock)
    e.register(spec("a"))
    e.register(spec("b", gpus=2, instance_type="g4dn.2xlarge"))
    e.register(spec("gone", instance_type="m5.xlarge", cores=4, mem_gib=16))
    e.register(spec("batch-1", pool="batch", instance_type="c5.2xlarge"))
    e.register(spec("batch-2", pool="batch", instance_type="c5.2xlarge"))
    e.reserve("t1", 2, 4 * GIB, worker="a")
    e.reserve("t2", 1, GIB, gpus=1, worker="b")
    e.reserve("t3", 1, GIB, worker="gone")
    e.reserve("t4", 1, GIB, worker="batch-1")
    e.set_tasks_pending("cpu", 9)
    for _ in range(7):  # 70 s: "gone" never reports and expires; the others do
        clock.advance(10)
        for w in ("a", "b", "batch-1", "batch-2"):
            e.report(w, Usage(0.5))
        e.tick()
    return e


def comparable(e: Engine) -> dict[str, Any]:
    v = e.view()
    return {
        "workers": {w.spec.worker: (w.spec, w.state, w.cpu_allocated, w.memory_allocated,
                                    w.gpus_allocated, w.tasks_running, w.registered_at)
                    for w in v.workers},
        "reservations": sorted(e.reservations(), key=lambda r: r.task_id),
        "cost": v.cost_usd,
        "pools": {p.pool: (p.decisions, p.workers_changed, p.last_decision_ts,
                           p.workers_expired, p.reservations_expired, p.tasks_pending,
                           p.target_workers, p.workers_by_state["provisioning"])
                  for p in v.pools},
    }


# --- the engine and the file ---------------------------------------------------------------
def test_every_persisted_field_survives_a_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    e = busy_engine(tmp_path / "s.db", clock)
    before = comparable(e)
    cpu = e._pools["cpu"]
    left = {d: cpu.cooldown_until[d] - clock.monotonic() for d in ("up", "down")}
    # The fixture really exercised every field.
    assert "gone" not in before["workers"] and before["workers"]["batch-2"][1] == "draining"
    pools = before["pools"]
    assert pools["cpu"][3] == 1 and pools["cpu"][4] == 1  # expired worker and reservation
    assert pools["cpu"][1]["up"] > 0 and pools["batch"][1]["down"] >= 1
    assert pools["cpu"][5] == 9 and pools["cpu"][7] > 0 and min(left.values()) > 5
    assert sum(pools["cpu"][0].values()) >= 7 and all(before["cost"].values())
    e.close()
    final_cost = e.view().cost_usd

    downtime = 5.0
    clock2 = ManualClock(start=clock.time() + downtime)  # a new process: mono starts again
    e2 = engine_on(tmp_path / "s.db", clock2)
    after = comparable(e2)
    assert after["workers"] == before["workers"]
    assert after["reservations"] == before["reservations"]
    assert after["pools"] == before["pools"]
    assert after["cost"] == final_cost and all(final_cost[k] >= c for k, c in
                                               before["cost"].items())
    for w in e2.view().workers:  # up for a grace period, with nothing measured yet
        assert w.up and w.last_report == clock2.time() and w.usage == Usage()
    # Cooldowns keep their unix deadline: the downtime counted towards them.
    for d, rem in left.items():
        assert e2._pools["cpu"].cooldown_until[d] - clock2.monotonic() == \
            pytest.approx(rem - downtime, abs=1e-3)
    # The restored engine carries on: counters continue from where they were.
    clock2.advance(10)
    for w in ("a", "b", "batch-1", "batch-2"):
        e2.report(w, Usage(0.5))
    e2.tick()
    cpu2 = next(p for p in e2.view().pools if p.pool == "cpu")
    assert sum(cpu2.decisions.values()) == sum(pools["cpu"][0].values()) + 1
    e2.close()


def test_a_restored_worker_that_never_reports_expires(tmp_path: Path) -> None:
    clock = ManualClock()
    e = engine_on(tmp_path / "s.db", clock)
    e.register(spec("a"))
    e.reserve("t1", 1, GIB)
    e.close()
    clock2 = ManualClock()
    e2 = engine_on(tmp_path / "s.db", clock2)
    clock2.advance(SETTINGS.worker_expiry_s - 1)
    e2.tick()
    assert e2.workers() == ["a"]
    clock2.advance(2)
    e2.tick()
    assert e2.workers() == [] and e2.reservations() == []
    assert next(p for p in e2.view().pools if p.pool == "cpu").reservations_expired == 1
    e2.close()
    assert StateStore.open(tmp_path / "s.db").load().workers == ()


def crash_image(path: Path, to: Path) -> StateStore:
    """What kill -9 leaves: the file and its WAL as they are now, opened elsewhere."""
    to.mkdir(exist_ok=True)
    for suffix in ("", "-wal"):
        if Path(f"{path}{suffix}").exists():
            shutil.copy(f"{path}{suffix}", to / f"s.db{suffix}")
    return StateStore.open(to / "s.db")


def test_kill9_loses_at_most_the_cost_since_the_last_tick(tmp_path: Path) -> None:
    clock = ManualClock()
    e = engine_on(tmp_path / "s.db", clock)
    e.register(spec("a"))
    clock.advance(300)
    e.report("a", Usage())
    e.tick()
    ticked = dict(e.view().cost_usd)
    assert ticked[("aws", "us-east-1", "m5.2xlarge", "cpu")] == pytest.approx(0.384 / 12)
    # Writes that must survive need no tick; cost accrued since the tick is what is lost.
    clock.advance(300)
    e.reserve("t1", 1, GIB)
    e.register(spec("b"))
    e.deregister("b")
    image = crash_image(tmp_path / "s.db", tmp_path / "crash1").load()
    assert [r.task_id for r in image.reservations] == ["t1"]
    assert [w.spec.worker for w in image.workers] == ["a"]
    assert image.cost_usd == ticked
    e.report("a", Usage())
    e.tick()
    image = crash_image(tmp_path / "s.db", tmp_path / "crash2").load()
    assert image.cost_usd == e.view().cost_usd != ticked
    e.close()


def test_close_writes_the_cost_accrued_since_the_last_tick(tmp_path: Path) -> None:
    clock = ManualClock()
    e = engine_on(tmp_path / "s.db", clock)
    e.register(spec("a"))
    e.tick()
    clock.advance(60)  # no tick: only close() can account for this minute
    e.close()
    assert not Path(f"{tmp_path / 's.db'}-wal").exists()  # closed cleanly: WAL checkpointed
    saved = StateStore.open(tmp_path / "s.db").load().cost_usd
    assert saved[("aws", "us-east-1", "m5.2xlarge", "cpu")] == pytest.approx(0.384 / 60)


def test_a_failed_write_leaves_memory_as_the_file_is(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    e = engine_on(tmp_path / "s.db", clock)
    e.register(spec("batch-1", pool="batch"))
    e.register(spec("batch-2", pool="batch"))
    store = e._store
    assert store is not None

    def full(*_: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "put_reservation", full)
    with pytest.raises(sqlite3.OperationalError):
        e.reserve("t1", 1, GIB)
    assert e.reservations() == [] and all(w.cpu_allocated == 0 for w in e.view().workers)
    monkeypatch.setattr(store, "put_pool", full)
    before = comparable(e)
    with pytest.raises(sqlite3.OperationalError):
        e.evaluate_now("batch")  # would drain one worker (above_max)
    with pytest.raises(sqlite3.OperationalError):
        e.set_tasks_pending("batch", 4)
    assert comparable(e) == before
    assert [w.state for w in e.view().workers] == ["active", "active"]
    monkeypatch.undo()
    assert e.evaluate_now("batch").action == "scale_down"
    e.close()
    assert comparable(engine_on(tmp_path / "s.db", ManualClock())) == comparable(e)


# --- schema versions and bad files ---------------------------------------------------------
def test_a_new_file_gets_the_current_schema(tmp_path: Path) -> None:
    s = StateStore.open(tmp_path / "sub" / "s.db")  # the folder is created
    assert s.schema_version == SCHEMA_VERSION == max(MIGRATIONS)
    s.close()
    db = sqlite3.connect(tmp_path / "sub" / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_hand_made_version_0_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size = 4096")
    db.execute("VACUUM")  # a real, empty database file with user_version 0
    db.close()
    assert path.stat().st_size > 0
    s = StateStore.open(path)
    assert s.schema_version == SCHEMA_VERSION and s.load().workers == ()
    s.close()


def _v2_add_note(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE workers ADD COLUMN note TEXT NOT NULL DEFAULT 'migrated'")


def _v2_broken(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE workers ADD COLUMN note TEXT")
    db.execute("this is not SQL")


def test_an_older_schema_is_migrated_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    e = engine_on(path, ManualClock())
    e.register(spec("a"))
    e.reserve("t1", 1, GIB)
    e.close()
    # A step that fails halfway leaves the file exactly as it was.
    nxt = SCHEMA_VERSION + 1
    with pytest.raises(StateError, match=f"migration to schema version {nxt} failed"):
        StateStore.open(path, {**MIGRATIONS, nxt: _v2_broken})
    s = StateStore.open(path)
    assert s.schema_version == SCHEMA_VERSION
    s.close()
    s = StateStore.open(path, {**MIGRATIONS, nxt: _v2_add_note})
    assert s.schema_version == nxt
    state = s.load()
    assert [w.spec.worker for w in state.workers] == ["a"]
    assert [r.task_id for r in state.reservations] == ["t1"]
    s.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT note FROM workers").fetchall() == [("migrated",)]
    db.close()


def test_a_version_1_file_gets_capacity_sources_and_keeps_everything(tmp_path: Path) -> None:
    import dataclasses

    path = tmp_path / "s.db"
    db = sqlite3.connect(path, isolation_level=None)  # what the first release wrote
    db.execute("BEGIN")
    MIGRATIONS[1](db)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO workers (worker, pool, provider, region, instance_type, hostname, "
               "cpu_cores, memory_total_bytes, gpus, metrics_url, state, registered_at) VALUES "
               "('old', 'cpu', 'aws', 'us-east-1', 'm5.2xlarge', 'old.test', 8, 34359738368, "
               "2, '', 'active', 1700000000)")
    db.execute("COMMIT")
    db.close()
    e = engine_on(path, ManualClock())  # this release: migrated on open
    [w] = e.view().workers
    assert (w.spec.worker, w.spec.gpus, w.spec.cpu_source) == ("old", 2, "")
    assert e._store is not None and e._store.schema_version == SCHEMA_VERSION == 2  # noqa: SLF001
    # a worker that reports where its capacity comes from keeps it across a restart
    e.register(dataclasses.replace(spec("box", cores=4), cpu_source="cgroup_v2",
                                   memory_source="cgroup_v2"))
    e.close()
    e = engine_on(path, ManualClock())
    box = e.worker("box")
    assert box is not None
    assert (box.spec.cpu_source, box.spec.memory_source) == ("cgroup_v2", "cgroup_v2")
    e.close()


def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    StateStore.open(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 7")
    db.close()
    data = path.read_bytes()
    with pytest.raises(StateError) as err:
        StateStore.open(path)
    assert str(path) in str(err.value)
    assert (f"schema version 7 is newer than this drm-exporter knows ({SCHEMA_VERSION})"
            in str(err.value))
    assert path.read_bytes() == data


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(path: Path) -> Path:
    e = engine_on(path, ManualClock())
    for i in range(200):
        e.register(spec(f"w{i:03d}", instance_type=f"type-{i}" * 20))
    e.close()
    data = path.read_bytes()
    return _write(path, data[: len(data) // 2])


def _foreign(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE recipes (name TEXT)")
    db.commit()
    db.close()
    return path


def _claims_v1(path: Path) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE workers (worker TEXT)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.commit()
    db.close()
    return path


def _over_capacity(path: Path) -> Path:
    e = engine_on(path, ManualClock())
    e.register(spec("a", cores=8))
    e.reserve("t1", 6, GIB)
    e.reserve("t2", 2, GIB)
    e.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE reservations SET cpu_cores = 4")  # 4 + 4 on a worker now of 6 cores
    db.execute("UPDATE workers SET cpu_cores = 6")
    db.commit()
    db.close()
    return path


@pytest.mark.parametrize("make, message", [
    (lambda p: _write(p, b"not a database, just text\n" * 200), "not a SQLite database"),
    (lambda p: _write(p, b""), "is empty (0 bytes)"),
    (_truncated, "damaged"),
    (_foreign, "not a drm-exporter state file: schema version 0 but it has tables (recipes)"),
    (_claims_v1, "wrong schema for its version"),
    (_over_capacity, "reservation 't2': worker 'a' is over capacity"),
], ids=["garbage", "empty", "truncated", "foreign", "wrong-schema", "over-capacity"])
def test_a_bad_file_is_a_clear_error_and_reset_moves_it_aside(tmp_path: Path, make: Any,
                                                              message: str) -> None:
    path = make(tmp_path / "s.db")
    data = path.read_bytes()
    with pytest.raises(StateError) as err:
        StateStore.open(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert err.value.movable and path.read_bytes() == data  # never a silent reset
    s = open_state(path, reset=True)
    [aside] = tmp_path.glob("s.db.corrupt-*")
    assert aside.read_bytes() == data
    assert s.load().workers == ()
    s.close()


def test_unusable_paths_are_not_moved(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StateError, match="is not a regular file") as err:
        open_state(tmp_path / "dir.db", reset=True)
    assert not err.value.movable
    # A file another process (here: another store) holds is in use, not corrupt.
    held = StateStore.open(tmp_path / "s.db")
    with pytest.raises(StateError, match="in use by another process") as err:
        open_state(tmp_path / "s.db", reset=True)
    assert not err.value.movable and not list(tmp_path.glob("*.corrupt-*"))
    held.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    StateStore.open(path).close()
    path.chmod(0)
    with pytest.raises(StateError, match="permission denied|Permission denied"):
        StateStore.open(path)


def test_a_healthy_file_survives_reset_state(tmp_path: Path) -> None:
    e = engine_on(tmp_path / "s.db", ManualClock())
    e.register(spec("a"))
    e.close()
    s = open_state(tmp_path / "s.db", reset=True)
    assert [w.spec.worker for w in s.load().workers] == ["a"]
    assert not list(tmp_path.glob("*.corrupt-*"))
    s.close()


# --- configuration ---------------------------------------------------------------------------
def test_state_file_key_and_default_location(tmp_path: Path) -> None:
    assert default_state_file({"XDG_STATE_HOME": "/xdg", "HOME": "/h"}) == \
        Path("/xdg/drm-exporter/state.db")
    assert default_state_file({"HOME": "/h"}) == Path("/h/.local/state/drm-exporter/state.db")
    assert default_state_file({"XDG_STATE_HOME": "rel", "HOME": "/h"}) == \
        Path("/h/.local/state/drm-exporter/state.db")
    env = {"HOME": "/h"}
    assert resolve_state_file(Config(), env) == default_state_file(env)
    assert resolve_state_file(load_config('state_file: ""', "x.yml"), env) is None
    cfg_path = tmp_path / "conf" / "c.yml"
    cfg_path.parent.mkdir()
    cfg_path.write_text("state_file: data/state.db\n")
    assert resolve_state_file(load_config_file(cfg_path), env) == \
        tmp_path / "conf" / "data" / "state.db"
    for name in ("deploy/local/demo.yml", "tests/fixtures/integration.yml"):
        assert resolve_state_file(load_config_file(REPO / name), env) is None, name
    assert load_config_file(REPO / "deploy/exporter.yml").state_file == \
        "/var/lib/drm-exporter/state.db"


# --- graceful shutdown of the HTTP server ------------------------------------------------------
class SlowApi:
    def __init__(self) -> None:
        self.entered = threading.Event()

    def handle(self, method: str, path: str, body: Any, query: Any) -> tuple[int, Any]:
        self.entered.set()
        time.sleep(0.6)
        return 200, {"done": True}


def test_drain_finishes_requests_in_flight_and_closes_idle_connections() -> None:
    api = SlowApi()
    srv = ExporterHTTPServer("127.0.0.1", 0, SnapshotStore(), api)  # type: ignore[arg-type]
    srv.start_background()
    idle = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    idle.request("GET", "/healthz")
    assert idle.getresponse().read() == b"ok\n"  # kept alive, now waiting for a next request
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(
        HttpClient(f"http://127.0.0.1:{srv.port}").request("GET", "/api/v1/slow")))
    t.start()
    assert api.entered.wait(5)
    start = time.monotonic()
    srv.drain(timeout_s=5)
    took = time.monotonic() - start
    t.join(5)
    assert got == [{"done": True}]  # the request in flight got its answer
    assert 0.3 < took < 3  # waited for it, and not for the idle keep-alive connection
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/healthz", timeout=2)


# --- serve, killed and restarted -----------------------------------------------------------
SERVE_CONFIG = """\
state_file: state.db
tick_interval_s: {tick}
engine: {{heartbeat_timeout_s: 1, worker_expiry_s: 4}}
host_worker: {{enabled: false}}
collectors: {{host: {{enabled: false}}, gpu: {{enabled: false}}}}
pools:
  cpu: {{min_workers: 3, max_workers: 10, evaluation_interval_s: 0.5, evaluation_window_s: 0,
        cooldown_up_s: 60, cooldown_down_s: 60}}
  batch: {{min_workers: 0, max_workers: 1, evaluation_interval_s: 0.5, evaluation_window_s: 0,
          cooldown_up_s: 60, cooldown_down_s: 60}}
"""


class Serve:
    """`drm-exporter serve` as a child process."""

    def __init__(self, cfg: Path, *extra: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drm_exporter.cli", "serve", "--config", str(cfg),
             "--listen-address", f"127.0.0.1:{self.port}", "--no-host-worker", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, self.proc.communicate()[0]
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve did not answer within 20 s"
                time.sleep(0.05)
        self.client = HttpClient(self.base)

    def metrics(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {tuple(sorted(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name}

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=20)
        return self.proc.returncode, out


VOLATILE = ("up", "last_report", "cpu_utilization_ratio", "memory_used_bytes")


def _fleet(s: Serve) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    workers = {w["worker"]: {k: v for k, v in w.items() if k not in VOLATILE}
               for w in s.client.workers()}
    return workers, sorted(s.client.reservations(), key=lambda r: r["task_id"])


COUNTERS = ("drm_cloud_cost_usd_total", "drm_scaling_decisions_total",
            "drm_scaling_workers_total", "drm_pool_workers_expired_total",
            "drm_pool_reservations_expired_total")


def test_serve_restarts_after_kill9_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(SERVE_CONFIG.format(tick=0.2))
    s = Serve(cfg)
    try:
        c = s.client
        for w, pool, itype in (("cpu-1", "cpu", "m5.2xlarge"), ("cpu-2", "cpu", "m5.2xlarge"),
                               ("gone", "cpu", "m5.xlarge"), ("batch-1", "batch", "c5.2xlarge"),
                               ("batch-2", "batch", "c5.2xlarge")):
            c.put_worker(spec(w, pool=pool, instance_type=itype))
        c.reserve("t1", 2, 4 * GIB, worker="cpu-1")
        c.reserve("t2", 1, GIB, pool="cpu")
        c.reserve("t-gone", 1, GIB, worker="gone")
        c.reserve("t3", 1, GIB, worker="batch-1")
        deadline = time.monotonic() + 15
        while True:  # until "gone" expired, both pools decided, and cost accrued
            for w in ("cpu-1", "cpu-2", "batch-1", "batch-2"):
                c.heartbeat(w)
            m = {name: s.metrics(name) for name in COUNTERS}
            if (sum(m["drm_pool_reservations_expired_total"].values()) >= 1
                    and sum(m["drm_scaling_workers_total"].values()) >= 2):
                break
            assert time.monotonic() < deadline, m
            time.sleep(0.3)
        workers, reservations = _fleet(s)
        assert "gone" not in workers and workers["batch-2"]["state"] == "draining"
        assert [r["task_id"] for r in reservations] == ["t1", "t2", "t3"]
        provisioning = s.metrics("drm_pool_workers")
        before = {name: s.metrics(name) for name in COUNTERS}
        assert all(v > 0 for v in before["drm_cloud_cost_usd_total"].values())
        os.kill(s.proc.pid, signal.SIGKILL)
        s.proc.wait(10)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.communicate()

    s = Serve(cfg)
    try:
        assert _fleet(s) == (workers, reservations)
        assert s.metrics("drm_pool_workers") == provisioning  # incl. the open scale-up request
        after = {name: s.metrics(name) for name in COUNTERS}
        for name in COUNTERS:  # never reset: every series is back, at least as high
            assert set(after[name]) == set(before[name]), name
            for labels, value in before[name].items():
                assert after[name][labels] >= value, (name, labels)
        last_cost = s.metrics("drm_cloud_cost_usd_total")
        rc, out = s.stop(signal.SIGTERM)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert rc == 0, out
    assert not Path(f"{tmp_path / 'state.db'}-wal").exists(), "the file was not closed"
    saved = StateStore.open(tmp_path / "state.db").load()
    assert sorted(w.spec.worker for w in saved.workers) == sorted(workers)
    assert sorted(r.task_id for r in saved.reservations) == ["t1", "t2", "t3"]
    for (p, r, t, pool), usd in saved.cost_usd.items():
        key = (("instance_type", t), ("pool", pool), ("provider", p), ("region", r))
        assert usd >= last_cost[key]


def test_sigterm_writes_the_cost_no_tick_has_written(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(SERVE_CONFIG.format(tick=600))  # no tick during the test
    s = Serve(cfg)
    try:
        s.client.put_worker(spec("cpu-1"))
        time.sleep(0.5)
        rc, out = s.stop(signal.SIGTERM)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert rc == 0, out
    cost = StateStore.open(tmp_path / "state.db").load().cost_usd
    assert cost[("aws", "us-east-1", "m5.2xlarge", "cpu")] > 0


def test_serve_refuses_a_bad_file_with_exit_2_and_reset_state_starts(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(SERVE_CONFIG.format(tick=0.2))
    state = tmp_path / "state.db"
    state.write_bytes(b"garbage " * 512)
    argv = [sys.executable, "-m", "drm_exporter.cli", "serve", "--config", str(cfg),
            "--listen-address", f"127.0.0.1:{free_port()}", "--no-host-worker"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert f"state file {state}: not a drm-exporter state file" in r.stderr
    assert "--reset-state" in r.stderr and state.read_bytes() == b"garbage " * 512
    s = Serve(cfg, "--reset-state")
    try:
        [aside] = tmp_path.glob("state.db.corrupt-*")
        assert aside.read_bytes() == b"garbage " * 512
        assert s.client.workers() == []
        rc, out = s.stop(signal.SIGTERM)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert rc == 0 and f"moved it aside to {aside}" in out, out
    # A file from a newer drm-exporter: exit 2 as well, and the file is left alone.
    db = sqlite3.connect(state)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"schema version {SCHEMA_VERSION + 1} is newer" in r.stderr, \
        r.stderr
