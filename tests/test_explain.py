"""`policy explain` and GET /api/v1/pools/{pool}/explain: the exact decision and the reasoning
lines for each kind of state, agreement with the engine's real decision, the command line (text,
JSON, a live coordinator, exit codes) and the API round trip."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import GIB, spec

from drm_exporter.api import Api, ApiError
from drm_exporter.client import HttpClient
from drm_exporter.clock import ManualClock
from drm_exporter.config import Config, HostWorkerConfig
from drm_exporter.engine import Engine
from drm_exporter.explain import PoolState, explain
from drm_exporter.scaling import PoolPolicy, evaluate
from drm_exporter.service import Service

P = PoolPolicy(scale_up=0.8, scale_down=0.3, target=0.7, min_workers=2, max_workers=10,
               max_step=4)


@pytest.mark.parametrize(("state", "decision", "lines", "absent"), [
    pytest.param(
        PoolState(4, {"cpu": 0.9, "memory": 0.45}), ("scale_up", "high_utilization", 2),
        ["n = active + provisioning = 4 + 0 = 4",
         "overall = max(cpu 0.9, memory 0.45) = 0.9",
         "high_utilization: overall 0.9 >= scale_up 0.8? yes",
         "hot count: ceil(n * (overall / target - 1)) = ceil(4 * (0.9 / 0.7 - 1)) = "
         "ceil(1.143) = 2",
         "add min(max(1, 2), max_step 4, max_workers - n 6) = 2"],
        ["low_utilization"], id="hot"),
    pytest.param(
        PoolState(6, {"overall": 0.3}), ("scale_down", "low_utilization", 3),
        ["overall = 0.3 (given)",
         "high_utilization: overall 0.3 >= scale_up 0.8? no",
         "low_utilization: overall 0.3 <= scale_down 0.3? yes",
         "at_min: n 6 <= min_workers 2? no",
         "desired = max(min_workers, ceil(n * overall / target)) = max(2, ceil(6 * 0.3 / 0.7)) "
         "= 3",
         "remove min(max(1, n - desired 3), max_step 4, n - min_workers 4, active 6) = 3"],
        ["within_band"], id="cold"),
    pytest.param(
        PoolState(4, {"overall": 0.6}, pending=9), ("scale_up", "pending_tasks", 3),
        ["p = 9 mean pending tasks",
         "pending_tasks: p 9 >= pending_threshold 1? yes",
         "high_utilization: overall 0.6 >= scale_up 0.8? no",
         "queue count: ceil(p / tasks_per_worker) = ceil(9 / 4) = 3",
         "add min(max(1, 3), max_step 4, max_workers - n 6) = 3"],
        ["hot count"], id="pending"),
    pytest.param(
        PoolState(4, {"overall": 0.9}, pending=2), ("scale_up", "high_utilization", 2),
        ["queue count: ceil(p / tasks_per_worker) = ceil(2 / 4) = 1, < hot count 2"],
        [], id="pending-and-hot"),
    pytest.param(
        PoolState(4, {"overall": 0.9}, cooldown_up=True), ("maintain", "cooldown", 0),
        ["cooldown running: up yes, down no",
         "high_utilization: overall 0.9 >= scale_up 0.8? yes",
         "cooldown: scale-up cooldown running? yes"],
        ["hot count", "add "], id="cooldown-up"),
    pytest.param(
        PoolState(6, {"overall": 0.1}, cooldown_down=True), ("maintain", "cooldown", 0),
        ["low_utilization: overall 0.1 <= scale_down 0.3? yes",
         "cooldown: scale-down cooldown running? yes"],
        ["desired"], id="cooldown-down"),
    pytest.param(
        PoolState(7, {"overall": 1.0}, provisioning=3), ("maintain", "at_max", 0),
        ["n = active + provisioning = 7 + 3 = 10",
         "above_max: n 10 > max_workers 10? no",
         "at_max: n 10 >= max_workers 10? yes"],
        ["cooldown:"], id="at_max"),
    pytest.param(
        PoolState(2, {"overall": 0.05}), ("maintain", "at_min", 0),
        ["at_min: n 2 <= min_workers 2? yes"], [], id="at_min"),
    pytest.param(
        PoolState(5, {"overall": 0.5}), ("maintain", "within_band", 0),
        ["low_utilization: overall 0.5 <= scale_down 0.3? no",
         "within_band: between the thresholds, the band is the hysteresis"], [],
        id="within_band"),
    pytest.param(
        PoolState(1, {"overall": 0.9}, cooldown_up=True), ("scale_up", "below_min", 1),
        ["below_min: n 1 < min_workers 2? yes",
         "add min_workers - n = 2 - 1 = 1 (bounds wait for no cooldown)"],
        ["above_max", "cooldown:"], id="below_min"),
])
def test_decision_and_reasoning(state: PoolState, decision: tuple[str, str, int],
                                lines: list[str], absent: list[str]) -> None:
    e = explain("cpu", P, state)
    assert (e.decision.action, e.decision.reason, e.decision.count) == decision
    for line in lines:
        assert line in e.reasoning, (line, e.reasoning)
    for word in absent:  # the first match wins: later rules are not considered
        assert not any(x.startswith(word) for x in e.rules), (word, e.rules)
    text = e.text()
    assert text.splitlines()[0] == (f"pool cpu: {decision[0]}"
                                    + (f" {decision[2]}" if decision[0] != "maintain" else "")
                                    + f" ({decision[1]})")
    assert all(f"  {line}" in text for line in lines)


def test_explain_is_evaluate() -> None:
    """Over a grid of states the dry run decides exactly what the policy decides."""
    for active, prov, u, pending, up, down in itertools.product(
            (0, 1, 2, 5, 9, 10, 12), (0, 2), (0.0, 0.2, 0.3, 0.5, 0.8, 0.95), (0, 1, 7),
            (False, True), (False, True)):
        state = PoolState(active, {"cpu": u, "memory": u / 2}, prov, pending, up, down)
        assert explain("p", P, state).decision == evaluate("p", P, state.signal()), state


def test_overrides_replace_inputs() -> None:
    base = PoolState(4, {"cpu": 0.5, "memory": 0.2, "overall": 0.5}, 1, 2.0, True, False)
    assert base.overridden().signal() == base.signal()
    assert base.overridden(utilization=0.9).signal().utilization == {"overall": 0.9}
    assert base.overridden(resources={"memory": 0.95}).signal().utilization == {
        "cpu": 0.5, "memory": 0.95, "overall": 0.95}
    s = base.overridden(active=7, pending=0, cooldown_up=False).signal()
    assert (s.active, s.provisioning, s.pending, s.cooldown_up_active) == (7, 1, 0, False)
    with pytest.raises(ValueError, match="utilization cpu must be in"):
        PoolState(1, {"cpu": 1.5})


# --- the command ------------------------------------------------------------------------------
CONFIG = """pools:
  cpu: {scale_up: 0.8, scale_down: 0.3, target: 0.7, min_workers: 2, max_workers: 10,
        max_step: 4}
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drm_exporter.cli", "policy", "explain",
                           *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "drm.yml"
    path.write_text(CONFIG)
    return path


def test_cli_text_and_json(config: Path) -> None:
    p = cli("--config", str(config), "--pool", "cpu", "--workers", "4", "--cpu", "0.9",
            "--memory", "0.45")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "pool cpu: scale_up 2 (high_utilization)"
    assert "  overall = max(cpu 0.9, memory 0.45) = 0.9" in lines
    assert "  add min(max(1, 2), max_step 4, max_workers - n 6) = 2" in lines

    p = cli("--config", str(config), "--pool", "cpu", "--workers", "7", "--provisioning", "3",
            "--utilization", "1", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["decision"] == {"action": "maintain", "reason": "at_max", "count": 0,
                               "utilization": 1.0}
    assert out["state"]["provisioning"] == 3 and out["policy"]["max_workers"] == 10
    assert "at_max: n 10 >= max_workers 10? yes" in out["reasoning"]

    p = cli("--config", str(config), "--pool", "cpu", "--workers", "4", "--utilization",
            "0.9", "--cooldown-up")
    assert p.stdout.splitlines()[0] == "pool cpu: maintain (cooldown)"


@pytest.mark.parametrize(("args", "message"), [
    (["--pool", "gpu", "--workers", "1", "--utilization", "0.5"],
     "unknown pool 'gpu' in {config} (pools with a policy: cpu)"),
    (["--pool", "cpu", "--utilization", "0.5"], "give --workers and --utilization"),
    (["--pool", "cpu", "--workers", "1", "--utilization", "0.5", "--cpu", "0.4"],
     "not both"),
    (["--pool", "cpu", "--workers", "1", "--utilization", "1.5"], "ratio must be in [0, 1]"),
])
def test_cli_refusals_exit_2(config: Path, args: list[str], message: str) -> None:
    p = cli("--config", str(config), *args)
    assert p.returncode == 2, p.stdout
    assert message.format(config=config) in p.stderr


def test_cli_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("pools:\n  cpu: {scale_up: 0.5}\n")
    p = cli("--config", str(bad), "--pool", "cpu", "--workers", "1", "--utilization", "0.5")
    assert p.returncode == 2 and f"{bad}:2: pools.cpu: thresholds must satisfy" in p.stderr


@pytest.fixture
def coordinator():
    # A long evaluation interval: the engine decides nothing while the test looks.
    cfg = Config(listen_address="127.0.0.1:0", tick_interval_s=0.05,
                 host_worker=HostWorkerConfig(enabled=False),
                 pools={"cpu": PoolPolicy(min_workers=2, max_workers=10, max_step=4,
                                          evaluation_interval_s=3600,
                                          evaluation_window_s=0)})
    s = Service(cfg)
    s.start()
    yield s
    s.stop()


def hot_fleet(svc: Service) -> str:
    """Four workers at 7/8 CPU reserved: hot."""
    base = f"http://127.0.0.1:{svc.http.port}"
    c = HttpClient(base)
    for i in range(4):
        c.put_worker(spec(f"w{i}"))
        c.reserve(f"t{i}", 7, GIB, worker=f"w{i}")
    svc.tick()  # samples the signal the next evaluation will use
    return base


def test_cli_takes_state_from_the_coordinator(coordinator: Service, config: Path) -> None:
    base = hot_fleet(coordinator)
    # overall = 7/8 = 0.875: ceil(4 * (0.875 / 0.7 - 1)) = 1
    p = cli("--coordinator", base, "--pool", "cpu")  # the coordinator's own policy
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "pool cpu: scale_up 1 (high_utilization)"
    assert "  overall = max(cpu 0.875, memory 0.03125) = 0.875" in p.stdout.splitlines()
    # Flags override the live state; --config supplies a candidate policy.
    p = cli("--coordinator", base, "--config", str(config), "--pool", "cpu", "--cpu", "0.2",
            "--json")
    out = json.loads(p.stdout)
    assert out["state"]["active"] == 4 and out["state"]["utilization"]["overall"] == 0.2
    assert (out["decision"]["action"], out["decision"]["count"]) == ("scale_down", 2)
    p = cli("--coordinator", base, "--pool", "nope")
    assert p.returncode == 2 and "unknown pool 'nope' at" in p.stderr
    p = cli("--coordinator", "http://127.0.0.1:9", "--pool", "cpu")
    assert p.returncode == 1 and "coordinator unreachable" in p.stderr


# --- the API ------------------------------------------------------------------------------------
def get(base: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_api_round_trip(coordinator: Service) -> None:
    base = hot_fleet(coordinator)
    status, out = get(base, "/api/v1/pools/cpu/explain")
    assert status == 200
    assert out["decision"] == {"action": "scale_up", "reason": "high_utilization", "count": 1,
                               "utilization": 0.875}
    assert "high_utilization: overall 0.875 >= scale_up 0.8? yes" in out["reasoning"]
    assert out["dry_run"] and out["state"]["active"] == 4
    status, out = get(base, "/api/v1/pools/cpu/explain?utilization=0.1&workers=8&pending=0")
    assert (status, out["decision"]["action"], out["decision"]["count"]) == (
        200, "scale_down", 4)
    assert not coordinator.engine.history()  # a dry run: nothing was decided
    for query, field in (("workers=many", "workers"), ("workers=2.5", "workers"),
                         ("utilization=2", "utilization"), ("pending=nan", "pending"),
                         ("bogus=1", "bogus")):
        status, out = get(base, f"/api/v1/pools/cpu/explain?{query}")
        assert (status, out["error"]["field"]) == (400, field), query
    status, out = get(base, "/api/v1/pools/nope/explain")
    assert (status, out["error"]["field"]) == (404, "pool")
    status, doc = get(base, "/api/v1/openapi.json")
    params = doc["paths"]["/api/v1/pools/{pool}/explain"]["get"]["parameters"]
    assert [(x["name"], x["in"]) for x in params] == [
        ("pool", "path"), ("utilization", "query"), ("workers", "query"), ("pending", "query")]


def test_api_explain_matches_the_next_real_decision() -> None:
    clock = ManualClock()
    engine = Engine({"cpu": PoolPolicy(min_workers=1, evaluation_window_s=60,
                                       evaluation_interval_s=3600)}, clock=clock)
    api = Api(engine)
    for i in range(3):
        engine.register(spec(f"w{i}"))
    engine.reserve("t", 6, GIB, worker="w0")
    engine.set_tasks_pending("cpu", 6)
    for _ in range(3):
        engine.tick()
        clock.advance(10)
    engine.set_tasks_pending("cpu", 0)
    engine.tick()  # the pending mean is now 4.5 while the instant count is 0
    _, out = api.handle("GET", "/api/v1/pools/cpu/explain")
    assert "p = 4.5 mean pending tasks" in out["reasoning"]
    real = engine.evaluate_now("cpu")
    assert (out["decision"]["action"], out["decision"]["reason"], out["decision"]["count"]) \
        == (real.action, real.reason, real.count) == ("scale_up", "pending_tasks", 2)
    with pytest.raises(ApiError) as e:
        api.handle("GET", "/api/v1/pools/cpu/explain", query={"workers": "-1"})
    assert e.value.field == "workers"
