"""CardReview: record a reviewer's decision on a card in PendingReview.

Decode the object into :class:`app.review.RecordReview`, call the use case, render its
outcome into status and an Event. The namespace's review timer applies a recorded decision
(``handlers.card_refresh.apply_reviews``): the card is issued or rejected and shows the
decision in ``status.review``. Who may decide is RBAC on ``cardreviews``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import kopf

from fintech_operator import api
from fintech_operator.app import review as use_case
from fintech_operator.app.outcomes import Rejected, Retry
from fintech_operator.handlers import cards, indexes, report, wiring
from fintech_operator.handlers.context import OperatorMemo

if TYPE_CHECKING:
    from fintech_operator import config

DECIDED_PHASES: Final = frozenset({api.CardReviewPhase.RECORDED, api.CardReviewPhase.REFUSED})


class _IndexedCards:
    """:class:`app.review.Cards` read from kopf's ``cards`` index (no API call)."""

    def __init__(self, index: kopf.Index[Any, Any]) -> None:
        self._index = index

    def find(self, namespace: str, name: str) -> use_case.CardFact | None:
        fact = indexes.first(self._index, (namespace, name))
        if fact is None:
            return None
        return use_case.CardFact(uid=str(fact["uid"]), phase=fact.get("phase"))


async def record(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    retry: int,
    memo: OperatorMemo,
    **kwargs: Any,
) -> None:
    """Store the decision when the card waits for review; refuse it with a reason otherwise."""
    if body.status.get("phase") in DECIDED_PHASES:
        return
    command = use_case.RecordReview(
        namespace=report.namespace_of(kwargs["namespace"]),
        name=str(body.metadata.name),
        uid=str(body.metadata.uid),
        spec=spec,
        attempt=retry,
    )
    ports = use_case.Ports(
        cards=_IndexedCards(kwargs["cards"]),
        reviews=use_case.StoredReviews(memo.pool),
        card_waits_max=memo.settings.cards.missing_retries_max,
    )
    attempt = f"{retry + 1} of {ports.card_waits_max}"
    _render(body, patch, await use_case.record_review(command, ports), attempt)


def _render(
    body: kopf.Body, patch: kopf.Patch, outcome: use_case.Outcome, attempt: str = ""
) -> None:
    generation = report.generation_of(body)
    if isinstance(outcome, Retry):
        # An expected wait (the card is applied in the same batch), shown on the review as a
        # Posting shows its wait (Pending, WaitingForCard, one Event); logged at INFO.
        wait = report.Wait(report.WAITING_FOR_CARD, outcome.why, attempt, outcome.delay_seconds)
        raise report.waiting(body, patch, wait)
    if isinstance(outcome, Rejected):
        report.reject(
            body, patch, outcome.reason, outcome.message, phase=api.CardReviewPhase.REFUSED
        )
        return
    status = api.CardReviewStatus(
        phase=api.CardReviewPhase.RECORDED,
        recorded_at=report.to_second(outcome.recorded_at),
        reason=None,
        message=outcome.message,
        conditions=report.conditions(
            body.status,
            api.READY,
            True,
            api.CardReviewReason.RECORDED,
            outcome.message,
            generation,
        ),
        observed_generation=generation,
    )
    report.write_status(patch, status)
    cards.normal_event(
        body, reason=api.cardreview.CardReviewEvent.REVIEW_RECORDED, message=outcome.message
    )


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add :func:`record` to ``registry`` (see ``handlers.register``)."""
    wiring.on_new(registry, "cardreviews", record)


__all__ = ["record", "register"]
