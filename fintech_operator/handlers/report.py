"""Status helpers shared by the handlers: conditions, rejections and Events."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import kopf

from fintech_operator import api


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def timestamp() -> str:
    return api.format_timestamp(now())


def condition(
    status: Mapping[str, Any], type_: str, ok: bool, reason: str, message: str, generation: int
) -> list[dict[str, Any]]:
    """The object's conditions with ``type_`` set, keeping the others as they are."""
    new = api.Condition(
        type=type_,
        status=api.ConditionStatus.TRUE if ok else api.ConditionStatus.FALSE,
        reason=reason,
        message=message[:1024],
        last_transition_time=now(),
        observed_generation=generation,
    )
    current = api.conditions_from_status(status.get("conditions"))
    return [api.to_api(c) for c in api.set_condition(current, new)]


def reject(
    body: kopf.Body,
    patch: kopf.Patch,
    reason: str,
    message: str,
    *,
    extra_conditions: tuple[str, ...] = (),
) -> None:
    """Record a final refusal: phase Rejected, a reason, a message and a warning Event."""
    generation = int(body.metadata.get("generation") or 0)
    conditions = condition(body.status, api.READY, False, reason, message, generation)
    for type_ in extra_conditions:
        conditions = condition(
            {"conditions": conditions}, type_, False, reason, message, generation
        )
    patch.status["phase"] = "Rejected"
    patch.status["reason"] = reason
    patch.status["message"] = message[:1024]
    patch.status["conditions"] = conditions
    patch.status["observedGeneration"] = generation
    kopf.warn(body, reason=reason, message=message[:1024])


def namespace_of(namespace: str | None) -> str:
    """Every kind is namespaced; kopf types the namespace as optional for cluster kinds."""
    if not namespace:
        raise kopf.PermanentError("namespaced kind delivered without a namespace")
    return namespace
