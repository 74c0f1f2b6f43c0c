"""Decision hooks: every scale decision handed to the pool's provisioner, off the scaling loop.

    hooks:
      gpu: {url: "https://provisioner.internal/scale", timeout_s: 5, retries: 3, backoff_s: 1,
            headers: {Authorization: "Bearer ..."}}
      cpu: {command: ["/usr/local/bin/scale-cpu", "--region", "eu"]}

Each scale_up and scale_down decision (never maintain) becomes one JSON document:

    {"pool": "gpu", "action": "scale_down", "reason": "low_utilization", "count": 2,
     "workers": ["gpu-07", "gpu-03"], "utilization": 0.21, "timestamp": 1733218800.0,
     "decision_id": "5f0c…"}

`workers` are the workers chosen to drain (empty for a scale-up). A `url` hook POSTs it as
application/json; any 2xx answer is success and redirects are not followed, so the headers (a
token, often) never reach another host. A `command` hook gets it on stdin; exit 0 is success,
and after `timeout_s` the command and everything it started are killed.

A failed attempt is retried `retries` times, after backoff_s, 2·backoff_s, 4·backoff_s, … with
the same decision_id, so a receiver can discard a repeat. Each pool has one delivery thread and
a queue of `queue_size` decisions: the engine loop only enqueues, so a slow or dead receiver
never delays scaling. When the queue is full the oldest waiting decision is dropped (and
counted), since the newer one describes the pool better.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any
from urllib.parse import urlsplit

from . import __version__
from .clock import Clock
from .metrics import HOOK_OUTCOMES
from .scaling import Decision

log = logging.getLogger(__name__)

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_RESERVED_HEADERS = {"content-type", "content-length", "host"}


@dataclass(frozen=True)
class HookConfig:
    url: str = ""
    command: tuple[str, ...] = ()
    timeout_s: float = 5.0  # per attempt: the HTTP socket timeout, or the command's run time
    retries: int = 3  # attempts after the first failed one
    backoff_s: float = 1.0  # wait before the first retry, doubled before each next one
    # Sent with every POST; often a token, so never logged nor shown in an error or a repr.
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    queue_size: int = 100

    def __post_init__(self) -> None:
        # Each message starts with the key it is about, so config errors point at its line.
        if self.url and self.command:
            raise ValueError("url and command are exclusive: give exactly one")
        if not self.url and not self.command:
            raise ValueError("exactly one of url or command is required")
        if self.url:
            # Not echoed: a URL can carry credentials.
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("url must be http:// or https:// and name a host")
        elif not self.command[0]:
            raise ValueError("command must start with the program to run")
        if not 0 < self.timeout_s <= 3600:
            raise ValueError(f"timeout_s must be in (0, 3600], got {self.timeout_s:g}")
        if not 0 <= self.retries <= 20:
            raise ValueError(f"retries must be in [0, 20], got {self.retries}")
        if not 0 <= self.backoff_s <= 3600:
            raise ValueError(f"backoff_s must be in [0, 3600], got {self.backoff_s:g}")
        if not 1 <= self.queue_size <= 100_000:
            raise ValueError(f"queue_size must be in [1, 100000], got {self.queue_size}")
        if self.headers and not self.url:
            raise ValueError("headers apply to url hooks only")
        for name, value in self.headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"headers name {name[:64]!r} is not a valid header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"headers name {name!r} is set by drm-exporter")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"headers value of {name!r} holds a line break or NUL")

    @property
    def target(self) -> str:
        """What the logs may name: the URL without credentials or query, or the program."""
        if self.command:
            return self.command[0]
        p = urlsplit(self.url)
        port = f":{p.port}" if p.port else ""
        return f"{p.scheme}://{p.hostname}{port}{p.path}"


class HookFailed(Exception):
    """One attempt failed; the message says why without the payload or the headers."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(_NoRedirect)


def send(hook: HookConfig, body: bytes) -> None:
    """Deliver one JSON document once; raises HookFailed. The seam tests may replace."""
    if hook.url:
        _post(hook, body)
    else:
        _run(hook, body)


def _post(hook: HookConfig, body: bytes) -> None:
    headers = {"User-Agent": f"drm-exporter/{__version__}", **hook.headers,
               "Content-Type": "application/json"}
    req = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(req, timeout=hook.timeout_s) as r:
            r.read()
    except urllib.error.HTTPError as e:
        raise HookFailed(f"HTTP {e.code}") from None
    except urllib.error.URLError as e:
        raise HookFailed(str(e.reason)) from None
    except (OSError, HTTPException) as e:
        raise HookFailed(str(e) or type(e).__name__) from None


def _run(hook: HookConfig, body: bytes) -> None:
    try:
        # Its own session, so a timeout kills a shell script's children too.
        proc = subprocess.Popen(list(hook.command), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as e:
        raise HookFailed(f"cannot start: {e.strerror}") from None
    try:
        _, err = proc.communicate(body, timeout=hook.timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:  # a descendant left the group and holds stderr
            assert proc.stderr is not None
            proc.stderr.close()
            proc.wait()
        raise HookFailed(f"killed after {hook.timeout_s:g} s") from None
    if proc.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        raise HookFailed(f"exit status {proc.returncode}"
                         + (f": {last[0][:200]}" if last else ""))


Sender = Callable[[HookConfig, bytes], None]


def payload(d: Decision, timestamp: float) -> dict[str, Any]:
    return {"pool": d.pool, "action": d.action, "reason": d.reason, "count": d.count,
            "workers": list(d.worker_ids), "utilization": d.utilization,
            "timestamp": timestamp, "decision_id": uuid.uuid4().hex}


@dataclass(frozen=True)
class HookCounts:
    """A pool's counters: decisions by outcome (ok, failed, dropped) and attempts made."""
    deliveries: dict[str, int]
    attempts: int


class _PoolHook:
    """One pool's queue, counters and delivery thread."""

    def __init__(self, pool: str, hook: HookConfig, sender: Sender,
                 stopping: threading.Event) -> None:
        self.pool, self.hook, self._send, self._stopping = pool, hook, sender, stopping
        self._cond = threading.Condition()
        self._queue: deque[dict[str, Any]] = deque()
        self._busy = False
        self._deliveries = dict.fromkeys(HOOK_OUTCOMES, 0)
        self._attempts = 0
        self._thread: threading.Thread | None = None

    def submit(self, doc: dict[str, Any]) -> None:
        with self._cond:
            if self._stopping.is_set():
                return
            if len(self._queue) >= self.hook.queue_size:
                old = self._queue.popleft()
                self._deliveries["dropped"] += 1
                log.warning("pool %s: hook queue full (%d), dropped decision %s (%s %d)",
                            self.pool, self.hook.queue_size, old["decision_id"], old["action"],
                            old["count"])
            self._queue.append(doc)
            if self._thread is None:  # started on first use: a Service never ticked starts none
                self._thread = threading.Thread(target=self._loop, name=f"hook-{self.pool}",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def counts(self) -> HookCounts:
        with self._cond:
            return HookCounts(dict(self._deliveries), self._attempts)

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._cond:
            if self._queue:
                log.warning("pool %s: %d undelivered decision(s) abandoned at shutdown",
                            self.pool, len(self._queue))
                self._queue.clear()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping.is_set())
                if self._stopping.is_set():
                    return
                doc = self._queue.popleft()
                self._busy = True
            outcome = self._deliver(doc)
            with self._cond:
                self._deliveries[outcome] += 1
                self._busy = False
                self._cond.notify_all()

    def _deliver(self, doc: dict[str, Any]) -> str:
        body = json.dumps(doc, allow_nan=False).encode()
        attempts = 1 + self.hook.retries
        error = ""
        for i in range(attempts):
            # Exponential backoff; a stop cuts the wait short and gives the decision up.
            if i and self._stopping.wait(self.hook.backoff_s * 2 ** (i - 1)):
                break
            with self._cond:
                self._attempts += 1
            try:
                self._send(self.hook, body)
                return "ok"
            except HookFailed as e:
                error = str(e)
                log.debug("pool %s: hook %s attempt %d/%d failed: %s", self.pool,
                          self.hook.target, i + 1, attempts, error)
            except Exception as e:  # a broken sender must not kill the pool's thread
                error = f"{type(e).__name__}: {e}"
                log.debug("pool %s: hook %s attempt %d/%d failed", self.pool, self.hook.target,
                          i + 1, attempts, exc_info=True)
        log.warning("pool %s: hook %s failed for decision %s (%s %d): %s", self.pool,
                    self.hook.target, doc["decision_id"], doc["action"], doc["count"], error)
        return "failed"


class HookDispatcher:
    """Fans scale decisions out to the pools' hooks. `submit` only enqueues: it never waits
    for a receiver, so the engine loop keeps its schedule whatever the hooks do."""

    def __init__(self, hooks: Mapping[str, HookConfig], clock: Clock,
                 sender: Sender = send) -> None:
        self._clock = clock
        self._stopping = threading.Event()
        self._pools = {pool: _PoolHook(pool, hook, sender, self._stopping)
                       for pool, hook in sorted(hooks.items())}

    def submit(self, decisions: Iterable[Decision]) -> None:
        now = self._clock.time()
        for d in decisions:
            ph = self._pools.get(d.pool)
            if ph is not None and d.action != "maintain":
                ph.submit(payload(d, now))

    def counts(self) -> dict[str, HookCounts]:
        """Per pool with a hook, from the start (every outcome present, 0 until it happens)."""
        return {pool: ph.counts() for pool, ph in self._pools.items()}

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queue is empty and nothing is in flight; False on timeout."""
        deadline = time.monotonic() + timeout_s
        return all(ph.wait_idle(max(0.0, deadline - time.monotonic()))
                   for ph in self._pools.values())

    def stop(self) -> None:
        """Stop the threads: an attempt in flight ends within its timeout, no retry starts and
        queued decisions are abandoned (logged)."""
        self._stopping.set()
        for ph in self._pools.values():
            ph.wake()
        for ph in self._pools.values():
            ph.join(ph.hook.timeout_s + 2.0)
