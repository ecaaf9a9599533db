"""The rewards tables: the consumer's batch write, and the reads the operator makes.

:func:`apply` records a batch of events in ``processed_events`` and their points in
``rewards_ledger`` in the caller's transaction; a trigger (migration 0021) moves
``rewards_balances`` in the same transaction. Events already recorded for the consumer
are skipped, so a redelivered batch changes nothing.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg

_MARK: Final = """
INSERT INTO processed_events (consumer, event_id)
SELECT %s, id FROM unnest(%s::uuid[]) AS t(id)
ON CONFLICT DO NOTHING
RETURNING event_id
"""
_ACCRUE: Final = """
INSERT INTO rewards_ledger
  (event_id, card, journal_id, kind, points, amount_minor, currency, rate_bps,
   posting, event_type, posting_type, reverses_journal_id, occurred_at)
SELECT event_id, card, journal_id, kind, points, amount_minor, currency, rate_bps,
       posting, event_type, posting_type, reverses_journal_id, occurred_at
  FROM unnest(%s::uuid[], %s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::bigint[],
              %s::text[], %s::int[], %s::text[], %s::text[], %s::text[], %s::bigint[],
              %s::timestamptz[])
       WITH ORDINALITY AS r(event_id, card, journal_id, kind, points, amount_minor, currency,
                            rate_bps, posting, event_type, posting_type, reverses_journal_id,
                            occurred_at, n)
 ORDER BY n
"""


@dataclass(frozen=True)
class Entry:
    """One event's effect on the rewards ledger (``points`` may be 0: recorded, no row)."""

    event_id: uuid.UUID
    event_type: str
    card: str
    posting: str | None  # None for an authorization's capture: no Posting resource behind it
    journal_id: int
    posting_type: str
    points: int
    amount_minor: int
    currency: str
    rate_bps: int
    reverses_journal_id: int | None
    occurred_at: datetime.datetime

    @property
    def kind(self) -> str:
        return "accrual" if self.points > 0 else "reversal"


async def apply(
    conn: psycopg.AsyncConnection[Any], consumer: str, entries: Sequence[Entry]
) -> list[Entry]:
    """Record ``entries`` not yet processed by ``consumer``; return those applied now.

    Run inside the caller's transaction: the marks and the points commit together.
    """
    unique: dict[uuid.UUID, Entry] = {}
    for entry in entries:
        unique.setdefault(entry.event_id, entry)
    if not unique:
        return []
    cur = await conn.execute(_MARK, (consumer, list(unique)))
    fresh = {row[0] for row in await cur.fetchall()}
    applied = [entry for event_id, entry in unique.items() if event_id in fresh]
    rows = [entry for entry in applied if entry.points != 0]
    if rows:
        columns = (
            [e.event_id for e in rows],
            [e.card for e in rows],
            [e.journal_id for e in rows],
            [e.kind for e in rows],
            [e.points for e in rows],
            [e.amount_minor for e in rows],
            [e.currency for e in rows],
            [e.rate_bps for e in rows],
            [e.posting for e in rows],
            [e.event_type for e in rows],
            [e.posting_type for e in rows],
            [e.reverses_journal_id for e in rows],
            [e.occurred_at for e in rows],
        )
        await conn.execute(_ACCRUE, columns)
    return applied


async def points_balance(conn: psycopg.AsyncConnection[Any], card: str) -> int:
    """The card's points (``namespace/name``): the signed sum of its accruals and reversals."""
    cur = await conn.execute("SELECT points FROM rewards_balances WHERE card = %s", (card,))
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def points_balances(
    conn: psycopg.AsyncConnection[Any], cards: Sequence[str]
) -> dict[str, int]:
    """Points of many cards in one query (cards without rows have 0)."""
    cur = await conn.execute(
        "SELECT card, points FROM rewards_balances WHERE card = ANY(%s)", (list(cards),)
    )
    found = {str(card): int(points) for card, points in await cur.fetchall()}
    return {card: found.get(card, 0) for card in cards}


async def balance_drift(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """Cards whose balance row disagrees with their ledger rows (always empty)."""
    cur = await conn.execute("SELECT card FROM rewards_balance_drift ORDER BY card")
    return [str(card) for (card,) in await cur.fetchall()]
