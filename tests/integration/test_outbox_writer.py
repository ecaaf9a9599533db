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
