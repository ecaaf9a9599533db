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
        cluster_wide=spec.scope is api.RunScope.CLUSTER,
    )


def cluster_scope_refusal(
    spec: api.ReconciliationRunSpec, namespace: str, allowed: str
) -> str | None:
    """Why a run may not have the scope it asks for, or None when it may (pure).

    A cluster-wide run reads every namespace's money, so it is allowed only in the one
    namespace the administrator named (``allowed``; empty: nowhere). Who may create runs
    there is then an RBAC decision on that namespace.
    """
    if spec.scope is not api.RunScope.CLUSTER or (allowed and namespace == allowed):
        return None
    return (
        "spec.scope Cluster compares every namespace's money and is allowed only in the "
        "namespace the operator's administrator chose for it (setting "
        "FINTECH_RECON_CLUSTER_NAMESPACE); use scope Namespace here"
    )
