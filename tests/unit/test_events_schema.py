"""The events' wire contract: builders, the JSON Schemas in docs/events/, decoding.

Every event a builder produces (after the relay fills in the journal id) must validate
against its JSON Schema, decode back to the same data, and every broken variant must be
refused by BOTH the schema and the decoder, so the documents and the code cannot drift.
Posting and compliance events first, then the card lifecycle and reconciliation events.
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

from fintech_operator import pan
from fintech_operator.events import envelope, relay, schema, topics
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
    return schema.PostingPosted(**args).outbox()


def wire(event: model.OutboxEvent, journal_id: int = 7) -> dict[str, Any]:
    """What the relay publishes for ``event`` written with journal ``journal_id``."""
    message = relay.to_message(
        relay.OutboxRow(
            1, str(event.event_id), event.topic, event.key, event.payload, event.headers, journal_id
        ),
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
    return schema.PostingReversed(original or wire(posted()), **args).outbox()


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


class _Deleted:
    """Marks a field the case removes. Its repr is fixed, not an address, so the test ids
    are the same in every process: pytest-xdist workers must collect identical ids."""

    def __repr__(self) -> str:
        return "<deleted>"


_DELETE = _Deleted()
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
    return envelope.Draft(
        event_id=uuid.UUID("00000000-0000-4000-8000-000000000003"),
        type_=schema.COMPLIANCE_ALERT_RAISED,
        source=schema.SOURCE_COMPLIANCE,
        subject_text=envelope.subject("shop", "cards", "alice-card"),
        time=NOW,
        data=data,
        extensions={"partitionkey": "shop/alice-card"},
    ).build()


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


# --- Card lifecycle events -------------------------------------------------------------------

UID = "6a1f1c52-9d7e-4c1b-8f0a-0d3b2c1e4f57"
TOKEN = "tok_" + "0123456789abcdef" * 2


def issued(**changes: Any) -> model.OutboxEvent:
    """A valid card.issued outbox event; keyword arguments override builder inputs."""
    args: dict[str, Any] = {
        "namespace": "shop",
        "name": "alice-card",
        "uid": UID,
        "user_id": "u_alice",
        "product": "standard",
        "currency": "USD",
        "token": TOKEN,
        "last4": "4242",
        "state": "Active",
        "issued_at": NOW,
    }
    args.update(changes)
    return schema.CardIssued(**args).outbox()


def state_changed(**changes: Any) -> model.OutboxEvent:
    args: dict[str, Any] = {
        "namespace": "shop",
        "name": "alice-card",
        "uid": UID,
        "generation": 2,
        "from_phase": "Active",
        "to_state": "Frozen",
        "now": NOW,
    }
    args.update(changes)
    return schema.CardStateChanged(**args).outbox()


def rejected(**changes: Any) -> model.OutboxEvent:
    args: dict[str, Any] = {
        "namespace": "shop",
        "name": "alice-card",
        "uid": UID,
        "reason": "KycNotAccepted",
        "message": "KYC status Rejected is not accepted",
        "now": NOW,
        "user_id": "u_alice",
        "product": "standard",
    }
    args.update(changes)
    return schema.CardRejected(**args).outbox()


def review_requested(**changes: Any) -> model.OutboxEvent:
    args: dict[str, Any] = {
        "namespace": "shop",
        "name": "alice-card",
        "uid": UID,
        "generation": 1,
        "reason": "PossibleMatch",
        "message": "holder name is close to a listed name (score 9400 bps)",
        "user_id": "u_alice",
        "product": "standard",
        "now": NOW,
    }
    args.update(changes)
    return schema.CardReviewRequested(**args).outbox()


def published(event: model.OutboxEvent) -> dict[str, Any]:
    """What the relay publishes for a lifecycle event (it has no journal)."""
    message = relay.to_message(
        relay.OutboxRow(
            1, str(event.event_id), event.topic, event.key, event.payload, event.headers, None
        ),
        "",
    )
    decoded: dict[str, Any] = json.loads(message.value)
    return decoded


CARD_BUILDERS = {
    schema.CARD_ISSUED: issued,
    schema.CARD_STATE_CHANGED: state_changed,
    schema.CARD_REJECTED: rejected,
    schema.CARD_REVIEW_REQUESTED: review_requested,
}


@pytest.mark.parametrize("type_", list(CARD_BUILDERS))
def test_card_events_match_their_schema_and_decode_back(type_: str) -> None:
    """Each card event, as published, validates, decodes to the same data, is about the card
    and goes to topic `cards` keyed by the card, like the card's posting events."""
    event = CARD_BUILDERS[type_]()
    assert (event.topic, event.key) == (topics.CARDS, "shop/alice-card")
    wire_event = published(event)
    validator(type_).validate(wire_event)
    decoded = schema.decode(json.dumps(wire_event).encode())
    assert decoded.type == type_
    assert decoded.event_id == event.event_id
    assert decoded.envelope.subject == "namespaces/shop/cards/alice-card"
    assert decoded.envelope.source == schema.SOURCE_CARDS
    assert decoded.envelope.extensions == {"partitionkey": "shop/alice-card"}
    assert decoded.data.to_json() == wire_event["data"]
    assert wire_event["time"] == "2026-11-29T10:00:00.123Z"


def test_card_issued_carries_token_and_last4_and_no_card_number() -> None:
    """card.issued has what a consumer needs (token, last 4, product, currency, user, time,
    account) and no 13-19 digit run anywhere in its bytes (invariant 7)."""
    event = published(issued(state="Frozen"))
    assert event["data"] == {
        "card": "shop/alice-card",
        "userId": "u_alice",
        "product": "standard",
        "currency": "USD",
        "account": "card:shop/alice-card:USD",
        "token": TOKEN,
        "last4": "4242",
        "state": "Frozen",
        "issuedAt": "2026-11-29T10:00:00.123Z",
    }
    raw = json.dumps(event)
    assert pan.find_pans(raw) == []


def test_lifecycle_event_ids_are_derived_from_uid_and_what_happened() -> None:
    """A retried handler builds the same id (the outbox keeps one row); another card, another
    generation's freeze or another type gets another id; closing is once per card."""
    assert issued().event_id == issued(token="tok_other", issued_at=NOW.replace(year=2027)).event_id
    assert issued().event_id != issued(uid="another-uid").event_id
    assert state_changed().event_id == state_changed(now=NOW.replace(hour=11)).event_id
    assert state_changed().event_id != state_changed(generation=3).event_id
    assert (
        state_changed(to_state="Closed", generation=4).event_id
        == state_changed(to_state="Closed", generation=5, from_phase="Frozen").event_id
    )
    assert rejected().event_id == rejected(reason="RiskDeclined").event_id
    assert review_requested().event_id != review_requested(generation=2).event_id
    ids = {builder().event_id for builder in CARD_BUILDERS.values()}
    assert len(ids) == len(CARD_BUILDERS)
    assert issued().event_id == schema.lifecycle_event_id(schema.CARD_ISSUED, UID)


@pytest.mark.parametrize(
    ("type_", "uid"), [("dev.fintech.card.lost.v1", UID), (schema.CARD_ISSUED, "")]
)
def test_lifecycle_event_id_needs_a_known_type_and_a_uid(type_: str, uid: str) -> None:
    """An id is never derived from an unknown type or an empty uid (it would collide)."""
    with pytest.raises(schema.EventError):
        schema.lifecycle_event_id(type_, uid)


TRANSITIONS = [
    (from_, to)
    for from_ in ("Pending", "PendingReview", "Active", "Frozen")
    for to in ("Active", "Frozen", "Closed")
]
ALLOWED = {
    ("Active", "Frozen"),
    ("Frozen", "Active"),
    ("Active", "Closed"),
    ("Frozen", "Closed"),
    ("Pending", "Closed"),
    ("PendingReview", "Closed"),
}


@pytest.mark.parametrize(("from_", "to"), TRANSITIONS)
def test_state_changes_allowed_by_builder_exactly_when_by_schema(from_: str, to: str) -> None:
    """Only an issued card is frozen or unfrozen, any unclosed card can be closed, and a change
    changes something: the builder, the schema and the decoder agree on every pair."""
    if (from_, to) in ALLOWED:
        event = published(state_changed(from_phase=from_, to_state=to))
        validator(schema.CARD_STATE_CHANGED).validate(event)
        data = schema.decode(json.dumps(event).encode()).data
        assert isinstance(data, schema.CardStateChangedData)
        assert (data.from_, data.to) == (from_, to)
        return
    with pytest.raises(schema.EventError):
        state_changed(from_phase=from_, to_state=to)
    good = published(state_changed())
    broken = _set(_set(good, "data.from", from_), "data.to", to)
    assert not validator(schema.CARD_STATE_CHANGED).is_valid(broken)
    with pytest.raises(schema.EventError):
        schema.decode(json.dumps(broken).encode())


@pytest.mark.parametrize(
    ("builder", "changes"),
    [
        (issued, {"token": "tok_4111111111111111"}),  # a Luhn-valid card number
        (issued, {"token": "4242"}),
        (issued, {"last4": "424"}),
        (issued, {"last4": "42a2"}),
        (issued, {"currency": "usd"}),
        (issued, {"state": "Closed"}),
        (issued, {"user_id": "u alice"}),
        (issued, {"product": "Standard"}),
        (issued, {"issued_at": datetime.datetime(2026, 1, 1)}),
        (issued, {"uid": ""}),
        (state_changed, {"reason": "not a reason"}),
        (state_changed, {"to_state": "Rejected"}),
        (state_changed, {"generation": -1}),
        (state_changed, {"generation": "2"}),
        (rejected, {"reason": ""}),
        (rejected, {"reason": "x" * 129}),
        (rejected, {"product": "no_underscores"}),
        (review_requested, {"user_id": None}),
        (review_requested, {"name": "Alice"}),
    ],
)
def test_card_builders_refuse_bad_inputs(builder: Any, changes: dict[str, Any]) -> None:
    """A card number as token, bad last 4, codes, states, names, times or reasons never build."""
    with pytest.raises(schema.EventError):
        builder(**changes)


def test_free_text_is_masked_and_bounded() -> None:
    """A message never carries a card number out (a holder name could hold one), and is one
    line of at most 1024 characters; an empty message falls back to the reason."""
    event = rejected(message="holder 4111 1111 1111 1111\nrefused " + "x" * 2000)
    message = event.payload["data"]["message"]
    assert message.startswith("holder ************1111 refused x")
    assert len(message) == 1024
    assert pan.find_pans(json.dumps(event.payload)) == []
    assert rejected(message="  ").payload["data"]["message"] == "KycNotAccepted"
    for sep in ("\t", "  ", "\n", " \r\n "):
        split = rejected(message="line 3: " + sep.join(["4111", "1111", "1111", "1111"]))
        assert split.payload["data"]["message"] == "line 3: ************1111"
    spec_invalid = rejected(user_id=None, product=None, reason="InvalidSpec").payload["data"]
    assert "userId" not in spec_invalid
    assert "product" not in spec_invalid


CARD_BROKEN = [
    ("type", "dev.fintech.card.issued.v2"),
    ("source", "/fintech-operator/ledger"),
    ("subject", "namespaces/shop/postings/alice-card"),
    ("partitionkey", _DELETE),
    ("data.card", _DELETE),
    ("data.card", "shop"),
    ("data.surprise", 1),
]
CARD_BROKEN_BY_TYPE = [
    (schema.CARD_ISSUED, "data.token", _DELETE),
    (schema.CARD_ISSUED, "data.token", "4111111111111111"),
    (schema.CARD_ISSUED, "data.last4", 4242),
    (schema.CARD_ISSUED, "data.state", "Closed"),
    (schema.CARD_ISSUED, "data.issuedAt", "now"),
    (schema.CARD_ISSUED, "data.account", "system:network_settlement:USD"),
    (schema.CARD_ISSUED, "data.pan", "4111111111111111"),
    (schema.CARD_STATE_CHANGED, "data.from", _DELETE),
    (schema.CARD_STATE_CHANGED, "data.to", "Rejected"),
    (schema.CARD_STATE_CHANGED, "data.reason", "two words"),
    (schema.CARD_REJECTED, "data.reason", _DELETE),
    (schema.CARD_REJECTED, "data.message", ""),
    (schema.CARD_REJECTED, "data.message", "x" * 1025),
    (schema.CARD_REVIEW_REQUESTED, "data.userId", _DELETE),
    (schema.CARD_REVIEW_REQUESTED, "data.product", 7),
]
CARD_CASES = [(t, p, v) for t in CARD_BUILDERS for p, v in CARD_BROKEN] + CARD_BROKEN_BY_TYPE


@pytest.mark.parametrize(
    ("type_", "path", "value"),
    CARD_CASES,
    ids=[f"{t.split('.')[3]}:{p}={v!r}"[:60] for t, p, v in CARD_CASES],
)
def test_broken_card_events_are_refused_by_schema_and_decoder(
    type_: str, path: str, value: Any
) -> None:
    """Each broken card event fails its JSON Schema AND the decoder (consumers dead-letter it)."""
    event = _set(published(CARD_BUILDERS[type_]()), path, value)
    assert not validator(type_).is_valid(event)
    with pytest.raises(schema.EventError):
        schema.decode(json.dumps(event).encode())


# Only the decoder can compare fields: the account is the card's, the subject names the card,
# the partition key is the card, a window starts before it ends, exceptions add up.
DECODER_ONLY_LIFECYCLE = [
    (schema.CARD_ISSUED, "data.account", "card:shop/bob-card:USD"),
    (schema.CARD_ISSUED, "data.account", "card:shop/alice-card:EUR"),
    (schema.CARD_ISSUED, "subject", "namespaces/shop/cards/bob-card"),
    (schema.CARD_STATE_CHANGED, "partitionkey", "shop/bob-card"),
    (schema.CARD_REJECTED, "subject", "namespaces/other/cards/alice-card"),
]


@pytest.mark.parametrize(("type_", "path", "value"), DECODER_ONLY_LIFECYCLE)
def test_what_json_schema_cannot_compare_is_refused_by_the_decoder(
    type_: str, path: str, value: Any
) -> None:
    """Another card's account, subject or key passes the schema but not the decoder."""
    event = _set(published(CARD_BUILDERS[type_]()), path, value)
    assert validator(type_).is_valid(event)
    with pytest.raises(schema.EventError):
        schema.decode(json.dumps(event).encode())


# --- Reconciliation events -------------------------------------------------------------------

SUMMARY = {
    "recordsRead": 3,
    "ledgerReferences": 2,
    "matched": 2,
    "matchedWithinTolerance": 0,
    "partialCaptures": 0,
    "amountMismatches": 0,
    "currencyMismatches": 0,
    "timeMismatches": 0,
    "missingInLedger": 1,
    "missingInSource": 0,
    "duplicates": 0,
    "exceptions": 1,
    "checks": {
        "settlement": {"result": "Failed", "exceptions": 1},
        "trialBalance": {"result": "Passed", "exceptions": 0},
    },
}


def recon_completed(**changes: Any) -> model.OutboxEvent:
    """A valid recon.completed event of a Succeeded run; keywords override builder inputs."""
    args: dict[str, Any] = {
        "namespace": "finance",
        "name": "settlement-2025-01",
        "uid": UID,
        "phase": "Succeeded",
        "dry_run": False,
        "attempt": 1,
        "window": (NOW - datetime.timedelta(days=1), NOW),
        "started_at": NOW - datetime.timedelta(seconds=5),
        "completed_at": NOW,
        "summary": SUMMARY,
    }
    args.update(changes)
    return schema.ReconCompleted(**args).outbox()


def recon_failed(**changes: Any) -> model.OutboxEvent:
    args: dict[str, Any] = {
        "phase": "Failed",
        "summary": None,
        "reason": "SourceNotFound",
        "message": "ConfigMap finance/nowhere does not exist",
    }
    args.update(changes)
    return recon_completed(**args)


@pytest.mark.parametrize("builder", [recon_completed, recon_failed])
def test_recon_completed_matches_its_schema_and_decodes_back(builder: Any) -> None:
    """A Succeeded and a Failed run's event validate, decode to the same data, and go to topic
    `recon` keyed by the run, about the run."""
    event = builder()
    assert (event.topic, event.key) == (topics.RECON, "finance/settlement-2025-01")
    wire_event = published(event)
    validator(schema.RECON_COMPLETED).validate(wire_event)
    decoded = schema.decode(json.dumps(wire_event).encode())
    assert decoded.envelope.subject == "namespaces/finance/reconciliationruns/settlement-2025-01"
    assert decoded.envelope.extensions == {"partitionkey": "finance/settlement-2025-01"}
    assert decoded.data.to_json() == wire_event["data"]
    data = decoded.data
    assert isinstance(data, schema.ReconCompletedData)
    assert data.exceptions == (1 if data.phase == "Succeeded" else 0)
    assert data.window is not None
    assert (data.window.start, data.window.end) == (
        "2026-11-28T10:00:00.123Z",
        "2026-11-29T10:00:00.123Z",
    )
    assert event.event_id == recon_completed(completed_at=NOW.replace(hour=12)).event_id


def test_recon_event_of_a_run_that_never_started_has_no_attempt_or_window() -> None:
    """An invalid spec fails before any attempt: the event says only what is known."""
    data = published(recon_failed(attempt=None, window=None, started_at=None, reason="InvalidSpec"))
    validator(schema.RECON_COMPLETED).validate(data)
    assert set(data["data"]) == {
        "run",
        "phase",
        "dryRun",
        "completedAt",
        "exceptions",
        "reason",
        "message",
    }


@pytest.mark.parametrize(
    ("builder", "changes"),
    [
        (recon_completed, {"summary": None}),
        (recon_completed, {"reason": "SourceNotFound"}),
        (recon_completed, {"summary": {**SUMMARY, "matched": -1}}),
        (recon_completed, {"summary": {**SUMMARY, "matched": 2.0}}),
        (recon_completed, {"summary": {**SUMMARY, "checks": {"ledger": {}}}}),
        (recon_completed, {"phase": "Running"}),
        (recon_completed, {"attempt": 0}),
        (recon_completed, {"window": (NOW, NOW)}),
        (recon_completed, {"dry_run": "false"}),
        (recon_failed, {"reason": None}),
        (recon_failed, {"summary": SUMMARY}),
        (recon_completed, {"name": "Settlement"}),
    ],
)
def test_recon_builder_refuses_bad_inputs(builder: Any, changes: dict[str, Any]) -> None:
    """A Succeeded run without a summary, a Failed one without a reason, negative or float
    counts, unknown checks, phases or an empty window never build."""
    with pytest.raises(schema.EventError):
        builder(**changes)


RECON_BROKEN = [
    ("data.run", _DELETE),
    ("data.summary", _DELETE),
    ("data.summary.recordsRead", -1),
    ("data.summary.checks.settlement.result", "Maybe"),
    ("data.reason", "SourceNotFound"),
    ("data.phase", "Running"),
    ("data.exceptions", "1"),
    ("data.window.end", _DELETE),
    ("data.dryRun", _DELETE),
    ("subject", "namespaces/finance/cards/settlement-2025-01"),
    ("source", "/fintech-operator/cards"),
]
RECON_FAILED_BROKEN = [
    ("data.reason", _DELETE),
    ("data.exceptions", 3),
    ("data.summary", SUMMARY),
]


@pytest.mark.parametrize(("path", "value"), RECON_BROKEN + RECON_FAILED_BROKEN)
def test_broken_recon_events_are_refused_by_schema_and_decoder(path: str, value: Any) -> None:
    """Each broken recon.completed fails the JSON Schema AND the decoder."""
    builder = recon_failed if (path, value) in RECON_FAILED_BROKEN else recon_completed
    event = _set(published(builder()), path, value)
    assert not validator(schema.RECON_COMPLETED).is_valid(event)
    with pytest.raises(schema.EventError):
        schema.decode(json.dumps(event).encode())


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("data.exceptions", 2),
        ("data.window.start", "2026-11-29T10:00:00.123Z"),
        ("partitionkey", "finance/other-run"),
        ("subject", "namespaces/finance/reconciliationruns/other-run"),
    ],
)
def test_recon_rules_json_schema_cannot_compare_are_refused_by_the_decoder(
    path: str, value: Any
) -> None:
    """Exceptions that disagree with the summary, an empty window, or another run's key or
    subject pass the schema but not the decoder."""
    event = _set(published(recon_completed()), path, value)
    assert validator(schema.RECON_COMPLETED).is_valid(event)
    with pytest.raises(schema.EventError):
        schema.decode(json.dumps(event).encode())
