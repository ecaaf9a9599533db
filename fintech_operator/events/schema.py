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
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictInt, alias_generators

from fintech_operator.events import envelope, topics
from fintech_operator.ledger import model

POSTING_POSTED: Final = "dev.fintech.posting.posted.v1"
POSTING_REVERSED: Final = "dev.fintech.posting.reversed.v1"
COMPLIANCE_ALERT_RAISED: Final = "dev.fintech.compliance.alert.raised.v1"
SOURCE_LEDGER: Final = "/fintech-operator/ledger"
SOURCE_COMPLIANCE: Final = "/fintech-operator/compliance"
AMOUNT_MINOR_MAX: Final = 10**15
RATE_BPS_MAX: Final = 10_000
REASON_MAX_LENGTH: Final = 1024
OBJECT_REF_PATTERN: Final = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # namespace/name
)
PostingType = Literal["Purchase", "Refund", "Payment", "Fee", "Adjustment"]
ObjectRef = Annotated[str, Field(pattern=OBJECT_REF_PATTERN, max_length=317)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
AmountMinor = Annotated[StrictInt, Field(ge=1, le=AMOUNT_MINOR_MAX)]
RateBps = Annotated[StrictInt, Field(ge=0, le=RATE_BPS_MAX)]
JournalId = Annotated[StrictInt, Field(ge=1)]
Time = Annotated[str, Field(pattern=envelope.TIME_PATTERN)]


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


def posting_posted(
    *,
    namespace: str,
    name: str,
    card: str,
    posting_type: str,
    amount_minor: int,
    currency: str,
    rewards_rate_bps: int,
    earn_on: Sequence[str],
    occurred_at: datetime.datetime,
    now: datetime.datetime,
    reference: str | None = None,
    merchant: Mapping[str, Any] | None = None,
    event_id: uuid.UUID | None = None,
    headers: Mapping[str, str] | None = None,
) -> model.OutboxEvent:
    """The event of a Posting ``namespace/name`` recorded on Card ``namespace/card``.

    ``headers`` become Kafka headers (for example trace context); they are not part of
    the event itself.
    """
    data = {
        "journalId": None,
        "card": f"{namespace}/{card}",
        "posting": f"{namespace}/{name}",
        "postingType": posting_type,
        "amount": amount_minor,
        "currency": currency,
        "rewardsRateBps": rewards_rate_bps,
        "earnOn": list(earn_on),
        "occurredAt": _time(occurred_at),
        "reference": reference,
        "merchant": None if merchant is None else dict(merchant),
    }
    checked = _checked(PostingPostedData, data)
    return _outbox(POSTING_POSTED, namespace, name, checked, now, event_id, headers)


def posting_reversed(
    original: Mapping[str, Any],
    *,
    reverses_journal_id: int,
    namespace: str,
    name: str,
    reason: str,
    now: datetime.datetime,
    event_id: uuid.UUID | None = None,
    headers: Mapping[str, str] | None = None,
) -> model.OutboxEvent:
    """The event of Posting ``namespace/name`` reversing journal ``reverses_journal_id``.

    ``original`` is the ``posting.posted`` event of that journal as the outbox holds it
    (see :func:`events.outbox.posted_event`); its terms are copied so the reversal takes
    back exactly what the original gave, whatever the product says today.
    """
    terms = _original_terms(original, reverses_journal_id)
    data = {
        "journalId": None,
        "card": terms.card,
        "posting": f"{namespace}/{name}",
        "postingType": terms.posting_type,
        "amount": terms.amount,
        "currency": terms.currency,
        "rewardsRateBps": terms.rewards_rate_bps,
        "earnOn": list(terms.earn_on),
        "occurredAt": _time(now),
        "reversesJournalId": reverses_journal_id,
        "reversedPosting": terms.posting,
        "reason": reason,
    }
    checked = _checked(PostingReversedData, data)
    return _outbox(POSTING_REVERSED, namespace, name, checked, now, event_id, headers)


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
    type_: str,
    namespace: str,
    name: str,
    data: _PostingTerms,
    now: datetime.datetime,
    event_id: uuid.UUID | None,
    headers: Mapping[str, str] | None,
) -> model.OutboxEvent:
    info = CATALOG[type_]
    ident = uuid.uuid4() if event_id is None else event_id
    body = data.to_json()
    body["journalId"] = None  # Filled in by the relay from the outbox row.
    try:
        event = envelope.build(
            event_id=ident,
            type_=type_,
            source=info.source,
            subject_text=envelope.subject(namespace, info.plural, name),
            time=now,
            data=body,
            extensions={"partitionkey": data.card},
        )
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
    card = getattr(data, "card", None)
    if card is not None and cloud.extensions.get("partitionkey") != card:
        raise EventError(f"{cloud.type} must have partitionkey equal to data.card")
    return Event(cloud, data)


def _first_errors(exc: pydantic.ValidationError, limit: int = 3) -> str:
    problems = [
        f"{'.'.join(str(p) for p in err['loc']) or '<data>'}: {err['msg']}"
        for err in exc.errors(include_url=False)
    ]
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more
