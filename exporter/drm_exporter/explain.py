"""Dry runs of the scaling policy: what a pool would decide in a given state, and why.

`explain` runs `scaling.evaluate` itself with a trace, so the reasoning lines are written by the
code that decides and cannot drift from it. Nothing changes: no worker is chosen to drain and no
cooldown starts. Used by `drm-exporter policy explain` and GET /api/v1/pools/{pool}/explain:

    $ drm-exporter policy explain --config my.yml --pool cpu --workers 4 --cpu 0.9 --memory 0.4
    pool cpu: scale_up 2 (high_utilization)
    inputs:
      n = active + provisioning = 4 + 0 = 4
      overall = max(cpu 0.9, memory 0.4) = 0.9
      ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .engine import PoolView
from .scaling import Decision, PoolPolicy, PoolSignal, evaluate


@dataclass(frozen=True)
class PoolState:
    """The policy's inputs. `utilization` holds per-resource ratios, `overall` or both; a
    missing `overall` is the bottleneck of the others, as the engine computes it."""
    active: int
    utilization: Mapping[str, float]
    provisioning: int = 0
    pending: float = 0.0  # mean pending tasks over the evaluation window
    cooldown_up: bool = False
    cooldown_down: bool = False

    def __post_init__(self) -> None:
        if self.active < 0 or self.provisioning < 0 or self.pending < 0:
            raise ValueError("workers, provisioning and pending must be >= 0")
        for r, v in self.utilization.items():
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"utilization {r} must be in [0, 1], got {v:g}")

    @property
    def overall(self) -> float:
        u = self.utilization
        return u["overall"] if "overall" in u else max(u.values(), default=0.0)

    def signal(self) -> PoolSignal:
        return PoolSignal(self.active, self.provisioning,
                          dict(self.utilization, overall=self.overall), self.cooldown_up,
                          self.cooldown_down, self.pending)

    def overridden(self, *, utilization: float | None = None,
                   resources: Mapping[str, float] | None = None, active: int | None = None,
                   provisioning: int | None = None, pending: float | None = None,
                   cooldown_up: bool | None = None, cooldown_down: bool | None = None
                   ) -> PoolState:
        """This state with the given values replaced. An explicit overall `utilization`
        replaces the per-resource values; `resources` replace those named (overall is then
        their bottleneck again)."""
        util: dict[str, float] = {r: v for r, v in self.utilization.items() if r != "overall"}
        if utilization is not None:
            util = {"overall": utilization}
        elif resources:
            util.update(resources)
        elif not util and "overall" in self.utilization:
            util["overall"] = self.utilization["overall"]

        def pick(new: Any, old: Any) -> Any:
            return old if new is None else new

        return PoolState(pick(active, self.active), util, pick(provisioning, self.provisioning),
                         pick(pending, self.pending), pick(cooldown_up, self.cooldown_up),
                         pick(cooldown_down, self.cooldown_down))


@dataclass(frozen=True)
class Explanation:
    pool: str
    policy: PoolPolicy
    state: PoolState
    decision: Decision
    inputs: tuple[str, ...]  # how the formula's inputs come from the state
    rules: tuple[str, ...]  # each rule considered, in order, until the first match

    @property
    def reasoning(self) -> list[str]:
        return [*self.inputs, *self.rules]

    def to_json(self) -> dict[str, Any]:
        d, s = self.decision, self.state
        return {
            "pool": self.pool,
            "decision": {"action": d.action, "reason": d.reason, "count": d.count,
                         "utilization": d.utilization},
            "state": {"active": s.active, "provisioning": s.provisioning,
                      "utilization": dict(s.signal().utilization), "pending": s.pending,
                      "cooldown_up": s.cooldown_up, "cooldown_down": s.cooldown_down},
            "policy": dataclasses.asdict(self.policy),
            "reasoning": self.reasoning,
            "dry_run": True,
        }

    def text(self) -> str:
        d, p = self.decision, self.policy
        head = f"pool {self.pool}: {d.action}" + (f" {d.count}" if d.action != "maintain"
                                                   else "") + f" ({d.reason})"
        policy = ", ".join(f"{k} {_num(getattr(p, k))}" for k in (
            "scale_up", "target", "scale_down", "min_workers", "max_workers", "max_step",
            "pending_threshold", "tasks_per_worker"))
        return "\n".join([head, "inputs:", *(f"  {x}" for x in self.inputs),
                          "rules (first match wins):", *(f"  {x}" for x in self.rules),
                          f"policy: {policy}",
                          "dry run: no worker chosen, no cooldown started", ""])


def explain(pool: str, policy: PoolPolicy, state: PoolState) -> Explanation:
    s = state.signal()
    resources = {r: v for r, v in s.utilization.items() if r != "overall"}
    inputs = [f"n = active + provisioning = {s.active} + {s.provisioning} = "
              f"{s.active + s.provisioning}"]
    overall = s.utilization["overall"]
    if resources and overall == max(resources.values()):
        parts = ", ".join(f"{r} {_num(v)}" for r, v in resources.items())
        inputs.append(f"overall = max({parts}) = {_num(overall)}")
    else:
        inputs.append(f"overall = {_num(overall)} (given)")
    inputs.append(f"p = {_num(s.pending)} mean pending tasks")
    inputs.append(f"cooldown running: up {_yes(s.cooldown_up_active)}, "
                  f"down {_yes(s.cooldown_down_active)}")
    rules: list[str] = []
    decision = evaluate(pool, policy, s, rules)
    return Explanation(pool, policy, state, decision, tuple(inputs), tuple(rules))


def state_from_view(v: PoolView) -> PoolState:
    """The engine's current state of a pool: the smoothed signal the next evaluation uses."""
    return PoolState(v.workers_by_state.get("active", 0), dict(v.utilization),
                     v.workers_by_state.get("provisioning", 0), v.tasks_pending_mean,
                     v.cooldown_active["up"], v.cooldown_active["down"])


def state_from_json(p: Mapping[str, Any]) -> PoolState:
    """A pool of GET /api/v1/pools as a state."""
    workers = p.get("workers") or {}
    cooldown = p.get("cooldown_active") or {}
    return PoolState(int(workers.get("active", 0)), dict(p.get("utilization") or {}),
                     int(workers.get("provisioning", 0)),
                     float(p.get("tasks_pending_mean", p.get("tasks_pending", 0))),
                     bool(cooldown.get("up", False)), bool(cooldown.get("down", False)))


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def _num(x: float) -> str:
    return f"{x:.4g}"


# --- the command ----------------------------------------------------------------------------
def _ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a ratio: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1]: {text!r}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


def _pending(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return v


def _fail(msg: str, code: int = 2) -> int:
    print(f"drm-exporter policy explain: {msg}", file=sys.stderr)
    return code


def _policy_explain(args: argparse.Namespace) -> int:
    from .api import ApiError
    from .client import CoordinatorUnreachable, HttpClient
    from .config import load_config_file
    from .simulator import POOL_SHAPES

    if args.config is None and args.coordinator is None:
        return _fail("give --config FILE (the policy), --coordinator URL, or both")
    resources = {r: v for r, v in (("cpu", args.cpu), ("memory", args.memory),
                                   ("gpu", args.gpu)) if v is not None}
    if args.utilization is not None and resources:
        return _fail("give --utilization (the overall signal) or --cpu/--memory/--gpu, "
                     "not both")
    policy: PoolPolicy | None = None
    if args.config is not None:
        cfg = load_config_file(args.config)  # ConfigError: exit 2 in cli.main
        policies = dict(cfg.pools)
        if cfg.simulator.enabled:  # serve runs the simulated pools with the default policy
            for name in POOL_SHAPES:
                policies.setdefault(name, PoolPolicy())
        policy = policies.get(args.pool)
        if policy is None:
            return _fail(f"unknown pool {args.pool!r} in {args.config} (pools with a policy: "
                         f"{', '.join(sorted(policies)) or 'none'})")
    overrides = {"utilization": args.utilization, "resources": resources,
                 "active": args.workers, "provisioning": args.provisioning,
                 "pending": args.pending, "cooldown_up": args.cooldown_up,
                 "cooldown_down": args.cooldown_down}
    if args.coordinator:
        try:
            pools = HttpClient(args.coordinator).pools()
        except CoordinatorUnreachable as e:
            return _fail(f"coordinator unreachable: {e}", 1)
        except ApiError as e:  # a wrong URL, basic auth
            return _fail(f"coordinator refused GET /api/v1/pools: HTTP {e.status} "
                         f"{e.message}", 1)
        found = next((p for p in pools if p.get("pool") == args.pool), None)
        if found is None:
            return _fail(f"unknown pool {args.pool!r} at {args.coordinator} (pools: "
                         f"{', '.join(sorted(p['pool'] for p in pools)) or 'none'})")
        if policy is None:
            if not found.get("policy"):
                return _fail(f"pool {args.pool!r} has no scaling policy at {args.coordinator}")
            known = {f.name for f in dataclasses.fields(PoolPolicy)}
            if not known <= set(found["policy"]):
                return _fail("the coordinator does not report the whole policy; pass --config")
            policy = PoolPolicy(**{k: v for k, v in found["policy"].items() if k in known})
        state = state_from_json(found).overridden(**overrides)
    else:
        if args.workers is None or (args.utilization is None and not resources):
            return _fail("without --coordinator, give --workers and --utilization (or --cpu, "
                         "--memory, --gpu)")
        state = PoolState(args.workers, {}).overridden(**overrides)
    assert policy is not None
    result = explain(args.pool, policy, state)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.text(), end="")
    return 0


def add_policy_parser(sub: argparse._SubParsersAction) -> None:
    pol = sub.add_parser("policy", help="inspect the scaling policy",
                         description="Inspect the scaling policy without changing anything.")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    e = psub.add_parser(
        "explain", help="what a pool would decide in a given state, and why",
        description="Dry-run one pool's scaling policy: the decision and every rule considered "
        "with the numbers plugged in. The state comes from the flags, or from a running "
        "coordinator (--coordinator) with the flags overriding it; the policy from --config, "
        "else from the coordinator. Exit 2 for an unknown pool.")
    e.add_argument("--config", type=Path, help="YAML config holding the pool's policy")
    e.add_argument("--pool", required=True, help="pool name")
    e.add_argument("--coordinator", metavar="URL",
                   help="take the current state (and, without --config, the policy) from this "
                   "coordinator's GET /api/v1/pools, e.g. http://127.0.0.1:9847")
    e.add_argument("--utilization", type=_ratio, metavar="RATIO",
                   help="overall signal (the bottleneck), 0..1; or give per resource:")
    e.add_argument("--cpu", type=_ratio, metavar="RATIO", help="CPU reserved share, 0..1")
    e.add_argument("--memory", type=_ratio, metavar="RATIO", help="memory reserved share, 0..1")
    e.add_argument("--gpu", type=_ratio, metavar="RATIO", help="GPU reserved share, 0..1")
    e.add_argument("--workers", type=_count, metavar="N", help="active workers")
    e.add_argument("--provisioning", type=_count, metavar="N",
                   help="workers requested but not registered yet (default 0)")
    e.add_argument("--pending", type=_pending, metavar="N",
                   help="mean pending tasks over the evaluation window (default 0)")
    e.add_argument("--cooldown-up", action=argparse.BooleanOptionalAction, default=None,
                   help="the scale-up cooldown is running (default off, or the coordinator's)")
    e.add_argument("--cooldown-down", action=argparse.BooleanOptionalAction, default=None,
                   help="the scale-down cooldown is running (default off, or the "
                   "coordinator's)")
    e.add_argument("--json", action="store_true", help="print JSON instead of text")
    e.set_defaults(fn=_policy_explain)
