"""The clock seam: the engine reads time only through a Clock, so tests and the fast
simulator can drive a day of scaling in milliseconds."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Unix time, for timestamps that leave the process."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps, for durations (cooldowns, uptime, cost)."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told; used by the simulator's fast mode."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._wall += seconds
        self._mono += seconds
