"""Alert thresholds users tune, defined once: the alerting rules, their promtool tests, the
runbook and the simulator tests read them from here."""

from __future__ import annotations

# DRMScalingFlapping: a pool that changes scaling direction (up→down or down→up) more often
# than this per hour is oscillating; widen its band or lengthen its window or cooldowns. With
# the default cooldowns a policy can reverse about 12 times an hour (a scale-down waits 600 s
# after any action); more than one reversal per 10 minutes means the tuning fights the demand.
FLAP_DIRECTION_CHANGES_PER_HOUR = 6
