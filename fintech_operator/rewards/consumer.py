"""The rewards consumer: ``postings`` events in, ``rewards_ledger`` rows out.

Offsets are committed by hand only after a batch is applied in PostgreSQL, and each
event is recorded in ``processed_events`` in the same transaction as its points, so a
redelivered event changes nothing (at least once on the wire, at most once in
effect). A message that cannot be parsed goes to the dead-letter topic with the
reason, and the consumer moves on.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import psycopg
import pydantic
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from psycopg_pool import AsyncConnectionPool

from fintech_operator import config, logs
from fintech_operator.events import relay, schema, topics
from fintech_operator.rewards import points

log = logging.getLogger(__name__)
CONSUMER_NAME = "rewards"
POLL_TIMEOUT_MS = 1000
RETRY_BACKOFF_SECONDS = 1.0

_MARK = """
INSERT INTO processed_events (consumer, event_id) VALUES (%s, %s)
ON CONFLICT DO NOTHING
"""
_ACCRUE = """
INSERT INTO rewards_ledger
  (event_id, card, journal_id, kind, points, amount_minor, currency, rate_bps)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
"""


async def apply_event(pool: AsyncConnectionPool[Any], event: schema.PostingPosted) -> bool:
    """Apply one event; False when it was applied before (a redelivery)."""
    signed = points.for_posting(
        event.posting_type,
        event.amount_minor,
        event.rewards_rate_bps,
        event.earn_on,
        is_reversal=event.reverses_journal_id is not None,
    )
    async with pool.connection() as conn, conn.transaction():
        marked = await conn.execute(_MARK, (CONSUMER_NAME, event.event_id))
        if marked.rowcount == 0:
            return False
        if signed != 0:
            kind = "accrual" if signed > 0 else "reversal"
            await conn.execute(
                _ACCRUE,
                (
                    event.event_id,
                    event.card,
                    event.journal_id,
                    kind,
                    signed,
                    event.amount_minor,
                    event.currency,
                    event.rewards_rate_bps,
                ),
            )
    return True


async def dead_letter(producer: AIOKafkaProducer, record: ConsumerRecord, reason: str) -> None:
    """Park a poison message with where it came from and why, so nothing is lost."""
    headers = [
        ("dlq-reason", reason[:1000].encode()),
        ("dlq-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        *(record.headers or ()),
    ]
    await asyncio.wait_for(
        producer.send_and_wait(topics.POSTINGS_DLQ, record.value, key=record.key, headers=headers),
        relay.SEND_TIMEOUT_SECONDS,
    )


async def handle(
    pool: AsyncConnectionPool[Any],
    producer: AIOKafkaProducer,
    record: ConsumerRecord,
    max_attempts: int,
) -> str:
    """Apply or dead-letter one record; transient database errors retry a bounded number."""
    try:
        event = schema.decode_posting(record.value)
    except (ValueError, pydantic.ValidationError) as exc:
        await dead_letter(producer, record, f"invalid event: {exc}")
        return "dead-lettered"
    for attempt in range(1, max_attempts + 1):
        try:
            return "applied" if await apply_event(pool, event) else "duplicate"
        except points.PointsError as exc:
            await dead_letter(producer, record, f"invalid amounts: {exc}")
            return "dead-lettered"
        except psycopg.OperationalError:
            if attempt == max_attempts:
                raise
            log.warning("database unavailable, attempt %d/%d", attempt, max_attempts)
            await asyncio.sleep(RETRY_BACKOFF_SECONDS * attempt)
    raise AssertionError("unreachable: the loop returns or raises")


async def consume(settings: config.Settings, group_id: str, stop: asyncio.Event) -> None:
    """Consume until ``stop`` is set, committing offsets after each applied batch."""
    await topics.ensure(
        settings.kafka_bootstrap_servers,
        settings.topic_partitions,
        settings.kafka_request_timeout_ms,
    )
    consumer = AIOKafkaConsumer(
        topics.POSTINGS,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=settings.consumer_batch_size,
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )
    producer = relay.new_producer(
        settings.kafka_bootstrap_servers, settings.kafka_request_timeout_ms
    )
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_max_size,
        timeout=settings.db_timeout_seconds,
        open=False,
    )
    await pool.open(wait=True, timeout=settings.db_timeout_seconds)
    await producer.start()
    await consumer.start()
    log.info("rewards consumer started in group %s", group_id)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(
                timeout_ms=POLL_TIMEOUT_MS, max_records=settings.consumer_batch_size
            )
            for records in batches.values():
                for record in records:
                    outcome = await handle(pool, producer, record, settings.consumer_max_attempts)
                    log.info(
                        "event %s/%d/%d %s", record.topic, record.partition, record.offset, outcome
                    )
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()


def main(group_id: str) -> int:
    """Entry point of ``fintech-operator rewards``."""
    logs.configure()
    settings = config.load()

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await consume(settings, group_id, stop)

    asyncio.run(runner())
    return 0
