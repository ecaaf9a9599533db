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
from fintech_operator.handlers import report
from fintech_operator.notify import status as webhook_status
from fintech_operator.notify import store


def _generation(body: kopf.Body) -> int:
    return int(body.metadata.get("generation") or 0)


@kopf.on.resume(api.GROUP, api.VERSION, "webhooks")
@kopf.on.create(api.GROUP, api.VERSION, "webhooks")
@kopf.on.update(api.GROUP, api.VERSION, "webhooks", field="spec")
async def check(body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
    """Refuse a spec the API server let through but the notifier cannot serve."""
    try:
        webhook = api.WebhookSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        report.reject(body, patch, api.WebhookReason.INVALID_SPEC, api.format_validation_error(exc))
        return
    generation = _generation(body)
    if body.status.get("phase") in (None, "Rejected"):
        waiting = api.WebhookPhase.SUSPENDED if webhook.suspend else api.WebhookPhase.PENDING
        patch.status["phase"] = waiting
        patch.status["reason"] = api.WebhookReason.AWAITING_NOTIFIER
        patch.status["message"] = "no notifier has picked up this Webhook yet"
        patch.status["conditions"] = report.condition(
            body.status,
            api.READY,
            False,
            api.WebhookReason.AWAITING_NOTIFIER,
            patch.status["message"],
            generation,
        )
    patch.status["observedGeneration"] = generation


async def refresh(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """Copy the delivery log's view of the endpoint into status when it changed."""
    async with memo.pool.connection() as conn:
        found = await store.endpoint_report(conn, uuid.UUID(str(body.metadata.uid)))
    wanted = webhook_status.fields(found, bool(spec.get("suspend")))
    diff = webhook_status.changed(dict(body.status), wanted)
    if not diff:
        return
    patch.status.update(diff)
    ready = wanted["phase"] == "Active"
    patch.status["conditions"] = report.condition(
        body.status, api.READY, ready, wanted["reason"], wanted["message"], _generation(body)
    )
    if "phase" in diff and wanted["phase"] == "Failing":
        kopf.warn(body, reason=wanted["reason"], message=wanted["message"])
    elif "phase" in diff and ready:
        kopf.info(body, reason=wanted["reason"], message=wanted["message"])


__all__ = ["check", "refresh"]


def register_timers(settings: config.Settings) -> None:
    """Register :func:`refresh` at the configured interval: read at start-up, never at import."""
    kopf.timer(
        api.GROUP,
        api.VERSION,
        "webhooks",
        interval=settings.webhook_status_interval_seconds,
        when=lambda status, **_: status.get("phase") not in (None, "Rejected"),
    )(refresh)
