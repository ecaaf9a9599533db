"""RecordReview: store a reviewer's decision on a card that waits in PendingReview.

The decision is stored once in ``card_reviews`` (the first review of a card wins); the card
applies it on its own (``handlers.cards``). A review of a card that is not decided yet (just
applied, or still being assessed) is retried a bounded number of times before it is refused,
so a card and its review applied in one batch work in either order.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any, Final, Protocol

import pydantic
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.app.outcomes import Rejected, Retry
from fintech_operator.compliance import store

RETRY_DELAY_SECONDS: Final = 2.0
# A card in one of these phases has not been decided yet: its review waits for it.
UNDECIDED_PHASES: Final = frozenset({None, "", api.CardPhase.PENDING})


@dataclasses.dataclass(frozen=True)
class RecordReview:
    """The command: CardReview ``namespace/name`` (uid ``uid``) with its raw ``spec``.

    ``attempt`` counts the earlier tries of this same command (0 the first time).
    """

    namespace: str
    name: str
    uid: str
    spec: Mapping[str, Any]
    attempt: int = 0


@dataclasses.dataclass(frozen=True)
class CardFact:
    """What a review needs to know of its card."""

    uid: str
    phase: str | None


class Cards(Protocol):
    """Finds a card of a namespace by name (None when it does not exist, or not yet)."""

    def find(self, namespace: str, name: str) -> CardFact | None: ...


class Reviews(Protocol):
    """Stores a review unless the card has one; returns the one that stands."""

    async def record(self, new: store.NewReview) -> store.Review: ...


@dataclasses.dataclass(frozen=True)
class Ports:
    cards: Cards
    reviews: Reviews
    # How many times a review of an undecided or unknown card is retried before it is refused.
    card_waits_max: int


@dataclasses.dataclass(frozen=True)
class Recorded:
    """The decision is stored; the card applies it."""

    review_id: int
    recorded_at: datetime.datetime
    message: str


Outcome = Recorded | Rejected[api.CardReviewReason] | Retry


async def record_review(command: RecordReview, ports: Ports) -> Outcome:
    """Store the decision when the card waits for review; refuse it with a reason otherwise."""
    try:
        spec = api.CardReviewSpec.model_validate(dict(command.spec))
    except pydantic.ValidationError as exc:
        return Rejected(api.CardReviewReason.INVALID_SPEC, api.format_validation_error(exc))
    card = _card_in_review(command, spec, ports)
    if not isinstance(card, CardFact):
        return card
    stored = await ports.reviews.record(
        store.NewReview(
            card=f"{command.namespace}/{spec.card}",
            card_uid=card.uid,
            review=f"{command.namespace}/{command.name}",
            review_uid=command.uid,
            decision=spec.decision.value,
            reviewer=spec.reviewer,
            comment=spec.comment,
        )
    )
    if stored.review_uid != command.uid:
        return Rejected(
            api.CardReviewReason.ALREADY_REVIEWED,
            f"card {spec.card!r} was already decided by CardReview {stored.review} "
            f"({stored.decision} by {stored.reviewer}); the first review stands",
        )
    return Recorded(
        review_id=stored.id,
        recorded_at=stored.created_at,
        message=f"{spec.decision.value} of card {spec.card!r} recorded (card_reviews {stored.id})",
    )


def _card_in_review(
    command: RecordReview, spec: api.CardReviewSpec, ports: Ports
) -> CardFact | Rejected[api.CardReviewReason] | Retry:
    """The card when it waits for review; else why the review cannot be stored (now)."""
    card = ports.cards.find(command.namespace, spec.card)
    undecided = card is None or card.phase in UNDECIDED_PHASES
    if undecided and command.attempt < ports.card_waits_max:
        # The card may be applied in the same batch, or still being assessed: the review shows
        # the wait (Pending, WaitingForCard) and says how it ends.
        seconds = f"{ports.card_waits_max * RETRY_DELAY_SECONDS:.0f}"
        what = (
            "it does not exist; the review is refused (CardNotFound) if that lasts"
            if card is None
            else "it is not decided yet; the review is refused (CardNotPendingReview) unless "
            "it waits for review within"
        )
        return Retry(
            RETRY_DELAY_SECONDS,
            f"waiting for card {spec.card!r} in {command.namespace}: {what} about {seconds} s",
        )
    if card is None:
        return Rejected(
            api.CardReviewReason.CARD_NOT_FOUND,
            f"card {spec.card!r} does not exist in {command.namespace}",
        )
    if card.phase != api.CardPhase.PENDING_REVIEW:
        return Rejected(
            api.CardReviewReason.CARD_NOT_PENDING_REVIEW,
            f"card {spec.card!r} is {card.phase or 'Pending'}, not PendingReview; "
            "only a card waiting for review can be decided",
        )
    return card


class StoredReviews:
    """:class:`Reviews` in PostgreSQL, one pooled connection per call."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self._pool = pool

    async def record(self, new: store.NewReview) -> store.Review:
        async with self._pool.connection() as conn:
            return await store.record_review(conn, new)
