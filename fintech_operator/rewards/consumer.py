"""The rewards consumer: ``postings`` and ``authorizations`` events in, ``rewards_ledger`` rows out.

Points accrue on posted Purchases and on CAPTURED authorization amounts
(``authorization.captured``, including force posts): a hold earns nothing until it is captured,
and a hold that is voided or expires never earns. Refunds (Refund postings) take points back.

Exactly once in effect. Each poll's records are applied in ONE PostgreSQL statement and
transaction that also records every event id in ``processed_events``; that batch's offsets
are committed to Kafka only after the transaction committed. A crash before the commit loses
nothing (the records come again); a crash after it and before the offset commit replays
records whose ids are already recorded, and they change nothing. While one batch is being
applied the next poll is fetched and decoded (never applied) so Python and PostgreSQL work at
the same time; only that batch's own offsets are committed.

Decoding. The relay writes each event as canonical JSON; a posting event spelled exactly so is
checked and split by one regular expression (``schema.canonical_posting``), anything else goes
through the pydantic decoders, which have the last word (a property test holds the two
together).

Poison. A message that is not a valid event of a known type, or whose amounts break
the points rule, goes to ``postings.rewards.dlq`` with the reason in the ``dlq-reason``
header, and the batch goes on. If the database refuses the batch for one event's data
(a constraint), the batch is split in halves, each in its own transaction, and a refused half
again, until the refused events are alone; only they are dead-lettered. An unreachable
database is retried a bounded number of times, then the process exits non-zero for its
supervisor to restart (the records are not committed, so they come again).

It runs as its own process, ``fintech-operator rewards``, in a consumer group that
scales with the topic's partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from fintech_operator import config
from fintech_operator.events import consuming, deadletter, kafka, relay, schema, topics
from fintech_operator.observability import tracing
from fintech_operator.rewards import points, store

log = logging.getLogger(__name__)
CONSUMER_NAME: Final = topics.REWARDS
RETRY_BACKOFF_SECONDS: Final = 1.0
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
    # Authorization steps that move no money (holds, declines, increments, voids, expiries):
    # they earn nothing, so they are neither recorded nor dead-lettered, but they were handled.
    ignored: int = 0


def plan(record: Any) -> Planned | deadletter.Poison | None:
    """Decode a record and compute its points (pure); a Poison says why it cannot apply, None
    that it is an authorization step that moves no money (only captures earn)."""
    facts = schema.posting_facts(record.value)  # the usual shape, in one pass
    if facts is None:
        slow = _facts(record)
        if not isinstance(slow, schema.PostingFacts):
            return slow
        facts = slow
    data = facts.data
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
        event_id=facts.event_id,
        event_type=facts.type,
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
        occurred_at=facts.moment,
    )
    return Planned(record, entry)


def _facts(record: Any) -> schema.PostingFacts | Planned | deadletter.Poison | None:
    """The full decoder, for anything but the usual posting shape: it accepts it or says why
    not. Authorization captures are planned here; other authorization steps earn nothing."""
    try:
        event = schema.decode(record.value)
    except schema.EventError as exc:
        return deadletter.Poison(record, f"invalid event: {exc}")
    data = event.data
    if isinstance(data, schema.AuthorizationCapturedData):
        return _plan_capture(record, event, data)
    if isinstance(data, schema.AuthorizationData):
        return None  # A hold, decline, increment, void or expiry: nothing was spent.
    if not isinstance(data, schema.PostingPostedData | schema.PostingReversedData):
        return deadletter.Poison(record, f"event type {event.type} is not for rewards")
    return schema.PostingFacts(event.event_id, event.type, event.envelope.moment, data)


def _plan_capture(
    record: Any, event: schema.Event, data: schema.AuthorizationCapturedData
) -> Planned | deadletter.Poison:
    """Points on a captured amount, as on a Purchase posting of it (holds never earn)."""
    try:
        signed = points.for_posting(
            "Purchase", data.step_amount, data.rewards_rate_bps, data.earn_on
        )
    except points.PointsError as exc:
        return deadletter.Poison(record, f"invalid amounts: {exc}")
    entry = store.Entry(
        event_id=event.event_id,
        event_type=event.type,
        card=data.card,
        posting=None,
        journal_id=data.journal_id,
        posting_type="Purchase",
        points=signed,
        amount_minor=data.step_amount,
        currency=data.currency,
        rate_bps=data.rewards_rate_bps,
        reverses_journal_id=None,
        occurred_at=event.envelope.moment,
    )
    return Planned(record, entry)


@dataclass
class Decoded:
    """A batch's records sorted out: the rows to apply (with the record of each), the poison,
    and how many records earn nothing and are skipped (``ignored``)."""

    rows: list[store.Row]
    sources: list[Any]
    poisons: list[deadletter.Poison]
    ignored: int = 0


def decode_batch(records: Sequence[Any]) -> Decoded:
    """Each record's row (pure): the relay's canonical posting events by one regular
    expression each, anything else through :func:`plan`; authorization steps that move no
    money give no row and count as ignored."""
    decoded = Decoded([], [], [])
    for record in records:
        row = _canonical_row(record.value)
        if row is None:
            result = plan(record)
            if isinstance(result, deadletter.Poison):
                decoded.poisons.append(result)
                continue
            if result is None:
                decoded.ignored += 1
                continue
            row = result.entry.row
        decoded.rows.append(row)
        decoded.sources.append(record)
    return decoded


def _canonical_row(raw: bytes | None) -> store.Row | None:
    """The row of a canonical posting event, or ``None`` for :func:`plan` to judge."""
    facts = schema.canonical_posting(raw)
    if facts is None:
        return None
    try:
        signed = points.for_posting(
            facts.posting_type,
            facts.amount,
            facts.rewards_rate_bps,
            facts.earn_on,
            is_reversal=facts.reverses_journal_id is not None,
        )
    except points.PointsError:
        return None  # plan() says why, as a Poison
    return (
        facts.event_id,
        facts.card,
        facts.journal_id,
        store.kind_of(signed),
        signed,
        facts.amount,
        facts.currency,
        facts.rewards_rate_bps,
        facts.posting,
        facts.type,
        facts.posting_type,
        facts.reverses_journal_id,
        facts.moment,
    )


async def apply_batch(
    pool: AsyncConnectionPool[Any], decoded: Decoded, attempts_max: int
) -> tuple[int, list[deadletter.Poison]]:
    """Apply in one transaction; return (events applied now, events the database refused)."""
    for attempt in range(1, attempts_max + 1):
        try:
            return await _apply(pool, decoded.rows), []
        except _DATA_ERRORS:
            return await _bisect(pool, decoded.rows, decoded.sources)
        except psycopg.OperationalError:
            if attempt == attempts_max:
                raise
            log.warning("database unavailable, attempt %d/%d", attempt, attempts_max)
            await asyncio.sleep(RETRY_BACKOFF_SECONDS * attempt)
    raise AssertionError("unreachable: the loop returns or raises")


async def _apply(pool: AsyncConnectionPool[Any], rows: Sequence[store.Row]) -> int:
    async with pool.connection() as conn, conn.transaction():
        return await store.apply_rows(conn, CONSUMER_NAME, rows)


async def _bisect(
    pool: AsyncConnectionPool[Any], rows: Sequence[store.Row], sources: Sequence[Any]
) -> tuple[int, list[deadletter.Poison]]:
    """The database refused ``rows`` together: apply each half in its own transaction and
    split a refused half again, down to the single events it refuses (about log2(n)
    transactions per refused event instead of one per event)."""
    middle = len(rows) // 2
    applied, refused = 0, list[deadletter.Poison]()
    for part in (slice(0, middle), slice(middle, None)):
        part_rows, part_sources = rows[part], sources[part]
        if not part_rows:
            continue
        try:
            applied += await _apply(pool, part_rows)
        except _DATA_ERRORS as exc:
            if len(part_rows) > 1:
                more, more_refused = await _bisect(pool, part_rows, part_sources)
                applied, refused = applied + more, refused + more_refused
                continue
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            refused.append(deadletter.Poison(part_sources[0], f"refused by the database: {reason}"))
    return applied, refused


@tracing.kafka_process(CONSUMER_NAME)  # a span per batch in its events' traces; counts
async def process(
    pool: AsyncConnectionPool[Any],
    producer: AIOKafkaProducer,
    records: Sequence[Any],
    *,
    decoded: Decoded,
    prefix: str,
    attempts_max: int,
) -> Outcome:
    """Dead-letter what cannot apply, apply the rest (``decoded``, from ``records``) in one
    transaction."""
    applied, refused = await apply_batch(pool, decoded, attempts_max) if decoded.rows else (0, [])
    poisons = decoded.poisons + refused
    await consuming.dead_letter(producer, poisons, consumer=CONSUMER_NAME, prefix=prefix)
    return Outcome(
        applied=applied,
        duplicates=len(decoded.rows) - len(refused) - applied,
        dead_lettered=len(poisons),
        ignored=decoded.ignored,
    )


def new_consumer(settings: config.Settings, group_id: str) -> AIOKafkaConsumer:
    """A consumer of ``postings`` and ``authorizations`` (captures earn) in batches of
    ``FINTECH_CONSUMER_BATCH_SIZE``."""
    return consuming.new_consumer(
        settings,
        group_id,
        [topics.POSTINGS, topics.AUTHORIZATIONS],
        max_poll_records=settings.consumers.batch_max,
    )


async def consume(settings: config.Settings, group_id: str, stop: asyncio.Event) -> None:
    """Consume until ``stop`` is set, committing offsets after each applied batch."""
    if not await kafka.until_reachable_or_stopped(settings, stop):
        return
    consumer = new_consumer(settings, group_id)
    producer = relay.new_producer(settings)
    pool = await consuming.open_pool(settings)
    await producer.start()
    await consumer.start()
    log.info("rewards consumer started in group %s", group_id)
    try:
        await _pipeline(consumer, pool, producer, settings, stop)
    finally:
        await kafka.stop_all(consumer, producer)
        await pool.close()


async def _pipeline(
    consumer: AIOKafkaConsumer,
    pool: AsyncConnectionPool[Any],
    producer: AIOKafkaProducer,
    settings: config.Settings,
    stop: asyncio.Event,
) -> None:
    """Poll and decode the next batch while the previous one's transaction runs.

    At most one batch is being applied at a time, in poll order, and a batch's offsets are
    committed only after its transaction committed and its dead letters were acknowledged.
    """
    in_flight: asyncio.Task[None] | None = None
    try:
        async for records in consuming.batches(
            consumer, stop, records_max=settings.consumers.batch_max
        ):
            decoded = decode_batch(records)  # pure Python, while PostgreSQL works
            if in_flight is not None:
                await in_flight
            in_flight = asyncio.create_task(
                _apply_and_commit(consumer, pool, producer, records, decoded, settings)
            )
        if in_flight is not None:
            await in_flight
    finally:
        if in_flight is not None and not in_flight.done():
            in_flight.cancel()  # rolled back: its records were not committed and come again
            with contextlib.suppress(asyncio.CancelledError):
                await in_flight


async def _apply_and_commit(
    consumer: AIOKafkaConsumer,
    pool: AsyncConnectionPool[Any],
    producer: AIOKafkaProducer,
    records: Sequence[Any],
    decoded: Decoded,
    settings: config.Settings,
) -> None:
    outcome = await process(
        pool,
        producer,
        records,
        decoded=decoded,
        prefix=settings.topics.prefix,
        attempts_max=settings.consumers.attempts_max,
    )
    # Only now, with the batch's transaction committed, and only this batch's offsets (the
    # next poll's records are already fetched). A commit lost to a rebalance or a broker error
    # redelivers records already in processed_events: no effect.
    await consuming.commit(
        consumer,
        offsets=consuming.offsets_of(records),
        on_failure="the batch will be redelivered and skipped",
    )
    log.info(
        "batch of %d: %d applied, %d duplicates, %d dead-lettered, %d ignored",
        len(records),
        outcome.applied,
        outcome.duplicates,
        outcome.dead_lettered,
        outcome.ignored,
        extra={"consumer": CONSUMER_NAME},  # docs/operations.md: consumer lines carry it
    )


def main(settings: config.Settings, group_id: str) -> int:
    """Entry point of ``fintech-operator rewards``."""
    return consuming.main(
        "fintech-rewards", settings, lambda settings, stop: consume(settings, group_id, stop)
    )
