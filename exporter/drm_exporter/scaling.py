"""The threshold scaling policy of one pool: a pure function from pool state to a decision.

Signal: for each resource the pool's reserved share of its active capacity (what tasks hold ÷
what workers offer), averaged over the last `evaluation_window_s`; `overall` is the bottleneck,
the largest of the averaged resources the pool has.
Pending tasks (the coordinator's queue: tasks no worker had room for), averaged over the same
window, are the second input.
Counting rules, with n = active + provisioning workers and p = pending tasks, first match wins:
- n < min_workers → scale up to min ("below_min"); n > max_workers → scale down to max
  ("above_max"). Neither waits for a cooldown: bounds are not a judgement call.
- p ≥ pending_threshold (> 0) → add max(ceil(p / tasks_per_worker), the hot count below), at
  least 1 ("pending_tasks").
- overall ≥ scale_up → add ceil(n · (overall/target − 1)), at least 1 ("high_utilization").
- overall ≤ scale_down and no pending pressure → shrink to max(min, ceil(n · overall/target)),
  removing at least 1 ("low_utilization").
- otherwise "within_band": the band between the thresholds is the hysteresis.
Every add is at most max_step and never past max_workers ("at_max" when already there); every
removal at most max_step and never below min_workers ("at_min"). A wanted change whose
direction's cooldown runs is "cooldown". Cooldowns are per direction and start when a scale
action is decided (that is when the provisioner is told to act).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PoolPolicy:
    scale_up: float = 0.8
    scale_down: float = 0.3
    target: float = 0.7
    cooldown_up_s: float = 300.0
    cooldown_down_s: float = 600.0
    min_workers: int = 1
    max_workers: int = 20
    max_step: int = 4
    evaluation_interval_s: float = 60.0
    # The signal is the mean over this window (the seed DRM's evaluation window), so one
    # task more or less in a small pool does not swing the decision; 0 = the instant value.
    evaluation_window_s: float = 300.0
    pending_threshold: int = 1  # pending tasks that count as pressure; 0 ignores the queue
    tasks_per_worker: float = 4.0  # pending tasks one new worker is expected to absorb

    def __post_init__(self) -> None:
        if not 0.0 < self.scale_down < self.target < self.scale_up <= 1.0:
            raise ValueError("thresholds must satisfy 0 < scale_down < target < scale_up <= 1, "
                             f"got {self.scale_down}, {self.target}, {self.scale_up}")
        if self.min_workers < 0 or self.max_workers < max(1, self.min_workers):
            raise ValueError(f"need 0 <= min_workers <= max_workers and max_workers >= 1, "
                             f"got {self.min_workers}..{self.max_workers}")
        if self.max_step < 1:
            raise ValueError(f"max_step must be >= 1, got {self.max_step}")
        if self.cooldown_up_s < 0 or self.cooldown_down_s < 0:
            raise ValueError("cooldowns must be >= 0")
        if self.evaluation_interval_s <= 0:
            raise ValueError("evaluation_interval_s must be > 0")
        if self.evaluation_window_s < 0:
            raise ValueError("evaluation_window_s must be >= 0")
        if self.pending_threshold < 0:
            raise ValueError("pending_threshold must be >= 0")
        if self.tasks_per_worker <= 0:
            raise ValueError("tasks_per_worker must be > 0")


@dataclass(frozen=True)
class PoolSignal:
    active: int
    provisioning: int
    utilization: dict[str, float]  # resource -> ratio; includes "overall"
    cooldown_up_active: bool
    cooldown_down_active: bool
    pending: float = 0.0  # mean queue length over the evaluation window


@dataclass(frozen=True)
class Decision:
    pool: str
    action: str  # scale_up | scale_down | maintain
    reason: str
    count: int
    utilization: float
    worker_ids: tuple[str, ...] = ()


def evaluate(pool: str, p: PoolPolicy, s: PoolSignal) -> Decision:
    n = s.active + s.provisioning
    u = s.utilization.get("overall", 0.0)
    pressure = p.pending_threshold > 0 and s.pending >= p.pending_threshold

    def keep(reason: str) -> Decision:
        return Decision(pool, "maintain", reason, 0, u)

    if n < p.min_workers:
        return Decision(pool, "scale_up", "below_min", p.min_workers - n, u)
    if n > p.max_workers:
        return Decision(pool, "scale_down", "above_max", min(n - p.max_workers, s.active), u)
    hot = u >= p.scale_up
    if pressure or hot:
        if n >= p.max_workers:
            return keep("at_max")
        if s.cooldown_up_active:
            return keep("cooldown")
        add = math.ceil(n * (u / p.target - 1.0) - 1e-9) if hot else 0
        reason = "high_utilization"
        if pressure and math.ceil(s.pending / p.tasks_per_worker - 1e-9) >= add:
            add, reason = math.ceil(s.pending / p.tasks_per_worker - 1e-9), "pending_tasks"
        return Decision(pool, "scale_up", reason, min(max(1, add), p.max_step, p.max_workers - n),
                        u)
    if u <= p.scale_down:
        if n <= p.min_workers:
            return keep("at_min")
        if s.cooldown_down_active:
            return keep("cooldown")
        desired = max(p.min_workers, math.ceil(n * u / p.target - 1e-9))
        remove = min(max(1, n - desired), p.max_step, n - p.min_workers, s.active)
        if remove < 1:
            return keep("at_min")
        return Decision(pool, "scale_down", "low_utilization", remove, u)
    return keep("within_band")
