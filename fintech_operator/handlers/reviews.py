"""CardReview: record a reviewer's decision on a card in PendingReview.

The decision is stored once in ``card_reviews`` (the first review of a card wins), then the
namespace's review timer applies it (``handlers.card_refresh.apply_reviews``): the card is
issued or rejected and shows the decision in ``status.review``. Who may decide is RBAC on
``cardreviews``.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

import kopf
import pydantic

from fintech_operator import api
from fintech_operator.compliance import store
from fintech_operator.handlers import cards, indexes, report

DECIDED_PHASES: Final = frozenset({api.CardReviewPhase.RECORDED, api.CardReviewPhase.REFUSED})
TEMPORARY_DELAY_SECONDS: Final = 2.0


def _refuse(body: kopf.Body, patch: kopf.Patch, reason: str, message: str) -> None:
    generation = int(body.metadata.get("generation") or 0)
    patch.status.update(
        {
            "phase": api.CardReviewPhase.REFUSED.value,
            "reason": reason,
            "message": message[:1024],
            "conditions": report.condition(
                body.status, api.READY, False, reason, message, generation
            ),
            "observedGeneration": generation,
        }
    )
    kopf.warn(body, reason=reason, message=message[:1024])


@kopf.on.resume(api.GROUP, api.VERSION, "cardreviews")
@kopf.on.create(api.GROUP, api.VERSION, "cardreviews")
async def record(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    namespace: str | None,
    name: str,
    retry: int,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Store the decision when the card waits for review; refuse it with a reason otherwise."""
    cards_index: kopf.Index[Any, Any] = kwargs["cards"]
    if body.status.get("phase") in DECIDED_PHASES:
        return
    namespace = report.namespace_of(namespace)
    try:
        review = api.CardReviewSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        _refuse(body, patch, api.CardReviewReason.INVALID_SPEC, api.format_validation_error(exc))
        return
    card = indexes.first(cards_index, (namespace, review.card))
    undecided = card is None or card.get("phase") in (None, "", "Pending")
    if undecided and retry < memo.settings.missing_card_retry_limit:
        # The card may be applied in the same batch, or still being assessed.
        raise kopf.TemporaryError(
            f"card {review.card!r} not decided yet", delay=TEMPORARY_DELAY_SECONDS
        )
    if card is None:
        _refuse(
            body,
            patch,
            api.CardReviewReason.CARD_NOT_FOUND,
            f"card {review.card!r} does not exist in {namespace}",
        )
        return
    if card.get("phase") != api.CardPhase.PENDING_REVIEW:
        _refuse(
            body,
            patch,
            api.CardReviewReason.CARD_NOT_PENDING_REVIEW,
            f"card {review.card!r} is {card.get('phase') or 'Pending'}, not PendingReview; "
            "only a card waiting for review can be decided",
        )
        return
    async with memo.pool.connection() as conn:
        stored = await store.record_review(
            conn,
            card=f"{namespace}/{review.card}",
            card_uid=str(card["uid"]),
            review=f"{namespace}/{name}",
            review_uid=str(body.metadata.uid),
            decision=review.decision.value,
            reviewer=review.reviewer,
            comment=review.comment,
        )
    if stored.review_uid != str(body.metadata.uid):
        _refuse(
            body,
            patch,
            api.CardReviewReason.ALREADY_REVIEWED,
            f"card {review.card!r} was already decided by CardReview {stored.review} "
            f"({stored.decision} by {stored.reviewer}); the first review stands",
        )
        return
    generation = int(body.metadata.get("generation") or 0)
    message = f"{review.decision.value} of card {review.card!r} recorded (card_reviews {stored.id})"
    patch.status.update(
        {
            "phase": api.CardReviewPhase.RECORDED.value,
            "recordedAt": stored.created_at.astimezone(datetime.UTC)
            .replace(microsecond=0)
            .isoformat()
            .replace("+00:00", "Z"),
            "reason": None,
            "message": message,
            "conditions": report.condition(
                body.status, api.READY, True, api.CardReviewReason.RECORDED, message, generation
            ),
            "observedGeneration": generation,
        }
    )
    cards.normal_event(body, reason="ReviewRecorded", message=message)


__all__ = ["record"]
