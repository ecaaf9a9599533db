"""The outbox's one writer, owned by the ledger whose transactions write it.

:func:`write` (and :func:`write_blocking` for synchronous connections) is the only code that
inserts outbox rows from Python, always with the event's headers (its trace context): the
ledger's journal and lifecycle events, compliance alerts and reconciliation results all go
through it, in the caller's transaction (``events.outbox`` re-exports it for producers outside
the ledger). The database's authorization functions (migration 0050) write their own rows, in
the same shape, in the transaction of each step. It lives in ``ledger`` because the ledger's
transaction is the commit point (Invariant 5) and ``events`` builds on the ledger's model, not
the other way round.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import psycopg
from psycopg.types.json import Jsonb

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
