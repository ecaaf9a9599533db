"""RecordReview's outcomes, with fakes of its ports (no kopf, no database): a review of a card
in PendingReview is recorded once, the first review stands, and every other case is refused
with its reason or retried while the card may still come."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

import pytest

from fintech_operator import api
from fintech_operator.app import review
from fintech_operator.app.outcomes import Rejected, Retry
from fintech_operator.compliance import store

NS = "team-a"
SPEC: dict[str, Any] = {
    "card": "alice",
    "decision": "Approve",
    "reviewer": "ana@example.com",
    "comment": "documents checked",
}
WHEN = datetime.datetime(2026, 12, 5, 10, 0, 0, 123456, tzinfo=datetime.UTC)


@dataclasses.dataclass
class FakeCards:
    facts: dict[tuple[str, str], review.CardFact]

    def find(self, namespace: str, name: str) -> review.CardFact | None:
        return self.facts.get((namespace, name))


@dataclasses.dataclass
class FakeReviews:
    """card_reviews in memory: UNIQUE(card_uid), the first row stands."""

    rows: dict[str, store.Review] = dataclasses.field(default_factory=dict)
    calls: int = 0

    async def record(self, new: store.NewReview) -> store.Review:
        self.calls += 1
        fields = dataclasses.asdict(new)
        return self.rows.setdefault(
            new.card_uid, store.Review(id=len(self.rows) + 1, created_at=WHEN, **fields)
        )


def ports(phase: str | None, waits_max: int = 3) -> review.Ports:
    facts = {} if phase == "absent" else {(NS, "alice"): review.CardFact("card-uid", phase)}
    return review.Ports(cards=FakeCards(facts), reviews=FakeReviews(), card_waits_max=waits_max)


def command(name: str = "r1", attempt: int = 0, **spec: Any) -> review.RecordReview:
    return review.RecordReview(NS, name, f"uid-{name}", {**SPEC, **spec}, attempt)


async def test_a_review_of_a_card_in_pending_review_is_recorded_with_its_fields() -> None:
    wired = ports(api.CardPhase.PENDING_REVIEW)
    outcome = await review.record_review(command(), wired)
    assert isinstance(outcome, review.Recorded)
    assert outcome.review_id == 1
    assert outcome.recorded_at == WHEN
    assert outcome.message == "Approve of card 'alice' recorded (card_reviews 1)"
    assert isinstance(wired.reviews, FakeReviews)
    stored = wired.reviews.rows["card-uid"]
    assert (stored.card, stored.review, stored.review_uid) == (
        "team-a/alice",
        "team-a/r1",
        "uid-r1",
    )
    assert (stored.decision, stored.reviewer) == ("Approve", "ana@example.com")


async def test_the_first_review_stands_and_a_second_is_refused_naming_it() -> None:
    wired = ports(api.CardPhase.PENDING_REVIEW)
    first = await review.record_review(command("r1"), wired)
    second = await review.record_review(command("r2", decision="Reject"), wired)
    again = await review.record_review(command("r1"), wired)
    assert isinstance(first, review.Recorded)
    assert isinstance(second, Rejected)
    assert second.reason is api.CardReviewReason.ALREADY_REVIEWED
    assert "CardReview team-a/r1 (Approve by ana@example.com)" in second.message
    # The first review, handled again (a resumed handler), is still Recorded, not refused.
    assert again == first


async def test_an_invalid_spec_is_refused_without_touching_the_store() -> None:
    wired = ports(api.CardPhase.PENDING_REVIEW)
    outcome = await review.record_review(command(decision="Maybe", reviewer=" x"), wired)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is api.CardReviewReason.INVALID_SPEC
    assert "spec.decision" in outcome.message
    assert "spec.reviewer" in outcome.message
    assert isinstance(wired.reviews, FakeReviews)
    assert wired.reviews.calls == 0


@pytest.mark.parametrize("phase", ["absent", None, api.CardPhase.PENDING])
async def test_a_card_not_decided_yet_is_waited_for_while_attempts_remain(
    phase: str | None,
) -> None:
    outcome = await review.record_review(command(attempt=2), ports(phase, waits_max=3))
    what = (
        "it does not exist; the review is refused (CardNotFound) if that lasts"
        if phase == "absent"
        else "it is not decided yet; the review is refused (CardNotPendingReview) unless it "
        "waits for review within"
    )
    assert outcome == Retry(
        review.RETRY_DELAY_SECONDS, f"waiting for card 'alice' in team-a: {what} about 6 s"
    )


async def test_a_card_that_never_appears_is_refused_as_not_found() -> None:
    outcome = await review.record_review(command(attempt=3), ports("absent", waits_max=3))
    assert outcome == Rejected(
        api.CardReviewReason.CARD_NOT_FOUND, "card 'alice' does not exist in team-a"
    )


@pytest.mark.parametrize(
    ("phase", "attempt", "shown"),
    [
        (api.CardPhase.ACTIVE, 0, "Active"),  # decided: refused at once, no wait
        (api.CardPhase.REJECTED, 0, "Rejected"),
        (api.CardPhase.PENDING, 3, "Pending"),  # still undecided when the waits ran out
        (None, 3, "Pending"),
    ],
)
async def test_a_card_not_in_pending_review_is_refused(
    phase: str | None, attempt: int, shown: str
) -> None:
    wired = ports(phase, waits_max=3)
    outcome = await review.record_review(command(attempt=attempt), wired)
    assert isinstance(outcome, Rejected)
    assert outcome.reason is api.CardReviewReason.CARD_NOT_PENDING_REVIEW
    assert outcome.message.startswith(f"card 'alice' is {shown}, not PendingReview")
    assert isinstance(wired.reviews, FakeReviews)
    assert wired.reviews.calls == 0


def test_a_retry_must_wait() -> None:
    with pytest.raises(ValueError, match="positive"):
        Retry(0, "no wait")
