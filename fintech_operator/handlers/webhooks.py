"""Webhook: check the spec, then mirror the notifier's delivery state into status.

The notifier delivers; the operator only reports. A timer reads the endpoint's row of
the delivery log and patches the fields that changed (nothing when nothing changed), so
a busy endpoint costs one small read per interval and no patch storm.
"""

from __future__ import annotations

import uuid
from typing import Any

import kopf
import pydantic

from fintech_operator import api, config
from fintech_operator.handlers import report, wiring
from fintech_operator.handlers.context import OperatorMemo
from fintech_operator.notify import status as webhook_status
from fintech_operator.notify import store


async def check(body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
    """Refuse a spec the API server let through but the notifier cannot serve."""
    try:
        webhook = api.WebhookSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        report.reject(body, patch, api.WebhookReason.INVALID_SPEC, api.format_validation_error(exc))
        return
    generation = report.generation_of(body)
    if body.status.get("phase") not in (None, api.WebhookPhase.REJECTED):
        report.write_status(patch, api.WebhookStatus(observed_generation=generation))
        return
    reason = api.WebhookReason.AWAITING_NOTIFIER
    message = "no notifier has picked up this Webhook yet"
    status = api.WebhookStatus(
        phase=api.WebhookPhase.SUSPENDED if webhook.suspend else api.WebhookPhase.PENDING,
        reason=reason,
        message=message,
        conditions=report.conditions(body.status, api.READY, False, reason, message, generation),
        observed_generation=generation,
    )
    report.write_status(patch, status)


async def refresh(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: OperatorMemo, **_: Any
) -> None:
    """Copy the delivery log's view of the endpoint into status when it changed."""
    async with memo.pool.connection() as conn:
        found = await store.endpoint_report(conn, uuid.UUID(str(body.metadata.uid)))
    wanted = webhook_status.fields(found, bool(spec.get("suspend")))
    diff = webhook_status.changed(dict(body.status), wanted)
    if not diff:
        return
    # Through the Status model: a value the delivery log gives that the API refuses fails here.
    report.write_status(patch, api.WebhookStatus.model_validate(diff))
    now = api.WebhookStatus.model_validate(wanted)
    ready = now.phase is api.WebhookPhase.ACTIVE
    reason, message = str(now.reason), str(now.message)
    generation = report.generation_of(body)
    conditions = report.conditions(body.status, api.READY, ready, reason, message, generation)
    report.write_status(patch, api.WebhookStatus(conditions=conditions))
    if "phase" in diff and now.phase is api.WebhookPhase.FAILING:
        kopf.warn(body, reason=reason, message=message)
    elif "phase" in diff and ready:
        kopf.info(body, reason=reason, message=message)


def _checked(status: kopf.Status, **_: Any) -> bool:
    """The :func:`refresh` timer's filter: a Webhook whose spec :func:`check` accepted."""
    return status.get("phase") not in (None, api.WebhookPhase.REJECTED)


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add the Webhook handlers to ``registry`` (see ``handlers.register``); the timer's
    interval is a setting (FINTECH_WEBHOOK_STATUS_INTERVAL_SECONDS)."""
    wiring.on_spec(registry, "webhooks", check)
    kopf.timer(
        api.GROUP,
        api.VERSION,
        "webhooks",
        interval=settings.webhooks.status_interval_seconds,
        when=_checked,
        registry=registry,
    )(refresh)


__all__ = ["check", "refresh", "register"]
