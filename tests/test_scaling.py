"""Policy table: exact decisions, counts and reasons for given pool states."""

from __future__ import annotations

import pytest

from drm_exporter import metrics
from drm_exporter.scaling import PoolPolicy, PoolSignal, evaluate

P = PoolPolicy(scale_up=0.8, scale_down=0.3, target=0.7, min_workers=2, max_workers=10,
               max_step=4)


def sig(active: int, u: float, provisioning: int = 0, up_cd: bool = False,
        down_cd: bool = False, pending: int = 0) -> PoolSignal:
    return PoolSignal(active, provisioning, {"cpu": u, "memory": u / 2, "overall": u}, up_cd,
                      down_cd, pending)


@pytest.mark.parametrize(("signal", "action", "reason", "count"), [
    # hot: ceil(4 * (0.9/0.7 - 1)) = ceil(1.143) = 2
    (sig(4, 0.9), "scale_up", "high_utilization", 2),
    # exactly at the threshold counts as hot; ceil(5 * (0.8/0.7 - 1)) = ceil(0.714) = 1
    (sig(5, 0.8), "scale_up", "high_utilization", 1),
    # very hot: ceil(8 * (1.0/0.7 - 1)) = 4, clamped to max - n = 2
    (sig(8, 1.0), "scale_up", "high_utilization", 2),
    # max_step clamps: ceil(6 * 0.4286) = 3 ... ceil(9*...) clamp by step 4 and max: n=6 → 3
    (sig(6, 1.0), "scale_up", "high_utilization", 3),
    # provisioning workers count toward n
    (sig(7, 1.0, provisioning=3), "maintain", "at_max", 0),
    (sig(10, 0.95), "maintain", "at_max", 0),
    (sig(4, 0.9, up_cd=True), "maintain", "cooldown", 0),
    # the down cooldown does not block scaling up (separate cooldowns)
    (sig(4, 0.9, down_cd=True), "scale_up", "high_utilization", 2),
    # cold: desired = max(2, ceil(8 * 0.1/0.7)) = 2 → remove 6, clamped to max_step 4
    (sig(8, 0.1), "scale_down", "low_utilization", 4),
    # cold: desired = ceil(6 * 0.3/0.7) = ceil(2.571) = 3 → remove 3
    (sig(6, 0.3), "scale_down", "low_utilization", 3),
    (sig(2, 0.05), "maintain", "at_min", 0),
    (sig(6, 0.1, down_cd=True), "maintain", "cooldown", 0),
    (sig(5, 0.5), "maintain", "within_band", 0),
    (sig(5, 0.79), "maintain", "within_band", 0),
    (sig(5, 0.31), "maintain", "within_band", 0),
    (sig(0, 0.0), "scale_up", "below_min", 2),
    (sig(1, 0.9, up_cd=True), "scale_up", "below_min", 1),
    (sig(12, 0.5), "scale_down", "above_max", 2),
    # pending pressure in the band: ceil(9 / 4) = 3 workers
    (sig(4, 0.6, pending=9), "scale_up", "pending_tasks", 3),
    # pending and hot: the larger count wins: hot says 2, queue says ceil(2/4) = 1
    (sig(4, 0.9, pending=2), "scale_up", "high_utilization", 2),
    # a big queue is still clamped by max_step
    (sig(4, 0.9, pending=100), "scale_up", "pending_tasks", 4),
    # cold but tasks wait (capacity fragmentation): never scale down under pressure
    (sig(6, 0.1, pending=1), "scale_up", "pending_tasks", 1),
    (sig(10, 0.5, pending=5), "maintain", "at_max", 0),
    (sig(4, 0.5, pending=5, up_cd=True), "maintain", "cooldown", 0),
])
def test_policy_table(signal: PoolSignal, action: str, reason: str, count: int) -> None:
    d = evaluate("cpu", P, signal)
    assert (d.action, d.reason, d.count) == (action, reason, count)
    assert reason in metrics.REASONS_BY_ACTION[action]


def test_no_flapping_inside_the_band() -> None:
    """A signal oscillating between the thresholds never changes the pool."""
    for i in range(200):
        u = 0.55 + 0.24 * (1 if i % 2 else -1) * (i % 7) / 7
        assert evaluate("cpu", P, sig(5, u)).action == "maintain"


def test_queue_can_be_ignored() -> None:
    quiet = PoolPolicy(pending_threshold=0)
    assert evaluate("cpu", quiet, sig(4, 0.5, pending=50)).reason == "within_band"
    assert evaluate("cpu", PoolPolicy(pending_threshold=10), sig(4, 0.5, pending=9)
                    ).reason == "within_band"


@pytest.mark.parametrize("kwargs", [
    {"pending_threshold": -1},
    {"tasks_per_worker": 0},
    {"scale_up": 0.6, "target": 0.7},
    {"scale_down": 0.75},
    {"min_workers": 5, "max_workers": 3},
    {"max_step": 0},
    {"cooldown_up_s": -1},
])
def test_invalid_policy_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PoolPolicy(**kwargs)


def test_every_reason_is_documented_under_one_action() -> None:
    seen = [r for rs in metrics.REASONS_BY_ACTION.values() for r in rs]
    assert sorted(seen) == sorted(metrics.REASONS)


def test_signal_picks_the_resource_that_drives_decisions() -> None:
    s = PoolSignal(4, 0, {"cpu": 0.9, "memory": 0.2, "gpu": 0.5, "overall": 0.9}, False, False)
    assert evaluate("p", PoolPolicy(), s).reason == "high_utilization"
    assert evaluate("p", PoolPolicy(signal="memory", min_workers=1), s).action == "scale_down"
    assert evaluate("p", PoolPolicy(signal="gpu"), s).reason == "within_band"
    with pytest.raises(ValueError, match="signal"):
        PoolPolicy(signal="disk")
