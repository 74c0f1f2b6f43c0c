"""Reservations: a task holds CPU cores, memory bytes and whole GPUs on one worker."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .fleet import STATE_ACTIVE, Worker


class ReservationError(ValueError):
    """The request cannot be honoured (bad amounts, unknown worker, duplicate task)."""


class InsufficientCapacity(ReservationError):
    """No eligible worker has the free capacity the task asks for. `field` names the resource
    that ran short (cpu_cores, memory_bytes, gpus), or None when none did alone."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Reservation:
    task_id: str
    worker: str
    cpu_cores: float
    memory_bytes: int
    gpu_indices: tuple[int, ...]
    created_at: float


def validate_request(task_id: str, cpu_cores: float, memory_bytes: int, gpus: int) -> None:
    if not task_id:
        raise ReservationError("task_id must not be empty")
    if cpu_cores < 0 or memory_bytes < 0 or gpus < 0:
        raise ReservationError("reserved amounts must be >= 0")
    if cpu_cores == 0 and memory_bytes == 0 and gpus == 0:
        raise ReservationError("a reservation must hold something")


def shortfall(w: Worker, cpu_cores: float, memory_bytes: int, gpus: int) -> str | None:
    """The first resource the worker lacks for the request, or None if it fits."""
    # A tiny epsilon keeps float sums of fractional cores from refusing an exact fit.
    if w.cpu_free + 1e-9 < cpu_cores:
        return "cpu_cores"
    if w.memory_free < memory_bytes:
        return "memory_bytes"
    if len(w.gpus_free) < gpus:
        return "gpus"
    return None


def fits(w: Worker, cpu_cores: float, memory_bytes: int, gpus: int) -> bool:
    return shortfall(w, cpu_cores, memory_bytes, gpus) is None


def scarce_resource(candidates: list[Worker], cpu_cores: float, memory_bytes: int,
                    gpus: int) -> str | None:
    """The resource that no candidate alone can offer, for an error that names it."""
    if not any(w.cpu_free + 1e-9 >= cpu_cores for w in candidates):
        return "cpu_cores"
    if not any(w.memory_free >= memory_bytes for w in candidates):
        return "memory_bytes"
    if not any(len(w.gpus_free) >= gpus for w in candidates):
        return "gpus"
    return None


def best_fit(candidates: Iterable[Worker], cpu_cores: float, memory_bytes: int,
             gpus: int) -> Worker | None:
    """The active worker that fits the task and is left with the least free share afterwards,
    so large workers stay free for large tasks. Ties go to the lowest worker id (deterministic).
    A task that needs no GPU avoids GPU workers when a CPU-only one fits."""
    best: tuple[tuple[int, float, str], Worker] | None = None
    for w in candidates:
        if w.state != STATE_ACTIVE or not fits(w, cpu_cores, memory_bytes, gpus):
            continue
        s = w.spec
        left = [(w.cpu_free - cpu_cores) / s.cpu_cores,
                (w.memory_free - memory_bytes) / s.memory_total_bytes]
        if s.gpus:
            left.append((len(w.gpus_free) - gpus) / s.gpus)
        wastes_gpu = 1 if (gpus == 0 and s.gpus > 0) else 0
        key = (wastes_gpu, sum(left) / len(left), s.worker)
        if best is None or key < best[0]:
            best = (key, w)
    return best[1] if best else None


def apply(w: Worker, r: Reservation) -> None:
    w.cpu_allocated += r.cpu_cores
    w.memory_allocated += r.memory_bytes
    w.gpus_allocated.update(r.gpu_indices)
    w.tasks.add(r.task_id)


def undo(w: Worker, r: Reservation) -> None:
    w.cpu_allocated = max(0.0, w.cpu_allocated - r.cpu_cores)
    w.memory_allocated = max(0, w.memory_allocated - r.memory_bytes)
    w.gpus_allocated.difference_update(r.gpu_indices)
    w.tasks.discard(r.task_id)
