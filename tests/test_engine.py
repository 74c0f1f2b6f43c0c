"""The engine: reservations, scaling over time, cost, liveness."""

from __future__ import annotations

import random

import pytest
from conftest import GIB, spec

from drm_exporter.clock import ManualClock
from drm_exporter.engine import Engine, EngineSettings, UnknownWorker
from drm_exporter.fleet import Usage
from drm_exporter.prices import Price, PriceBook
from drm_exporter.reservations import InsufficientCapacity, ReservationError


def test_best_fit_places_on_the_tightest_worker(engine: Engine) -> None:
    engine.register(spec("big", cores=32, mem_gib=128))
    engine.register(spec("small", cores=4, mem_gib=16))
    assert engine.reserve("t1", 2, 4 * GIB).worker == "small"
    # 4 cores no longer fit on small (2 left): best fit moves to big
    assert engine.reserve("t2", 4, 4 * GIB).worker == "big"


def test_cpu_tasks_avoid_gpu_workers_and_gpus_are_whole(engine: Engine) -> None:
    engine.register(spec("g", cores=8, gpus=2))
    engine.register(spec("c", cores=8))
    assert engine.reserve("cpu-task", 1, GIB).worker == "c"
    a = engine.reserve("a", 1, GIB, gpus=1)
    b = engine.reserve("b", 1, GIB, gpus=1)
    assert (a.worker, b.worker) == ("g", "g")
    assert sorted(a.gpu_indices + b.gpu_indices) == [0, 1]
    with pytest.raises(InsufficientCapacity):
        engine.reserve("c3", 1, GIB, gpus=1)
    engine.release("a")
    assert engine.reserve("c4", 1, GIB, gpus=1).gpu_indices == a.gpu_indices


def test_reservations_never_exceed_capacity(engine: Engine) -> None:
    rng = random.Random(3)
    for i in range(6):
        engine.register(spec(f"w{i}", cores=rng.choice([2, 4, 8]), mem_gib=rng.choice([4, 16]),
                             gpus=rng.choice([0, 1, 2])))
    live: list[str] = []
    refused = 0
    for n in range(2000):
        if live and rng.random() < 0.45:
            engine.release(live.pop(rng.randrange(len(live))))
        else:
            try:
                engine.reserve(f"t{n}", rng.choice([0.5, 1, 2, 4]), rng.randint(1, 6) * GIB,
                               rng.choice([0, 0, 1]))
                live.append(f"t{n}")
            except InsufficientCapacity:
                refused += 1
        for w in engine.view().workers:
            assert w.cpu_allocated <= w.spec.cpu_cores + 1e-9
            assert w.memory_allocated <= w.spec.memory_total_bytes
            assert len(w.gpus_allocated) <= w.spec.gpus
    assert refused > 0 and live  # the walk did hit the limits and did hold tasks


def test_bad_requests_are_refused(engine: Engine) -> None:
    engine.register(spec("w"))
    with pytest.raises(ReservationError):
        engine.reserve("", 1, GIB)
    with pytest.raises(ReservationError):
        engine.reserve("t", -1, GIB)
    with pytest.raises(ReservationError):
        engine.reserve("t", 0, 0)
    engine.reserve("t", 1, GIB)
    with pytest.raises(ReservationError, match="already"):
        engine.reserve("t", 1, GIB)
    with pytest.raises(UnknownWorker):
        engine.reserve("u", 1, GIB, worker="nope")
    with pytest.raises(InsufficientCapacity):
        engine.reserve("v", 9, GIB, worker="w")
    with pytest.raises(ReservationError, match="below what"):
        engine.register(spec("w", cores=0.5))


def test_deregister_releases_and_removes(engine: Engine) -> None:
    engine.register(spec("w"))
    engine.reserve("t", 2, GIB)
    released = engine.deregister("w")
    assert [r.task_id for r in released] == ["t"]
    assert engine.reservations() == []
    assert [w.spec.worker for w in engine.view().workers] == []


def test_scale_up_when_hot_with_cooldown(engine: Engine, clock: ManualClock) -> None:
    for i in range(2):
        engine.register(spec(f"w{i}", cores=4))
    engine.reserve("a", 4, GIB)
    engine.reserve("b", 3.6, GIB)  # 7.6 of 8 cores = 0.95
    clock.advance(10)
    [d] = engine.tick()
    assert (d.action, d.reason, d.count) == ("scale_up", "high_utilization", 1)
    pool = engine.view().pools[0]
    assert pool.workers_by_state["provisioning"] == 1 and pool.target_workers == 3
    # scale up fast, down slow: a scale-up also holds scale-downs for the down cooldown
    assert pool.cooldown_active == {"up": True, "down": True}
    clock.advance(10)
    [d] = engine.tick()
    assert (d.action, d.reason) == ("maintain", "cooldown")
    engine.register(spec("w2", cores=4))  # the requested worker arrives
    assert engine.view().pools[0].workers_by_state["provisioning"] == 0
    engine.reserve("c", 4, GIB)  # 11.6/12 hot again
    clock.advance(10)
    assert engine.tick()[0].reason == "cooldown"  # still within 30 s of the first decision
    clock.advance(10)
    # ceil(3 * (11.6/12 / 0.7 - 1)) = ceil(1.14) = 2
    assert (engine.tick()[0].action, engine.view().pools[0].target_workers) == ("scale_up", 5)
    view = engine.view().pools[0]
    assert view.decisions[("scale_up", "high_utilization")] == 2
    assert view.decisions[("maintain", "cooldown")] == 2
    assert view.workers_changed == {"up": 3, "down": 0}


def test_scale_down_drains_idle_workers_first(engine: Engine, clock: ManualClock) -> None:
    for i in range(4):
        engine.register(spec(f"w{i}"))
    engine.reserve("busy", 1, GIB, worker="w0")
    clock.advance(10)
    [d] = engine.tick()  # 1/32 cores: cold; desired = max(1, ceil(4*0.03/0.7)) = 1 → remove 2
    assert (d.action, d.count) == ("scale_down", 2)
    assert "w0" not in d.worker_ids
    assert set(engine.workers(state="draining")) == set(d.worker_ids)
    assert engine.drained() == sorted(d.worker_ids)
    # draining workers take no new tasks
    for w in d.worker_ids:
        with pytest.raises(InsufficientCapacity):
            engine.reserve("x", 1, GIB, worker=w)


def test_scaling_stays_within_min_and_max(clock: ManualClock) -> None:
    from drm_exporter.scaling import PoolPolicy
    eng = Engine({"cpu": PoolPolicy(min_workers=2, max_workers=3, cooldown_up_s=0,
                                    cooldown_down_s=0, evaluation_interval_s=1,
                                    evaluation_window_s=0)}, clock=clock)
    eng.register(spec("a", cores=1))
    clock.advance(1)
    [d] = eng.tick()
    assert (d.action, d.reason, d.count) == ("scale_up", "below_min", 1)
    eng.register(spec("b", cores=1))
    eng.reserve("t1", 1, GIB)
    eng.reserve("t2", 1, GIB)
    clock.advance(1)
    assert eng.tick()[0].count == 1  # to 3 = max
    eng.register(spec("c", cores=1))
    eng.reserve("t3", 1, GIB)
    clock.advance(1)
    assert eng.tick()[0].reason == "at_max"


def test_cost_accrues_price_times_uptime(clock: ManualClock) -> None:
    prices = PriceBook((Price("aws", "m5.2xlarge", 0.36), Price("aws", "m5.2xlarge", 0.72,
                                                                 region="eu-west-1")))
    eng = Engine({}, EngineSettings(cost_max_gap_s=600, heartbeat_timeout_s=1e6,
                                    worker_expiry_s=1e6), prices, {"aws": 100.0}, clock)
    eng.register(spec("a"))
    eng.register(spec("b", region="eu-west-1"))
    eng.register(spec("c", provider="onprem", instance_type="host"))
    for _ in range(10):
        clock.advance(360)  # 6 minutes, one hour in all
        eng.tick()
    v = eng.view()
    assert v.cost_usd[("aws", "us-east-1", "m5.2xlarge", "cpu")] == pytest.approx(0.36)
    assert v.cost_usd[("aws", "eu-west-1", "m5.2xlarge", "cpu")] == pytest.approx(0.72)
    assert v.unpriced == {("onprem", "host"): 1}
    assert v.prices[("aws", "eu-west-1", "m5.2xlarge", "static")] == 0.72
    assert v.budgets_usd == {"aws": 100.0}
    # a gap longer than the cap (a suspended process) is billed only up to the cap
    clock.advance(3600)
    eng.tick()
    assert eng.view().cost_usd[("aws", "us-east-1", "m5.2xlarge", "cpu")] == pytest.approx(
        0.36 + 0.36 * 600 / 3600)
    # the counter survives the worker's departure
    eng.deregister("a")
    assert ("aws", "us-east-1", "m5.2xlarge", "cpu") in eng.view().cost_usd


def test_worker_goes_down_after_missed_heartbeats(engine: Engine, clock: ManualClock) -> None:
    engine.register(spec("w"))
    clock.advance(29)
    assert engine.view().workers[0].up
    engine.report("w", Usage(0.5, GIB))
    clock.advance(31)
    w = engine.view().workers[0]
    assert not w.up and w.usage.cpu_utilization_ratio == 0.5
    with pytest.raises(UnknownWorker):
        engine.report("ghost", Usage())
    with pytest.raises(ValueError):
        Usage(cpu_utilization_ratio=1.5)


def test_signal_is_the_mean_over_the_window_and_smooths_pending(clock: ManualClock) -> None:
    from drm_exporter.scaling import PoolPolicy
    eng = Engine({"cpu": PoolPolicy(evaluation_interval_s=60, evaluation_window_s=30,
                                    cooldown_up_s=0, min_workers=1)}, clock=clock)
    eng.register(spec("a", cores=10))
    for second in range(60):  # 8 of 10 cores reserved only in the last 10 s
        if second == 50:
            eng.reserve("burst", 8, GIB)
            eng.set_tasks_pending("cpu", 9)
        clock.advance(1)
        decisions = eng.tick()
    [d] = decisions
    # the last 30 samples: 10 at 0.8 and 20 at 0.0 → 0.267, and pending 9 * 10/30 = 3 < 4 tasks
    # per worker still counts as pressure (>= pending_threshold 1): ceil(3 / 4) = 1
    assert eng.view().pools[0].utilization["cpu"] == pytest.approx(10 * 0.8 / 31, abs=0.01)
    assert (d.action, d.reason, d.count) == ("scale_up", "pending_tasks", 1)


def test_a_scale_up_holds_scale_downs_for_the_down_cooldown(clock: ManualClock) -> None:
    from drm_exporter.scaling import PoolPolicy
    eng = Engine({"cpu": PoolPolicy(evaluation_interval_s=10, evaluation_window_s=0,
                                    cooldown_up_s=20, cooldown_down_s=100, min_workers=1)},
                 clock=clock)
    eng.register(spec("a", cores=4))
    eng.register(spec("b", cores=4))
    eng.reserve("t1", 4, GIB)
    eng.reserve("t2", 4, GIB)
    clock.advance(10)
    assert eng.tick()[0].action == "scale_up"
    eng.release("t1")  # the load vanishes right after the scale-up
    eng.release("t2")
    reasons = []
    for _ in range(12):
        clock.advance(10)
        reasons += [d.reason for d in eng.tick()]
    # cold from the second evaluation on, but no scale-down until 100 s after the scale-up
    assert reasons[:8] == ["cooldown"] * 8 and "low_utilization" in reasons[9:]
