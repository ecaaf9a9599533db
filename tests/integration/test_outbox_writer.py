"""The outbox's one writer (issue 12, item 3): every row with its headers, an id written twice
kept once, the journal recorded, from async and sync connections alike."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from fintech_operator.events import outbox
from fintech_operator.ledger import model

pytestmark = pytest.mark.integration

TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def event(**headers: str) -> model.OutboxEvent:
    return model.OutboxEvent(uuid.uuid4(), "cards", "shop/alice", {"hello": "world"}, headers)


async def test_write_keeps_headers_and_skips_an_id_already_written(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    first, second = event(**TRACE), event()
    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        assert await outbox.write(cur, [first, second]) == 2
        assert await outbox.write(cur, [first]) == 0
        assert await outbox.write(cur, []) == 0
    rows = raw.execute(
        "SELECT headers, journal_id FROM outbox WHERE event_id = ANY(%s) ORDER BY id",
        ([first.event_id, second.event_id],),
    ).fetchall()
    assert rows == [(TRACE, None), ({}, None)]


def test_write_blocking_is_the_same_writer(raw: psycopg.Connection[Any]) -> None:
    one = event(**TRACE)
    assert outbox.write_blocking(raw, [one]) == 1
    assert outbox.write_blocking(raw, [one]) == 0
    row = raw.execute("SELECT topic, key, headers FROM outbox WHERE event_id = %s", (one.event_id,))
    assert row.fetchone() == ("cards", "shop/alice", TRACE)


# --- The relay's wake-up (migrations 0020, 0051, 0070) ------------------------------------------

_INSERT = (
    "INSERT INTO outbox (event_id, topic, key, payload)"
    " SELECT gen_random_uuid(), t, 'k', '{}' FROM unnest(%s::text[]) t"
)


def wakeups_after(raw: psycopg.Connection[Any], dsn: str, transactions: list[list[str]]) -> int:
    """How many fintech_outbox notifications ``transactions`` (each a list of event topics,
    inserted by one statement) send, counted up to a final marker transaction of our own."""
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN fintech_outbox")
        for topics in transactions:
            raw.execute(_INSERT, (topics,))
        raw.execute("SELECT pg_notify('fintech_outbox', 'marker')")
        # Notifications arrive in commit order: everything before the marker has arrived.
        seen: list[psycopg.Notify] = []
        for note in listener.notifies(timeout=10):
            if note.payload == "marker":
                return len(seen)
            seen.append(note)
    raise AssertionError("the marker notification never arrived")


def test_an_event_wakes_the_relay_once_per_transaction_but_authorization_events_do_not(
    raw: psycopg.Connection[Any], migrated_database_url: str
) -> None:
    dsn = migrated_database_url
    assert wakeups_after(raw, dsn, [["postings"]]) == 1
    # Three events in one transaction: one wake-up (identical notifications fold into one).
    assert wakeups_after(raw, dsn, [["postings", "cards", "postings"]]) == 1
    assert wakeups_after(raw, dsn, [["postings"], ["cards"]]) == 2
    # Authorization events never notify (0051: NOTIFY would serialise their commits) ...
    assert wakeups_after(raw, dsn, [["authorizations"], ["authorizations", "authorizations"]]) == 0
    # ... but do not hide another topic's event in the same statement.
    assert wakeups_after(raw, dsn, [["authorizations", "postings"]]) == 1
