"""A Webhook's status follows its delivery log: what the log no longer holds leaves status."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from fintech_operator import api
from fintech_operator.notify import status, store

FAILED_AT = datetime.datetime(2026, 12, 7, 21, 28, 10, tzinfo=datetime.UTC)
DELIVERED_AT = FAILED_AT + datetime.timedelta(seconds=10)


def _report(**changes: Any) -> store.EndpointReport:
    base: dict[str, Any] = {
        "problem": None,
        "circuit": "Closed",
        "consecutive_failures": 1,
        "last_attempt_at": FAILED_AT,
        "last_success_at": None,
        "last_event_id": uuid.UUID(int=1),
        "last_event_type": "dev.fintech.posting.posted.v1",
        "last_outcome": "Failed",
        "last_status_code": None,
        "last_error": "ConnectError: All connection attempts failed",
        "delivered_total": 0,
        "failed_total": 0,
        "pending": 1,
    }
    return store.EndpointReport(**{**base, **changes})


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch, as the API server applies kopf's status patch."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge(merged.get(key), value)
    return merged


def _patched(current: dict[str, Any], report: store.EndpointReport) -> dict[str, Any]:
    """The status after one refresh: the changed fields through the Status model."""
    diff = status.changed(current, status.fields(report, suspended=False))
    if not diff:
        return current
    patch = api.WebhookStatus.model_validate(diff).model_dump(
        mode="json", by_alias=True, exclude_unset=True
    )
    merged: dict[str, Any] = _merge(current, patch)
    return merged


def test_a_delivery_after_a_failure_leaves_no_failure_message_in_last_delivery() -> None:
    """The example Webhook showed lastDelivery outcome Delivered, statusCode 204 and the
    message "ConnectError: All connection attempts failed" of the failed attempt before it:
    the refresh dropped the message it no longer had from its patch, and a merge patch keeps
    what it does not name. The message is now cleared, and a second refresh patches nothing."""
    failed = _patched({}, _report())
    assert failed["lastDelivery"]["message"].startswith("ConnectError")
    delivered = _report(
        consecutive_failures=0,
        last_attempt_at=DELIVERED_AT,
        last_success_at=DELIVERED_AT,
        last_event_id=uuid.UUID(int=2),
        last_outcome="Delivered",
        last_status_code=204,
        last_error=None,
        delivered_total=1,
        pending=0,
    )
    now = _patched(failed, delivered)
    assert now["lastDelivery"]["outcome"] == "Delivered"
    assert now["lastDelivery"]["statusCode"] == 204
    assert "message" not in now["lastDelivery"]
    assert status.changed(now, status.fields(delivered, suspended=False)) == {}
