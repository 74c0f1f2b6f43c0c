"""The state file: what the coordinator must not forget across a restart, in SQLite.

The engine writes every change that a `kill -9` must not lose (a worker registered, its spec
changed, deregistered or expired; a reservation made or released; a scaling decision with its
counters, cooldowns and provisioning requests) in one transaction inside its own lock, so the
file never disagrees with memory. Accrued cost changes continuously and is flushed once per
engine tick, so a `kill -9` loses at most one tick of it. Measured usage and heartbeats are not
kept: workers report again, and a restored worker counts as having reported at the restart.

Schema versions live in `PRAGMA user_version`. `MIGRATIONS[n]` turns a version n-1 file into
version n and runs in the same transaction as the version bump, so a failed migration leaves
the file as it was. A file from a newer drm-exporter is refused, never downgraded. docs/state.md
has the tables and the loss bound.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .fleet import STATE_ACTIVE, STATE_DRAINING, WorkerSpec
from .reservations import Reservation

log = logging.getLogger(__name__)

CostKey = tuple[str, str, str, str]  # provider, region, instance_type, pool


class StateError(Exception):
    """The state file cannot be used. `movable` is False when moving the file aside would not
    help (another process holds it, or the path is not a file at all)."""

    def __init__(self, path: Path, reason: str, movable: bool = True) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.movable = path, reason, movable


@dataclass(frozen=True)
class WorkerRecord:
    spec: WorkerSpec
    state: str
    registered_at: float  # unix


@dataclass(frozen=True)
class PoolRecord:
    """A pool's counters and timers. Deadlines and request times are unix seconds: the
    monotonic clock they are kept on in memory starts again with the process."""

    pool: str
    tasks_pending: int = 0
    target_workers: int | None = None
    decisions: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (action, reason)
    workers_changed: Mapping[str, int] = field(default_factory=dict)  # up, down
    last_decision_ts: Mapping[str, float] = field(default_factory=dict)  # action -> unix
    workers_expired: int = 0
    reservations_expired: int = 0
    cooldown_until: Mapping[str, float] = field(default_factory=dict)  # up, down -> unix
    provisioning: tuple[float, ...] = ()  # unix times of open scale-up requests, oldest first


@dataclass(frozen=True)
class State:
    workers: tuple[WorkerRecord, ...] = ()
    reservations: tuple[Reservation, ...] = ()
    cost_usd: Mapping[CostKey, float] = field(default_factory=dict)
    pools: Mapping[str, PoolRecord] = field(default_factory=dict)


# --- schema ------------------------------------------------------------------------------------
def _execute_script(db: sqlite3.Connection, script: str) -> None:
    """Statement by statement: executescript() would COMMIT first and so split the
    migration's transaction."""
    for stmt in script.split(";"):
        if stmt.strip():
            db.execute(stmt)


def _v1_initial(db: sqlite3.Connection) -> None:
    """Version 1, created from an empty file."""
    _execute_script(db, """
        CREATE TABLE workers (
            worker TEXT PRIMARY KEY,
            pool TEXT NOT NULL,
            provider TEXT NOT NULL,
            region TEXT NOT NULL,
            instance_type TEXT NOT NULL,
            hostname TEXT NOT NULL,
            cpu_cores REAL NOT NULL,
            memory_total_bytes INTEGER NOT NULL,
            gpus INTEGER NOT NULL,
            metrics_url TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL CHECK (state IN ('active', 'draining')),
            registered_at REAL NOT NULL
        );
        CREATE TABLE reservations (
            task_id TEXT PRIMARY KEY,
            worker TEXT NOT NULL REFERENCES workers (worker) ON DELETE CASCADE,
            cpu_cores REAL NOT NULL,
            memory_bytes INTEGER NOT NULL,
            gpu_indices TEXT NOT NULL,  -- JSON list of device indices
            created_at REAL NOT NULL
        );
        CREATE INDEX reservations_by_worker ON reservations (worker);
        CREATE TABLE cost (
            provider TEXT NOT NULL,
            region TEXT NOT NULL,
            instance_type TEXT NOT NULL,
            pool TEXT NOT NULL,
            usd REAL NOT NULL,
            PRIMARY KEY (provider, region, instance_type, pool)
        );
        CREATE TABLE pools (
            pool TEXT PRIMARY KEY,
            tasks_pending INTEGER NOT NULL,
            target_workers INTEGER,
            workers_up INTEGER NOT NULL,
            workers_down INTEGER NOT NULL,
            workers_expired INTEGER NOT NULL,
            reservations_expired INTEGER NOT NULL,
            cooldown_up_until REAL NOT NULL,  -- unix
            cooldown_down_until REAL NOT NULL
        );
        CREATE TABLE pool_decisions (
            pool TEXT NOT NULL REFERENCES pools (pool) ON DELETE CASCADE,
            action TEXT NOT NULL,
            reason TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (pool, action, reason)
        );
        CREATE TABLE pool_last_decision (
            pool TEXT NOT NULL REFERENCES pools (pool) ON DELETE CASCADE,
            action TEXT NOT NULL,
            at REAL NOT NULL,  -- unix
            PRIMARY KEY (pool, action)
        );
        CREATE TABLE pool_provisioning (  -- rowid order is request order
            pool TEXT NOT NULL REFERENCES pools (pool) ON DELETE CASCADE,
            requested_at REAL NOT NULL  -- unix
        );
    """)


def _v2_capacity_sources(db: sqlite3.Connection) -> None:
    """Version 2: where a worker's cores and memory size come from (host, cgroup_v1,
    cgroup_v2), so drm_worker_capacity_info survives a restart instead of waiting for the
    worker's next full report."""
    _execute_script(db, """
        ALTER TABLE workers ADD COLUMN cpu_source TEXT NOT NULL DEFAULT '';
        ALTER TABLE workers ADD COLUMN memory_source TEXT NOT NULL DEFAULT ''
    """)


Migration = Callable[[sqlite3.Connection], None]

# Target version -> the step from the version before it. Append, never edit: a released
# migration has already run on someone's file. A step may only use SQL (no engine code), so it
# keeps working when the engine changes.
MIGRATIONS: dict[int, Migration] = {1: _v1_initial, 2: _v2_capacity_sources}
SCHEMA_VERSION = max(MIGRATIONS)


def _describe(e: sqlite3.Error) -> tuple[str, bool]:
    """A reader's account of a SQLite error, and whether moving the file aside would help."""
    msg = str(e)
    if "is not a database" in msg:
        return "not a drm-exporter state file: not a SQLite database (or damaged)", True
    if "malformed" in msg or "corrupt" in msg:
        return f"damaged: {msg}", True
    if "locked" in msg or "busy" in msg:
        return "in use by another process (another drm-exporter on the same file?)", False
    if "readonly" in msg or "read-only" in msg:
        return "cannot write it (read-only file or folder)", False
    if "unable to open" in msg:
        return "cannot open it (permission denied, or the folder is not writable)", False
    return f"SQLite error: {msg}", True


class StateStore:
    """One SQLite connection, used only under the engine's lock (so never by two threads at
    once; check_same_thread is off because HTTP handler threads take turns)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._db = conn
        self._depth = 0
        self._lock = threading.RLock()  # cheap insurance for callers outside the engine

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, migrations: Mapping[int, Migration] = MIGRATIONS) -> StateStore:
        """Open (creating if absent), migrate and load-check the file; StateError names what
        is wrong with it."""
        path = Path(path)
        _precheck(path)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                   timeout=0.2)
        except sqlite3.Error as e:
            reason, movable = _describe(e)
            raise StateError(path, reason, movable) from None
        store = cls(path, conn)
        try:
            store._setup(migrations)
        except sqlite3.Error as e:
            conn.close()
            reason, movable = _describe(e)
            if "no such table" in str(e) or "no such column" in str(e):
                reason = f"wrong schema for its version: {e}"
            raise StateError(path, reason, movable) from None
        except StateError:
            conn.close()
            raise
        except (ValueError, TypeError, KeyError) as e:  # a hand-edited row of the wrong type
            conn.close()
            raise StateError(path, f"invalid content: {type(e).__name__}: {e}") from None
        return store

    def _setup(self, migrations: Mapping[int, Migration]) -> None:
        db, path = self._db, self.path
        # Exclusive: a second drm-exporter on the same file fails at open instead of both
        # writing; it also keeps WAL's index in process memory (no -shm file).
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        # The first read: a file that is not a database fails here, before anything is written.
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        known = max(migrations)
        if version > known:
            raise StateError(path, f"schema version {version} is newer than this drm-exporter "
                             f"knows ({known}); run a newer drm-exporter, or --reset-state to "
                             "move it aside and start empty")
        if version == 0:
            tables = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            if tables:
                raise StateError(path, "not a drm-exporter state file: schema version 0 but it "
                                 f"has tables ({', '.join(tables)})")
        db.execute("PRAGMA foreign_keys = ON")
        # Everything is checked before the first write: a bad file is reported as it was found.
        problems = [r[0] for r in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StateError(path, "damaged: " + "; ".join(problems[:3]))
        if version == known:
            self.load()  # every row must make sense before the engine trusts the file
        for target in range(version + 1, known + 1):
            step = migrations.get(target)
            if step is None:
                raise StateError(path, f"no migration to schema version {target}", False)
            try:
                with self.transaction():
                    step(db)
                    db.execute(f"PRAGMA user_version = {int(target)}")
            except sqlite3.Error as e:
                raise StateError(path, f"migration to schema version {target} failed "
                                 f"(the file is unchanged): {e}") from None
            if version:
                log.info("state file %s: migrated to schema version %d", path, target)
        if version < known:
            self.load()
        # WAL: a commit appends to the log instead of rewriting pages, and a reader never
        # blocks the writer. synchronous=NORMAL: a committed transaction is in the OS page
        # cache before COMMIT returns, so it survives kill -9 of this process (what this file is
        # for); only a power cut or kernel crash can lose the last commits, and never corrupts
        # the file. FULL would add an fsync to every reservation for that case alone.
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StateError(path, f"cannot switch to WAL journaling (got {mode})", False)
        db.execute("PRAGMA synchronous = NORMAL")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Close; the last connection checkpoints the WAL into the file and removes it."""
        with self._lock:
            self._db.close()

    # --- writing -------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together; nested uses join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            finally:
                self._depth = 0

    def put_worker(self, w: WorkerRecord) -> None:
        s = w.spec
        with self.transaction():
            self._db.execute(
                "INSERT INTO workers (worker, pool, provider, region, instance_type, hostname, "
                "cpu_cores, memory_total_bytes, gpus, metrics_url, cpu_source, memory_source, "
                "state, registered_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (worker) DO UPDATE SET "
                "pool = excluded.pool, provider = excluded.provider, region = excluded.region, "
                "instance_type = excluded.instance_type, hostname = excluded.hostname, "
                "cpu_cores = excluded.cpu_cores, memory_total_bytes = "
                "excluded.memory_total_bytes, gpus = excluded.gpus, metrics_url = "
                "excluded.metrics_url, cpu_source = excluded.cpu_source, memory_source = "
                "excluded.memory_source, state = excluded.state",
                (s.worker, s.pool, s.provider, s.region, s.instance_type, s.hostname,
                 s.cpu_cores, s.memory_total_bytes, s.gpus, s.metrics_url, s.cpu_source,
                 s.memory_source, w.state, w.registered_at))

    def delete_worker(self, worker: str) -> None:
        """The worker and (by cascade) its reservations."""
        with self.transaction():
            self._db.execute("DELETE FROM workers WHERE worker = ?", (worker,))

    def put_reservation(self, r: Reservation) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO reservations (task_id, worker, cpu_cores, memory_bytes, "
                "gpu_indices, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (r.task_id, r.worker, r.cpu_cores, r.memory_bytes,
                 json.dumps(list(r.gpu_indices)), r.created_at))

    def delete_reservation(self, task_id: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM reservations WHERE task_id = ?", (task_id,))

    def put_pool(self, p: PoolRecord) -> None:
        """Replace everything kept about the pool."""
        with self.transaction():
            db = self._db
            db.execute("DELETE FROM pools WHERE pool = ?", (p.pool,))
            db.execute(
                "INSERT INTO pools (pool, tasks_pending, target_workers, workers_up, "
                "workers_down, workers_expired, reservations_expired, cooldown_up_until, "
                "cooldown_down_until) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (p.pool, p.tasks_pending, p.target_workers, p.workers_changed.get("up", 0),
                 p.workers_changed.get("down", 0), p.workers_expired, p.reservations_expired,
                 p.cooldown_until.get("up", 0.0), p.cooldown_until.get("down", 0.0)))
            db.executemany("INSERT INTO pool_decisions VALUES (?, ?, ?, ?)",
                           [(p.pool, a, r, n) for (a, r), n in sorted(p.decisions.items())])
            db.executemany("INSERT INTO pool_last_decision VALUES (?, ?, ?)",
                           [(p.pool, a, t) for a, t in sorted(p.last_decision_ts.items())])
            db.executemany("INSERT INTO pool_provisioning VALUES (?, ?)",
                           [(p.pool, t) for t in p.provisioning])

    def put_cost(self, cost: Mapping[CostKey, float]) -> None:
        with self.transaction():
            self._db.executemany(
                "INSERT INTO cost VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider, region, "
                "instance_type, pool) DO UPDATE SET usd = excluded.usd",
                [(*k, v) for k, v in sorted(cost.items())])

    # --- reading -------------------------------------------------------------------------
    def load(self) -> State:
        """Everything, checked: a row that breaks an engine invariant is a StateError."""
        with self._lock:
            return self._load()

    def _load(self) -> State:
        db = self._db
        workers: dict[str, WorkerRecord] = {}
        for row in db.execute(
                "SELECT worker, pool, provider, region, instance_type, hostname, cpu_cores, "
                "memory_total_bytes, gpus, metrics_url, cpu_source, memory_source, state, "
                "registered_at FROM workers ORDER BY worker"):
            try:
                spec = WorkerSpec(*row[:12])
            except (TypeError, ValueError) as e:
                raise StateError(self.path, f"worker {row[0]!r}: {e}") from None
            if row[12] not in (STATE_ACTIVE, STATE_DRAINING):
                raise StateError(self.path, f"worker {row[0]!r}: unknown state {row[12]!r}")
            workers[spec.worker] = WorkerRecord(spec, row[12], float(row[13]))
        reservations = []
        held: dict[str, list[float]] = {w: [0.0, 0.0] for w in workers}
        gpus_held: dict[str, set[int]] = {w: set() for w in workers}
        for task_id, worker, cpu, mem, gpu_json, created in db.execute(
                "SELECT task_id, worker, cpu_cores, memory_bytes, gpu_indices, created_at "
                "FROM reservations ORDER BY created_at, task_id"):
            where = f"reservation {task_id!r}"
            if worker not in workers:
                raise StateError(self.path, f"{where}: unknown worker {worker!r}")
            try:
                gpus = tuple(int(i) for i in json.loads(gpu_json))
            except (ValueError, TypeError):
                raise StateError(self.path, f"{where}: bad gpu_indices {gpu_json!r}") from None
            spec = workers[worker].spec
            if any(not 0 <= i < spec.gpus or i in gpus_held[worker] for i in gpus):
                raise StateError(self.path, f"{where}: GPU {list(gpus)} is not free on "
                                 f"worker {worker!r}")
            gpus_held[worker].update(gpus)
            held[worker][0] += cpu
            held[worker][1] += mem
            if held[worker][0] > spec.cpu_cores + 1e-6 or held[worker][1] > \
                    spec.memory_total_bytes:
                raise StateError(self.path, f"{where}: worker {worker!r} is over capacity")
            reservations.append(Reservation(task_id, worker, float(cpu), int(mem), gpus,
                                            float(created)))
        cost = {(p, r, t, pool): float(usd) for p, r, t, pool, usd in db.execute(
            "SELECT provider, region, instance_type, pool, usd FROM cost")}
        pools: dict[str, dict] = {}
        for row in db.execute(
                "SELECT pool, tasks_pending, target_workers, workers_up, workers_down, "
                "workers_expired, reservations_expired, cooldown_up_until, cooldown_down_until "
                "FROM pools ORDER BY pool"):
            pools[row[0]] = {
                "tasks_pending": int(row[1]),
                "target_workers": None if row[2] is None else int(row[2]),
                "workers_changed": {"up": int(row[3]), "down": int(row[4])},
                "workers_expired": int(row[5]), "reservations_expired": int(row[6]),
                "cooldown_until": {"up": float(row[7]), "down": float(row[8])},
                "decisions": {}, "last_decision_ts": {}, "provisioning": []}
        for pool, action, reason, n in db.execute(
                "SELECT pool, action, reason, count FROM pool_decisions"):
            pools[pool]["decisions"][(action, reason)] = int(n)
        for pool, action, at in db.execute("SELECT pool, action, at FROM pool_last_decision"):
            pools[pool]["last_decision_ts"][action] = float(at)
        for pool, at in db.execute(
                "SELECT pool, requested_at FROM pool_provisioning ORDER BY rowid"):
            pools[pool]["provisioning"].append(float(at))
        return State(tuple(workers.values()), tuple(reservations), cost,
                     {name: PoolRecord(name, **{**p, "provisioning": tuple(p["provisioning"])})
                      for name, p in pools.items()})


def _precheck(path: Path) -> None:
    """What SQLite would report vaguely or not at all: a missing folder, a path that is not a
    file, an empty file (SQLite would take it for a new database: a silent reset)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StateError(path, f"cannot create its folder: {e.strerror}", False) from None
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise StateError(path, f"cannot read it: {e.strerror}", False) from None
    if not path.is_file():
        raise StateError(path, "is not a regular file", False)
    if st.st_size == 0:
        raise StateError(path, "is empty (0 bytes): truncated, or not a state file")
    try:
        with path.open("rb") as f:
            f.read(16)
    except OSError as e:
        raise StateError(path, f"cannot read it: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise StateError(path, "cannot write it: permission denied")


# --- resetting ---------------------------------------------------------------------------------
def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename the file (and its WAL, which must never meet a fresh file of the same name) to
    `<name>.corrupt-<UTC timestamp>`; returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    try:
        for suffix in ("-wal", "-shm", ""):
            side = Path(f"{path}{suffix}")
            if side.exists():
                side.rename(f"{dest}{suffix}")
    except OSError as e:
        raise StateError(path, f"cannot move it aside to {dest}: {e.strerror}", False) from None
    return dest


def open_state(path: Path, reset: bool = False) -> StateStore:
    """Open the state file. With `reset`, a file that cannot be used is moved aside (never
    deleted) and an empty one started; a healthy file is kept either way."""
    try:
        store = StateStore.open(path)
    except StateError as e:
        if not (reset and e.movable):
            raise
        dest = move_aside(Path(path))
        log.warning("state file %s: %s; moved it aside to %s and starting with an empty state",
                    path, e.reason, dest)
        return StateStore.open(path)
    if reset:
        log.info("--reset-state: state file %s is healthy, kept", path)
    return store
