from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

from drm_exporter.clock import ManualClock
from drm_exporter.engine import Engine, EngineSettings
from drm_exporter.fleet import WorkerSpec
from drm_exporter.scaling import PoolPolicy

GIB = 1024**3


def spec(worker: str, pool: str = "cpu", cores: float = 8, mem_gib: int = 32, gpus: int = 0,
         provider: str = "aws", instance_type: str = "m5.2xlarge",
         region: str = "us-east-1") -> WorkerSpec:
    return WorkerSpec(worker, pool, provider, region, instance_type, f"{worker}.test", cores,
                      mem_gib * GIB, gpus)


@pytest.fixture(autouse=True)
def _state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` keeps its state under $XDG_STATE_HOME unless told otherwise (docs/state.md):
    a test's `serve` must neither touch the user's nor share one with another test."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state-home")))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def engine(clock: ManualClock) -> Engine:
    policy = PoolPolicy(cooldown_up_s=30, cooldown_down_s=60, evaluation_interval_s=10,
                        min_workers=1, max_workers=6, max_step=2, evaluation_window_s=0)
    return Engine({"cpu": policy}, EngineSettings(heartbeat_timeout_s=30), clock=clock)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection to a non-loopback address fails: the cloud tests must stay offline."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback:
                raise OSError(f"test tried to reach {host}")

    def connect(sock: socket.socket, address: Any) -> None:
        check(sock, address)
        real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
