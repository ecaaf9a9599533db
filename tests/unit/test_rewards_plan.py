"""The rewards consumer's pure step: a Kafka record in, a ledger entry or a poison out."""

from __future__ import annotations

import datetime
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from fintech_operator.events import deadletter, envelope, schema
from fintech_operator.rewards import consumer
from tests.unit.test_events_schema import posted, reversed_, wire

NOW = datetime.datetime(2026, 11, 29, 10, 0, tzinfo=datetime.UTC)


@dataclass
class Record:
    """The fields of aiokafka's ConsumerRecord the consumer reads."""

    value: bytes | None
    topic: str = "postings"
    partition: int = 0
    offset: int = 0
    key: bytes | None = b"shop/alice-card"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def record_of(event: dict[str, Any]) -> Record:
    return Record(json.dumps(event).encode())


def test_a_purchase_accrues_its_points() -> None:
    """1% of 12 500 is 125 points, recorded with its card, posting, journal and time."""
    planned = consumer.plan(record_of(wire(posted(), journal_id=7)))
    assert isinstance(planned, consumer.Planned)
    entry = planned.entry
    assert (entry.points, entry.kind, entry.card, entry.posting) == (
        125,
        "accrual",
        "shop/alice-card",
        "shop/purchase-1",
    )
    assert (entry.journal_id, entry.reverses_journal_id) == (7, None)
    assert entry.event_id == uuid.UUID("00000000-0000-4000-8000-000000000001")


def test_a_refund_takes_points_back() -> None:
    """A refund's entry is negative and of kind reversal."""
    planned = consumer.plan(record_of(wire(posted(posting_type="Refund"), journal_id=9)))
    assert isinstance(planned, consumer.Planned)
    assert (planned.entry.points, planned.entry.kind) == (-125, "reversal")


def test_a_reversal_negates_the_original_with_its_own_terms() -> None:
    """Reversing a purchase takes back exactly what it gave, whatever today's terms are."""
    original = wire(posted(amount_minor=20_000, rewards_rate_bps=250), journal_id=7)
    planned = consumer.plan(record_of(wire(reversed_(original), journal_id=8)))
    assert isinstance(planned, consumer.Planned)
    assert (planned.entry.points, planned.entry.reverses_journal_id) == (-500, 7)
    assert planned.entry.journal_id == 8


def test_types_outside_earn_on_are_recorded_with_zero_points() -> None:
    """A payment is applied (so it is never re-applied) but moves no points."""
    planned = consumer.plan(record_of(wire(posted(posting_type="Payment"))))
    assert isinstance(planned, consumer.Planned)
    assert planned.entry.points == 0


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "invalid event"),
        (b"{", "invalid event"),
        (json.dumps({"schemaVersion": 1, "type": "posting.posted"}).encode(), "invalid event"),
    ],
)
def test_undecodable_records_are_poison_with_a_reason(value: bytes | None, reason: str) -> None:
    """Missing values, broken JSON and the old flat format become poison, not crashes."""
    poison = consumer.plan(Record(value))
    assert isinstance(poison, deadletter.Poison)
    assert poison.reason.startswith(reason)


def test_the_largest_amount_at_the_highest_rate_is_exact() -> None:
    """10^15 minor units at 100% gives 10^15 points: integers, no overflow, no rounding."""
    event = wire(posted(amount_minor=10**15, rewards_rate_bps=10_000))
    planned = consumer.plan(record_of(event))
    assert isinstance(planned, consumer.Planned)
    assert planned.entry.points == 10**15


def test_dead_letter_headers_say_why_who_when_and_where_from() -> None:
    """DLQ headers come first, older dlq-* headers are dropped, the rest are kept."""
    record = Record(
        b"x",
        topic="t.postings",
        partition=2,
        offset=41,
        headers=[("dlq-reason", b"old"), ("traceparent", b"00-1")],
    )
    headers = deadletter.headers(record, "invalid\nevent: bad", "rewards", NOW)
    assert headers == [
        ("dlq-reason", b"invalid event: bad"),
        ("dlq-consumer", b"rewards"),
        ("dlq-source", b"t.postings/2/41"),
        ("dlq-time", b"2026-11-29T10:00:00.000Z"),
        ("traceparent", b"00-1"),
    ]


def test_dead_letter_reasons_are_bounded() -> None:
    """A huge reason (say, a whole payload in an error) is cut to a bounded header."""
    headers = deadletter.headers(Record(b"x"), "x" * 10_000, "rewards", NOW)
    assert len(headers[0][1]) == deadletter.REASON_MAX_CHARS


def authorization_event(step: str, **data: Any) -> dict[str, Any]:
    """An authorization event as the database writes it (migration 0050)."""
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "/fintech-operator/authorizations",
        "type": f"dev.fintech.authorization.{step}.v1",
        "subject": "namespaces/shop/cards/alice-card",
        "time": "2026-11-29T10:00:00.000Z",
        "datacontenttype": "application/json",
        "partitionkey": "shop/alice-card",
        "data": {
            "authorization": "auth_1",
            "card": "shop/alice-card",
            "status": "pending",
            "reason": "Approved",
            "currency": "USD",
            "amount": 10_000,
            "held": 10_000,
            "captured": 0,
            "released": 0,
            **data,
        },
    }


def test_a_capture_accrues_on_the_captured_amount_only() -> None:
    """A capture of 6 050 of a 10 000 hold at 1% earns 60 points, tied to its journal."""
    event = authorization_event(
        "captured", held=3_950, captured=6_050, stepAmount=6_050, journalId=12, final=False,
        forcePost=False, rewardsRateBps=100, earnOn=["Purchase"],
    )  # fmt: skip
    planned = consumer.plan(Record(json.dumps(event).encode(), topic="authorizations"))
    assert isinstance(planned, consumer.Planned)
    entry = planned.entry
    assert (entry.points, entry.amount_minor, entry.journal_id) == (60, 6_050, 12)
    assert (entry.card, entry.posting, entry.posting_type) == ("shop/alice-card", None, "Purchase")


def test_a_capture_outside_earn_on_earns_nothing_but_is_recorded() -> None:
    event = authorization_event(
        "captured", stepAmount=500, journalId=13, final=True, forcePost=True,
        rewardsRateBps=100, earnOn=["Fee"],
    )  # fmt: skip
    planned = consumer.plan(Record(json.dumps(event).encode(), topic="authorizations"))
    assert isinstance(planned, consumer.Planned)
    assert planned.entry.points == 0


@pytest.mark.parametrize("step", ["approved", "declined", "incremented", "voided", "expired"])
def test_authorization_steps_that_move_no_money_are_skipped_not_dead_lettered(step: str) -> None:
    """A hold earns nothing until it is captured: no entry, and no poison either."""
    event = authorization_event(step)
    assert consumer.plan(Record(json.dumps(event).encode(), topic="authorizations")) is None


def test_a_capture_without_its_journal_is_poison() -> None:
    event = authorization_event(
        "captured", stepAmount=500, final=True, forcePost=False, rewardsRateBps=100,
        earnOn=["Purchase"],
    )  # fmt: skip
    poison = consumer.plan(Record(json.dumps(event).encode(), topic="authorizations"))
    assert isinstance(poison, deadletter.Poison)


# --- A whole poll at once ----------------------------------------------------------------------


def canonical_record(event: dict[str, Any], offset: int = 0) -> Record:
    """The record the relay publishes: canonical bytes."""
    return Record(envelope.encode_stored(event), offset=offset)


def test_a_batch_gives_the_same_rows_by_either_path() -> None:
    """The canonical path (one regular expression) and plan() (pydantic) agree row for row."""
    events = [
        wire(posted(), journal_id=7),
        wire(posted(posting_type="Refund", event_id=uuid.uuid4()), journal_id=9),
        wire(posted(posting_type="Payment", event_id=uuid.uuid4()), journal_id=10),
        wire(reversed_(), journal_id=8),
    ]
    fast = consumer.decode_batch([canonical_record(e) for e in events])
    slow = consumer.decode_batch([record_of(e) for e in events])  # spaces: not canonical
    assert all(schema.canonical_posting(r.value) is not None for r in fast.sources)
    assert all(schema.canonical_posting(r.value) is None for r in slow.sources)
    assert fast.rows == slow.rows
    assert [row[4] for row in fast.rows] == [125, -125, 0, -125]
    assert [row[3] for row in fast.rows] == ["accrual", "reversal", "reversal", "reversal"]


def test_poison_in_the_middle_of_a_batch_is_set_aside_and_the_rest_keeps_its_order() -> None:
    first = wire(posted(event_id=uuid.uuid4()))
    last = wire(posted(event_id=uuid.uuid4(), amount_minor=700))
    bad_amount = {**first, "id": str(uuid.uuid4()), "data": {**first["data"], "amount": 12.5}}
    records = [
        canonical_record(first, 0),
        Record(b"\x00not json", offset=1),
        Record(json.dumps(bad_amount).encode(), offset=2),
        canonical_record(last, 3),
    ]
    decoded = consumer.decode_batch(records)
    assert [r.offset for r in decoded.sources] == [0, 3]
    assert [row[0] for row in decoded.rows] == [first["id"], last["id"]]
    assert [p.record.offset for p in decoded.poisons] == [1, 2]
    assert all(p.reason.startswith("invalid event") for p in decoded.poisons)


def test_a_batch_counts_the_authorization_steps_it_skips_as_ignored() -> None:
    """Steps that move no money give no row and no poison, and are counted as ignored, so the
    batch's summary and fintech_consumer_events_total account for every record."""
    capture = authorization_event(
        "captured", stepAmount=500, journalId=13, final=True, forcePost=False,
        rewardsRateBps=100, earnOn=["Purchase"],
    )  # fmt: skip
    steps = [authorization_event(step) for step in ("approved", "declined", "voided")]
    records = [
        Record(json.dumps(event).encode(), topic="authorizations", offset=offset)
        for offset, event in enumerate([*steps, capture])
    ]
    decoded = consumer.decode_batch([*records, canonical_record(wire(posted()), 4)])
    assert decoded.ignored == 3
    assert [r.offset for r in decoded.sources] == [3, 4]
    assert decoded.poisons == []


def test_a_batch_without_skipped_steps_ignores_nothing() -> None:
    decoded = consumer.decode_batch([canonical_record(wire(posted()))])
    assert (decoded.ignored, len(decoded.rows)) == (0, 1)
