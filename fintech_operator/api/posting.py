"""Posting: one money movement on a card, recorded once in the double-entry ledger."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final

import pydantic

from fintech_operator.api import card, common

MERCHANT_NAME_MAX_LENGTH: Final = 128
REFERENCE_MAX_LENGTH: Final = 128
IDEMPOTENCY_KEY_MAX_LENGTH: Final = 256
ENTRIES_MIN_ITEMS: Final = 2
ENTRIES_MAX_ITEMS: Final = 32
JOURNAL_ID_MAX_LENGTH: Final = 64


class PostingPhase(enum.StrEnum):
    """Lifecycle of a posting: it is decided exactly once."""

    PENDING = "Pending"
    POSTED = "Posted"
    REJECTED = "Rejected"


class PostingReason(enum.StrEnum):
    """Why a posting was rejected. The set is fixed; the schema keeps the field open
    (CamelCase text) so that a status patch from a newer operator is never refused."""

    CARD_NOT_FOUND = "CardNotFound"
    CARD_NOT_ACTIVE = "CardNotActive"
    CURRENCY_MISMATCH = "CurrencyMismatch"
    SPEND_LIMIT_EXCEEDED = "SpendLimitExceeded"
    UNBALANCED = "Unbalanced"
    IDEMPOTENCY_CONFLICT = "IdempotencyConflict"
    ALREADY_REVERSED = "AlreadyReversed"
    NOT_REVERSIBLE = "NotReversible"
    JOURNAL_NOT_FOUND = "JournalNotFound"
    ACCOUNT_NOT_FOUND = "AccountNotFound"
    ACCOUNT_CLOSED = "AccountClosed"
    ACCOUNT_NOT_ALLOWED = "AccountNotAllowed"
    RISK_DECLINED = "RiskDeclined"
    INVALID_SPEC = "InvalidSpec"


class Direction(enum.StrEnum):
    """Side of a double-entry line."""

    DEBIT = "Debit"
    CREDIT = "Credit"


class Merchant(common.SpecModel):
    """Where a purchase or refund happened."""

    name: str = pydantic.Field(
        min_length=1,
        max_length=MERCHANT_NAME_MAX_LENGTH,
        description=f"Merchant name as shown to the user, 1 to {MERCHANT_NAME_MAX_LENGTH} "
        "characters, without a card number.",
        json_schema_extra=common.no_card_number(),
    )
    mcc: common.MerchantCategoryCode | None = pydantic.Field(
        default=None,
        description="ISO 18245 merchant category code, exactly four digits, e.g. 5812.",
    )
    country: common.CountryCode | None = pydantic.Field(
        default=None,
        description="ISO 3166-1 alpha-2 country of the merchant, two uppercase letters.",
    )

    # The name reaches the journal, the posting's events on Kafka and webhooks (invariant 7).
    _name_holds_no_card_number = pydantic.field_validator("name")(common.refuse_card_number)


class Entry(common.SpecModel):
    """One explicit line of a double-entry journal."""

    account: Annotated[
        str,
        common.Expected(
            f"a ledger account code: up to {common.ACCOUNT_MAX_LENGTH} letters, digits and "
            ":._/@- starting with a letter or digit, such as the card's status.account"
        ),
    ] = pydantic.Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9:._/@-]*$",
        min_length=1,
        max_length=common.ACCOUNT_MAX_LENGTH,
        description="Ledger account of the line, e.g. the card's status.account.",
    )
    direction: Direction = pydantic.Field(description="Debit or Credit.")
    amount_minor: common.PositiveAmountMinor = pydantic.Field(
        description=f"Line amount in minor units of currency, 1 to {common.AMOUNT_MINOR_MAX}."
    )
    currency: common.CurrencyCode = pydantic.Field(
        description="ISO 4217 code of the line, three uppercase letters."
    )


class PostingSpec(common.SpecModel):
    """Desired posting. The whole spec is immutable: correct a posting by reversing it."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.immutable(
            "spec", "a posting is recorded once; create a Posting that reverses it instead"
        )
    )

    card: common.ObjectName = pydantic.Field(
        description="Name of the Card in the same namespace whose account is posted to."
    )
    type: common.PostingType = pydantic.Field(
        description=(
            "Purchase and Fee add to what the user owes, Refund and Payment reduce it, "
            "Adjustment moves it either way (explicit entries recommended)."
        )
    )
    amount_minor: common.PositiveAmountMinor = pydantic.Field(
        description=(
            "Amount in minor units of currency (12500 = 125.00), an integer from 1 to "
            f"{common.AMOUNT_MINOR_MAX}; never a decimal."
        )
    )
    currency: common.CurrencyCode = pydantic.Field(
        description="ISO 4217 code, three uppercase letters; must equal the card's currency."
    )
    merchant: Merchant | None = pydantic.Field(
        default=None, description="Where the purchase or refund happened, if anywhere."
    )
    reference: str | None = pydantic.Field(
        default=None,
        min_length=1,
        max_length=REFERENCE_MAX_LENGTH,
        description="External identifier from the processor, used by reconciliation to "
        f"match records; up to {REFERENCE_MAX_LENGTH} characters. A reference holding a card "
        "number (a Luhn-valid number of 13 to 19 digits) is Rejected with InvalidSpec.",
    )
    occurred_at: common.Timestamp | None = pydantic.Field(
        default=None,
        description="When the movement happened (RFC 3339). Default: the object's "
        "creationTimestamp. Spend limits count postings by when the ledger recorded them "
        "(UTC day or month), not by this time.",
    )
    idempotency_key: (
        Annotated[
            str,
            common.Expected(
                f"up to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters without spaces, "
                "such as order-1234"
            ),
        ]
        | None
    ) = pydantic.Field(
        default=None,
        pattern=r"^[!-~]+$",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX_LENGTH,
        description=(
            "Key that posts at most once: printable ASCII without spaces, up to "
            f"{IDEMPOTENCY_KEY_MAX_LENGTH} characters. Default: <namespace>/<name>, so a "
            "deleted and re-applied Posting never posts twice."
        ),
    )
    entries: list[Entry] | None = pydantic.Field(
        default=None,
        min_length=ENTRIES_MIN_ITEMS,
        max_length=ENTRIES_MAX_ITEMS,
        description=(
            f"Advanced: explicit journal lines ({ENTRIES_MIN_ITEMS} to {ENTRIES_MAX_ITEMS}) "
            "instead of the lines the type implies: the card's own account moved by amount "
            "in the type's direction, the other side split across system accounts. Debits "
            "must equal credits per currency (else Unbalanced); another account is "
            "AccountNotAllowed."
        ),
    )
    reverses: common.ObjectName | None = pydantic.Field(
        default=None,
        description="Name of a Posting in the same namespace to reverse, wholly: card, "
        "amount and currency must be the original's (else InvalidSpec). A posting can be "
        "reversed once (else AlreadyReversed), also after its TTL deleted it.",
    )
    ttl_seconds_after_finished: pydantic.StrictInt | None = pydantic.Field(
        default=None,
        ge=0,
        le=common.INT32_MAX,
        description="Seconds after the posting is Posted or Rejected when the operator "
        "deletes the object; the ledger keeps the journal. Absent means never.",
    )

    # The reference reaches the journal, reconciliation and the events (invariant 7).
    _reference_holds_no_card_number = pydantic.field_validator("reference")(common.refuse_pan)


class PostingStatus(common.StatusModel):
    """Observed state of the posting, written by the operator only."""

    phase: PostingPhase | None = pydantic.Field(
        default=None,
        description="Pending until decided, then Posted (in the ledger) or Rejected "
        "(see reason). A decided posting never changes phase.",
    )
    risk: card.Decision | None = pydantic.Field(
        default=None,
        description="The risk policy's decision on this posting (Approve, Review or Decline), "
        "its score and the rules that matched; recorded in risk_assessments.",
    )
    journal_id: str | None = pydantic.Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]+$",
        min_length=1,
        max_length=JOURNAL_ID_MAX_LENGTH,
        description="Identifier of the ledger journal, as a string so 64-bit ids survive "
        "JSON clients that use doubles.",
    )
    posted_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When the journal was committed (RFC 3339)."
    )
    reason: common.Reason | None = pydantic.Field(
        default=None,
        description=(
            "Why the posting was Rejected, one of: CardNotFound (no such card in the "
            "namespace), CardNotActive (the card's phase refuses this type), CurrencyMismatch, "
            "SpendLimitExceeded, Unbalanced (explicit entries do not balance per currency), "
            "IdempotencyConflict (the key already posted another request), AlreadyReversed, "
            "NotReversible (a reversal cannot be reversed), JournalNotFound (reverses names a "
            "posting without a journal), AccountNotFound and AccountClosed (explicit entries), "
            "AccountNotAllowed (explicit entries name an account other than the card's own "
            "and system accounts), RiskDeclined, InvalidSpec (including entries or a reversal "
            "that disagree with card, amount or currency). A rejection is final."
        ),
    )
    message: common.Message | None = common.message_field("Human-readable details of the decision.")
    conditions: list[common.Condition] = common.conditions_field(
        "Current conditions of the posting; Ready is True once Posted."
    )
    observed_generation: common.Generation | None = common.observed_generation_field()
    kopf: dict[str, Any] | None = common.kopf_status_field()


KIND_INFO: Final = common.KindInfo(
    kind="Posting",
    plural="postings",
    singular="posting",
    short_names=("post", "pst"),
    description=(
        "Posting is one money movement on a card (purchase, refund, payment, fee or "
        "adjustment). The operator records it once, as a balanced journal in the ledger, "
        "and reports the outcome in status. Its spec is immutable."
    ),
    spec_model=PostingSpec,
    status_model=PostingStatus,
    printer_columns=(
        common.PrinterColumn("Card", "string", ".spec.card", "Card posted to."),
        common.PrinterColumn("Type", "string", ".spec.type", "Posting type."),
        common.PrinterColumn("Amount", "integer", ".spec.amount", "Amount in minor units."),
        common.PrinterColumn("Currency", "string", ".spec.currency", "ISO 4217 currency."),
        common.PrinterColumn("Phase", "string", ".status.phase", "Lifecycle phase."),
        common.reason_column("Why the posting was Rejected."),
        common.age_column(),
    ),
    selectable_fields=(".spec.card", ".spec.type"),
)
