"""What the outbox remembers of a card's issuance (reads only; the ledger writes the event).

A card's ``card.issued`` event commits with its ledger account (``engine.open_card_account``).
A handler retried after that commit must report the token the event already published, not
a new one, so the card's status and its event can never disagree: it reads the event back
here, by its derived id, before asking the tokenizer for a card and after opening the account.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from fintech_operator.cards import tokenizer


@dataclass(frozen=True)
class Issued:
    """The token, last 4 and issuance time a card's ``card.issued`` event carries."""

    token: tokenizer.IssuedToken
    issued_at: datetime.datetime


async def issued(conn: AsyncConnection[Any], event_id: uuid.UUID) -> Issued | None:
    """The card's issuance as its committed ``card.issued`` event says, or None before it."""
    cur = await conn.execute(
        "SELECT payload -> 'data' ->> 'token', payload -> 'data' ->> 'last4',"
        " payload -> 'data' ->> 'issuedAt' FROM outbox WHERE event_id = %s",
        (event_id,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    token, last4, issued_at = row
    # IssuedToken re-checks what was read back (house rule 6).
    return Issued(
        token=tokenizer.IssuedToken(token=str(token), last4=str(last4)),
        issued_at=datetime.datetime.fromisoformat(str(issued_at).replace("Z", "+00:00")),
    )
