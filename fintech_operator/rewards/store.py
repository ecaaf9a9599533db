"""The rewards tables: the consumer's batch write, and the reads the operator makes.

:func:`apply_rows` records a batch of events in ``processed_events`` and their points in
``rewards_ledger`` in the caller's transaction, in one statement; a trigger (migration 0021) moves
``rewards_balances`` in the same transaction. Events already recorded for the consumer
are skipped, so a redelivered batch changes nothing.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import psycopg

# One statement per batch: the rows arrive as one JSON array (one parameter, encoded in C), the
# processed-events marks and the points rows are written together, and only events not yet
# marked for the consumer get points. Data-modifying CTEs all run, whether read or not.
_APPLY: Final = """
WITH batch AS (
    SELECT n, (r->>0)::uuid AS event_id, r->>1 AS card, (r->>2)::bigint AS journal_id,
           r->>3 AS kind, (r->>4)::bigint AS points, (r->>5)::bigint AS amount_minor,
           r->>6 AS currency, (r->>7)::int AS rate_bps, r->>8 AS posting, r->>9 AS event_type,
           r->>10 AS posting_type, (r->>11)::bigint AS reverses_journal_id,
           (r->>12)::timestamptz AS occurred_at
      FROM jsonb_array_elements(%(rows)s::jsonb) WITH ORDINALITY AS b(r, n)
), fresh AS (
    INSERT INTO processed_events (consumer, event_id)
    SELECT %(consumer)s, event_id FROM batch ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING event_id
), accrued AS (
    INSERT INTO rewards_ledger
      (event_id, card, journal_id, kind, points, amount_minor, currency, rate_bps,
       posting, event_type, posting_type, reverses_journal_id, occurred_at)
    SELECT event_id, card, journal_id, kind, points, amount_minor, currency, rate_bps,
           posting, event_type, posting_type, reverses_journal_id, occurred_at
      FROM batch JOIN fresh USING (event_id)
     WHERE points <> 0
     ORDER BY n
    RETURNING 1
)
SELECT count(*) FROM fresh
"""
# What one event does, in _APPLY's column order: event id, card, journal id, kind, points,
# amount_minor, currency, rate_bps, posting, event type, posting type, reverses journal id,
# occurred at. A tuple, not an object: a batch holds thousands.
Row = tuple[
    str, str, int, str, int, int, str, int, str | None, str, str, int | None, datetime.datetime
]


def kind_of(points: int) -> str:
    """``accrual`` for points earned, ``reversal`` for points taken back."""
    return "accrual" if points > 0 else "reversal"


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
        return kind_of(self.points)

    @property
    def row(self) -> Row:
        return (
            str(self.event_id),
            self.card,
            self.journal_id,
            self.kind,
            self.points,
            self.amount_minor,
            self.currency,
            self.rate_bps,
            self.posting,
            self.event_type,
            self.posting_type,
            self.reverses_journal_id,
            self.occurred_at,
        )


async def apply(conn: psycopg.AsyncConnection[Any], consumer: str, entries: Sequence[Entry]) -> int:
    """:func:`apply_rows` of ``entries``."""
    return await apply_rows(conn, consumer, [entry.row for entry in entries])


async def apply_rows(conn: psycopg.AsyncConnection[Any], consumer: str, rows: Sequence[Row]) -> int:
    """Record ``rows`` not yet processed by ``consumer`` in one statement; return how many
    were applied now (an event id already recorded, or repeated in ``rows``, applies once).

    Run inside the caller's transaction: the marks and the points commit together.
    """
    unique: dict[str, Row] = {}
    for row in rows:
        unique.setdefault(row[0], row)  # the first of each event id
    if not unique:
        return 0
    params = {"rows": orjson.dumps(list(unique.values())).decode(), "consumer": consumer}
    found = await (await conn.execute(_APPLY, params)).fetchone()
    return int(found[0]) if found else 0


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
