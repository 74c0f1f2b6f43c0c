"""The threshold scaling policy of one pool: a pure function from pool state to a decision.

Signal: for each resource the pool's reserved share of its active capacity (what tasks hold ÷
what workers offer), averaged over the last `evaluation_window_s`. `signal` picks the resource
that drives decisions (default `overall`); `overall` is the bottleneck,
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
    # Which averaged resource drives decisions: cpu, memory, gpu, or overall (the bottleneck).
    signal: str = "overall"
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
        if self.signal not in ("cpu", "memory", "gpu", "overall"):
            raise ValueError(f"signal must be one of cpu, memory, gpu, overall, got "
                             f"{self.signal!r}")
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


def evaluate(pool: str, p: PoolPolicy, s: PoolSignal, trace: list[str] | None = None
             ) -> Decision:
    """The decision for one pool. With `trace`, every rule considered is appended to it with
    the numbers plugged in (`drm-exporter policy explain`); the decision is the same either
    way, so the explanation cannot drift from the policy."""
    n = s.active + s.provisioning
    u = s.utilization.get(p.signal, 0.0)
    pressure = p.pending_threshold > 0 and s.pending >= p.pending_threshold

    def note(line: str) -> None:
        if trace is not None:
            trace.append(line)

    def keep(reason: str) -> Decision:
        return Decision(pool, "maintain", reason, 0, u)

    note(f"below_min: n {n} < min_workers {p.min_workers}? {_yes(n < p.min_workers)}")
    if n < p.min_workers:
        note(f"add min_workers - n = {p.min_workers} - {n} = {p.min_workers - n} "
             "(bounds wait for no cooldown)")
        return Decision(pool, "scale_up", "below_min", p.min_workers - n, u)
    note(f"above_max: n {n} > max_workers {p.max_workers}? {_yes(n > p.max_workers)}")
    if n > p.max_workers:
        note(f"remove min(n - max_workers, active) = min({n - p.max_workers}, {s.active}) = "
             f"{min(n - p.max_workers, s.active)} (bounds wait for no cooldown)")
        return Decision(pool, "scale_down", "above_max", min(n - p.max_workers, s.active), u)
    hot = u >= p.scale_up
    note(f"pending_tasks: p {_num(s.pending)} >= pending_threshold {p.pending_threshold}? "
         f"{_yes(pressure)}" if p.pending_threshold > 0 else
         "pending_tasks: pending_threshold 0, the queue is ignored")
    note(f"high_utilization: {p.signal} {_num(u)} >= scale_up {_num(p.scale_up)}? {_yes(hot)}")
    if pressure or hot:
        note(f"at_max: n {n} >= max_workers {p.max_workers}? {_yes(n >= p.max_workers)}")
        if n >= p.max_workers:
            return keep("at_max")
        note(f"cooldown: scale-up cooldown running? {_yes(s.cooldown_up_active)}")
        if s.cooldown_up_active:
            return keep("cooldown")
        raw = n * (u / p.target - 1.0)
        add = math.ceil(raw - 1e-9) if hot else 0
        if hot:
            note(f"hot count: ceil(n * ({p.signal} / target - 1)) = ceil({n} * ({_num(u)} / "
                 f"{_num(p.target)} - 1)) = ceil({_num(raw)}) = {add}")
        reason = "high_utilization"
        if pressure:
            queue = math.ceil(s.pending / p.tasks_per_worker - 1e-9)
            note(f"queue count: ceil(p / tasks_per_worker) = ceil({_num(s.pending)} / "
                 f"{_num(p.tasks_per_worker)}) = {queue}"
                 + (f", {'>=' if queue >= add else '<'} hot count {add}" if hot else ""))
            if queue >= add:
                add, reason = queue, "pending_tasks"
        count = min(max(1, add), p.max_step, p.max_workers - n)
        note(f"add min(max(1, {add}), max_step {p.max_step}, max_workers - n "
             f"{p.max_workers - n}) = {count}")
        return Decision(pool, "scale_up", reason, count, u)
    cold = u <= p.scale_down
    note(f"low_utilization: {p.signal} {_num(u)} <= scale_down {_num(p.scale_down)}? {_yes(cold)}")
    if cold:
        note(f"at_min: n {n} <= min_workers {p.min_workers}? {_yes(n <= p.min_workers)}")
        if n <= p.min_workers:
            return keep("at_min")
        note(f"cooldown: scale-down cooldown running? {_yes(s.cooldown_down_active)}")
        if s.cooldown_down_active:
            return keep("cooldown")
        desired = max(p.min_workers, math.ceil(n * u / p.target - 1e-9))
        note(f"desired = max(min_workers, ceil(n * {p.signal} / target)) = max({p.min_workers}, "
             f"ceil({n} * {_num(u)} / {_num(p.target)})) = {desired}")
        remove = min(max(1, n - desired), p.max_step, n - p.min_workers, s.active)
        note(f"remove min(max(1, n - desired {n - desired}), max_step {p.max_step}, "
             f"n - min_workers {n - p.min_workers}, active {s.active}) = {remove}")
        if remove < 1:
            return keep("at_min")
        return Decision(pool, "scale_down", "low_utilization", remove, u)
    note("within_band: between the thresholds, the band is the hysteresis")
    return keep("within_band")


def _yes(matched: bool) -> str:
    return "yes" if matched else "no"


def _num(x: float) -> str:
    # Four significant digits: enough that 0.7999 is not shown as 0.80 beside a threshold.
    return f"{x:.4g}"
