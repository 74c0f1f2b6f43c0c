"""Alert thresholds users tune, defined once: the alerting rules, their promtool tests, the
runbook and the simulator tests read them from here."""

from __future__ import annotations

# DRMScalingFlapping: a pool that changes scaling direction (up→down or down→up) more often
# than this per hour is oscillating; widen its band or lengthen its window or cooldowns. With
# the default cooldowns a policy can reverse about 12 times an hour (a scale-down waits 600 s
# after any action); more than one reversal per 10 minutes means the tuning fights the demand.
FLAP_DIRECTION_CHANGES_PER_HOUR = 6

# DRMCollectorFailing: a collector whose every run in this window failed. A window, not an
# instant value, so one missed scrape neither resolves nor re-arms the alert.
COLLECTOR_FAILING_WINDOW = "10m"

# DRMWorkerNotReporting / DRMGPULost: how long every sample must read 0 before the alert is
# pending (the rule's `for` then adds 5m). Shorter than the worker expiry window, after which an
# expired worker's series vanish and the alert resolves by itself.
DOWN_WINDOW = "5m"

# DRMWorkerCPUSaturated: mean measured CPU utilization over 10m above this, for 30m. Reserved
# cores are not the signal: a worker can be fully reserved and idle.
WORKER_CPU_SATURATED_RATIO = 0.95

# DRMWorkerMemoryPressure: measured memory in use / memory offered, every sample for 10m, above
# this. Past about 90% the kernel reclaims page cache and the OOM killer comes next.
WORKER_MEMORY_PRESSURE_RATIO = 0.90

# DRMGPUMemoryNearlyFull: GPU memory in use / GPU memory above this for 10m; the next
# allocation of a task on that GPU is likely to fail with out-of-memory.
GPU_MEMORY_NEARLY_FULL_RATIO = 0.95

# DRMGPUOverheating: core temperature above this (Celsius) for 5m. Data-centre GPUs start to
# throttle their clocks in the high 80s; check the model's slowdown temperature
# (`nvidia-smi -q -d TEMPERATURE`) and lower this if it throttles earlier.
GPU_TEMPERATURE_CELSIUS = 85

# DRMLowAllocationEfficiency: a pool whose reserved CPU, memory or GPUs are used below this
# share (mean over 1h), while at least LOW_EFFICIENCY_MIN_ALLOCATION_RATIO of that resource is
# reserved (below it the idle reservations cost little).
LOW_EFFICIENCY_RATIO = 0.30
LOW_EFFICIENCY_MIN_ALLOCATION_RATIO = 0.50

# DRMBillingDataStale: the last successful refresh of a cloud source (billing or pricing) is
# older than this. Twice the longest default refresh interval (Azure's min_interval_s, 12h), so
# one failed refresh is tolerated and two in a row alert.
BILLING_STALE_SECONDS = 86400

# DRMUnpricedWorkers: workers without a known price for this long (the rule's `for`).
UNPRICED_WORKERS_FOR = "1h"
