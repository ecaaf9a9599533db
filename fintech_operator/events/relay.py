"""The outbox relay: rows written with the ledger transaction, published to Kafka.

The database transaction that posts a journal also writes its events to ``outbox``.
This relay publishes unpublished rows in id order and marks them published only
after Kafka acknowledged them (``acks=all``, idempotent producer). A crash between
the two publishes a row again; consumers dedupe by ``event_id`` (at least once on
the wire, at most once in effect).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from fintech_operator.events import schema

log = logging.getLogger(__name__)
SEND_TIMEOUT_SECONDS = 60.0
ERROR_BACKOFF_SECONDS = 2.0

_CLAIM = """
SELECT id, event_id, topic, key, payload, headers, journal_id
FROM outbox WHERE published_at IS NULL
ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
"""


def new_producer(bootstrap_servers: str, request_timeout_ms: int) -> AIOKafkaProducer:
    """A producer whose delivery guarantees are stated, not inherited from defaults."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=request_timeout_ms,
        max_batch_size=1 << 20,
    )


def _headers(event_id: str, extra: dict[str, Any] | None) -> list[tuple[str, bytes]]:
    headers = [("event-id", event_id.encode())]
    for key, value in (extra or {}).items():
        headers.append((str(key), str(value).encode()))
    return headers


async def publish_batch(
    pool: AsyncConnectionPool[Any], producer: AIOKafkaProducer, batch_size: int
) -> int:
    """Publish up to ``batch_size`` unpublished rows; return how many were published."""
    async with pool.connection() as conn, conn.transaction():
        rows = await (await conn.execute(_CLAIM, (batch_size,))).fetchall()
        if not rows:
            return 0
        futures = []
        for _id, event_id, topic, key, payload, headers, journal_id in rows:
            body = dict(payload if isinstance(payload, dict) else json.loads(payload))
            if journal_id is not None:
                # The journal's id exists only once its transaction ran; the row has it.
                body["journalId"] = journal_id
            value = schema.encode(body)
            futures.append(
                await producer.send(
                    topic,
                    value=value,
                    key=key.encode() if key else None,
                    headers=_headers(str(event_id), headers),
                )
            )
        await asyncio.wait_for(asyncio.gather(*futures), SEND_TIMEOUT_SECONDS)
        ids = [row[0] for row in rows]
        await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY(%s)", (ids,))
    return len(rows)


async def run(
    pool: AsyncConnectionPool[Any],
    producer: AIOKafkaProducer,
    *,
    batch_size: int,
    idle_interval_ms: int,
    stop: asyncio.Event,
) -> None:
    """Relay until ``stop`` is set; transient failures back off and retry, never crash."""
    while not stop.is_set():
        try:
            published = await publish_batch(pool, producer, batch_size)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("outbox relay failed; retrying in %.1fs", ERROR_BACKOFF_SECONDS)
            published = 0
            await _sleep_or_stop(stop, ERROR_BACKOFF_SECONDS)
        if published == 0:
            await _sleep_or_stop(stop, idle_interval_ms / 1000)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return
