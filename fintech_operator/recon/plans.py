"""From the API's ReconciliationRun spec to the core's plan (pure translation, no I/O).

The API is the bottom layer: this module imports it, the API never imports recon (cron
parsing lives in ``api.cron``; docs/architecture.md).
"""

from __future__ import annotations

from fintech_operator import api
from fintech_operator.recon import model


def plan_of(spec: api.ReconciliationRunSpec) -> model.Plan:
    """The run's checks, tolerances, window and limits, as the core's types."""
    window = None if spec.window is None else model.Window(spec.window.start, spec.window.end)
    return model.Plan(
        checks=frozenset(model.Check(check.value) for check in spec.checks),
        tolerances=model.Tolerances(
            spec.matching.amount_tolerance_minor, spec.matching.time_tolerance_seconds
        ),
        window=window,
        event_lag_seconds_max=spec.event_lag_seconds_max,
        dry_run=spec.dry_run,
    )
