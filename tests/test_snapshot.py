"""The snapshot builder's shortcuts (label tuples kept across ticks, GPU rows kept while a
worker's report is unchanged, the per-GPU fast path) never change what is exported: every
snapshot here is compared byte for byte with one built from scratch."""

from __future__ import annotations

import dataclasses
import random

from conftest import GIB, spec

from drm_exporter.engine import Engine
from drm_exporter.exposition import OPENMETRICS, SnapshotStore, format_text
from drm_exporter.fleet import GpuReading, MigReading, Usage
from drm_exporter.snapshot import LabelKeys, _WorkerKeys, build_families


def readings(rng: random.Random, n: int, *, uuid: str = "GPU", down: int | None = None,
             no_power: int | None = None, mig: int | None = None,
             indices: list[int] | None = None) -> tuple[GpuReading, ...]:
    out = []
    for pos, i in enumerate(indices if indices is not None else range(n)):
        out.append(GpuReading(
            index=i, uuid=f"{uuid}-{i}", name="NVIDIA T4", driver_version="550.1",
            mig_mode="enabled" if pos == mig else "disabled", up=pos != down,
            utilization_ratio=rng.randrange(101) / 100, memory_total_bytes=16 * GIB,
            memory_used_bytes=rng.randrange(16) * GIB,
            temperature_celsius=float(rng.randrange(30, 90)),
            power_watts=None if pos == no_power else rng.randrange(70_000) / 1000,
            mig_devices=(MigReading(0, f"MIG-{i}", 5 * GIB, GIB),) if pos == mig else ()))
    return tuple(out)


SHAPES = [{}, {"down": 1}, {"no_power": 0}, {"mig": 2}, {"indices": [0, 2, 3, 5]}]


def test_kept_keys_and_rows_export_exactly_what_a_fresh_build_does() -> None:
    rng = random.Random(11)
    engine = Engine()
    for i in range(12):
        engine.register(spec(f"w{i}", pool="gpu", gpus=6))
    kept = LabelKeys()
    for step in range(30):
        for i in range(12):
            if rng.random() < 0.5:  # about half the fleet reports between two snapshots
                shape = SHAPES[(i + step // 7) % len(SHAPES)]
                engine.report(f"w{i}", Usage(rng.random(), rng.randrange(32) * GIB,
                                             readings(rng, 4, uuid=f"U{step // 10}", **shape)))
        if step % 9 == 4:  # a re-registration with a new spec (new hostname)
            engine.register(dataclasses.replace(spec("w3", pool="gpu", gpus=6),
                                                hostname=f"h{step}"))
        if step % 6 == 2:
            engine.reserve(f"t{step}", 1, GIB, gpus=rng.randrange(1, 3), pool="gpu")
        view = engine.view()
        fresh = format_text(build_families(view, {}), OPENMETRICS)
        assert format_text(build_families(view, {}, keys=kept), OPENMETRICS) == fresh, step


def test_fast_path_equals_the_general_path_and_declines_what_it_cannot_do() -> None:
    rng = random.Random(5)
    plain = readings(rng, 8)
    fast, general = _WorkerKeys(spec("a", gpus=8)), _WorkerKeys(spec("a", gpus=8))
    def norm(rows: list | None) -> list:
        assert rows is not None
        return [(list(k), list(v)) for k, v in rows]
    assert norm(fast._plain_gpu_rows(plain)) == norm(general._gpu_rows(Usage(gpus=plain)))
    # a field some GPU does not report is dropped for that GPU only, in both paths
    gaps = tuple(dataclasses.replace(g, power_watts=None) if g.index == 3 else g for g in plain)
    assert norm(fast._plain_gpu_rows(gaps)) == norm(general._gpu_rows(Usage(gpus=gaps)))
    for shape in SHAPES[1:]:
        if "no_power" in shape:
            continue
        assert fast._plain_gpu_rows(readings(rng, 4, **shape)) is None, shape


def test_a_lazy_store_builds_only_when_read_and_keeps_the_last_good_snapshot() -> None:
    builds: list[int] = []
    fail = False
    engine = Engine()
    engine.register(spec("w1"))

    def source() -> list:
        builds.append(1)
        if fail:
            raise RuntimeError("a bug in a builder")
        return build_families(engine.view(), {})
    store = SnapshotStore(source)
    assert builds == []
    first = store.body(False)
    assert b'worker="w1"' in first and len(builds) == 1
    store.invalidate()
    store.invalidate()
    assert builds == [1]  # invalidating is free; nothing is built until someone reads
    engine.register(spec("w2"))
    assert b'worker="w2"' in store.body(False) and len(builds) == 2
    fail = True
    store.invalidate()
    engine.register(spec("w3"))
    body = store.body(False)  # the build fails: the last good snapshot, not an error
    assert b'worker="w2"' in body and b'worker="w3"' not in body
    fail = False
    store.invalidate()
    assert b'worker="w3"' in store.body(False)


def test_agent_worker_series_can_be_left_to_the_agents() -> None:
    from drm_exporter import metrics as m
    from drm_exporter.config import load_config

    engine = Engine()
    engine.register(dataclasses.replace(spec("agent-1", pool="gpu", gpus=2),
                                        metrics_url="http://10.0.0.5:9848/metrics"),
                    Usage(0.5, GIB, readings(random.Random(1), 2)))
    engine.register(spec("sim-1", pool="gpu", gpus=2),
                    Usage(0.5, GIB, readings(random.Random(2), 2)))
    engine.reserve("t1", 1, GIB, gpus=1, worker="agent-1")

    def workers_by_family(**kw: bool) -> dict[str, set[str]]:
        fams = build_families(engine.view(), {}, **kw)
        return {f.metric.name: {k[0] for k in f.keys} for f in fams
                if f.metric.labels[:1] == ("worker",)}
    both = workers_by_family()
    assert all(ws == {"agent-1", "sim-1"} for ws in both.values()), both
    split = workers_by_family(agent_worker_series=False)
    for name, ws in split.items():
        if name in m.AGENT_WORKER_METRICS:
            assert ws == {"sim-1"}, name  # the agent serves these itself
        else:  # reservations, liveness: only the coordinator knows them
            assert ws == {"agent-1", "sim-1"}, name
    assert {m.WORKER_UP.name, m.WORKER_CPU_ALLOCATED.name, m.GPU_ALLOCATED.name} <= set(split)
    assert m.GPU_UTILIZATION.name in m.AGENT_WORKER_METRICS
    cfg = load_config("metrics: {agent_worker_series: false}\n", "c.yml")
    assert cfg.metrics.agent_worker_series is False


def test_invalidate_never_waits_for_a_build_and_is_not_lost_during_one() -> None:
    import threading
    import time

    started, release = threading.Event(), threading.Event()
    engine = Engine()
    engine.register(spec("w1"))
    builds: list[int] = []

    def slow_source() -> list:
        builds.append(1)
        started.set()
        release.wait(5)  # a scrape formatting a large fleet
        return build_families(engine.view(), {})
    store = SnapshotStore(slow_source)
    reader = threading.Thread(target=store.body, args=(False,))
    reader.start()
    assert started.wait(5)
    engine.register(spec("w2"))
    t0 = time.monotonic()
    store.invalidate()  # the tick loop, while the scrape is still building
    assert time.monotonic() - t0 < 0.5
    release.set()
    reader.join(5)
    # the build that was running when the tick came does not count as fresh
    assert b'worker="w2"' in store.body(False) and len(builds) == 2
