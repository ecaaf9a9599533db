"""The outbox: its one writer, and reads for producers of follow-up events.

:func:`write` (and :func:`write_blocking` for synchronous connections) is the only code that
inserts outbox rows from Python, always with the event's headers (its trace context): the
ledger's journal and lifecycle events, compliance alerts and reconciliation results all go
through it, in the caller's transaction. The database's authorization functions (migration
0050) write their own rows, in the same shape, in the transaction of each step.

A reversal's event copies the terms of the event of the journal it reverses; that
event is in the outbox, written in the original posting's transaction and immutable
since (a trigger of migration 0001 refuses any change but ``published_at``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

from fintech_operator.events import schema
from fintech_operator.ledger import model

# One statement for any number of events: an id already in the outbox is skipped (a retried
# producer writes the same derived id again), and the caller learns how many were new.
_WRITE: Final = """
INSERT INTO outbox (event_id, topic, key, payload, headers, journal_id)
SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::jsonb[], %s::jsonb[], %s::bigint[])
ON CONFLICT (event_id) DO NOTHING
"""


def _columns(events: Sequence[model.OutboxEvent], journal_id: int | None) -> tuple[list[Any], ...]:
    return (
        [event.event_id for event in events],
        [event.topic for event in events],
        [event.key for event in events],
        [Jsonb(dict(event.payload)) for event in events],
        [Jsonb(dict(event.headers)) for event in events],
        [journal_id for _ in events],
    )


async def write(
    cur: psycopg.AsyncCursor[Any],
    events: Sequence[model.OutboxEvent],
    *,
    journal_id: int | None = None,
) -> int:
    """Insert ``events`` (with their headers) in the cursor's transaction; return how many were
    new. ``journal_id`` is the journal whose transaction wrote them, when there is one."""
    if not events:
        return 0
    await cur.execute(_WRITE, _columns(events, journal_id))
    return max(cur.rowcount, 0)


def write_blocking(
    conn: psycopg.Connection[Any],
    events: Sequence[model.OutboxEvent],
    *,
    journal_id: int | None = None,
) -> int:
    """:func:`write` for a synchronous connection (reconciliation runs in a thread)."""
    if not events:
        return 0
    cur = conn.execute(_WRITE, _columns(events, journal_id))
    return max(cur.rowcount, 0)


_POSTED_EVENT = """
SELECT payload, journal_id FROM outbox
 WHERE journal_id = %s AND payload->>'type' = %s
 ORDER BY id LIMIT 1
"""


async def posted_event(
    conn: psycopg.AsyncConnection[Any], journal_id: int
) -> dict[str, Any] | None:
    """The ``posting.posted`` event of journal ``journal_id`` as published, or None if none.

    ``data.journalId`` is filled in from the row, exactly as the relay publishes it.
    """
    cur = await conn.execute(_POSTED_EVENT, (journal_id, schema.POSTING_POSTED))
    row = await cur.fetchone()
    if row is None:
        return None
    payload, row_journal_id = row
    event = dict(payload)
    data = dict(event.get("data") or {})
    data["journalId"] = int(row_journal_id)
    event["data"] = data
    return event
