"""Runs a collector function in the background on its interval and records its health.
Scrapes never call collectors; they read what the last run left.

Each run happens on its own worker thread and is waited for at most `timeout_s`. A run that
overruns is recorded as a failure ("timed out after Xs") and left to finish on its own: Python
cannot kill a thread, and one stuck in a hung NFS mount or driver call may never return. Until
it does, no new run of that collector starts (a failure "still running ..." is recorded each
interval instead), so a hung collector holds one thread, not one per interval.

What a collector publishes is its own business: a collector that times out has published
nothing new, so the last good data it published stays (HostWorker keeps the last host reading;
it clears the GPUs only when NVML raises, not when it hangs).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..clock import Clock, SystemClock
from .status import CollectorStatus

log = logging.getLogger(__name__)

# A run's wait when the config names none: the interval, capped so a slow interval does not
# leave a collector hung for minutes before it is reported.
DEFAULT_TIMEOUT_S = 10.0


def default_timeout(interval_s: float) -> float:
    return min(interval_s, DEFAULT_TIMEOUT_S)


class _Run:
    """One run of a collector on its own thread: its outcome once the thread ends."""

    def __init__(self, name: str, fn: Callable[[], None], started: float) -> None:
        self.started = started
        self.error: str | None = None
        self.done = threading.Event()
        self._fn = fn
        self.thread = threading.Thread(target=self._target, name=f"collector-{name}-run",
                                       daemon=True)  # a hung run must not block exit

    def _target(self) -> None:
        try:
            self._fn()
        except Exception as e:  # a failing collector must never take the exporter down
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.done.set()


class CollectorRunner:
    def __init__(self, name: str, fn: Callable[[], None], interval_s: float,
                 status: CollectorStatus, timeout_s: float | None = None,
                 clock: Clock | None = None) -> None:
        self.name, self._fn, self._interval, self._status = name, fn, interval_s, status
        self.timeout_s = default_timeout(interval_s) if timeout_s is None else timeout_s
        self._clock = clock or SystemClock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"collector-{name}", daemon=True)
        self._last_error: str | None = None
        self._skip_first = False
        self._inflight: _Run | None = None  # the run that overran and is still going

    def run_once(self) -> bool:
        """One run, waited for at most timeout_s; True if it finished without an error."""
        start = self._clock.monotonic()
        stuck = self._inflight
        if stuck is not None and not stuck.done.is_set():
            return self._fail(start, f"still running: the run started "
                              f"{start - stuck.started:.0f}s ago has not returned", 0.0)
        if stuck is not None:
            log.info("collector %s: the run that timed out has returned", self.name)
            self._inflight = None
        run = _Run(self.name, self._fn, start)
        run.thread.start()
        if not run.done.wait(self.timeout_s):
            self._inflight = run
            return self._fail(start, f"timed out after {self.timeout_s:g}s", self.timeout_s)
        if run.error is not None:
            return self._fail(start, run.error)
        if self._last_error is not None:
            log.info("collector %s recovered", self.name)
            self._last_error = None
        self._status.record(self.name, True, self._clock.monotonic() - start, self._clock.time())
        return True

    def _fail(self, start: float, msg: str, duration_s: float | None = None) -> bool:
        # A new failure is logged once, not every interval; "still running" follows a timeout
        # that was already logged.
        if msg != self._last_error and not msg.startswith("still running"):
            log.warning("collector %s failed: %s", self.name, msg)
        self._last_error = msg
        elapsed = self._clock.monotonic() - start
        self._status.record(self.name, False,
                            elapsed if duration_s is None else max(duration_s, elapsed),
                            self._clock.time(), msg)
        return False

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
