"""CardReview: a person's decision on a card in PendingReview, as its own object.

A separate kind rather than a field of the Card, so that RBAC can grant "create cardreviews"
to reviewers without letting card owners approve their own cards (Kubernetes RBAC cannot
restrict single fields), and so that a GitOps repository keeps each decision as a reviewed
commit. The whole spec is immutable: a decision is changed by nobody, ever; the first
review of a card wins and is recorded in the database (``card_reviews``).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final

import pydantic

from fintech_operator.api import common

REVIEWER_MAX_LENGTH: Final = 256
COMMENT_MAX_LENGTH: Final = 1024


class ReviewDecision(enum.StrEnum):
    """What the reviewer decided."""

    APPROVE = "Approve"
    REJECT = "Reject"


class CardReviewPhase(enum.StrEnum):
    """Lifecycle of a review as the operator sees it."""

    PENDING = "Pending"
    RECORDED = "Recorded"
    REFUSED = "Refused"


class CardReviewReason(enum.StrEnum):
    """Why a review was Refused (``status.reason``), or Ready's reason once Recorded."""

    INVALID_SPEC = "InvalidSpec"
    CARD_NOT_FOUND = "CardNotFound"
    CARD_NOT_PENDING_REVIEW = "CardNotPendingReview"
    ALREADY_REVIEWED = "AlreadyReviewed"
    RECORDED = "Recorded"


class CardReviewEvent(enum.StrEnum):
    """Reason of the Normal Event of a recorded review (a refused one warns with its reason)."""

    REVIEW_RECORDED = "ReviewRecorded"


class CardReviewSpec(common.SpecModel):
    """The decision. Immutable: a recorded decision is history."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.immutable(
            "spec", "a review is a recorded decision; create a new CardReview instead"
        )
    )

    card: common.ObjectName = pydantic.Field(
        description="Name of the Card in the same namespace; it must be in PendingReview."
    )
    decision: ReviewDecision = pydantic.Field(
        description="Approve (the card is issued) or Reject (the card ends Rejected)."
    )
    reviewer: Annotated[
        str,
        common.Expected(
            f"who decided, 1 to {REVIEWER_MAX_LENGTH} characters not starting with a space, "
            "such as an e-mail address"
        ),
    ] = pydantic.Field(
        min_length=1,
        max_length=REVIEWER_MAX_LENGTH,
        pattern=r"^[^\s].*$",
        description="Who decided, e.g. an e-mail address, as recorded in the audit trail.",
    )
    comment: str = pydantic.Field(
        min_length=1,
        max_length=COMMENT_MAX_LENGTH,
        description="Why, in words: what was checked and found, without a card number. Kept in "
        "the audit trail.",
        json_schema_extra=common.no_card_number(),
    )

    _comment_holds_no_card_number = pydantic.field_validator("comment")(common.refuse_card_number)


class CardReviewStatus(common.StatusModel):
    """Observed state of the review, written by the operator only."""

    phase: CardReviewPhase | None = pydantic.Field(
        default=None,
        description=(
            "Pending (card not decided yet), Recorded (the decision is stored and the card "
            "applies it) or Refused (see reason: the card was not in PendingReview, or "
            "another review was recorded first)."
        ),
    )
    recorded_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When the decision was stored (RFC 3339)."
    )
    reason: common.Reason | None = pydantic.Field(
        default=None, description="CamelCase cause of the phase, e.g. CardNotPendingReview."
    )
    message: common.Message | None = common.message_field()
    conditions: list[common.Condition] = common.conditions_field(
        "Current conditions of the review; Ready is True once Recorded."
    )
    observed_generation: common.Generation | None = common.observed_generation_field()
    kopf: dict[str, Any] | None = common.kopf_status_field()


KIND_INFO: Final = common.KindInfo(
    kind="CardReview",
    plural="cardreviews",
    singular="cardreview",
    short_names=("crv",),
    description=(
        "CardReview is a reviewer's decision (Approve or Reject) on a Card in PendingReview. "
        "Grant create on cardreviews only to reviewers. The first review of a card is "
        "recorded in the database and applied to the card; its spec is immutable."
    ),
    spec_model=CardReviewSpec,
    status_model=CardReviewStatus,
    printer_columns=(
        common.PrinterColumn("Card", "string", ".spec.card", "Card reviewed."),
        common.PrinterColumn("Decision", "string", ".spec.decision", "Approve or Reject."),
        common.PrinterColumn("Reviewer", "string", ".spec.reviewer", "Who decided."),
        common.PrinterColumn("Phase", "string", ".status.phase", "Lifecycle phase."),
        common.reason_column("Why the review was Refused."),
        common.age_column(),
    ),
    selectable_fields=(".spec.card",),
)
