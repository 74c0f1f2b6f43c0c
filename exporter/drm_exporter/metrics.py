"""The metric contract: every family drm-exporter exports, defined once.

The exporter, the dashboards, the recording/alerting rules and the tests import these names,
so a rename happens in one place. `docs/metrics.md` is generated from this module
(`drm-exporter docs`) and a test fails when it drifts.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricDef:
    name: str
    type: str  # "gauge" or "counter"
    help: str
    labels: tuple[str, ...]

    def __str__(self) -> str:  # lets f-strings in PromQL read naturally: f"rate({COST}[5m])"
        return self.name


def _g(name: str, help_: str, *labels: str) -> MetricDef:
    return MetricDef(name, "gauge", help_, labels)


def _c(name: str, help_: str, *labels: str) -> MetricDef:
    assert name.endswith("_total"), name
    return MetricDef(name, "counter", help_, labels)


# --- exporter self-observation -------------------------------------------------------------
BUILD_INFO = _g("drm_exporter_build_info", "drm-exporter build, always 1.", "version",
                "python_version")
COLLECTOR_SUCCESS = _g("drm_exporter_collector_success",
                       "1 if the collector's last run succeeded, else 0.", "collector")
COLLECTOR_DURATION = _g("drm_exporter_collector_duration_seconds",
                        "Duration of the collector's last run.", "collector")
COLLECTOR_LAST_SUCCESS = _g("drm_exporter_collector_last_success_timestamp_seconds",
                            "Unix time of the collector's last successful run.", "collector")

# --- workers -----------------------------------------------------------------------------------
WORKER_INFO = _g("drm_worker_info", "Worker identity, always 1; join with group_left.",
                 "worker", "pool", "provider", "region", "instance_type", "hostname")
WORKER_UP = _g("drm_worker_up", "1 if the worker reported within its heartbeat interval.",
               "worker")
WORKER_LAST_REPORT = _g("drm_worker_last_report_timestamp_seconds",
                        "Unix time of the worker's last report.", "worker")
WORKER_CPU_CORES = _g("drm_worker_cpu_cores", "CPU cores the worker offers.", "worker")
WORKER_CPU_ALLOCATED = _g("drm_worker_cpu_allocated_cores",
                          "CPU cores reserved by running tasks.", "worker")
WORKER_CPU_UTILIZATION = _g("drm_worker_cpu_utilization_ratio",
                            "Measured CPU utilization of the worker (0..1).", "worker")
WORKER_MEMORY_TOTAL = _g("drm_worker_memory_total_bytes", "Memory the worker offers.", "worker")
WORKER_MEMORY_USED = _g("drm_worker_memory_used_bytes", "Measured memory in use.", "worker")
WORKER_MEMORY_ALLOCATED = _g("drm_worker_memory_allocated_bytes",
                             "Memory reserved by running tasks.", "worker")
WORKER_TASKS_RUNNING = _g("drm_worker_tasks_running", "Tasks holding a reservation.", "worker")
WORKER_CAPACITY_INFO = _g(
    "drm_worker_capacity_info",
    "Where the worker's CPU and memory capacity come from, always 1: host (the machine) or "
    "cgroup_v1/cgroup_v2 (a container's quota or limit, tighter than the machine). "
    "Only workers that report it.", "worker", "cpu_source", "memory_source")

# --- GPUs ------------------------------------------------------------------------------------
GPU_INFO = _g("drm_gpu_info", "GPU identity, always 1.", "worker", "gpu", "uuid", "name",
              "driver_version", "mig_mode")
GPU_UP = _g("drm_gpu_up", "1 if the GPU answered its last read.", "worker", "gpu")
GPU_UTILIZATION = _g("drm_gpu_utilization_ratio", "Measured GPU utilization (0..1).", "worker",
                     "gpu")
GPU_MEMORY_TOTAL = _g("drm_gpu_memory_total_bytes", "GPU memory size.", "worker", "gpu")
GPU_MEMORY_USED = _g("drm_gpu_memory_used_bytes", "GPU memory in use.", "worker", "gpu")
GPU_TEMPERATURE = _g("drm_gpu_temperature_celsius", "GPU core temperature.", "worker", "gpu")
GPU_POWER = _g("drm_gpu_power_watts", "GPU power draw.", "worker", "gpu")
GPU_ALLOCATED = _g("drm_gpu_allocated", "1 if a task has reserved the GPU.", "worker", "gpu")
# MIG instances in their own families, so sum(drm_gpu_memory_used_bytes) counts each device once.
GPU_MIG_INFO = _g("drm_gpu_mig_info", "MIG device identity, always 1.",
                  "worker", "gpu", "mig_instance", "uuid")
GPU_MIG_MEMORY_TOTAL = _g("drm_gpu_mig_memory_total_bytes",
                          "Memory of one MIG device; part of its GPU's drm_gpu_memory_total_bytes.",
                          "worker", "gpu", "mig_instance")
GPU_MIG_MEMORY_USED = _g("drm_gpu_mig_memory_used_bytes",
                         "Memory in use on one MIG device; part of its GPU's "
                         "drm_gpu_memory_used_bytes.", "worker", "gpu", "mig_instance")

# --- pools and scaling ---------------------------------------------------------------------
POOL_WORKERS = _g("drm_pool_workers", "Workers in the pool by state.", "pool", "state")
POOL_TARGET_WORKERS = _g("drm_pool_target_workers",
                         "Worker count the pool is heading to after its last decision.", "pool")
POOL_MIN_WORKERS = _g("drm_pool_min_workers", "Configured minimum workers.", "pool")
POOL_MAX_WORKERS = _g("drm_pool_max_workers", "Configured maximum workers.", "pool")
POOL_TASKS_PENDING = _g("drm_pool_tasks_pending", "Tasks waiting for capacity.", "pool")
SCALING_UTILIZATION = _g("drm_scaling_utilization_ratio",
                         "The scaling policy's input: reserved share of the pool's capacity.",
                         "pool", "resource")
SCALING_THRESHOLD = _g("drm_scaling_threshold_ratio", "The scaling policy's thresholds.", "pool",
                       "threshold")
SCALING_DECISIONS = _c("drm_scaling_decisions_total", "Scaling decisions by action and reason.",
                       "pool", "action", "reason")
SCALING_WORKERS = _c("drm_scaling_workers_total", "Workers added or removed by decisions.",
                     "pool", "direction")
SCALING_COOLDOWN_ACTIVE = _g("drm_scaling_cooldown_active", "1 while the cooldown runs.",
                             "pool", "direction")
SCALING_LAST_DECISION = _g("drm_scaling_last_decision_timestamp_seconds",
                           "Unix time of the pool's last decision with this action.", "pool",
                           "action")
SCALING_HOOK_DELIVERIES = _c(
    "drm_scaling_hook_deliveries_total",
    "Scale decisions for the pool's hook by outcome: ok, failed (every attempt failed) or "
    "dropped (queue full). Only pools with a hook.", "pool", "outcome")
SCALING_HOOK_ATTEMPTS = _c("drm_scaling_hook_attempts_total",
                           "Delivery attempts to the pool's hook, retries included.", "pool")

WORKERS_EXPIRED = _c("drm_pool_workers_expired_total",
                     "Workers removed after missing heartbeats for the expiry window.", "pool")
RESERVATIONS_EXPIRED = _c("drm_pool_reservations_expired_total",
                          "Reservations released because their worker expired.", "pool")

# --- cost ------------------------------------------------------------------------------------
CLOUD_PRICE = _g("drm_cloud_price_usd_per_hour", "Hourly price of an instance type.",
                 "provider", "region", "instance_type", "source")
CLOUD_COST = _c("drm_cloud_cost_usd_total", "Accrued cost: hourly price times uptime.",
                "provider", "region", "instance_type", "pool")
CLOUD_UNPRICED_WORKERS = _g("drm_cloud_unpriced_workers", "Workers without a known price.",
                            "provider", "instance_type")
CLOUD_BILLED_COST = _g("drm_cloud_billed_cost", "Spend reported by the provider's billing API.",
                       "provider", "account", "service", "window", "currency")
CLOUD_BILLED_ESTIMATED = _g("drm_cloud_billed_cost_estimated",
                            "1 if the provider marks the billed figure as estimated.",
                            "provider", "account", "window")
CLOUD_BUDGET = _g("drm_cloud_budget_usd", "Monthly budget from config.", "provider")
CLOUD_API_REQUESTS = _c("drm_cloud_api_requests_total", "Billing/pricing API calls made.",
                        "provider", "api", "outcome")
CLOUD_REFRESH_SUCCESS = _g("drm_cloud_refresh_success", "1 if the last refresh succeeded.",
                           "provider", "source")
CLOUD_REFRESH_LAST_SUCCESS = _g("drm_cloud_refresh_last_success_timestamp_seconds",
                                "Unix time of the last successful refresh.", "provider", "source")

ALL: tuple[MetricDef, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, MetricDef))
BY_NAME: dict[str, MetricDef] = {m.name: m for m in ALL}

# Families this release cannot produce yet, with the reason (the docs and tests read this).
NOT_YET_PRODUCED: dict[str, str] = {}

# Families only some fleets produce, with the condition (the docs and tests read this).
ONLY_WHEN: dict[str, str] = {
    **{d.name: "a GPU is in MIG mode with instances created"
       for d in (GPU_MIG_INFO, GPU_MIG_MEMORY_TOTAL, GPU_MIG_MEMORY_USED)},
    **{d.name: "a cloud source is configured (`cloud:`) and has been tried"
       for d in (CLOUD_API_REQUESTS, CLOUD_REFRESH_SUCCESS)},
    CLOUD_REFRESH_LAST_SUCCESS.name: "a cloud source has refreshed successfully once",
    **{d.name: "AWS or Azure billing is configured and has answered; GCP billed spend needs "
       "the BigQuery billing export, which this release does not read"
       for d in (CLOUD_BILLED_COST, CLOUD_BILLED_ESTIMATED)},
}

# Bounded label values (DESIGN: every label value bounded, every reason documented).
POOL_STATES = ("active", "provisioning", "draining")
SCALING_RESOURCES = ("cpu", "memory", "gpu", "overall")
THRESHOLDS = ("scale_up", "scale_down", "target")
ACTIONS = ("scale_up", "scale_down", "maintain")
DIRECTIONS = ("up", "down")
HOOK_OUTCOMES = ("ok", "failed", "dropped")
CAPACITY_SOURCES = ("host", "cgroup_v1", "cgroup_v2")
REASONS: dict[str, str] = {
    "high_utilization": "scale_up: the overall signal is at or above the scale-up threshold",
    "below_min": "scale_up: the pool has fewer workers than its minimum",
    "pending_tasks": "scale_up: tasks wait for capacity (at least pending_threshold of them)",
    "low_utilization": "scale_down: the overall signal is at or below the scale-down threshold",
    "above_max": "scale_down: the pool has more workers than its maximum",
    "within_band": "maintain: the signal is between the scale-down and scale-up thresholds",
    "cooldown": "maintain: a change was wanted but that direction's cooldown is running",
    "at_max": "maintain: hot or tasks pending, but the pool is already at its maximum",
    "at_min": "maintain: cold, but the pool is already at its minimum",
}
REASONS_BY_ACTION: dict[str, tuple[str, ...]] = {
    action: tuple(r for r, text in REASONS.items() if text.startswith(action + ":"))
    for action in ACTIONS
}

# What an agent knows first-hand and serves on its own /metrics. Reservations, pools, scaling
# and cost live on the coordinator: an agent exporting its local zeros for them would
# contradict it. So does liveness: an agent's own drm_worker_up would be 1 whenever it can
# answer at all (Prometheus' `up` says that); whether it still reports only the coordinator sees.
AGENT_METRICS: tuple[MetricDef, ...] = (
    BUILD_INFO, COLLECTOR_SUCCESS, COLLECTOR_DURATION, COLLECTOR_LAST_SUCCESS,
    WORKER_INFO, WORKER_CPU_CORES,
    WORKER_CPU_UTILIZATION, WORKER_MEMORY_TOTAL, WORKER_MEMORY_USED,
    GPU_INFO, GPU_UP, GPU_UTILIZATION, GPU_MEMORY_TOTAL, GPU_MEMORY_USED,
    GPU_TEMPERATURE, GPU_POWER, GPU_MIG_INFO, GPU_MIG_MEMORY_TOTAL, GPU_MIG_MEMORY_USED,
)
# Of those, the per-worker ones a coordinator whose agents are scraped directly (config
# `metrics.agent_worker_series: false`) leaves to the agents, for workers with a metrics URL,
# so the store does not hold every such series twice.
AGENT_WORKER_METRICS: frozenset[str] = frozenset(
    d.name for d in AGENT_METRICS if d.labels[:1] == ("worker",))
