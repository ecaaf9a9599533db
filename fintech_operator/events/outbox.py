"""The outbox: its one writer (``ledger.outbox``, re-exported here), and reads for producers
of follow-up events.

A reversal's event copies the terms of the event of the journal it reverses; that
event is in the outbox, written in the original posting's transaction and immutable
since (a trigger of migration 0001 refuses any change but ``published_at``).
"""

from __future__ import annotations

from typing import Any

import psycopg

from fintech_operator.events import schema
from fintech_operator.ledger.outbox import write, write_blocking

__all__ = ["posted_event", "write", "write_blocking"]

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
