"""The CloudEvents envelope profile on its own: building, encoding, decoding, refusing."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from fintech_operator.events import envelope

NOW = datetime.datetime(2026, 11, 29, 10, 0, tzinfo=datetime.UTC)
ID = uuid.UUID("00000000-0000-4000-8000-0000000000aa")


def build(**changes: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "event_id": ID,
        "type_": "dev.fintech.card.issued.v1",
        "source": "/fintech-operator/cards",
        "subject_text": envelope.subject("shop", "cards", "alice-card"),
        "time": NOW,
        "data": {"card": "shop/alice-card"},
        "extensions": {"partitionkey": "shop/alice-card"},
    }
    args.update(changes)
    return envelope.Draft(**args).build()


def test_build_gives_every_required_attribute() -> None:
    """A built event has the seven context attributes, the extension and the data."""
    event = build()
    assert event == {
        "specversion": "1.0",
        "id": str(ID),
        "source": "/fintech-operator/cards",
        "type": "dev.fintech.card.issued.v1",
        "subject": "namespaces/shop/cards/alice-card",
        "time": "2026-11-29T10:00:00.000Z",
        "datacontenttype": "application/json",
        "data": {"card": "shop/alice-card"},
        "partitionkey": "shop/alice-card",
    }


def test_encoding_is_canonical_and_decodes_back() -> None:
    """Equal events are equal bytes (sorted keys, no spaces), and decode gives them back."""
    event = build()
    raw = envelope.encode(event)
    assert raw == envelope.encode(dict(reversed(list(event.items()))))
    assert b" " not in raw
    decoded = envelope.decode(raw)
    assert decoded.event_id == ID
    assert decoded.namespace == "shop"
    assert decoded.moment == NOW
    assert decoded.extensions == {"partitionkey": "shop/alice-card"}


def test_time_is_written_in_utc_with_milliseconds() -> None:
    """Any offset becomes UTC with a Z; one spelling per instant."""
    eastern = datetime.timezone(datetime.timedelta(hours=-5))
    moment = datetime.datetime(2026, 11, 29, 5, 0, 0, 123456, tzinfo=eastern)
    assert envelope.time_text(moment) == "2026-11-29T10:00:00.123Z"


@pytest.mark.parametrize(
    "changes",
    [
        {"event_id": "not-a-uuid"},
        {"type_": "card.issued"},
        {"type_": "dev.fintech.card.issued"},
        {"type_": "dev.fintech.Card.issued.v1"},
        {"source": "fintech-operator"},
        {"source": ""},
        {"time": datetime.datetime(2026, 1, 1)},
        {"extensions": {"Partition-Key": "x"}},
        {"extensions": {"averyveryverylongextensionname": "x"}},
        {"extensions": {"pk": 1.5}},
        {"extensions": {"pk": None}},
        {"extensions": {"pk": "x" * 513}},
        {"extensions": {"type": "dev.fintech.other.v1"}},
    ],
)
def test_build_refuses_what_the_profile_forbids(changes: dict[str, Any]) -> None:
    """Bad ids, types, sources, naive times and malformed extensions never build."""
    with pytest.raises(envelope.EnvelopeError):
        build(**changes)


@pytest.mark.parametrize(
    ("namespace", "plural", "name"),
    [("Shop", "cards", "a"), ("shop", "Cards", "a"), ("shop", "cards", "a/b"), ("", "cards", "a")],
)
def test_subject_refuses_bad_names(namespace: str, plural: str, name: str) -> None:
    """Subjects are Kubernetes names only: no capitals, no slashes, nothing empty."""
    with pytest.raises(envelope.EnvelopeError):
        envelope.subject(namespace, plural, name)


@pytest.mark.parametrize("subject", ["shop/cards/a", "namespaces/shop/cards", 42])
def test_namespace_of_refuses_subjects_without_one(subject: Any) -> None:
    """Routing by namespace refuses a subject that does not name one."""
    with pytest.raises(envelope.EnvelopeError):
        envelope.namespace_of(subject)


def test_oversized_events_are_refused_both_ways() -> None:
    """Events are bounded: encode refuses a big one and decode refuses big bytes unparsed."""
    big = build(data={"blob": "x" * envelope.EVENT_BYTES_MAX})
    with pytest.raises(envelope.EnvelopeError, match="bytes"):
        envelope.encode(big)
    with pytest.raises(envelope.EnvelopeError, match="bytes"):
        envelope.decode(b" " * (envelope.EVENT_BYTES_MAX + 1))


@pytest.mark.parametrize(
    "mutation",
    [
        {"specversion": "1.1"},
        {"datacontenttype": "application/xml"},
        {"data": None},
        {"data": [1, 2]},
        {"subject": None},
        {"time": "2026-11-29T10:00:00"},
        {"id": 5},
    ],
)
def test_decode_refuses_broken_envelopes(mutation: dict[str, Any]) -> None:
    """Wrong versions, content types, data shapes, missing offsets and ids are refused."""
    raw = json.dumps({**build(), **mutation}).encode()
    with pytest.raises(envelope.EnvelopeError):
        envelope.decode(raw)


def test_encode_refuses_what_json_cannot_hold() -> None:
    """NaN and non-JSON values are refused instead of written as invalid JSON."""
    with pytest.raises(envelope.EnvelopeError):
        envelope.encode({"data": {"x": float("nan")}})
    with pytest.raises(envelope.EnvelopeError):
        envelope.encode({"data": {"x": object()}})
    with pytest.raises(envelope.EnvelopeError):
        envelope.encode({"data": {"x": "\ud800"}})  # a lone surrogate has no UTF-8 form


@hypothesis.given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(10**15), 10**15) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )
)
def test_the_relays_fast_encoding_gives_the_same_bytes(data: object) -> None:
    """What the relay sends (orjson, for rows read back from jsonb) is byte for byte what
    ``encode`` writes, non-ASCII text and escapes included: equal events stay equal bytes."""
    event = {**build(), "data": {"value": data, "merchant": 'Café Zürich \u2028 "quoted" \\'}}
    assert envelope.encode_stored(event) == envelope.encode(event)
    assert "Zürich".encode() in envelope.encode(event)


def test_the_fast_encoding_refuses_oversized_events() -> None:
    """The size limit holds on the relay's path too."""
    big = {**build(), "data": {"blob": "x" * envelope.EVENT_BYTES_MAX}}
    with pytest.raises(envelope.EnvelopeError, match="more than"):
        envelope.encode_stored(big)
