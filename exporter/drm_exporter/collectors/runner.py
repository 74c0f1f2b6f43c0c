"""Runs a collector function in the background on its interval and records its health.
Scrapes never call collectors; they read what the last run left."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .status import CollectorStatus

log = logging.getLogger(__name__)


class CollectorRunner:
    def __init__(self, name: str, fn: Callable[[], None], interval_s: float,
                 status: CollectorStatus) -> None:
        self.name, self._fn, self._interval, self._status = name, fn, interval_s, status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"collector-{name}", daemon=True)
        self._last_error: str | None = None
        self._skip_first = False

    def run_once(self) -> bool:
        start = time.monotonic()
        try:
            self._fn()
        except Exception as e:  # a failing collector must never take the exporter down
            msg = f"{type(e).__name__}: {e}"
            if msg != self._last_error:  # log a new failure once, not every interval
                log.warning("collector %s failed: %s", self.name, msg)
            self._last_error = msg
            self._status.record(self.name, False, time.monotonic() - start, time.time(), msg)
            return False
        if self._last_error is not None:
            log.info("collector %s recovered", self.name)
            self._last_error = None
        self._status.record(self.name, True, time.monotonic() - start, time.time())
        return True

    def start(self) -> None:
        self._thread.start()

    def start_after_first(self) -> None:
        """Start the loop for a collector whose first run already happened in the foreground."""
        self._skip_first = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        if self._skip_first:
            self._stop.wait(self._interval)
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._interval)
