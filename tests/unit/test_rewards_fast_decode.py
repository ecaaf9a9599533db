"""The rewards consumer's one-pass decoder never accepts what the full decoder refuses.

``schema.posting_facts`` is the hot path; ``schema.decode`` has the last word. Mutations of
real wire events (fields dropped, retyped, replaced, extensions added) must either be refused
by the fast path (and then judged by ``decode``) or be accepted by both with the same facts.
"""

from __future__ import annotations

import json
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from fintech_operator.events import envelope, schema
from tests.unit.test_events_schema import posted, reversed_, wire

ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.just("2026-02-30T10:00:00.000Z"),
    st.just("dev.fintech.card.issued.v1"),
    st.just("namespaces/shop/cards/alice-card"),
    st.lists(st.sampled_from(["Purchase", "Refund", "Fee"]), max_size=3),
)


def _events() -> list[dict[str, Any]]:
    return [wire(posted()), wire(reversed_(), journal_id=8)]


def _paths(event: dict[str, Any]) -> list[tuple[str, ...]]:
    top = [(k,) for k in event if k != "data"]
    return top + [("data", k) for k in event["data"]]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    event = json.loads(json.dumps(draw(st.sampled_from(_events()))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([*_paths(event), ("newext",), ("data", "extra")]))
        target = event if len(path) == 1 else event["data"]
        if draw(st.booleans()):
            target.pop(path[-1], None)
        else:
            target[path[-1]] = draw(ODD_VALUES)
    return json.dumps(event).encode()


def test_the_usual_shapes_take_the_fast_path_with_the_full_decoders_facts() -> None:
    for event in _events():
        raw = json.dumps(event).encode()
        fast = schema.posting_facts(raw)
        full = schema.decode(raw)
        assert fast is not None
        assert (fast.event_id, fast.type, fast.moment, fast.data) == (
            full.event_id,
            full.type,
            full.envelope.moment,
            full.data,
        )


@hypothesis.settings(max_examples=400)
@hypothesis.given(mutated())
def test_the_fast_path_is_never_looser_than_the_full_decoder(raw: bytes) -> None:
    fast = schema.posting_facts(raw)
    if fast is None:
        return  # the full decoder judges it; nothing to compare
    full = schema.decode(raw)  # raises (and fails the test) if the fast path was looser
    assert fast.data == full.data
    assert fast.event_id == full.event_id


def test_what_is_not_a_posting_event_is_left_to_the_full_decoder() -> None:
    event = wire(posted())
    for raw in (
        None,
        b"not json",
        b"[]",
        json.dumps({**event, "dataschema": "https://example.test/s"}).encode(),
        json.dumps({**event, "partitionkey": "shop/bob-card"}).encode(),
        json.dumps({**event, "data": {**event["data"], "journalId": None}}).encode(),
        json.dumps({**event, "time": "2026-02-30T10:00:00.000Z"}).encode(),
    ):
        assert schema.posting_facts(raw) is None


# --- The canonical path: the relay's exact bytes, one regular expression -----------------------


def _canonical(event: dict[str, Any]) -> bytes:
    """The bytes the relay publishes for ``event`` (sorted keys, no spaces)."""
    return envelope.encode_stored(event)


def _canonical_events() -> list[dict[str, Any]]:
    return [
        *_events(),
        wire(posted(reference=None, merchant=None)),
        wire(posted(merchant={"name": "Kiosk 7"}, earn_on=["Fee", "Purchase", "Refund"])),
        wire(posted(posting_type="Refund", amount_minor=10**15, rewards_rate_bps=10_000)),
    ]


def _same_facts(fast: schema.CanonicalPosting, full: schema.Event) -> bool:
    data = full.data
    assert isinstance(data, schema.PostingPostedData | schema.PostingReversedData)
    reverses = data.reverses_journal_id if isinstance(data, schema.PostingReversedData) else None
    return fast == (
        str(full.event_id),
        full.type,
        full.envelope.moment,
        data.card,
        data.posting,
        data.journal_id,
        data.posting_type,
        data.amount,
        data.currency,
        data.rewards_rate_bps,
        frozenset(data.earn_on),
        reverses,
    )


def test_the_relays_bytes_take_the_canonical_path_with_the_full_decoders_facts() -> None:
    for event in _canonical_events():
        raw = _canonical(event)
        fast = schema.canonical_posting(raw)
        assert fast is not None, raw
        assert _same_facts(fast, schema.decode(raw))


@st.composite
def mutated_canonical(draw: st.DrawFn) -> bytes:
    event = json.loads(json.dumps(draw(st.sampled_from(_canonical_events()))))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([*_paths(event), ("newext",), ("data", "extra")]))
        target = event if len(path) == 1 else event["data"]
        if draw(st.booleans()):
            target.pop(path[-1], None)
        else:
            target[path[-1]] = draw(ODD_VALUES)
    try:
        return _canonical(event)
    except envelope.EnvelopeError:  # an int beyond 64 bits: the relay could not write it
        hypothesis.reject()


@hypothesis.settings(max_examples=600)
@hypothesis.given(mutated_canonical())
def test_the_canonical_path_is_never_looser_than_the_full_decoder(raw: bytes) -> None:
    fast = schema.canonical_posting(raw)
    if fast is None:
        return  # the pydantic decoders judge it
    assert _same_facts(fast, schema.decode(raw))  # decode raises if the fast path was looser


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda e: e.update(time="2026-02-30T10:00:00.000Z"), "an impossible date"),
        (lambda e: e.update(partitionkey="shop/bob-card"), "partition key is not the card"),
        (lambda e: e.update(subject="namespaces/shop/cards/x"), "not about a posting"),
        (lambda e: e["data"].update(earnOn=["Purchase", "Purchase"]), "earnOn twice"),
        (lambda e: e["data"].update(amount=10**15 + 1), "amount above the maximum"),
        (lambda e: e["data"].update(rewardsRateBps=10_001), "rate above 100%"),
        (lambda e: e["data"].update(reference='say "hi"'), "an escaped quote"),
        (lambda e: e["data"].update(reference="caf\u00e9"), "non-ASCII text"),
        (lambda e: e["data"].update(reference="x" * 129), "reference too long"),
        (lambda e: e["data"].update(card="shop/" + "c" * 320), "card reference too long"),
        (lambda e: e.update(traceid="abc"), "an extension attribute"),
    ],
)
def test_what_the_canonical_path_leaves_to_the_decoders(change: Any, why: str) -> None:
    event = wire(posted())
    change(event)
    assert schema.canonical_posting(_canonical(event)) is None, why


def test_spaces_or_another_key_order_leave_it_to_the_decoders() -> None:
    event = wire(posted())
    assert schema.canonical_posting(json.dumps(event, sort_keys=True).encode()) is None
    backwards = dict(reversed(event.items()))
    assert schema.canonical_posting(json.dumps(backwards, separators=(",", ":")).encode()) is None
    assert schema.canonical_posting(None) is None
    assert schema.canonical_posting(b"{}") is None
