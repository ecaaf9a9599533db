"""Card: one payment card of one user under one CardProduct."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final

import pydantic

from fintech_operator.api import common

USER_ID_MAX_LENGTH: Final = 128
HOLDER_NAME_MAX_LENGTH: Final = 256
MEMO_MAX_LENGTH: Final = 256
TOKEN_MAX_LENGTH: Final = 128
DECISION_MAX_LENGTH: Final = 64
DECISION_REASONS_MAX_ITEMS: Final = 16
DETAIL_MAX_LENGTH: Final = 256
ENTRY_ID_MAX_LENGTH: Final = 32
RECORD_ID_MAX_LENGTH: Final = 20
POINTS_MAX: Final = common.AMOUNT_MINOR_MAX


class KycStatus(enum.StrEnum):
    """Outcome of know-your-customer checks on the holder."""

    ACCEPTED = "Accepted"
    PENDING = "Pending"
    REJECTED = "Rejected"


class CardState(enum.StrEnum):
    """State the user asks the card to be in."""

    ACTIVE = "Active"
    FROZEN = "Frozen"
    CLOSED = "Closed"


class CardType(enum.StrEnum):
    """Form factor of the card."""

    VIRTUAL = "Virtual"
    PHYSICAL = "Physical"


class CardPhase(enum.StrEnum):
    """Lifecycle of a card as the operator sees it."""

    PENDING = "Pending"
    ACTIVE = "Active"
    FROZEN = "Frozen"
    CLOSED = "Closed"
    REJECTED = "Rejected"
    PENDING_REVIEW = "PendingReview"


class CardReason(enum.StrEnum):
    """Why a card is in its phase (``status.reason``) and the reasons of its conditions."""

    # Rejected (final)
    INVALID_SPEC = "InvalidSpec"
    PRODUCT_NOT_FOUND = "ProductNotFound"
    NAME_REUSED = "NameReused"
    TOKENIZER_REFUSED = "TokenizerRefused"
    RISK_DECLINED = "RiskDeclined"
    KYC_NOT_ACCEPTED = "KycNotAccepted"
    KYC_REJECTED = "KycRejected"
    EXACT_MATCH = "ExactMatch"
    REVIEW_REJECTED = "ReviewRejected"
    # PendingReview
    RISK_REVIEW = "RiskReview"
    KYC_PENDING = "KycPending"
    POSSIBLE_MATCH = "PossibleMatch"
    SCREENING_UNAVAILABLE = "ScreeningUnavailable"
    UNSCREENABLE_NAME = "UnscreenableName"
    # Closed before issue; a close waiting for the balance
    CLOSED_BEFORE_ISSUE = "ClosedBeforeIssue"
    BALANCE_NOT_ZERO = "BalanceNotZero"
    # Reasons of conditions only
    ISSUED = "Issued"
    OPENED = "Opened"
    CLEARED = "Cleared"
    REVIEW_APPROVED = "ReviewApproved"


class Holder(common.SpecModel):
    """The person the card is issued to."""

    name: str = pydantic.Field(
        min_length=1,
        max_length=HOLDER_NAME_MAX_LENGTH,
        description=f"Full name as printed on the card, 1 to {HOLDER_NAME_MAX_LENGTH} characters, "
        "without a card number.",
        json_schema_extra=common.no_card_number(),
    )
    country: common.CountryCode = pydantic.Field(
        description="ISO 3166-1 alpha-2 country of residence, two uppercase letters, e.g. US."
    )
    kyc_status: KycStatus = pydantic.Field(
        default=KycStatus.PENDING,
        description=(
            "Know-your-customer outcome: Accepted, Pending or Rejected. A card is only "
            "issued once it is Accepted. Default Pending."
        ),
    )

    _name_holds_no_card_number = pydantic.field_validator("name")(common.refuse_card_number)


class CardSpec(common.SpecModel):
    """Desired state of the card."""

    user_id: Annotated[
        str,
        common.Expected(
            f"a user id: up to {USER_ID_MAX_LENGTH} letters, digits and _.@:- starting with a "
            "letter or digit, such as u_demo"
        ),
    ] = pydantic.Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:-]*$",
        min_length=1,
        max_length=USER_ID_MAX_LENGTH,
        description=(
            "Identifier of the user who owns the card, e.g. u_demo: letters, digits and "
            f"_.@:- up to {USER_ID_MAX_LENGTH} characters. Immutable."
        ),
        json_schema_extra=common.immutable("userId", "a card never changes owner"),
    )
    product: common.ObjectName = pydantic.Field(
        description="Name of the CardProduct in the same namespace that sets the card's "
        "currency, rewards and fees. Immutable.",
        json_schema_extra=common.immutable("product", "balances are kept in its currency"),
    )
    holder: Holder = pydantic.Field(description="The person the card is issued to.")
    state: CardState = pydantic.Field(
        default=CardState.ACTIVE,
        description=(
            "Active (usable), Frozen (purchases and fees refused, refunds and payments still "
            "land; reversible) or Closed (final: a closed card takes refunds only and can "
            "never be reopened). Default Active."
        ),
        json_schema_extra=common.cel_rules(
            (
                "oldSelf != 'Closed' || self == 'Closed'",
                "state Closed is final: a closed card cannot be reopened",
            )
        ),
    )
    spend_limit: common.SpendLimit | None = pydantic.Field(
        default=None,
        description="Spend limit in minor units of the product currency. Absent means the "
        "product's spendLimit applies, or no limit if the product has none.",
    )
    type: CardType = pydantic.Field(
        default=CardType.VIRTUAL,
        description="Form factor: Virtual or Physical. Default Virtual.",
    )
    memo: str | None = pydantic.Field(
        default=None,
        max_length=MEMO_MAX_LENGTH,
        description=f"Free text for people, up to {MEMO_MAX_LENGTH} characters, without a card "
        "number; never interpreted by the operator.",
        json_schema_extra=common.no_card_number(),
    )

    _memo_holds_no_card_number = pydantic.field_validator("memo")(common.refuse_card_number)


RuleName = Annotated[common.Reason, pydantic.Field(description="CamelCase name of a rule.")]


DetailLine = Annotated[
    str, pydantic.Field(max_length=DETAIL_MAX_LENGTH, description="One line of explanation.")
]

# Database row ids are 64-bit; status carries them as decimal strings so that JSON clients
# reading numbers as doubles cannot round them.
RecordId = Annotated[
    str, pydantic.Field(pattern=r"^[0-9]+$", min_length=1, max_length=RECORD_ID_MAX_LENGTH)
]


class SanctionsMatch(common.StatusModel):
    """An entry of the sanctions list that the holder's name resembles."""

    name: str = pydantic.Field(
        max_length=HOLDER_NAME_MAX_LENGTH, description="The listed name, as written in the list."
    )
    entry_id: str | None = pydantic.Field(
        default=None, max_length=ENTRY_ID_MAX_LENGTH, description="ent_num of the list entry."
    )
    program: str | None = pydantic.Field(
        default=None, max_length=DETAIL_MAX_LENGTH, description="Sanctions program of the entry."
    )
    score_bps: pydantic.StrictInt = pydantic.Field(
        ge=0,
        le=10_000,
        description="Jaro-Winkler similarity of the normalized names, in basis points.",
    )
    exact: bool = pydantic.Field(
        default=False, description="True when the normalized names are identical."
    )


class ReviewRecord(common.StatusModel):
    """A reviewer's decision as applied to the card."""

    decision: str = pydantic.Field(max_length=DECISION_MAX_LENGTH, description="Approve or Reject.")
    reviewer: str = pydantic.Field(max_length=HOLDER_NAME_MAX_LENGTH, description="Who decided.")
    comment: str | None = pydantic.Field(
        default=None, max_length=common.VALIDATION_MESSAGE_MAX_LENGTH, description="Why."
    )
    card_review: str | None = pydantic.Field(
        default=None,
        max_length=common.OBJECT_NAME_MAX_LENGTH,
        description="Name of the CardReview object that carried the decision.",
    )
    reviewed_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When the decision was recorded (RFC 3339)."
    )


class AmlStatus(common.StatusModel):
    """AML alerts raised on the card's postings (details in compliance_alerts)."""

    alerts: common.Count = pydantic.Field(
        default=0, description="Alerts announced on the card so far (Events ComplianceAlert)."
    )
    last_alert_id: RecordId | None = pydantic.Field(
        default=None,
        description="compliance_alerts id of the newest alert announced, as a string.",
    )
    last_alert: str | None = pydantic.Field(
        default=None,
        max_length=DETAIL_MAX_LENGTH,
        description="The newest alert in words, e.g. 'DailyThreshold on 2025-01-15'.",
    )


class Decision(common.StatusModel):
    """Summary of a risk or compliance decision. Fields beyond these are kept as written."""

    # Risk and compliance engines may report extra facts; keep them rather than fail.
    model_config = pydantic.ConfigDict(extra="allow")

    decision: str | None = pydantic.Field(
        default=None,
        max_length=DECISION_MAX_LENGTH,
        description="Outcome in CamelCase, e.g. Approve, Review or Decline.",
    )
    policy: str | None = pydantic.Field(
        default=None,
        max_length=common.OBJECT_NAME_MAX_LENGTH,
        description="Name of the policy object that decided.",
    )
    score: pydantic.StrictInt | None = pydantic.Field(
        default=None,
        ge=0,
        le=1000,
        description="Risk score, an integer from 0 (no risk) to 1000 (certain fraud).",
    )
    reasons: list[RuleName] = pydantic.Field(
        default_factory=list,
        max_length=DECISION_REASONS_MAX_ITEMS,
        description="Rules that fired, in CamelCase, e.g. HighVelocity.",
    )
    decided_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When the decision was made (RFC 3339)."
    )
    details: list[DetailLine] = pydantic.Field(
        default_factory=list,
        max_length=DECISION_REASONS_MAX_ITEMS,
        description="One line per rule that fired, saying what it saw, e.g. "
        "'BlockedHolderCountry: holder country KP is blocked'.",
    )
    record_id: RecordId | None = pydantic.Field(
        default=None,
        description="Id of the audit row (risk_assessments or compliance_checks), as a string.",
    )
    match: SanctionsMatch | None = pydantic.Field(
        default=None, description="The best sanctions-list match, when screening found one."
    )


class CardStatus(common.StatusModel):
    """Observed state of the card, written by the operator only. Never holds a PAN or CVV."""

    phase: CardPhase | None = pydantic.Field(
        default=None,
        description=(
            "Pending (being issued), Active, Frozen, Closed, Rejected (see reason) or "
            "PendingReview (waiting for KYC, risk or compliance review)."
        ),
    )
    token: str | None = pydantic.Field(
        default=None,
        max_length=TOKEN_MAX_LENGTH,
        description="Opaque token standing for the card number; the number itself is never stored.",
    )
    last4: str | None = pydantic.Field(
        default=None,
        pattern=r"^[0-9]{4}$",
        min_length=4,
        max_length=4,
        description="Last four digits of the card number, for people to recognise the card.",
    )
    account: str | None = pydantic.Field(
        default=None,
        max_length=common.ACCOUNT_MAX_LENGTH,
        description="Ledger account of the card, used in Posting entries.",
    )
    balance: common.Money | None = pydantic.Field(
        default=None,
        description="Ledger balance in minor units of the product currency; positive means "
        "the user owes that amount.",
    )
    held: common.Money | None = pydantic.Field(
        default=None,
        description="What the card's pending real-time authorizations hold, in minor units "
        "of the product currency: reserved, not yet posted (see docs/authorizations.md).",
    )
    available: common.Money | None = pydantic.Field(
        default=None,
        description="What the card may still spend under its spend limit: the limit minus "
        "what was spent in the limit's window minus what is held. Absent when the card has "
        "no limit.",
    )
    rewards_points: pydantic.StrictInt | None = pydantic.Field(
        default=None,
        ge=-POINTS_MAX,
        le=POINTS_MAX,
        description="Rewards points earned minus points reversed by refunds, an integer.",
    )
    risk: Decision | None = pydantic.Field(
        default=None, description="Latest risk assessment of the card."
    )
    compliance: Decision | None = pydantic.Field(
        default=None, description="Latest compliance (AML/KYC) screening of the card."
    )
    issued_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When the card was issued (RFC 3339)."
    )
    aml: AmlStatus | None = pydantic.Field(
        default=None, description="AML alerts raised on the card's postings."
    )
    review: ReviewRecord | None = pydantic.Field(
        default=None, description="Manual review decision, when the card needed one."
    )
    reason: common.Reason | None = pydantic.Field(
        default=None,
        description="CamelCase cause of the current phase, e.g. KycRejected or ProductNotFound.",
    )
    message: common.Message | None = common.message_field(
        "Human-readable details of the current phase."
    )
    conditions: list[common.Condition] = common.conditions_field(
        "Current conditions of the card; Ready is always present once seen."
    )
    observed_generation: common.Generation | None = common.observed_generation_field()
    kopf: dict[str, Any] | None = common.kopf_status_field()


KIND_INFO: Final = common.KindInfo(
    kind="Card",
    plural="cards",
    singular="card",
    short_names=("cd",),
    description=(
        "Card is a payment card of one user under one CardProduct. The operator issues it "
        "(token and last 4 digits only, never the card number), keeps its ledger balance "
        "and rewards points in status, and follows spec.state."
    ),
    spec_model=CardSpec,
    status_model=CardStatus,
    printer_columns=(
        common.PrinterColumn("User", "string", ".spec.userId", "Owner of the card."),
        common.PrinterColumn("Product", "string", ".spec.product", "CardProduct of the card."),
        common.PrinterColumn("Phase", "string", ".status.phase", "Lifecycle phase."),
        common.reason_column("Why the card is Rejected, PendingReview or not closing yet."),
        common.PrinterColumn("Last4", "string", ".status.last4", "Last four digits."),
        common.PrinterColumn(
            "Balance", "integer", ".status.balance.amount", "Balance in minor units."
        ),
        common.PrinterColumn("Held", "integer", ".status.held.amount", "Held by authorizations."),
        common.PrinterColumn(
            "Available", "integer", ".status.available.amount", "Left to spend under the limit."
        ),
        common.PrinterColumn("Points", "integer", ".status.rewardsPoints", "Rewards points."),
        common.age_column(),
        common.PrinterColumn(
            "Currency", "string", ".status.balance.currency", "Currency of the balance.", 1
        ),
    ),
    selectable_fields=(".spec.userId", ".spec.product"),
)
