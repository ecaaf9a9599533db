"""The rewards consumer: ``postings`` events in, ``rewards_ledger`` rows out.

Exactly once in effect. Each poll's records are applied in ONE PostgreSQL transaction
that also records every event id in ``processed_events``; offsets are committed to
Kafka only after that transaction committed. A crash before the commit loses nothing
(the records come again); a crash after it and before the offset commit replays
records whose ids are already recorded, and they change nothing.

Poison. A message that is not a valid event of a known type, or whose amounts break
the points rule, goes to ``postings.rewards.dlq`` with the reason in the ``dlq-reason``
header, and the batch goes on. If the database refuses the batch for one event's data
(a constraint), the batch is retried one event per transaction to find it, and only
that event is dead-lettered. An unreachable database is retried a bounded number of
times, then the process exits non-zero for its supervisor to restart (the records
are not committed, so they come again).

It runs as its own process, ``fintech-operator rewards``, in a consumer group that
scales with the topic's partitions.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError
from psycopg_pool import AsyncConnectionPool

from fintech_operator import config, logs
from fintech_operator.events import deadletter, kafka, relay, schema, topics
from fintech_operator.observability import lifecycle, tracing
from fintech_operator.rewards import points, store

log = logging.getLogger(__name__)
CONSUMER_NAME: Final = topics.REWARDS
POLL_TIMEOUT_MS: Final = 1000
RETRY_BACKOFF_SECONDS: Final = 1.0
DLQ_TIMEOUT_SECONDS: Final = 60.0
SESSION_TIMEOUT_MS: Final = 30_000
HEARTBEAT_INTERVAL_MS: Final = 3_000
MAX_POLL_INTERVAL_MS: Final = 300_000
_DATA_ERRORS: Final = (psycopg.errors.IntegrityError, psycopg.errors.DataError)


@dataclass(frozen=True)
class Planned:
    """A record and what it does to the rewards ledger."""

    record: Any
    entry: store.Entry


@dataclass
class Outcome:
    """What one batch did, for logs and tests."""

    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


def plan(record: Any) -> Planned | deadletter.Poison:
    """Decode a record and compute its points (pure); a Poison says why it cannot apply."""
    try:
        event = schema.decode(record.value)
    except schema.EventError as exc:
        return deadletter.Poison(record, f"invalid event: {exc}")
    data = event.data
    if not isinstance(data, schema.PostingPostedData | schema.PostingReversedData):
        return deadletter.Poison(record, f"event type {event.type} is not for rewards")
    reversal = isinstance(data, schema.PostingReversedData)
    try:
        signed = points.for_posting(
            data.posting_type,
            data.amount,
            data.rewards_rate_bps,
            data.earn_on,
            is_reversal=reversal,
        )
    except points.PointsError as exc:
        return deadletter.Poison(record, f"invalid amounts: {exc}")
    if data.journal_id is None:  # decode() refuses it; the type checker wants it proven.
        return deadletter.Poison(record, "event has no journalId")
    entry = store.Entry(
        event_id=event.event_id,
        event_type=event.type,
        card=data.card,
        posting=data.posting,
        journal_id=data.journal_id,
        posting_type=data.posting_type,
        points=signed,
        amount_minor=data.amount,
        currency=data.currency,
        rate_bps=data.rewards_rate_bps,
        reverses_journal_id=(
            data.reverses_journal_id if isinstance(data, schema.PostingReversedData) else None
        ),
        occurred_at=event.envelope.moment,
    )
    return Planned(record, entry)


async def apply_batch(
    pool: AsyncConnectionPool[Any], planned: Sequence[Planned], max_attempts: int
) -> tuple[int, list[deadletter.Poison]]:
    """Apply in one transaction; return (events applied now, events the database refused)."""
    for attempt in range(1, max_attempts + 1):
        try:
            async with pool.connection() as conn, conn.transaction():
                applied = await store.apply(conn, CONSUMER_NAME, [p.entry for p in planned])
            return len(applied), []
        except _DATA_ERRORS:
            return await _apply_one_by_one(pool, planned)
        except psycopg.OperationalError:
            if attempt == max_attempts:
                raise
            log.warning("database unavailable, attempt %d/%d", attempt, max_attempts)
            await asyncio.sleep(RETRY_BACKOFF_SECONDS * attempt)
    raise AssertionError("unreachable: the loop returns or raises")


async def _apply_one_by_one(
    pool: AsyncConnectionPool[Any], planned: Sequence[Planned]
) -> tuple[int, list[deadletter.Poison]]:
    applied = 0
    refused: list[deadletter.Poison] = []
    for item in planned:
        try:
            async with pool.connection() as conn, conn.transaction():
                applied += len(await store.apply(conn, CONSUMER_NAME, [item.entry]))
        except _DATA_ERRORS as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            refused.append(deadletter.Poison(item.record, f"refused by the database: {reason}"))
    return applied, refused


@tracing.kafka_process(CONSUMER_NAME)  # a span per batch in its events' traces; counts
async def process(
    pool: AsyncConnectionPool[Any],
    producer: AIOKafkaProducer,
    records: Sequence[Any],
    *,
    prefix: str,
    max_attempts: int,
) -> Outcome:
    """Dead-letter what cannot apply, apply the rest in one transaction."""
    planned: list[Planned] = []
    poisons: list[deadletter.Poison] = []
    for record in records:
        result = plan(record)
        if isinstance(result, Planned):
            planned.append(result)
        else:
            poisons.append(result)
    applied, refused = await apply_batch(pool, planned, max_attempts) if planned else (0, [])
    poisons += refused
    await deadletter.send(
        producer,
        poisons,
        consumer=CONSUMER_NAME,
        prefix=prefix,
        timeout_seconds=DLQ_TIMEOUT_SECONDS,
    )
    for poison in poisons:
        record = poison.record
        log.warning(
            "dead-lettered %s/%d/%d: %s",
            record.topic,
            record.partition,
            record.offset,
            poison.reason,
        )
    return Outcome(
        applied=applied,
        duplicates=len(planned) - len(refused) - applied,
        dead_lettered=len(poisons),
    )


def new_consumer(settings: config.Settings, group_id: str) -> AIOKafkaConsumer:
    """A consumer whose commit, reset and isolation behaviour is stated, not defaulted."""
    return AIOKafkaConsumer(
        topics.qualified(topics.POSTINGS, settings.topic_prefix),
        **kafka.client_options(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=settings.consumer_batch_size,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        fetch_max_wait_ms=100,
    )


async def consume(settings: config.Settings, group_id: str, stop: asyncio.Event) -> None:
    """Consume until ``stop`` is set, committing offsets after each applied batch."""
    await topics.ensure_for(settings)
    consumer = new_consumer(settings, group_id)
    producer = relay.new_producer(settings)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_max_size,
        timeout=settings.db_timeout_seconds,
        open=False,
        connection_class=tracing.TracedConnection,
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
            records = [record for part in batches.values() for record in part]
            if not records:
                continue
            outcome = await process(
                pool,
                producer,
                records,
                prefix=settings.topic_prefix,
                max_attempts=settings.consumer_max_attempts,
            )
            await _commit(consumer)
            log.info(
                "batch of %d: %d applied, %d duplicates, %d dead-lettered",
                len(records),
                outcome.applied,
                outcome.duplicates,
                outcome.dead_lettered,
            )
    finally:
        await consumer.stop()
        await producer.stop()
        await pool.close()


async def _commit(consumer: AIOKafkaConsumer) -> None:
    try:
        await consumer.commit()
    except CommitFailedError as exc:
        # The group rebalanced: the partition's new owner gets these records again, and
        # they are already recorded in processed_events, so they change nothing.
        log.warning("offset commit refused after a rebalance: %s", exc)
    except KafkaError:
        log.exception("offset commit failed; the batch will be redelivered and skipped")


def main(group_id: str) -> int:
    """Entry point of ``fintech-operator rewards``."""
    logs.configure()
    settings = config.load()
    lifecycle.start_process(settings, "fintech-rewards")  # tracing; /metrics when a port is set

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await consume(settings, group_id, stop)

    asyncio.run(runner())
    return 0
