"""The outbox relay: rows written with the ledger transaction, published to Kafka.

The database transaction that posts a journal also writes its events to ``outbox``.
The relay publishes unpublished rows in id order and marks them published only after
Kafka acknowledged every one of them (``acks=all``, idempotent producer), in the same
transaction that claimed them. A crash between the two publishes the rows again;
consumers de-duplicate by event id (at least once on the wire, at most once in effect).

Order. Events are keyed by card, so one card's events land on one partition. Rows of
one card are inserted in commit order (the ledger locks the card account), claimed in
id order, and a batch's rows of one partition go out as ONE Kafka batch (or, when they
do not fit, as consecutive batches each awaited before the next), so a partition
receives either a whole run of rows or none of it. A failed batch is retried from the
oldest unpublished row with a NEW producer; whatever a discarded producer still
delivers later is a duplicate of rows whose first copy is already in order. So the
first copy of each event on a partition is always in outbox order.

Replicas. Every batch runs under a transaction-scoped advisory lock taken with
``pg_try_advisory_xact_lock``: one relay publishes at a time and the others stand by,
which keeps the order above across replicas (two relays publishing disjoint batches at
once could interleave one card's events). The claim also says ``FOR UPDATE SKIP
LOCKED``, so even without the lock no row could be published by two relays at once.

Wake-up. The relay LISTENs on ``fintech_outbox`` (a trigger of migration 0020 NOTIFYs
at each insert's commit) and publishes at once; ``FINTECH_RELAY_IDLE_INTERVAL_MS`` is
only the fallback scan. While Kafka or PostgreSQL is down it backs off exponentially up
to ``FINTECH_RELAY_BACKOFF_MAX_SECONDS`` and retries forever: rows wait in the outbox.

Run it inside the operator (see ``runtime``) or alone: ``python -m fintech_operator.events.relay``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson
import psycopg
import psycopg.types.json
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from psycopg_pool import AsyncConnectionPool

from fintech_operator import config, logs
from fintech_operator.events import envelope, kafka, topics, wakeup
from fintech_operator.observability import tracing

log = logging.getLogger(__name__)
CHANNEL: Final = "fintech_outbox"
# "outboxrl" in ASCII: the relay's advisory lock, fixed forever so all versions contend on it.
RELAY_LOCK_KEY: Final = 0x6F7574626F78726C
PRODUCER_STOP_TIMEOUT_SECONDS: Final = 10.0
BACKOFF_FIRST_SECONDS: Final = 0.25
# A batch bigger than this is split into consecutive Kafka batches (Kafka's default limit
# is 1 MiB per request; events are at most envelope.EVENT_BYTES_MAX each).
KAFKA_BATCH_BYTES_MAX: Final = 900 * 1024
SEND_TIMEOUT_SECONDS: Final = 60.0
# Rows read and sent at a time inside one batch's transaction: big enough to amortise a round
# trip, small enough that reading the next chunk overlaps the broker's acknowledgement.
CHUNK_ROWS_MAX: Final = 2_000

_CLAIM: Final = """
SELECT id, event_id::text, topic, key, payload, headers, journal_id
  FROM outbox
 WHERE published_at IS NULL AND id > %s
 ORDER BY id
 LIMIT %s
   FOR UPDATE SKIP LOCKED
"""
_MARK: Final = "UPDATE outbox SET published_at = now() WHERE id = ANY(%s)"
# One round trip opens a batch. The mark needs no fsync of its own (synchronous_commit off for
# this transaction only): a mark lost in a crash only publishes its rows again, which consumers
# de-duplicate, while waiting for the disk would stall every batch.
_BEGIN: Final = """
SELECT pg_try_advisory_xact_lock(%s::bigint)
  FROM (SELECT set_config('idle_in_transaction_session_timeout', %s, true),
               set_config('synchronous_commit', 'off', true)) AS settings
"""
STANDBY: Final = -1


class RelayError(ValueError):
    """An outbox row cannot be published as it is (a bug upstream; the relay stops on it)."""


@dataclass(frozen=True)
class Message:
    """One outbox row as the Kafka record it becomes (pure data)."""

    row_id: int
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class OutboxRow(NamedTuple):
    """One claimed outbox row, its columns in the order the relay selects them."""

    row_id: int
    event_id: str
    topic: str
    key: str | None
    payload: Mapping[str, Any]
    headers: Mapping[str, Any] | None
    journal_id: int | None


def to_message(row: OutboxRow, prefix: str) -> Message:
    """The record of one row: prefixed topic, card key, canonical JSON, CloudEvents headers.

    A ``data.journalId`` of ``null`` is a placeholder for the journal the row was written
    with; it is filled in here. Nothing else of the payload changes.
    """
    row_id, event_id, topic, key, payload, headers, journal_id = row
    body = dict(payload)
    data = body.get("data")
    if isinstance(data, dict) and "journalId" in data and data["journalId"] is None:
        if journal_id is None:
            raise RelayError(f"outbox row {row_id} asks for a journal id but has none")
        body["data"] = {**data, "journalId": int(journal_id)}
    value = envelope.encode_stored(body)
    pairs = [("event-id", event_id.encode()), ("content-type", envelope.CONTENT_TYPE.encode())]
    pairs += [(str(k), str(v).encode()) for k, v in (headers or {}).items()]
    return Message(
        row_id=row_id,
        topic=topics.qualified(topic, prefix),
        key=key.encode() if key else None,
        value=value,
        headers=tuple(pairs),
    )


def partition_for(key: bytes | None, row_id: int, partitions: Sequence[int]) -> int:
    """Kafka's default partitioner (murmur2 of the key), so any client agrees with us."""
    ordered = sorted(partitions)
    if not ordered:
        raise RelayError("topic has no partitions")
    if key is None:
        return ordered[row_id % len(ordered)]
    return ordered[_key_hash(key) % len(ordered)]


# aiokafka's murmur2 is pure Python; keys are cards, which repeat, so each is hashed once.
_KEY_HASHES: dict[bytes, int] = {}
_KEY_HASHES_MAX: Final = 100_000


def _key_hash(key: bytes) -> int:
    hashed = _KEY_HASHES.get(key)
    if hashed is None:
        hashed = int(murmur2(key)) & 0x7FFFFFFF
        if len(_KEY_HASHES) >= _KEY_HASHES_MAX:
            _KEY_HASHES.clear()
        _KEY_HASHES[key] = hashed
    return hashed


def backoff_seconds(failures: int, cap_seconds: float) -> float:
    """0.25 s, 0.5 s, 1 s, ... doubling per consecutive failure, capped."""
    if failures < 1:
        return 0.0
    return float(min(cap_seconds, BACKOFF_FIRST_SECONDS * 2 ** min(failures - 1, 30)))


def group_by_partition(
    messages: Iterable[Message], partitions: Mapping[str, Sequence[int]]
) -> dict[tuple[str, int], list[Message]]:
    """Messages per (topic, partition), each list in the order given."""
    groups: dict[tuple[str, int], list[Message]] = {}
    for message in messages:
        partition = partition_for(message.key, message.row_id, partitions[message.topic])
        groups.setdefault((message.topic, partition), []).append(message)
    return groups


def new_producer(settings: config.Settings) -> AIOKafkaProducer:
    """A producer whose delivery guarantees are stated, not inherited from defaults."""
    return AIOKafkaProducer(
        **kafka.client_options(settings),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        request_timeout_ms=settings.kafka.request_timeout_ms,
        max_batch_size=KAFKA_BATCH_BYTES_MAX,
        max_request_size=1 << 20,
    )


async def _send_partition(
    producer: AIOKafkaProducer, topic: str, partition: int, messages: list[Message]
) -> None:
    """Send one partition's messages as consecutive batches, each acknowledged before the next."""
    pending = list(messages)
    while pending:
        batch = producer.create_batch()
        taken = 0
        for message in pending:
            headers = list(message.headers)
            added = batch.append(
                key=message.key, value=message.value, timestamp=None, headers=headers
            )
            if added is None:
                break
            taken += 1
        if taken == 0:
            raise RelayError(f"outbox row {pending[0].row_id} does not fit in a Kafka batch")
        batch.close()  # Exactly our records: nothing from send() may join this batch.
        await (await producer.send_batch(batch, topic, partition=partition))
        pending = pending[taken:]


@tracing.kafka_send  # one span per batch, in (or linked to) the traces its rows carry
async def send_all(producer: AIOKafkaProducer, messages: Sequence[Message]) -> None:
    """Send messages so each partition gets them in order, all partitions at once."""
    partitions: dict[str, list[int]] = {}
    for topic in {message.topic for message in messages}:
        partitions[topic] = sorted(await producer.partitions_for(topic))
    groups = group_by_partition(messages, partitions)
    await asyncio.gather(
        *(
            _send_partition(producer, topic, partition, group)
            for (topic, partition), group in groups.items()
        )
    )


async def publish_batch(
    pool: AsyncConnectionPool[Any],
    producer: AIOKafkaProducer,
    batch_size: int,
    *,
    prefix: str = "",
    send_timeout_seconds: float = SEND_TIMEOUT_SECONDS,
) -> int:
    """Publish up to ``batch_size`` rows in one transaction; return how many, or
    :data:`STANDBY` when another relay holds the lock.

    The rows go out in chunks of at most :data:`CHUNK_ROWS_MAX`, each acknowledged before the
    next is sent (so a partition still gets them in order). While one chunk waits for Kafka the
    next is already being read, so the database and the broker work at the same time.
    """
    async with pool.connection() as conn, conn.transaction():
        # A relay that hangs must not hold its rows and the lock forever.
        idle_ms = int((send_timeout_seconds + 30) * 1000)
        locked = await (await conn.execute(_BEGIN, (RELAY_LOCK_KEY, str(idle_ms)))).fetchone()
        if not locked or not locked[0]:
            return STANDBY
        cur = conn.cursor()
        # The payloads are parsed only to be written again: orjson does both ~10x faster.
        psycopg.types.json.set_json_loads(orjson.loads, cur)
        chunk_rows = min(batch_size, CHUNK_ROWS_MAX)
        rows = await _claim(cur, 0, chunk_rows)
        published, acknowledged = 0, list[int]()
        while rows:
            published += len(rows)
            wanted = min(chunk_rows, batch_size - published)
            # While Kafka takes this chunk, the database marks the previous one (acknowledged:
            # nothing is marked before its ack, and marks count only at this transaction's
            # commit) and reads the next.
            following = asyncio.ensure_future(
                _mark_and_claim(conn, cur, acknowledged, rows[-1][0], wanted)
            )
            try:
                await _send_rows(producer, rows, prefix, send_timeout_seconds)
            finally:
                # The connection runs one statement at a time: its work ends before anything else.
                await asyncio.gather(following, return_exceptions=True)
            acknowledged = [row[0] for row in rows]
            rows = following.result()
        await _mark(conn, acknowledged)
    return published


async def _mark(conn: psycopg.AsyncConnection[Any], row_ids: list[int]) -> None:
    if row_ids:
        await conn.execute(_MARK, (row_ids,))


async def _mark_and_claim(
    conn: psycopg.AsyncConnection[Any],
    cur: psycopg.AsyncCursor[Any],
    acknowledged: list[int],
    after_id: int,
    limit: int,
) -> list[Any]:
    await _mark(conn, acknowledged)
    return await _claim(cur, after_id, limit)


async def _claim(cur: psycopg.AsyncCursor[Any], after_id: int, limit: int) -> list[Any]:
    """The next unpublished rows after ``after_id`` (the rows this transaction already holds)."""
    if limit <= 0:
        return []
    return await (await cur.execute(_CLAIM, (after_id, limit))).fetchall()


async def _send_rows(
    producer: AIOKafkaProducer, rows: Sequence[Any], prefix: str, timeout_seconds: float
) -> None:
    messages = [to_message(OutboxRow._make(row), prefix) for row in rows]
    await asyncio.wait_for(send_all(producer, messages), timeout_seconds)


async def _start_producer(settings: config.Settings) -> AIOKafkaProducer:
    producer = new_producer(settings)
    try:
        await kafka.start(producer, settings, settings.relay.send_timeout_seconds)
    except BaseException:
        await discard(producer)
        raise
    return producer


async def discard(producer: AIOKafkaProducer | None) -> None:
    """Stop a producer without letting a dead broker hold us up (nor a cancellation: the
    relay discards its producer on its way out of a cancelled task)."""
    with contextlib.suppress(asyncio.CancelledError):
        await kafka.stop_all(producer, timeout_seconds=PRODUCER_STOP_TIMEOUT_SECONDS)


async def run(
    settings: config.Settings, pool: AsyncConnectionPool[Any], stop: asyncio.Event
) -> None:
    """Relay until ``stop`` is set; outages back off and retry, never crash the process."""
    listener = wakeup.Listener(settings.database.url, CHANNEL)
    listener.start()
    producer: AIOKafkaProducer | None = None
    failures = 0
    poll_seconds = settings.relay.idle_interval_ms / 1000
    try:
        while not stop.is_set():
            listener.clear()
            try:
                if producer is None:
                    producer = await _start_producer(settings)
                published = await publish_batch(
                    pool,
                    producer,
                    settings.relay.batch_max,
                    prefix=settings.topics.prefix,
                    send_timeout_seconds=settings.relay.send_timeout_seconds,
                )
                failures = 0
            except (KafkaError, psycopg.Error, OSError, TimeoutError, ValueError) as exc:
                # ValueError covers RelayError and EnvelopeError: a row that cannot be sent is a
                # bug upstream; skipping it would break the order, so it is retried and logged
                # loudly until someone fixes it.
                failures += 1
                delay = backoff_seconds(failures, settings.relay.backoff_max_seconds)
                level = logging.ERROR if isinstance(exc, ValueError) else logging.WARNING
                log.log(level, "outbox relay: %r; retrying in %.2fs", exc, delay)
                # Whatever the old producer still holds may arrive late: only as duplicates.
                await discard(producer)
                producer = None
                await _sleep_or_stop(stop, delay)
                continue
            if published == STANDBY:
                await _sleep_or_stop(stop, poll_seconds)  # Another replica is publishing.
            elif published < settings.relay.batch_max:
                await _wait(listener, stop, poll_seconds)
    finally:
        await discard(producer)
        await listener.close()


async def _wait(listener: wakeup.Listener, stop: asyncio.Event, seconds: float) -> None:
    stopping = asyncio.ensure_future(stop.wait())
    waking = asyncio.ensure_future(listener.wait(seconds))
    try:
        await asyncio.wait({stopping, waking}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopping, waking):
            task.cancel()
        await asyncio.gather(stopping, waking, return_exceptions=True)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return


def main(settings: config.Settings) -> int:
    """Run the relay alone (``python -m fintech_operator.events.relay``) until SIGTERM."""
    logs.configure(settings.logs.level)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if not await kafka.until_reachable_or_stopped(settings, stop):
            return
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            settings.database.url,
            min_size=1,
            max_size=2,
            timeout=settings.database.timeout_seconds,
            open=False,
        )
        await pool.open(wait=True, timeout=settings.database.timeout_seconds)
        try:
            log.info("outbox relay started")
            await run(settings, pool, stop)
        finally:
            await pool.close()

    asyncio.run(runner())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(config.load()))
