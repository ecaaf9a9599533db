"""The posting event's wire contract: what consumers accept and what they refuse."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from fintech_operator.events import schema


def _payload(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schemaVersion": 1,
        "type": "posting.posted",
        "eventId": str(uuid.uuid4()),
        "journalId": 7,
        "card": "ns/card",
        "posting": "ns/p1",
        "postingType": "Purchase",
        "amountMinor": 12_500,
        "currency": "USD",
        "rewardsRateBps": 100,
        "earnOn": ["Purchase"],
        "reversesJournalId": None,
        "occurredAt": "2026-11-29T10:00:00Z",
    }
    base.update(changes)
    return base


def test_round_trip_is_canonical() -> None:
    """Encoding a parsed event gives the same bytes as encoding the original payload."""
    payload = _payload()
    event = schema.decode_posting(schema.encode(payload))
    assert event.amount_minor == 12_500
    assert schema.encode(event.to_payload()) == schema.encode(
        {**payload, "occurredAt": "2026-11-29T10:00:00Z"}
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"amountMinor": 125.0},
        {"amountMinor": "12500"},
        {"amountMinor": 0},
        {"currency": "usd"},
        {"schemaVersion": 2},
        {"rewardsRateBps": 20_000},
        {"postingType": "Chargeback"},
        {"unexpected": True},
    ],
)
def test_bad_events_are_refused(changes: dict[str, Any]) -> None:
    """Floats, strings for money, unknown versions, types and fields are all refused."""
    with pytest.raises(ValueError, match="validation error"):
        schema.decode_posting(json.dumps(_payload(**changes)).encode())


@pytest.mark.parametrize("raw", [None, b"", b"not json", b"[]"])
def test_garbage_is_refused(raw: bytes | None) -> None:
    """Empty, non-JSON and non-object messages raise ValueError (they go to the DLQ)."""
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic and our own errors both qualify
        schema.decode_posting(raw)
