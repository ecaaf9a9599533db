"""The posting events' wire contract: builders, the JSON Schemas in docs/events/, decoding.

Every event a builder produces (after the relay fills in the journal id) must validate
against its JSON Schema, decode back to the same data, and every broken variant must be
refused by BOTH the schema and the decoder, so the documents and the code cannot drift.
"""

from __future__ import annotations

import copy
import datetime
import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
from hypothesis import given, settings
from hypothesis import strategies as st

from fintech_operator.events import envelope, relay, schema
from fintech_operator.ledger import model

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events"
NOW = datetime.datetime(2026, 11, 29, 10, 0, 0, 123000, tzinfo=datetime.UTC)
POSTING_TYPES = ["Purchase", "Refund", "Payment", "Fee", "Adjustment"]


def _registry() -> referencing.Registry[Any]:
    resources = []
    for path in sorted(DOCS.glob("*.schema.json")):
        contents = json.loads(path.read_text())
        resources.append((contents["$id"], referencing.Resource.from_contents(contents)))
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    return registry


REGISTRY = _registry()


def validator(type_: str) -> jsonschema.Draft202012Validator:
    """The validator of one event type's schema file, with the envelope resolvable."""
    contents = json.loads((DOCS / f"{type_}.schema.json").read_text())
    return jsonschema.Draft202012Validator(contents, registry=REGISTRY)


def posted(**changes: Any) -> model.OutboxEvent:
    """A valid posting.posted outbox event; keyword arguments override builder inputs."""
    args: dict[str, Any] = {
        "namespace": "shop",
        "name": "purchase-1",
        "card": "alice-card",
        "posting_type": "Purchase",
        "amount_minor": 12_500,
        "currency": "USD",
        "rewards_rate_bps": 100,
        "earn_on": ["Purchase"],
        "occurred_at": NOW,
        "now": NOW,
        "reference": "auth-42",
        "merchant": {"name": "Cafe", "mcc": "5812", "country": "US"},
        "event_id": uuid.UUID("00000000-0000-4000-8000-000000000001"),
    }
    args.update(changes)
    return schema.posting_posted(**args)


def wire(event: model.OutboxEvent, journal_id: int = 7) -> dict[str, Any]:
    """What the relay publishes for ``event`` written with journal ``journal_id``."""
    message = relay.to_message(
        1,
        str(event.event_id),
        event.topic,
        event.key,
        event.payload,
        event.headers,
        journal_id,
        "",
    )
    decoded: dict[str, Any] = json.loads(message.value)
    return decoded


def reversed_(original: dict[str, Any] | None = None, **changes: Any) -> model.OutboxEvent:
    """A valid posting.reversed outbox event of the ``posted()`` event as journal 7."""
    args: dict[str, Any] = {
        "reverses_journal_id": 7,
        "namespace": "shop",
        "name": "undo-purchase-1",
        "reason": "duplicate capture",
        "now": NOW,
        "event_id": uuid.UUID("00000000-0000-4000-8000-000000000002"),
    }
    args.update(changes)
    return schema.posting_reversed(original or wire(posted()), **args)


def test_posted_event_matches_its_schema_and_decodes_back() -> None:
    """A built posting.posted event, as published, validates and decodes to the same data."""
    event = wire(posted())
    validator(schema.POSTING_POSTED).validate(event)
    decoded = schema.decode(json.dumps(event).encode())
    assert decoded.type == schema.POSTING_POSTED
    assert decoded.envelope.subject == "namespaces/shop/postings/purchase-1"
    assert decoded.envelope.extensions == {"partitionkey": "shop/alice-card"}
    assert decoded.data.to_json() == event["data"]
    assert event["data"]["journalId"] == 7
    assert event["time"] == "2026-11-29T10:00:00.123Z"


def test_reversed_event_carries_the_original_terms() -> None:
    """A reversal copies type, amount and rewards terms from the original event."""
    original = wire(posted(posting_type="Fee", amount_minor=999, earn_on=["Purchase", "Fee"]))
    event = wire(reversed_(original), journal_id=8)
    validator(schema.POSTING_REVERSED).validate(event)
    data = schema.decode(json.dumps(event).encode()).data
    assert isinstance(data, schema.PostingReversedData)
    assert (data.journal_id, data.reverses_journal_id) == (8, 7)
    assert (data.posting_type, data.amount, data.earn_on) == ("Fee", 999, ["Purchase", "Fee"])
    assert data.reversed_posting == "shop/purchase-1"
    assert data.posting == "shop/undo-purchase-1"
    assert data.card == "shop/alice-card"


def test_the_outbox_row_is_keyed_by_card_on_the_postings_topic() -> None:
    """Builders put events on `postings` keyed by card, so each card's events stay ordered."""
    event = posted()
    assert (event.topic, event.key) == ("postings", "shop/alice-card")
    assert event.payload["data"]["journalId"] is None


def test_reversal_of_a_stored_event_without_journal_id_is_accepted() -> None:
    """The outbox stores journalId as null; the reversal builder accepts that form too."""
    event = reversed_(dict(posted().payload))
    assert event.payload["data"]["reversesJournalId"] == 7


@pytest.mark.parametrize(
    ("original", "journal_id", "match"),
    [
        ({"type": "dev.fintech.card.issued.v1", "data": {}}, 7, "can only reverse"),
        ("not a mapping", 7, "mapping"),
        (None, 8, "journal 7, not 8"),
    ],
)
def test_reversal_builder_refuses_a_wrong_original(
    original: Any, journal_id: int, match: str
) -> None:
    """Another type, a non-mapping, or another journal's event cannot be reversed."""
    with pytest.raises(schema.EventError, match=match):
        reversed_(original or wire(posted()), reverses_journal_id=journal_id)


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_minor": 0},
        {"amount_minor": 12.5},
        {"amount_minor": "12500"},
        {"amount_minor": 10**15 + 1},
        {"currency": "usd"},
        {"rewards_rate_bps": 10_001},
        {"posting_type": "Chargeback"},
        {"earn_on": ["Purchase", "Purchase"]},
        {"card": "Alice Card"},
        {"occurred_at": datetime.datetime(2026, 1, 1)},
        {"merchant": {"name": ""}},
        {"merchant": {"name": "x", "mcc": "58"}},
        {"reference": ""},
    ],
)
def test_builder_refuses_bad_inputs(changes: dict[str, Any]) -> None:
    """Zero, float, string and huge amounts, bad codes, types, names and times never build."""
    with pytest.raises(schema.EventError):
        posted(**changes)


def _set(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(event)
    *parents, leaf = path.split(".")
    node = broken
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return broken


_DELETE = object()
BROKEN = [
    ("specversion", "0.3"),
    ("id", "not-a-uuid"),
    ("id", "00000000-0000-4000-8000-00000000000A"),
    ("type", "dev.fintech.posting.posted.v2"),
    ("type", "posting.posted"),
    ("source", "ledger"),
    ("source", "/somebody/else"),
    ("subject", "namespaces/shop/cards/alice-card"),
    ("subject", "shop/purchase-1"),
    ("time", "2026-11-29 10:00:00"),
    ("time", 1764410400),
    ("datacontenttype", "text/plain"),
    ("partitionkey", _DELETE),
    ("Extension", "x"),
    ("data", "a string"),
    ("data.journalId", None),
    ("data.journalId", _DELETE),
    ("data.journalId", 0),
    ("data.amount", 12_500.5),
    ("data.amount", "12500"),
    ("data.amount", -1),
    ("data.amount", True),
    ("data.currency", "US"),
    ("data.postingType", "purchase"),
    ("data.rewardsRateBps", -1),
    ("data.earnOn", ["Bonus"]),
    ("data.earnOn", "Purchase"),
    ("data.occurredAt", "yesterday"),
    ("data.merchant.mcc", 5812),
    ("data.card", _DELETE),
    ("data.surprise", 1),
]


@pytest.mark.parametrize(("path", "value"), BROKEN, ids=[f"{p}={v!r}" for p, v in BROKEN])
def test_broken_events_are_refused_by_schema_and_decoder(path: str, value: Any) -> None:
    """Each broken variant fails the JSON Schema AND the decoder (consumers dead-letter it)."""
    event = _set(wire(posted()), path, value)
    assert not validator(schema.POSTING_POSTED).is_valid(event)
    with pytest.raises(schema.EventError):
        schema.decode(json.dumps(event).encode())


# JSON Schema cannot say these two (an impossible date has the right shape, and one field
# cannot be compared with another), so docs/events/README.md says the decoder is stricter.
DECODER_ONLY = [("time", "2026-02-30T10:00:00Z"), ("partitionkey", "shop/bob-card")]


@pytest.mark.parametrize(("path", "value"), DECODER_ONLY)
def test_what_json_schema_cannot_express_is_refused_by_the_decoder(path: str, value: Any) -> None:
    """An impossible date and a partition key other than the card are refused on decode."""
    event = _set(wire(posted()), path, value)
    with pytest.raises(schema.EventError):
        schema.decode(json.dumps(event).encode())


BROKEN_REVERSED = [
    ("data.reversesJournalId", _DELETE),
    ("data.reversesJournalId", "7"),
    ("data.reversedPosting", "nope"),
    ("data.reason", ""),
    ("data.reason", "x" * 1025),
    ("data.reference", "ref"),
]


@pytest.mark.parametrize(
    ("path", "value"), BROKEN_REVERSED, ids=[f"{p}={v!r}"[:40] for p, v in BROKEN_REVERSED]
)
def test_broken_reversals_are_refused_by_schema_and_decoder(path: str, value: Any) -> None:
    """A reversal without its original journal, with bad names or reasons, is refused."""
    event = _set(wire(reversed_(), journal_id=8), path, value)
    assert not validator(schema.POSTING_REVERSED).is_valid(event)
    with pytest.raises(schema.EventError):
        schema.decode(json.dumps(event).encode())


@pytest.mark.parametrize("raw", [None, b"", b"not json", b"[]", b"42", b"\xff\xfe", b"{}"])
def test_garbage_is_refused(raw: bytes | None) -> None:
    """Empty, non-JSON, non-UTF-8 and non-object messages raise EventError (they go to a DLQ)."""
    with pytest.raises(schema.EventError):
        schema.decode(raw)


def test_a_valid_envelope_of_an_unknown_type_is_refused() -> None:
    """The decoder knows its types: a future type is refused rather than guessed at."""
    event = _set(wire(posted()), "type", "dev.fintech.posting.annotated.v1")
    with pytest.raises(schema.EventError, match="unsupported event type"):
        schema.decode(json.dumps(event).encode())


def test_every_catalog_type_has_a_schema_file() -> None:
    """docs/events/ documents every type the code can build or decode, and nothing else."""
    documented = {p.name.removesuffix(".schema.json") for p in DOCS.glob("dev.fintech.*.json")}
    assert documented == set(schema.CATALOG)
    for path in DOCS.glob("*.schema.json"):
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


_names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(
    namespace=_names,
    card=_names,
    name=_names,
    posting_type=st.sampled_from(POSTING_TYPES),
    amount_minor=st.integers(1, 10**15),
    currency=st.from_regex(r"[A-Z]{3}", fullmatch=True),
    rate=st.integers(0, 10_000),
    earn_on=st.lists(st.sampled_from(POSTING_TYPES), unique=True, max_size=5),
    occurred_at=st.datetimes(
        min_value=datetime.datetime(1971, 1, 1),
        max_value=datetime.datetime(9998, 12, 31),
        timezones=st.sampled_from([datetime.UTC, datetime.timezone(datetime.timedelta(hours=-5))]),
    ),
    journal_id=st.integers(1, 2**63 - 1),
)
def test_any_valid_posting_round_trips_through_schema_and_decoder(
    namespace: str,
    card: str,
    name: str,
    posting_type: str,
    amount_minor: int,
    currency: str,
    rate: int,
    earn_on: list[str],
    occurred_at: datetime.datetime,
    journal_id: int,
) -> None:
    """For all valid inputs, the published event validates and decodes to the same values."""
    event = wire(
        posted(
            namespace=namespace,
            card=card,
            name=name,
            posting_type=posting_type,
            amount_minor=amount_minor,
            currency=currency,
            rewards_rate_bps=rate,
            earn_on=earn_on,
            occurred_at=occurred_at,
            reference=None,
            merchant=None,
        ),
        journal_id,
    )
    validator(schema.POSTING_POSTED).validate(event)
    data = schema.decode(json.dumps(event).encode()).data
    assert isinstance(data, schema.PostingPostedData)
    assert (data.amount, data.journal_id, data.rewards_rate_bps) == (amount_minor, journal_id, rate)
    parsed = datetime.datetime.fromisoformat(data.occurred_at)
    assert abs(parsed - occurred_at) < datetime.timedelta(milliseconds=1)


def compliance_alert(**data_changes: Any) -> dict[str, Any]:
    """A compliance alert event shaped as compliance.store.alert_event builds it."""
    data: dict[str, Any] = {
        "alertId": 3,
        "alertKind": "DailyThreshold",
        "card": "shop/alice-card",
        "businessDay": "2026-11-29",
        "currency": "USD",
        "totalMinor": 1_250_000,
        "postingCount": 4,
        "thresholdMinor": 1_000_000,
        "policy": "shop/aml",
        "postingKey": "shop/purchase-9",
    }
    data.update(data_changes)
    return envelope.build(
        event_id=uuid.UUID("00000000-0000-4000-8000-000000000003"),
        type_=schema.COMPLIANCE_ALERT_RAISED,
        source=schema.SOURCE_COMPLIANCE,
        subject_text=envelope.subject("shop", "cards", "alice-card"),
        time=NOW,
        data=data,
        extensions={"partitionkey": "shop/alice-card"},
    )


def test_compliance_alert_matches_its_schema_and_decodes() -> None:
    """The compliance domain's alert validates against its schema and decodes typed."""
    event = compliance_alert()
    validator(schema.COMPLIANCE_ALERT_RAISED).validate(event)
    data = schema.decode(json.dumps(event).encode()).data
    assert isinstance(data, schema.ComplianceAlertRaisedData)
    assert (data.alert_kind, data.total_minor) == ("DailyThreshold", 1_250_000)


@pytest.mark.parametrize(
    "changes",
    [
        {"alertKind": "Velocity"},
        {"totalMinor": -1},
        {"thresholdMinor": 0},
        {"businessDay": "29/11/2026"},
        {"policy": "x"},
        {"alertId": "3"},
        {"extra": 1},
    ],
)
def test_broken_compliance_alerts_are_refused(changes: dict[str, Any]) -> None:
    """Unknown kinds, negative totals, bad days and extra fields fail schema and decoder."""
    event = compliance_alert(**changes)
    assert not validator(schema.COMPLIANCE_ALERT_RAISED).is_valid(event)
    with pytest.raises(schema.EventError):
        schema.decode(json.dumps(event).encode())
