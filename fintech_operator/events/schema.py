"""The typed events of the product: their ``data``, builders and decoding (pure: no I/O).

Each type is a CloudEvent (see :mod:`events.envelope`) whose ``data`` follows a model
here and the JSON Schema of the same name in ``docs/events/``; tests hold the two
together. Builders return :class:`ledger.model.OutboxEvent` objects ready to be written
in the posting's transaction. Decoding refuses anything that is not exactly a known
type: consumers send such messages to their dead-letter topic rather than guess.

Posting events carry ``data.journalId``. The journal's id exists only once the
posting's transaction inserts it, so builders write ``null`` there and the relay fills
in the outbox row's ``journal_id`` when it publishes; on the wire it is always an
integer. They also carry the product's rewards terms at posting time, so points are a
pure function of the event and reconciliation can recompute them later.

Card lifecycle events (topic ``cards``, keyed by the card like posting events) and the
reconciliation result (topic ``recon``, keyed by the run) are facts about one object's
life, each of which happens at most once: their ids are derived (:func:`lifecycle_event_id`)
from the object's uid and what happened, so a retried handler writes the same id again and
the outbox (``event_id`` is UNIQUE, inserts are ``ON CONFLICT DO NOTHING``) keeps the first.
No card event carries a card number: the token and the last four digits only (invariant 7).
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Annotated, Any, Final, Literal, NamedTuple, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictInt, alias_generators

from fintech_operator import pan
from fintech_operator.events import envelope, topics
from fintech_operator.ledger import model

POSTING_POSTED: Final = "dev.fintech.posting.posted.v1"
POSTING_REVERSED: Final = "dev.fintech.posting.reversed.v1"
COMPLIANCE_ALERT_RAISED: Final = "dev.fintech.compliance.alert.raised.v1"
CARD_ISSUED: Final = "dev.fintech.card.issued.v1"
CARD_STATE_CHANGED: Final = "dev.fintech.card.state_changed.v1"
CARD_REJECTED: Final = "dev.fintech.card.rejected.v1"
CARD_REVIEW_REQUESTED: Final = "dev.fintech.card.review_requested.v1"
RECON_COMPLETED: Final = "dev.fintech.recon.completed.v1"
AUTHORIZATION_APPROVED: Final = "dev.fintech.authorization.approved.v1"
AUTHORIZATION_DECLINED: Final = "dev.fintech.authorization.declined.v1"
AUTHORIZATION_INCREMENTED: Final = "dev.fintech.authorization.incremented.v1"
AUTHORIZATION_CAPTURED: Final = "dev.fintech.authorization.captured.v1"
AUTHORIZATION_VOIDED: Final = "dev.fintech.authorization.voided.v1"
AUTHORIZATION_EXPIRED: Final = "dev.fintech.authorization.expired.v1"
SOURCE_LEDGER: Final = "/fintech-operator/ledger"
SOURCE_COMPLIANCE: Final = "/fintech-operator/compliance"
SOURCE_CARDS: Final = "/fintech-operator/cards"
SOURCE_RECON: Final = "/fintech-operator/recon"
SOURCE_AUTHORIZATIONS: Final = "/fintech-operator/authorizations"
# The uuid5 namespace of lifecycle event ids. Fixed forever: changing it would give a retried
# handler a new id for an event already written, and consumers would see it twice.
EVENT_ID_NAMESPACE: Final = uuid.UUID("5d0f7c2e-8a41-5b6e-9c3d-1e2f4a6b8c0d")
MESSAGE_MAX_LENGTH: Final = 1024
AMOUNT_MINOR_MAX: Final = 10**15
RATE_BPS_MAX: Final = 10_000
REASON_MAX_LENGTH: Final = 1024
OBJECT_REF_PATTERN: Final = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # namespace/name
)
PostingType = Literal["Purchase", "Refund", "Payment", "Fee", "Adjustment"]
OBJECT_REF_LENGTH_MAX: Final = 317
ObjectRef = Annotated[str, Field(pattern=OBJECT_REF_PATTERN, max_length=OBJECT_REF_LENGTH_MAX)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
AmountMinor = Annotated[StrictInt, Field(ge=1, le=AMOUNT_MINOR_MAX)]
RateBps = Annotated[StrictInt, Field(ge=0, le=RATE_BPS_MAX)]
JournalId = Annotated[StrictInt, Field(ge=1)]
Time = Annotated[str, Field(pattern=envelope.TIME_PATTERN)]
Count = Annotated[StrictInt, Field(ge=0)]
# The rule Kubernetes applies to a condition's reason (CamelCase words), bounded.
Reason = Annotated[str, Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=128)]
Message = Annotated[str, Field(min_length=1, max_length=MESSAGE_MAX_LENGTH)]
UserId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@:-]*$", max_length=128)]
ObjectName = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        max_length=253,
    ),
]
Token = Annotated[str, Field(pattern=r"^tok_[A-Za-z0-9._:-]{1,60}$")]
Last4 = Annotated[str, Field(pattern=r"^[0-9]{4}$")]


class EventError(ValueError):
    """A message is not a valid event of a known type (the reason is the message)."""


class _Data(BaseModel):
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        strict=True,
        populate_by_name=True,
        alias_generator=alias_generators.to_camel,
    )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return out


_D = TypeVar("_D", bound=_Data)


class Merchant(_Data):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    mcc: Annotated[str, Field(pattern=r"^[0-9]{4}$")] | None = None
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None


class _PostingTerms(_Data):
    """What points are computed from: the posting and its product's terms."""

    # None only between the builder and the relay; the wire always has an integer.
    journal_id: JournalId | None = None
    card: ObjectRef
    posting: ObjectRef
    posting_type: PostingType
    amount: AmountMinor
    currency: Currency
    rewards_rate_bps: RateBps
    earn_on: Annotated[list[PostingType], Field(max_length=5)]
    occurred_at: Time

    @pydantic.field_validator("earn_on")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("earnOn must not list a posting type twice")
        return value


class PostingPostedData(_PostingTerms):
    """``dev.fintech.posting.posted.v1``: a Posting was recorded as a ledger journal."""

    reference: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    merchant: Merchant | None = None


class PostingReversedData(_PostingTerms):
    """``dev.fintech.posting.reversed.v1``: a journal was reversed by a reversal journal.

    ``journalId`` is the reversal's journal, ``reversesJournalId`` the original's; type,
    amount, currency and rewards terms are the ORIGINAL posting's, so the points taken
    back are exactly the points the original gave.
    """

    reverses_journal_id: JournalId
    reversed_posting: ObjectRef
    reason: Annotated[str, Field(min_length=1, max_length=REASON_MAX_LENGTH)]


class ComplianceAlertRaisedData(_Data):
    """``dev.fintech.compliance.alert.raised.v1``: an AML rule flagged a card's postings.

    Produced by the compliance domain (``compliance.store.alert_event``) on topic
    ``compliance``, about the card, once per card, business day, kind and currency.
    """

    alert_id: Annotated[StrictInt, Field(ge=1)]
    alert_kind: Literal["DailyThreshold", "Structuring"]
    card: ObjectRef
    business_day: Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    currency: Currency
    total_minor: Annotated[StrictInt, Field(ge=0, le=AMOUNT_MINOR_MAX)]
    posting_count: Annotated[StrictInt, Field(ge=0)]
    threshold_minor: Annotated[StrictInt, Field(ge=1, le=AMOUNT_MINOR_MAX)]
    policy: Annotated[str, Field(min_length=3, max_length=400)]
    posting_key: Annotated[str, Field(min_length=1, max_length=600)]


class _CardData(_Data):
    """What every card lifecycle event is about: the card, ``<namespace>/<name>``."""

    card: ObjectRef


class CardIssuedData(_CardData):
    """``dev.fintech.card.issued.v1``: the card's ledger account was opened; it is usable.

    Written in the transaction that opens the account, once per card. ``state`` is the phase
    it was issued in (a card applied Frozen is issued Frozen). Token and last 4 only: never a
    card number, CVV or PIN.
    """

    user_id: UserId
    product: ObjectName
    currency: Currency
    account: Annotated[str, Field(min_length=1, max_length=512)]
    token: Token
    last4: Last4
    state: Literal["Active", "Frozen"]
    issued_at: Time

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> CardIssuedData:
        if self.account != f"card:{self.card}:{self.currency}":
            raise ValueError("account must be the card's own account in its currency")
        if pan.find_pans(self.token):
            raise ValueError("token must not contain a card number")
        return self


CardPhaseFrom = Literal["Pending", "PendingReview", "Active", "Frozen"]


class CardStateChangedData(_CardData):
    """``dev.fintech.card.state_changed.v1``: frozen, unfrozen or closed.

    ``from`` is the phase the card left. Only an issued card (Active or Frozen) is frozen or
    unfrozen; any card not yet closed can be closed (``reason`` says why when it is not the
    user's ``spec.state``: ``ClosedBeforeIssue``, ``CardDeleted``).
    """

    from_: Annotated[CardPhaseFrom, Field(alias="from")]
    to: Literal["Active", "Frozen", "Closed"]
    reason: Reason | None = None

    @pydantic.model_validator(mode="after")
    def _a_real_transition(self) -> CardStateChangedData:
        if self.from_ == self.to:
            raise ValueError("from and to must differ")
        if self.to != "Closed" and self.from_ not in ("Active", "Frozen"):
            raise ValueError("only an issued card (Active or Frozen) is frozen or unfrozen")
        return self


class CardRejectedData(_CardData):
    """``dev.fintech.card.rejected.v1``: issuance ended Rejected (final).

    ``reason`` is the status reason (``KycNotAccepted``, ``ExactMatch``, ``RiskDeclined``,
    ``ReviewRejected``, ``ProductNotFound``, ``InvalidSpec``, ``NameReused``,
    ``TokenizerRefused``...). ``userId`` and ``product`` are absent only when the spec itself
    was invalid.
    """

    reason: Reason
    message: Message
    user_id: UserId | None = None
    product: ObjectName | None = None


class CardReviewRequestedData(_CardData):
    """``dev.fintech.card.review_requested.v1``: issuance waits for a CardReview.

    Written with the assessment that held the card, once per card generation assessed;
    the review's outcome follows as ``card.issued`` or ``card.rejected``.
    """

    reason: Reason
    message: Message
    user_id: UserId
    product: ObjectName


class ReconWindow(_Data):
    """The ledger period a run compared, half-open: ``start <= occurredAt < end``."""

    start: Time
    end: Time

    @pydantic.model_validator(mode="after")
    def _ordered(self) -> ReconWindow:
        if _instant(self.start) >= _instant(self.end):
            raise ValueError("window start must be before its end")
        return self


class ReconCheck(_Data):
    result: Literal["Passed", "Failed", "Skipped"]
    exceptions: Count


class ReconChecks(_Data):
    settlement: ReconCheck | None = None
    trial_balance: ReconCheck | None = None
    rewards: ReconCheck | None = None
    events: ReconCheck | None = None


class ReconSummary(_Data):
    """The run's counts, exactly as ``status.summary`` shows them."""

    records_read: Count
    ledger_references: Count
    matched: Count
    matched_within_tolerance: Count
    partial_captures: Count
    amount_mismatches: Count
    currency_mismatches: Count
    time_mismatches: Count
    missing_in_ledger: Count
    missing_in_source: Count
    duplicates: Count
    exceptions: Count
    checks: ReconChecks


class ReconCompletedData(_Data):
    """``dev.fintech.recon.completed.v1``: a ReconciliationRun ended Succeeded or Failed.

    Written in the transaction that records the run's final state, once per run. Succeeded
    means it ran (``summary``; ``exceptions`` may be above 0); Failed means it could not run
    (``reason``, ``message``; no summary, 0 exceptions).
    """

    run: ObjectRef
    phase: Literal["Succeeded", "Failed"]
    dry_run: pydantic.StrictBool
    attempt: Annotated[StrictInt, Field(ge=1)] | None = None
    window: ReconWindow | None = None
    started_at: Time | None = None
    completed_at: Time
    exceptions: Count
    summary: ReconSummary | None = None
    reason: Reason | None = None
    message: Message | None = None

    @pydantic.model_validator(mode="after")
    def _outcome(self) -> ReconCompletedData:
        if self.phase == "Succeeded":
            if self.summary is None or self.reason is not None:
                raise ValueError("a Succeeded run has a summary and no reason")
            if self.exceptions != self.summary.exceptions:
                raise ValueError("exceptions must equal summary.exceptions")
        elif self.summary is not None or self.reason is None or self.exceptions != 0:
            raise ValueError("a Failed run has a reason, no summary and 0 exceptions")
        return self


AuthorizationId = Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
HeldMinor = Annotated[StrictInt, Field(ge=0, le=AMOUNT_MINOR_MAX)]


class AuthorizationData(_CardData):
    """``dev.fintech.authorization.<step>.v1``: a step of a real-time authorization.

    Written by the database (migration 0050) in the transaction of the step, on topic
    ``authorizations`` keyed by the card. ``held``, ``captured`` and ``released`` are the
    authorization's totals after the step (``held`` is what it still holds); ``stepAmount`` is
    what this step moved (an increment's amount, a capture's amount, what a void or expiry
    released); ``request`` is the id of the request that made the step, when there was one.
    """

    authorization: AuthorizationId
    status: Literal["pending", "closed", "expired", "declined"] | None = None
    reason: Reason
    currency: Currency
    amount: AmountMinor
    held: HeldMinor
    captured: HeldMinor
    released: HeldMinor
    merchant: Merchant | None = None
    expires_at: Time | None = None
    request: AuthorizationId | None = None
    step_amount: HeldMinor | None = None


class AuthorizationCapturedData(AuthorizationData):
    """``dev.fintech.authorization.captured.v1``: a capture posted a Purchase journal.

    ``stepAmount`` was captured now; ``forcePost`` says no hold stood behind it. It carries the
    rewards terms of the card's product, so points on captured amounts are a pure function
    of the event, as for postings.
    """

    journal_id: JournalId
    step_amount: AmountMinor
    final: pydantic.StrictBool
    force_post: pydantic.StrictBool
    rewards_rate_bps: RateBps
    earn_on: Annotated[list[PostingType], Field(max_length=5)]


@dataclass(frozen=True)
class EventType:
    """Facts of one event type: its topic, the object kind it is about, its data model."""

    name: str
    topic: str
    plural: str
    source: str
    data_model: type[_Data]


CATALOG: Final[Mapping[str, EventType]] = {
    POSTING_POSTED: EventType(
        POSTING_POSTED, topics.POSTINGS, "postings", SOURCE_LEDGER, PostingPostedData
    ),
    POSTING_REVERSED: EventType(
        POSTING_REVERSED, topics.POSTINGS, "postings", SOURCE_LEDGER, PostingReversedData
    ),
    COMPLIANCE_ALERT_RAISED: EventType(
        COMPLIANCE_ALERT_RAISED,
        topics.COMPLIANCE,
        "cards",
        SOURCE_COMPLIANCE,
        ComplianceAlertRaisedData,
    ),
    CARD_ISSUED: EventType(CARD_ISSUED, topics.CARDS, "cards", SOURCE_CARDS, CardIssuedData),
    CARD_STATE_CHANGED: EventType(
        CARD_STATE_CHANGED, topics.CARDS, "cards", SOURCE_CARDS, CardStateChangedData
    ),
    CARD_REJECTED: EventType(CARD_REJECTED, topics.CARDS, "cards", SOURCE_CARDS, CardRejectedData),
    CARD_REVIEW_REQUESTED: EventType(
        CARD_REVIEW_REQUESTED, topics.CARDS, "cards", SOURCE_CARDS, CardReviewRequestedData
    ),
    RECON_COMPLETED: EventType(
        RECON_COMPLETED, topics.RECON, "reconciliationruns", SOURCE_RECON, ReconCompletedData
    ),
    **{
        type_: EventType(
            type_,
            topics.AUTHORIZATIONS,
            "cards",
            SOURCE_AUTHORIZATIONS,
            AuthorizationCapturedData if type_ == AUTHORIZATION_CAPTURED else AuthorizationData,
        )
        for type_ in (
            AUTHORIZATION_APPROVED,
            AUTHORIZATION_DECLINED,
            AUTHORIZATION_INCREMENTED,
            AUTHORIZATION_CAPTURED,
            AUTHORIZATION_VOIDED,
            AUTHORIZATION_EXPIRED,
        )
    },
}


@dataclass(frozen=True)
class Event:
    """A decoded event of a known type: the envelope and its typed ``data``."""

    envelope: envelope.CloudEvent
    data: _Data

    @property
    def event_id(self) -> uuid.UUID:
        return self.envelope.event_id

    @property
    def type(self) -> str:
        return self.envelope.type


# --- Builders -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PostingPosted:
    """The event of a Posting ``namespace/name`` recorded on Card ``namespace/card``.

    ``headers`` become Kafka headers (for example trace context); they are not part of
    the event itself. :meth:`outbox` builds (and checks) the outbox row.
    """

    namespace: str
    name: str
    card: str
    posting_type: str
    amount_minor: int
    currency: str
    rewards_rate_bps: int
    earn_on: Sequence[str]
    occurred_at: datetime.datetime
    now: datetime.datetime
    reference: str | None = None
    merchant: Mapping[str, Any] | None = None
    event_id: uuid.UUID | None = None
    headers: Mapping[str, str] | None = None

    def outbox(self) -> model.OutboxEvent:
        data = {
            "journalId": None,
            "card": f"{self.namespace}/{self.card}",
            "posting": f"{self.namespace}/{self.name}",
            "postingType": self.posting_type,
            "amount": self.amount_minor,
            "currency": self.currency,
            "rewardsRateBps": self.rewards_rate_bps,
            "earnOn": list(self.earn_on),
            "occurredAt": _time(self.occurred_at),
            "reference": self.reference,
            "merchant": None if self.merchant is None else dict(self.merchant),
        }
        checked = _checked(PostingPostedData, data)
        about = _About(POSTING_POSTED, self.namespace, self.name)
        return _outbox(about, checked, self.now, self.event_id, self.headers)


@dataclass(frozen=True)
class PostingReversed:
    """The event of Posting ``namespace/name`` reversing journal ``reverses_journal_id``.

    ``original`` is the ``posting.posted`` event of that journal as the outbox holds it
    (see :func:`events.outbox.posted_event`); its terms are copied so the reversal takes
    back exactly what the original gave, whatever the product says today.
    """

    original: Mapping[str, Any]
    _: KW_ONLY
    reverses_journal_id: int
    namespace: str
    name: str
    reason: str
    now: datetime.datetime
    event_id: uuid.UUID | None = None
    headers: Mapping[str, str] | None = None

    def outbox(self) -> model.OutboxEvent:
        terms = _original_terms(self.original, self.reverses_journal_id)
        data = {
            "journalId": None,
            "card": terms.card,
            "posting": f"{self.namespace}/{self.name}",
            "postingType": terms.posting_type,
            "amount": terms.amount,
            "currency": terms.currency,
            "rewardsRateBps": terms.rewards_rate_bps,
            "earnOn": list(terms.earn_on),
            "occurredAt": _time(self.now),
            "reversesJournalId": self.reverses_journal_id,
            "reversedPosting": terms.posting,
            "reason": self.reason,
        }
        checked = _checked(PostingReversedData, data)
        about = _About(POSTING_REVERSED, self.namespace, self.name)
        return _outbox(about, checked, self.now, self.event_id, self.headers)


def lifecycle_event_id(type_: str, uid: str, *facts: str) -> uuid.UUID:
    """The id of the ``type_`` event of the object ``uid``: the same inputs, the same id forever.

    ``facts`` tell apart events of one type that may happen more than once in an object's
    life (a freeze per generation); an event that happens once needs none.
    """
    if type_ not in CATALOG or not isinstance(uid, str) or not uid:
        raise EventError(f"a lifecycle event id needs a known type and a uid, got {type_!r}")
    return uuid.uuid5(EVENT_ID_NAMESPACE, "/".join((type_, uid, *facts)))


@dataclass(frozen=True, kw_only=True)
class CardIssued:
    """Card ``namespace/name`` (uid ``uid``) was issued; one id per card."""

    namespace: str
    name: str
    uid: str
    user_id: str
    product: str
    currency: str
    token: str
    last4: str
    state: str
    issued_at: datetime.datetime
    headers: Mapping[str, str] | None = None

    def outbox(self) -> model.OutboxEvent:
        data = {
            "card": f"{self.namespace}/{self.name}",
            "userId": self.user_id,
            "product": self.product,
            "currency": self.currency,
            "account": f"card:{self.namespace}/{self.name}:{self.currency}",
            "token": self.token,
            "last4": self.last4,
            "state": self.state,
            "issuedAt": _time(self.issued_at),
        }
        about = _About(CARD_ISSUED, self.namespace, self.name)
        return _lifecycle_event(about, self.uid, data, self.issued_at, self.headers)


@dataclass(frozen=True, kw_only=True)
class CardStateChanged:
    """Card ``namespace/name`` went from ``from_phase`` to ``to_state``.

    A freeze or unfreeze is one per ``generation`` (each is a change of ``spec.state``);
    closing happens once in a card's life, whatever the generation.
    """

    namespace: str
    name: str
    uid: str
    generation: int
    from_phase: str
    to_state: str
    now: datetime.datetime
    reason: str | None = None
    headers: Mapping[str, str] | None = None

    def outbox(self) -> model.OutboxEvent:
        data = {
            "card": f"{self.namespace}/{self.name}",
            "from": self.from_phase,
            "to": self.to_state,
            "reason": self.reason,
        }
        facts = (
            ("Closed",)
            if self.to_state == "Closed"
            else (self.to_state, f"g{_generation(self.generation)}")
        )
        about = _About(CARD_STATE_CHANGED, self.namespace, self.name)
        return _lifecycle_event(about, self.uid, data, self.now, self.headers, *facts)


@dataclass(frozen=True, kw_only=True)
class CardRejected:
    """Issuance of card ``namespace/name`` ended Rejected; rejection is final, one id per card."""

    namespace: str
    name: str
    uid: str
    reason: str
    message: str
    now: datetime.datetime
    user_id: str | None = None
    product: str | None = None
    headers: Mapping[str, str] | None = None

    def outbox(self) -> model.OutboxEvent:
        data = _card_outcome_data(
            self.namespace, self.name, self.reason, self.message, self.user_id, self.product
        )
        about = _About(CARD_REJECTED, self.namespace, self.name)
        return _lifecycle_event(about, self.uid, data, self.now, self.headers)


@dataclass(frozen=True, kw_only=True)
class CardReviewRequested:
    """Card ``namespace/name`` waits for a review; one id per card generation assessed."""

    namespace: str
    name: str
    uid: str
    generation: int
    reason: str
    message: str
    user_id: str
    product: str
    now: datetime.datetime
    headers: Mapping[str, str] | None = None

    def outbox(self) -> model.OutboxEvent:
        data = _card_outcome_data(
            self.namespace, self.name, self.reason, self.message, self.user_id, self.product
        )
        fact = f"g{_generation(self.generation)}"
        about = _About(CARD_REVIEW_REQUESTED, self.namespace, self.name)
        return _lifecycle_event(about, self.uid, data, self.now, self.headers, fact)


@dataclass(frozen=True, kw_only=True)
class ReconCompleted:
    """ReconciliationRun ``namespace/name`` (uid ``uid``) ended ``phase``; one id per run."""

    namespace: str
    name: str
    uid: str
    phase: str
    dry_run: bool
    completed_at: datetime.datetime
    attempt: int | None = None
    window: tuple[datetime.datetime, datetime.datetime] | None = None
    started_at: datetime.datetime | None = None
    summary: Mapping[str, Any] | None = None
    reason: str | None = None
    message: str | None = None
    headers: Mapping[str, str] | None = None

    def outbox(self) -> model.OutboxEvent:
        summary, window, message = self.summary, self.window, self.message
        exceptions = summary.get("exceptions") if isinstance(summary, Mapping) else 0
        data = {
            "run": f"{self.namespace}/{self.name}",
            "phase": self.phase,
            "dryRun": self.dry_run,
            "attempt": self.attempt,
            "window": None
            if window is None
            else {"start": _time(window[0]), "end": _time(window[1])},
            "startedAt": None if self.started_at is None else _time(self.started_at),
            "completedAt": _time(self.completed_at),
            "exceptions": exceptions,
            "summary": None if summary is None else dict(summary),
            "reason": self.reason,
            "message": None if message is None else free_text(message) or None,
        }
        about = _About(RECON_COMPLETED, self.namespace, self.name)
        return _lifecycle_event(about, self.uid, data, self.completed_at, self.headers)


def free_text(text: str) -> str:
    """A message fit for an event: card numbers masked, one line, at most 1024 characters."""
    if not isinstance(text, str):
        raise EventError("a message must be a string")
    # Whitespace first: a number typed as "4111<TAB>1111 ..." is one candidate only once its
    # groups are joined by single spaces, as the masking pattern expects.
    return pan.mask_pans(" ".join(text.split()))[:MESSAGE_MAX_LENGTH]


def _card_outcome_data(
    namespace: str,
    name: str,
    reason: str,
    message: str,
    user_id: str | None,
    product: str | None,
) -> dict[str, Any]:
    """The data a rejection and a review request share: why, in a masked message never empty."""
    return {
        "card": f"{namespace}/{name}",
        "reason": reason,
        "message": free_text(message) or reason,
        "userId": user_id,
        "product": product,
    }


def _generation(generation: int) -> int:
    if type(generation) is not int or generation < 0:
        raise EventError(f"generation must be a non-negative int, got {generation!r}")
    return generation


def _instant(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _key_of(data: _Data) -> str | None:
    """The object a lifecycle event is about (its partition key), or the card of others."""
    if isinstance(data, ReconCompletedData):
        return data.run
    card = getattr(data, "card", None)
    return card if isinstance(card, str) else None


class _About(NamedTuple):
    """The object an event is about, and the event's type."""

    type_: str
    namespace: str
    name: str

    def subject(self) -> str:
        return envelope.subject(self.namespace, CATALOG[self.type_].plural, self.name)


def _lifecycle_event(
    about: _About,
    uid: str,
    data: Mapping[str, Any],
    now: datetime.datetime,
    headers: Mapping[str, str] | None,
    *facts: str,
) -> model.OutboxEvent:
    """The lifecycle event of ``about``: ``data`` checked against the type's model, its id
    derived from ``uid`` and ``facts`` (see :func:`lifecycle_event_id`)."""
    checked = _checked(CATALOG[about.type_].data_model, data)
    event_id = lifecycle_event_id(about.type_, uid, *facts)
    return _lifecycle(about, checked, now, event_id, headers)


def _lifecycle(
    about: _About,
    data: _Data,
    now: datetime.datetime,
    event_id: uuid.UUID,
    headers: Mapping[str, str] | None,
) -> model.OutboxEvent:
    """The outbox row of a lifecycle event about object ``about``, keyed by it."""
    info = CATALOG[about.type_]
    key = _key_of(data)
    if key is None:
        raise EventError(f"{about.type_} data names no object")
    try:
        event = envelope.Draft(
            event_id=event_id,
            type_=about.type_,
            source=info.source,
            subject_text=about.subject(),
            time=now,
            data=data.to_json(),
            extensions={"partitionkey": key},
        ).build()
    except envelope.EnvelopeError as exc:
        raise EventError(str(exc)) from exc
    return model.OutboxEvent(event_id, info.topic, key, event, dict(headers or {}))


def _time(moment: datetime.datetime) -> str:
    try:
        return envelope.time_text(moment)
    except envelope.EnvelopeError as exc:
        raise EventError(str(exc)) from exc


def _original_terms(original: Mapping[str, Any], journal_id: int) -> PostingPostedData:
    if not isinstance(original, Mapping):
        raise EventError("the original event must be a mapping")
    if original.get("type") != POSTING_POSTED:
        raise EventError(f"can only reverse a {POSTING_POSTED} event, got {original.get('type')!r}")
    terms = _checked(PostingPostedData, original.get("data"))
    if terms.journal_id is not None and terms.journal_id != journal_id:
        raise EventError(f"the original event is of journal {terms.journal_id}, not {journal_id}")
    return terms


def _checked(data_model: type[_D], data: object) -> _D:
    if not isinstance(data, Mapping):
        raise EventError("event data must be a JSON object")
    try:
        return data_model.model_validate({k: v for k, v in data.items() if v is not None})
    except pydantic.ValidationError as exc:
        raise EventError(f"invalid {data_model.__name__}: {_first_errors(exc)}") from exc


def _outbox(
    about: _About,
    data: _PostingTerms,
    now: datetime.datetime,
    event_id: uuid.UUID | None,
    headers: Mapping[str, str] | None,
) -> model.OutboxEvent:
    info = CATALOG[about.type_]
    ident = uuid.uuid4() if event_id is None else event_id
    body = data.to_json()
    body["journalId"] = None  # Filled in by the relay from the outbox row.
    try:
        event = envelope.Draft(
            event_id=ident,
            type_=about.type_,
            source=info.source,
            subject_text=about.subject(),
            time=now,
            data=body,
            extensions={"partitionkey": data.card},
        ).build()
    except envelope.EnvelopeError as exc:
        raise EventError(str(exc)) from exc
    return model.OutboxEvent(ident, info.topic, data.card, event, dict(headers or {}))


# --- Decoding -------------------------------------------------------------------------------------


def decode(raw: bytes | None) -> Event:
    """A wire message as an event of a known type; :class:`EventError` says why not."""
    try:
        cloud = envelope.decode(raw)
    except envelope.EnvelopeError as exc:
        raise EventError(f"invalid envelope: {exc}") from exc
    return typed(cloud)


def typed(cloud: envelope.CloudEvent) -> Event:
    """Check a decoded envelope's ``data`` against its type's model."""
    info = CATALOG.get(cloud.type)
    if info is None:
        raise EventError(f"unsupported event type {cloud.type!r}")
    if cloud.subject.split("/")[2] != info.plural:
        raise EventError(f"{cloud.type} must be about {info.plural}, not {cloud.subject!r}")
    if cloud.source != info.source:
        raise EventError(f"{cloud.type} must come from {info.source}, not {cloud.source!r}")
    try:
        data = info.data_model.model_validate(cloud.data)
    except pydantic.ValidationError as exc:
        raise EventError(f"invalid data of {cloud.type}: {_first_errors(exc)}") from exc
    if isinstance(data, _PostingTerms) and data.journal_id is None:
        raise EventError(f"{cloud.type} on the wire must carry data.journalId")
    key = _key_of(data)
    if key is not None and cloud.extensions.get("partitionkey") != key:
        field = "run" if isinstance(data, ReconCompletedData) else "card"
        raise EventError(f"{cloud.type} must have partitionkey equal to data.{field}")
    if isinstance(data, _CardData | ReconCompletedData) and key is not None:
        namespace, name = key.split("/", 1)
        if cloud.subject != f"namespaces/{namespace}/{info.plural}/{name}":
            raise EventError(f"{cloud.type} must have the subject of {key}")
    return Event(cloud, data)


def _first_errors(exc: pydantic.ValidationError, limit: int = 3) -> str:
    problems = [
        f"{'.'.join(str(p) for p in err['loc']) or '<data>'}: {err['msg']}"
        for err in exc.errors(include_url=False)
    ]
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


# --- Fast decoding of posting events (the rewards consumer's hot path) ---------------------------


class _PostedWire(BaseModel):
    """A ``posting.posted`` event exactly as the relay writes it, and nothing looser.

    Checked in one pass over the raw bytes (pydantic-core's JSON parser); anything it does not
    accept goes through :func:`decode`, which either accepts it or says why not.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    specversion: Literal["1.0"]
    id: Annotated[str, Field(pattern=envelope.ID_PATTERN)]
    source: Literal["/fintech-operator/ledger"]
    type: Literal["dev.fintech.posting.posted.v1"]
    subject: Annotated[
        str, Field(pattern=envelope.SUBJECT_PATTERN, max_length=envelope.STRING_MAX_LENGTH)
    ]
    time: Annotated[str, Field(pattern=envelope.TIME_PATTERN)]
    datacontenttype: Literal["application/json"]
    partitionkey: Annotated[str, Field(max_length=envelope.STRING_MAX_LENGTH)]
    data: PostingPostedData


class _ReversedWire(_PostedWire):
    type: Literal["dev.fintech.posting.reversed.v1"]  # type: ignore[assignment]
    data: PostingReversedData  # type: ignore[assignment]


_POSTING_WIRE: Final = pydantic.TypeAdapter[_PostedWire | _ReversedWire](
    Annotated[_PostedWire | _ReversedWire, Field(discriminator="type")]
)


@dataclass(frozen=True, slots=True)
class PostingFacts:
    """What the rewards consumer needs of a posting event."""

    event_id: uuid.UUID
    type: str
    moment: datetime.datetime
    data: PostingPostedData | PostingReversedData


def posting_facts(raw: bytes | None) -> PostingFacts | None:
    """A posting event decoded in one pass, or ``None`` when it is not exactly the usual shape.

    ``None`` never means invalid: the caller then uses :func:`decode`, which has the last word
    and the reasons. Everything accepted here :func:`decode` accepts too (a property test holds
    the two together), so the fast path can only be stricter.
    """
    if raw is None or len(raw) > envelope.EVENT_BYTES_MAX:
        return None
    try:
        wire = _POSTING_WIRE.validate_json(raw)
        moment = datetime.datetime.fromisoformat(wire.time.replace("Z", "+00:00"))
    except (pydantic.ValidationError, ValueError):
        return None
    data = wire.data
    if (
        data.journal_id is None
        or wire.partitionkey != data.card
        or wire.subject.split("/")[2] != "postings"
    ):
        return None
    return PostingFacts(uuid.UUID(wire.id), wire.type, moment, data)


# --- Canonical posting events: the relay's exact bytes, matched without a JSON parser -----------

# The relay writes every event as canonical JSON (sorted keys, no spaces; envelope.encode_stored).
# For the two posting types that spelling is fixed up to the values, so one regular expression
# over the raw text checks the whole event and yields its fields. Every string it admits is
# drawn from a class without quote, backslash or control characters (free text: printable ASCII
# only), so the raw text IS the decoded value; every number is a plain JSON integer. Anything
# else (escapes, non-ASCII text, extra extensions, other key orders, spaces) does not match and
# goes to the pydantic decoders, which have the last word.
_REF = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?/[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?"
_KIND = r"(?:Purchase|Refund|Payment|Fee|Adjustment)"
_PRINTABLE = r"[ !#-\[\]-~]"  # printable ASCII but '"' and '\'
_TIME = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})"
)
_HEAD = (
    rf'\{{"data":\{{"amount":([1-9][0-9]{{0,15}}),"card":"({_REF})","currency":"([A-Z]{{3}})",'
    rf'"earnOn":\[((?:"{_KIND}"(?:,"{_KIND}"){{0,4}})?)\],"journalId":([1-9][0-9]{{0,18}}),'
)
_TAIL = (
    r'"rewardsRateBps":(0|[1-9][0-9]{0,4})\},"datacontenttype":"application/json",'
    r'"id":"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",'
    r'"partitionkey":"\2","source":"/fintech-operator/ledger","specversion":"1\.0",'
    rf'"subject":"(namespaces/[a-z0-9](?:[-a-z0-9]*[a-z0-9])?/postings/[^"]*)",'
    rf'"time":"({_TIME})",'
)
# Groups: 1 amount, 2 card, 3 currency, 4 earnOn, 5 journalId, 6 posting, 7 postingType,
# then (reversed only) 8 reversedPosting, 9 reversesJournalId; then rate, id, subject, time.
_CANONICAL_POSTED: Final = re.compile(
    _HEAD + rf'(?:"merchant":\{{(?:"country":"[A-Z]{{2}}",)?(?:"mcc":"[0-9]{{4}}",)?'
    rf'"name":"{_PRINTABLE}{{1,128}}"\}},)?"occurredAt":"{_TIME}",'
    rf'"posting":"({_REF})","postingType":"({_KIND})",(?:"reference":"{_PRINTABLE}{{1,128}}",)?'
    + _TAIL
    + r'"type":"dev\.fintech\.posting\.posted\.v1"\}'
)
_CANONICAL_REVERSED: Final = re.compile(
    _HEAD + rf'"occurredAt":"{_TIME}","posting":"({_REF})","postingType":"({_KIND})",'
    rf'"reason":"{_PRINTABLE}{{1,{REASON_MAX_LENGTH}}}","reversedPosting":"({_REF})",'
    r'"reversesJournalId":([1-9][0-9]{0,18}),'
    + _TAIL
    + r'"type":"dev\.fintech\.posting\.reversed\.v1"\}'
)
_SUBJECT_RE: Final = re.compile(envelope.SUBJECT_PATTERN)
_POSTED_END: Final = b'"type":"dev.fintech.posting.posted.v1"}'
_REVERSED_END: Final = b'"type":"dev.fintech.posting.reversed.v1"}'
_BIGINT_MAX: Final = 2**63 - 1


class CanonicalPosting(NamedTuple):
    """A posting event's facts as the rewards consumer needs them (from the raw bytes)."""

    event_id: str  # lowercase and hyphenated: as str(uuid.UUID) spells it
    type: str
    moment: datetime.datetime
    card: str
    posting: str
    journal_id: int
    posting_type: str
    amount: int
    currency: str
    rewards_rate_bps: int
    earn_on: frozenset[str]
    reverses_journal_id: int | None


def canonical_posting(raw: bytes | None) -> CanonicalPosting | None:
    """A posting event in the relay's canonical spelling, checked and split by one regular
    expression; ``None`` when it is not exactly that (the caller then asks
    :func:`posting_facts` or :func:`decode`, which accept or explain).

    Never looser than :func:`decode`: a property test mutates real events and requires that
    whatever this accepts, :func:`decode` accepts with the same facts.
    """
    if raw is None or len(raw) > envelope.EVENT_BYTES_MAX:
        return None
    if raw.endswith(_POSTED_END):
        pattern, reversal = _CANONICAL_POSTED, False
    elif raw.endswith(_REVERSED_END):
        pattern, reversal = _CANONICAL_REVERSED, True
    else:
        return None
    try:
        match = pattern.fullmatch(raw.decode("ascii"))
    except UnicodeDecodeError:
        return None
    return None if match is None else _canonical_facts(match.groups(), reversal)


def _canonical_facts(groups: tuple[str, ...], reversal: bool) -> CanonicalPosting | None:
    """The matched fields, once the bounds a pattern cannot state hold (else ``None``)."""
    amount_text, card, currency, earn_on_text, journal, posting, posting_type, *rest = groups
    reversed_posting, reverses_text = (rest.pop(0), rest.pop(0)) if reversal else ("", "0")
    rate_text, event_id, subject, time = rest
    amount, rate = int(amount_text), int(rate_text)
    journal_id, reverses = int(journal), int(reverses_text)
    earn_on = _earn_on(earn_on_text)
    if (
        earn_on is None
        or amount > AMOUNT_MINOR_MAX
        or rate > RATE_BPS_MAX
        or max(journal_id, reverses) > _BIGINT_MAX
        or max(len(card), len(posting), len(reversed_posting)) > OBJECT_REF_LENGTH_MAX
        or len(subject) > envelope.STRING_MAX_LENGTH
        or not _SUBJECT_RE.fullmatch(subject)
    ):
        return None
    try:  # the pattern checks the shape; this refuses impossible dates such as 2026-02-30
        moment = datetime.datetime.fromisoformat(time.replace("Z", "+00:00"))
    except ValueError:
        return None
    return CanonicalPosting(
        event_id,
        POSTING_REVERSED if reversal else POSTING_POSTED,
        moment,
        card,
        posting,
        journal_id,
        posting_type,
        amount,
        currency,
        rate,
        earn_on,
        reverses if reversal else None,
    )


# The distinct spellings of earnOn are few; each is split and checked once.
_EARN_ON_SEEN: dict[str, frozenset[str] | None] = {}
_EARN_ON_SEEN_MAX: Final = 1024


def _earn_on(text: str) -> frozenset[str] | None:
    """``earnOn``'s types, or ``None`` when one is listed twice (the model refuses that)."""
    if text in _EARN_ON_SEEN:
        return _EARN_ON_SEEN[text]
    names = [name.strip('"') for name in text.split(",")] if text else []
    result = frozenset(names) if len(set(names)) == len(names) else None
    if len(_EARN_ON_SEEN) < _EARN_ON_SEEN_MAX:
        _EARN_ON_SEEN[text] = result
    return result
