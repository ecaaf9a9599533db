"""Status helpers shared by the handlers: conditions, rejections and Events."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import pydantic

from fintech_operator import api
from fintech_operator.api import common


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def timestamp() -> str:
    return api.format_timestamp(now())


def condition(
    status: Mapping[str, Any], type_: str, ok: bool, reason: str, message: str, generation: int
) -> list[dict[str, Any]]:
    """The object's conditions with ``type_`` set, keeping the others as they are."""
    return [api.to_api(c) for c in conditions(status, type_, ok, reason, message, generation)]


def conditions(
    status: Mapping[str, Any], type_: str, ok: bool, reason: str, message: str, generation: int
) -> list[api.Condition]:
    """:func:`condition`, typed: for a status model (``api.CardStatus(conditions=...)``)."""
    new = api.Condition(
        type=type_,
        status=api.ConditionStatus.TRUE if ok else api.ConditionStatus.FALSE,
        reason=reason,
        message=message[:1024],
        last_transition_time=now(),
        observed_generation=generation,
    )
    current = api.conditions_from_status(status.get("conditions"))
    return api.set_condition(current, new)


def write_status(patch: kopf.Patch, status: pydantic.BaseModel) -> None:
    """Lay a typed status (``api.CardStatus``, ``api.PostingStatus``, ...) over the patch.

    Only the fields the model was given are written; a field given as None clears it. The
    model validates every value, so a misspelt field or a bad phase fails here instead of
    being pruned silently by the CRD's structural schema.
    """
    patch.status.update(status.model_dump(mode="json", by_alias=True, exclude_unset=True))


class PhaseStatus(common.StatusModel):
    """The status fields every kind shares: what a refusal or a wait writes, whatever the kind.

    Typed like each kind's own Status model, so the keys are never written by hand.
    """

    phase: str | None = None
    reason: common.Reason | None = None
    message: common.Message | None = None
    conditions: list[api.Condition] = pydantic.Field(default_factory=list)
    observed_generation: common.Generation | None = None


def reject(
    body: kopf.Body,
    patch: kopf.Patch,
    reason: str,
    message: str,
    *,
    extra_conditions: tuple[str, ...] = (),
    phase: str = "Rejected",
) -> None:
    """Record a final refusal: ``phase`` (Rejected unless the kind names it otherwise), a
    reason, a message and a warning Event."""
    generation = int(body.metadata.get("generation") or 0)
    found = conditions(body.status, api.READY, False, reason, message, generation)
    for type_ in extra_conditions:
        found = conditions(
            {"conditions": [api.to_api(c) for c in found]}, type_, False, reason, message,
            generation,
        )  # fmt: skip
    status = PhaseStatus(
        phase=phase,
        reason=reason,
        message=message[:1024],
        conditions=found,
        observed_generation=generation,
    )
    write_status(patch, status)
    kopf.warn(body, reason=reason, message=message[:1024])


def namespace_of(namespace: str | None) -> str:
    """Every kind is namespaced; kopf types the namespace as optional for cluster kinds."""
    if not namespace:
        raise kopf.PermanentError("namespaced kind delivered without a namespace")
    return namespace


# --- Waiting for something that is not there yet (issue 11) ---------------------------------------

# Reasons a resource shows while it waits; each ends in a final rejection if the wait runs out.
WAITING_FOR_PRODUCT = "WaitingForProduct"
WAITING_FOR_CARD = "WaitingForCard"
WAITING_FOR_ORIGINAL = "WaitingForOriginal"
WAITING_FOR_PROCESSOR = "WaitingForProcessor"
# kopf logs a TemporaryError as "<handler> failed temporarily: <message>" at ERROR; the runtime's
# log filter turns lines whose message starts with this prefix into INFO: a wait is expected.
WAIT_PREFIX = "waiting: "


@dataclass(frozen=True)
class Wait:
    """What a resource waits for: ``reason`` and ``message`` are shown on it, ``attempt``
    ("3 of 30") goes into the log line only, ``phase`` is the phase it keeps meanwhile."""

    reason: str
    message: str
    attempt: str
    delay_seconds: float
    phase: str = "Pending"


def waiting(body: kopf.Body, patch: kopf.Patch, wait: Wait) -> kopf.TemporaryError:
    """Show a wait on the resource and return the retry to raise.

    The status says at once what the resource waits for (its phase, the wait's reason, a Ready
    condition False with the same reason and message); the Event is posted once per wait, when
    the status does not show it yet, not on every retry. The attempt goes into the log line
    only, so the status and the Event stay the same while the wait lasts.
    """
    reason, message, phase = wait.reason, wait.message, wait.phase
    attempt, delay_seconds = wait.attempt, wait.delay_seconds
    generation = int(body.metadata.get("generation") or 0)
    # Conditions written earlier in this same handler call (an assessment) are kept.
    base = patch.status.get("conditions") or body.status.get("conditions")
    status = PhaseStatus(
        phase=phase,
        reason=reason,
        message=message[:1024],
        conditions=conditions({"conditions": base}, api.READY, False, reason, message, generation),
    )
    write_status(patch, status)
    if body.status.get("reason") != reason:
        kopf.warn(body, reason=reason, message=message[:1024])
    return kopf.TemporaryError(
        f"{WAIT_PREFIX}{message} (attempt {attempt}, next in {delay_seconds:.0f} s)",
        delay=delay_seconds,
    )


# --- Typed status helpers of the reviews, policies and recon handlers ----------------------------


def generation_of(body: kopf.Body) -> int:
    return int(body.metadata.get("generation") or 0)


def status_fields(status: pydantic.BaseModel) -> dict[str, Any]:
    """The fields ``status`` was given, by their API names (None kept: it clears the field),
    as :func:`write_status` writes them: for a status patch of its own, or to compare."""
    return status.model_dump(mode="json", by_alias=True, exclude_unset=True)


def to_second(moment: datetime.datetime) -> datetime.datetime:
    """``moment`` in UTC to the second, as Kubernetes shows times (and as status keeps them)."""
    return moment.astimezone(datetime.UTC).replace(microsecond=0)
