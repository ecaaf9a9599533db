"""A Webhook's status from its delivery log (pure: no I/O).

The operator reads the endpoint's row of ``webhook_endpoints`` (see ``store``) and
turns it into the status fields below; only changed fields are patched.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

from fintech_operator import api
from fintech_operator.notify import store

MESSAGE_MAX_CHARS: Final = 1024


def _stamp(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return api.format_timestamp(moment)


def phase_of(report: store.EndpointReport | None, suspended: bool) -> tuple[str, str, str]:
    """``(phase, reason, message)`` of the endpoint."""
    if report is None:
        return "Pending", "AwaitingNotifier", "no notifier has picked up this Webhook yet"
    if suspended:
        return "Suspended", "Suspended", f"spec.suspend is true; {report.pending} events wait"
    if report.problem:
        reason, _, detail = report.problem.partition(":")
        reason = reason if reason.isalnum() else "EndpointProblem"
        return "Failing", reason, (detail.strip() or report.problem)[:MESSAGE_MAX_CHARS]
    if report.circuit != "Closed":
        return (
            "Failing",
            "CircuitOpen",
            f"{report.consecutive_failures} consecutive failures; last: "
            f"{report.last_error or 'unknown'}"[:MESSAGE_MAX_CHARS],
        )
    if report.consecutive_failures:
        return (
            "Active",
            "Retrying",
            f"{report.consecutive_failures} consecutive failures; last: "
            f"{report.last_error or 'unknown'}"[:MESSAGE_MAX_CHARS],
        )
    return "Active", "Delivering", _delivering(report)


def _delivering(report: store.EndpointReport) -> str:
    """The message of an endpoint served without a problem or a failure since its last
    success. Before any success (a new Webhook, not refused: a refusal is a problem) nothing
    has reached the receiver, so it does not claim that deliveries succeed."""
    return "no event delivered yet" if report.last_success_at is None else "deliveries succeed"


def fields(report: store.EndpointReport | None, suspended: bool) -> dict[str, Any]:
    """The status fields the operator owns for a Webhook (conditions are set by the caller)."""
    phase, reason, message = phase_of(report, suspended)
    out: dict[str, Any] = {"phase": phase, "reason": reason, "message": message}
    if report is None:
        return out
    last: dict[str, Any] = {
        "eventId": None if report.last_event_id is None else str(report.last_event_id),
        "eventType": report.last_event_type,
        "attemptedAt": _stamp(report.last_attempt_at),
        "outcome": report.last_outcome,
        "statusCode": report.last_status_code,
        "message": None if report.last_error is None else report.last_error[:MESSAGE_MAX_CHARS],
    }
    out.update(
        {
            "circuit": report.circuit,
            "consecutiveFailures": report.consecutive_failures,
            "pendingDeliveries": report.pending,
            "deliveredTotal": report.delivered_total,
            "failedTotal": report.failed_total,
            "lastSuccessAt": _stamp(report.last_success_at),
            # Every key, None included: the status is a merge patch, which keeps a key it does
            # not name, so an attempt without a status code or error clears the last one's.
            "lastDelivery": last if any(v is not None for v in last.values()) else None,
        }
    )
    return out


def changed(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """The part of ``wanted`` that differs from ``current`` (what to patch). A None inside a
    wanted object is a key status does not hold, so it alone is no change."""
    return {
        key: value for key, value in wanted.items() if _present(current.get(key)) != _present(value)
    }


def _present(value: Any) -> Any:
    """``value`` without the None entries of an object, as the API server stores it."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    return value
