"""The rewards consumer's one-pass decoder never accepts what the full decoder refuses.

``schema.posting_facts`` is the hot path; ``schema.decode`` has the last word. Mutations of
real wire events (fields dropped, retyped, replaced, extensions added) must either be refused
by the fast path (and then judged by ``decode``) or be accepted by both with the same facts.
"""

from __future__ import annotations

import json
from typing import Any

import hypothesis
from hypothesis import strategies as st

from fintech_operator.events import schema
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
