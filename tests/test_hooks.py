"""Decision hooks against a real HTTP receiver on 127.0.0.1 and real commands: the exact
payload, retries with backoff, failures and drops counted, secrets kept out of logs, and a
scaling loop that keeps its schedule whatever the receiver does."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import GIB, spec

from drm_exporter import metrics
from drm_exporter.clock import ManualClock
from drm_exporter.config import Config, ConfigError, HostWorkerConfig, load_config
from drm_exporter.hooks import HookConfig, HookDispatcher
from drm_exporter.scaling import Decision, PoolPolicy
from drm_exporter.service import Service
from drm_exporter.snapshot import build_families

SECRET = "Bearer s3cr3t-token"


class Receiver:
    """A provisioner stand-in: records every POST, then answers `status` after `delay_s`
    (and after `gate` opens, when one is given)."""

    def __init__(self, status: int = 200, delay_s: float = 0.0,
                 gate: threading.Event | None = None) -> None:
        self.status, self.delay_s, self.gate = status, delay_s, gate
        self.requests: list[tuple[float, dict[str, str], dict]] = []
        self.arrived = threading.Semaphore(0)
        rx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rx.requests.append((time.monotonic(), dict(self.headers), body))
                rx.arrived.release()
                if rx.gate is not None:
                    rx.gate.wait(10)
                time.sleep(rx.delay_s)
                try:
                    self.send_response(rx.status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:  # the client timed out and hung up
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/scale?key=in-the-url"

    def close(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[type[Receiver]]:
    made: list[Receiver] = []

    def make(*args: object, **kwargs: object) -> Receiver:
        r = Receiver(*args, **kwargs)  # type: ignore[arg-type]
        made.append(r)
        return r

    yield make  # type: ignore[misc]
    for r in made:
        r.close()


@pytest.fixture
def dispatchers() -> Iterator[list[HookDispatcher]]:
    made: list[HookDispatcher] = []
    yield made
    for d in made:
        d.stop()


def dispatcher(made: list[HookDispatcher], hook: HookConfig, clock: ManualClock | None = None
               ) -> HookDispatcher:
    d = HookDispatcher({"cpu": hook}, clock or ManualClock())
    made.append(d)
    return d


def down(count: int = 2, workers: tuple[str, ...] = ("w7", "w3")) -> Decision:
    return Decision("cpu", "scale_down", "low_utilization", count, 0.21, workers)


def counts(d: HookDispatcher) -> tuple[dict[str, int], int]:
    c = d.counts()["cpu"]
    return c.deliveries, c.attempts


def test_success_delivers_the_exact_payload(receiver, dispatchers) -> None:
    rx = receiver()
    clock = ManualClock(1_733_218_800.0)
    d = dispatcher(dispatchers, HookConfig(url=rx.url, headers={"Authorization": SECRET}),
                   clock)
    assert counts(d) == ({"ok": 0, "failed": 0, "dropped": 0}, 0)  # there before any decision
    d.submit([Decision("cpu", "maintain", "within_band", 0, 0.5),  # never delivered
              Decision("gpu", "scale_up", "high_utilization", 1, 0.9),  # no hook for gpu
              down()])
    assert d.wait_idle(5)
    [(_, headers, body)] = rx.requests
    decision_id = body.pop("decision_id")
    assert body == {"pool": "cpu", "action": "scale_down", "reason": "low_utilization",
                    "count": 2, "workers": ["w7", "w3"], "utilization": 0.21,
                    "timestamp": 1_733_218_800.0}
    assert len(decision_id) == 32 and int(decision_id, 16) >= 0
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == SECRET
    assert headers["User-Agent"].startswith("drm-exporter/")
    assert counts(d) == ({"ok": 1, "failed": 0, "dropped": 0}, 1)


def test_failing_receiver_is_retried_with_backoff_then_counted_failed(
        receiver, dispatchers, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="drm_exporter")
    rx = receiver(status=500)
    d = dispatcher(dispatchers, HookConfig(url=rx.url, retries=2, backoff_s=0.1,
                                           headers={"Authorization": SECRET}))
    d.submit([down()])
    assert d.wait_idle(5)
    assert counts(d) == ({"ok": 0, "failed": 1, "dropped": 0}, 3)
    times = [t for t, _, _ in rx.requests]
    ids = {b["decision_id"] for _, _, b in rx.requests}
    assert len(times) == 3 and len(ids) == 1  # one decision, one id: the receiver can dedupe
    assert times[1] - times[0] >= 0.1 and times[2] - times[1] >= 0.2  # backoff doubles
    assert "HTTP 500" in caplog.text and "/scale" in caplog.text
    # Never the header value, nor the URL's query (either may hold a token).
    assert SECRET not in caplog.text and "in-the-url" not in caplog.text
    assert "s3cr3t" not in repr(d.counts()) + repr(HookConfig(url=rx.url,
                                                             headers={"X-Token": SECRET}))


def hot_service(hooks: dict[str, HookConfig], clock: ManualClock) -> Service:
    """No HTTP, no simulator: a pool at 94 % CPU that scales up once, then waits on its
    cooldown, ticked by hand on a manual clock."""
    policy = PoolPolicy(evaluation_interval_s=1, evaluation_window_s=0, cooldown_up_s=1000,
                        min_workers=1, max_workers=10)
    svc = Service(Config(host_worker=HostWorkerConfig(enabled=False), pools={"cpu": policy},
                         hooks=hooks), clock=clock)
    for w in ("w1", "w2"):
        svc.engine.register(spec(w))
        svc.engine.reserve(f"t-{w}", 7.5, GIB, worker=w)
    return svc


def test_slow_receiver_times_out_and_the_loop_keeps_its_schedule(receiver) -> None:
    rx = receiver(delay_s=1.0)
    clock = ManualClock()
    svc = hot_service({"cpu": HookConfig(url=rx.url, timeout_s=0.2, retries=2,
                                         backoff_s=0.05)}, clock)
    try:
        durations = []
        decisions = 0
        for _ in range(30):
            clock.advance(1)
            t0 = time.perf_counter()
            svc.tick()
            durations.append(time.perf_counter() - t0)
            decisions += sum(1 for h in svc.engine.history() if h.timestamp == clock.time()
                             and h.decision.action != "maintain")
        assert decisions == 1  # one scale-up, then the up cooldown
        assert rx.arrived.acquire(timeout=5)  # the hook is busy with the slow receiver ...
        # ... while every tick took what a tick takes: no tick waited for it.
        assert max(durations) < 0.1, durations
        t0 = time.monotonic()
        assert svc.hooks.wait_idle(10)
        # three attempts of 0.2 s each, with 0.05 s and 0.1 s between them
        assert time.monotonic() - t0 >= 0.3
        assert counts(svc.hooks) == ({"ok": 0, "failed": 1, "dropped": 0}, 3)
        assert len(rx.requests) == 3
    finally:
        svc.stop()


def test_counters_exported_from_zero_for_pools_with_hooks(receiver) -> None:
    rx = receiver()
    clock = ManualClock()
    svc = hot_service({"cpu": HookConfig(url=rx.url)}, clock)

    def samples() -> dict[tuple[str, ...], float]:
        fams = {f.metric.name: f for f in build_families(svc.engine.view(), {},
                                                         svc.hooks.counts())}
        return {(name, *labels): v for name in (metrics.SCALING_HOOK_DELIVERIES.name,
                                                  metrics.SCALING_HOOK_ATTEMPTS.name)
                for labels, v in fams[name].samples}

    try:
        zero = {(metrics.SCALING_HOOK_DELIVERIES.name, "cpu", o): 0.0
                for o in metrics.HOOK_OUTCOMES}
        zero[(metrics.SCALING_HOOK_ATTEMPTS.name, "cpu")] = 0.0
        assert samples() == zero
        clock.advance(1)
        svc.tick()
        assert svc.hooks.wait_idle(5)
        assert samples() == zero | {(metrics.SCALING_HOOK_DELIVERIES.name, "cpu", "ok"): 1.0,
                                    (metrics.SCALING_HOOK_ATTEMPTS.name, "cpu"): 1.0}
        assert rx.requests[0][2]["action"] == "scale_up"
    finally:
        svc.stop()
    # No hooks, no hook families.
    plain = Service(Config(host_worker=HostWorkerConfig(enabled=False)))
    names = {f.metric.name for f in build_families(plain.engine.view(), {}, plain.hooks.counts())}
    assert metrics.SCALING_HOOK_DELIVERIES.name not in names


WRITE_STDIN = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_bytes(sys.stdin.buffer.read())"


def test_command_hook_gets_the_payload_on_stdin(tmp_path: Path, dispatchers) -> None:
    script = tmp_path / "provision.py"
    script.write_text(WRITE_STDIN + "\n")
    out = tmp_path / "decision.json"
    d = dispatcher(dispatchers, HookConfig(command=(sys.executable, str(script), str(out))),
                   ManualClock(1_700_000_123.0))
    d.submit([down(1, ("w9",))])
    assert d.wait_idle(10)
    body = json.loads(out.read_text())
    assert {k: v for k, v in body.items() if k != "decision_id"} == {
        "pool": "cpu", "action": "scale_down", "reason": "low_utilization", "count": 1,
        "workers": ["w9"], "utilization": 0.21, "timestamp": 1_700_000_123.0}
    assert counts(d) == ({"ok": 1, "failed": 0, "dropped": 0}, 1)


def test_command_hook_failures_exit_status_and_timeout(dispatchers, caplog) -> None:
    fails = dispatcher(dispatchers, HookConfig(
        command=(sys.executable, "-c", "import sys; sys.stderr.write('no capacity\\n'); "
                 "sys.exit(3)"), retries=1, backoff_s=0))
    fails.submit([down()])
    assert fails.wait_idle(10)
    assert counts(fails) == ({"ok": 0, "failed": 1, "dropped": 0}, 2)
    assert "exit status 3: no capacity" in caplog.text

    # A command that hangs is killed after timeout_s, along with what it started.
    hangs = dispatcher(dispatchers, HookConfig(
        command=("/bin/sh", "-c", f"{sys.executable} -c 'import time; time.sleep(30)'"),
        timeout_s=0.3, retries=0))
    t0 = time.monotonic()
    hangs.submit([down()])
    assert hangs.wait_idle(10)
    assert time.monotonic() - t0 < 3
    assert counts(hangs) == ({"ok": 0, "failed": 1, "dropped": 0}, 1)
    assert "killed after 0.3 s" in caplog.text


def test_full_queue_drops_the_oldest_and_counts_it(receiver, dispatchers) -> None:
    gate = threading.Event()
    rx = receiver(gate=gate)
    d = dispatcher(dispatchers, HookConfig(url=rx.url, queue_size=2))
    d.submit([down(1)])
    assert rx.arrived.acquire(timeout=5)  # decision 1 is in flight, held by the receiver
    d.submit([down(n) for n in (2, 3, 4, 5)])  # the queue holds two: 2 and 3 make way
    assert counts(d)[0] == {"ok": 0, "failed": 0, "dropped": 2}
    gate.set()
    assert d.wait_idle(5)
    assert [b["count"] for _, _, b in rx.requests] == [1, 4, 5]
    assert counts(d) == ({"ok": 3, "failed": 0, "dropped": 2}, 3)


def test_stop_ends_the_threads_without_waiting_for_retries(receiver) -> None:
    rx = receiver(status=503)
    d = HookDispatcher({"cpu": HookConfig(url=rx.url, retries=5, backoff_s=30)},
                       ManualClock())
    d.submit([down()])
    assert rx.arrived.acquire(timeout=5)
    t0 = time.monotonic()
    d.stop()  # the first attempt failed; the 30 s backoff is cut short
    assert time.monotonic() - t0 < 2
    assert not any(t.name == "hook-cpu" and t.is_alive() for t in threading.enumerate())
    d.submit([down()])  # after stop: ignored, no thread starts
    assert len(rx.requests) == 1 and d.counts()["cpu"].deliveries["failed"] == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("pools: {cpu: {}}\nhooks:\n  cpu:\n    url: ftp://x\n",
     "x.yml:4: hooks.cpu.url: url must be http:// or https://"),
    ("pools: {cpu: {}}\nhooks:\n  cpu:\n    url: http://x\n    command: [/bin/true]\n",
     "x.yml:4: hooks.cpu.url: url and command are exclusive"),
    ("pools: {cpu: {}}\nhooks:\n  cpu: {timeout_s: 5}\n",
     "x.yml:3: hooks.cpu: exactly one of url or command is required"),
    ("pools: {cpu: {}}\nhooks:\n  cpu:\n", "x.yml:3: hooks.cpu: exactly one of url or command"),
    ("pools: {cpu: {}}\nhooks:\n  cpu:\n    command: [/bin/true]\n    retries: -1\n",
     "x.yml:5: hooks.cpu.retries: retries must be in [0, 20]"),
    ("pools: {cpu: {}}\nhooks:\n  cpu:\n    url: http://x\n    timeout_s: 0\n",
     "x.yml:5: hooks.cpu.timeout_s: timeout_s must be in (0, 3600]"),
    ("pools: {cpu: {}}\nhooks:\n  cpu:\n    command: /bin/true\n",
     "x.yml:4: hooks.cpu.command: expected a list"),
    ("pools: {cpu: {}}\nhooks:\n  cpu:\n    command: [/bin/true]\n    headers: {A: b}\n",
     "x.yml:5: hooks.cpu.headers: headers apply to url hooks only"),
    ("pools: {cpu: {}}\nhooks:\n  cpu:\n    url: http://x\n    headers: {X-Token: \"a\\nb\"}\n",
     "x.yml:5: hooks.cpu.headers: headers value of 'X-Token' holds a line break"),
    ("pools: {cpu: {}}\nhooks:\n  cpux: {url: http://x}\n",
     "x.yml:3: hooks.cpux: pool 'cpux' has no scaling policy (known: cpu)"),
])
def test_config_errors_name_key_and_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(text, "x.yml")
    assert str(e.value).startswith(expected), str(e.value)
    assert "s3cr3t" not in str(e.value)


def test_config_hooks_load() -> None:
    cfg = load_config("pools: {cpu: {}}\nsimulator: {enabled: true}\nhooks:\n"
                      "  cpu: {url: 'https://p.example/scale', headers: {Authorization: x}}\n"
                      "  gpu: {command: [/usr/local/bin/scale, --pool, gpu], timeout_s: 2}\n",
                      "x.yml")
    assert cfg.hooks["cpu"].url == "https://p.example/scale"
    assert cfg.hooks["cpu"].headers == {"Authorization": "x"}
    assert (cfg.hooks["cpu"].timeout_s, cfg.hooks["cpu"].retries) == (5.0, 3)
    # gpu has no entry under pools but the simulator runs it
    assert cfg.hooks["gpu"].command == ("/usr/local/bin/scale", "--pool", "gpu")
