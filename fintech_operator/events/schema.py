"""The wire contract of events on Kafka (pure: no I/O).

Events are JSON objects with a ``schemaVersion``; consumers refuse versions they do
not know and send them to the dead-letter topic rather than guess.
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

SCHEMA_VERSION = 1
PostingType = Literal["Purchase", "Refund", "Payment", "Fee", "Adjustment"]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class PostingPosted(BaseModel):
    """Published once per ledger journal, keyed by card so each card's events stay ordered."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_version: Literal[1] = Field(1, alias="schemaVersion")
    type: Literal["posting.posted"] = "posting.posted"
    event_id: uuid.UUID = Field(alias="eventId")
    journal_id: Annotated[StrictInt, Field(gt=0)] = Field(alias="journalId")
    card: Annotated[str, Field(min_length=3, max_length=317, description="namespace/name")]
    posting: Annotated[str, Field(min_length=3, max_length=317, description="namespace/name")]
    posting_type: PostingType = Field(alias="postingType")
    amount_minor: Annotated[StrictInt, Field(gt=0)] = Field(alias="amountMinor")
    currency: Currency
    # The product's terms at posting time travel with the event, so points are a pure
    # function of the event and reconciliation can recompute them later.
    rewards_rate_bps: Annotated[StrictInt, Field(ge=0, le=10_000)] = Field(alias="rewardsRateBps")
    earn_on: tuple[PostingType, ...] = Field(alias="earnOn")
    reverses_journal_id: Annotated[StrictInt, Field(gt=0)] | None = Field(
        None, alias="reversesJournalId"
    )
    occurred_at: datetime.datetime = Field(alias="occurredAt")

    def to_payload(self) -> dict[str, Any]:
        """The JSON object stored in the outbox and sent on the wire."""
        payload: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        return payload


def encode(payload: dict[str, Any]) -> bytes:
    """Canonical JSON bytes: stable key order so equal events are equal bytes."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def decode_posting(raw: bytes | None) -> PostingPosted:
    """Parse a wire message; raises ``ValueError`` (pydantic's included) on anything bad."""
    if raw is None:
        raise ValueError("message has no value")
    return PostingPosted.model_validate_json(raw)
