"""The scaffolding every Kafka consumer process here shares (internal to the package).

The rewards consumer and the notifier differ in what a batch does; they are the same in how
they get one and what surrounds it: a consumer whose commit, reset and isolation behaviour is
stated, polls of a bounded size until asked to stop, an offset commit whose failures only mean
a redelivery, dead-lettered poison logged one line each, a traced database pool, and a process
that runs until SIGINT or SIGTERM. What a batch does, in which transaction, and that offsets
are committed only after it, stays in each consumer, in the order it reads.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from psycopg_pool import AsyncConnectionPool

from fintech_operator import config, logs
from fintech_operator.events import deadletter, kafka, topics
from fintech_operator.observability import lifecycle, tracing

log = logging.getLogger(__name__)
# How long one poll waits for records before checking whether to stop.
POLL_TIMEOUT_MS: Final = 1000
# How long a batch's dead-letter messages may take to be acknowledged, all together.
DLQ_TIMEOUT_SECONDS: Final = 60.0
# The group's liveness: a member silent for the session timeout, or not polling again within
# the poll interval (a batch's work included), is replaced and its partitions reassigned.
SESSION_TIMEOUT_MS: Final = 30_000
HEARTBEAT_INTERVAL_MS: Final = 3_000
POLL_INTERVAL_MS_MAX: Final = 300_000
# A poll answers after this long even when the broker has less than a full batch.
FETCH_MAX_WAIT_MS: Final = 100


def new_consumer(
    settings: config.Settings, group_id: str, bare_topics: Sequence[str], *, max_poll_records: int
) -> AIOKafkaConsumer:
    """A consumer of ``bare_topics`` (prefixed here) with every delivery option stated.

    Offsets are committed by the caller only (no auto-commit), a new group starts at the
    earliest retained record, and only committed transactions are read. Security options come
    from :func:`kafka.client_options`. Raises ``ValueError`` for no topic or a batch size
    below 1.
    """
    if not bare_topics:
        raise ValueError("a consumer needs at least one topic")
    if max_poll_records < 1:
        raise ValueError(f"max_poll_records must be at least 1, got {max_poll_records}")
    return AIOKafkaConsumer(
        *(topics.qualified(topic, settings.topics.prefix) for topic in bare_topics),
        **kafka.client_options(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=max_poll_records,
        request_timeout_ms=settings.kafka.request_timeout_ms,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        max_poll_interval_ms=POLL_INTERVAL_MS_MAX,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )


async def batches(
    consumer: AIOKafkaConsumer, stop: asyncio.Event, *, records_max: int
) -> AsyncIterator[list[Any]]:
    """Each poll's records, all partitions together, until ``stop`` is set; empty polls skipped.

    The caller commits offsets after it has handled a batch; a batch it does not finish is not
    committed, so its records come again.
    """
    while not stop.is_set():
        polled = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=records_max)
        records = [record for part in polled.values() for record in part]
        if records:
            yield records


def offsets_of(records: Sequence[Any]) -> dict[TopicPartition, int]:
    """The offsets to commit once ``records`` (in poll order) are handled: each partition's
    last offset plus one."""
    last: dict[tuple[str, int], int] = {}
    for record in records:
        last[(record.topic, record.partition)] = record.offset
    return {TopicPartition(topic, part): offset + 1 for (topic, part), offset in last.items()}


async def commit(
    consumer: AIOKafkaConsumer,
    *,
    on_failure: str,
    offsets: Mapping[TopicPartition, int] | None = None,
) -> None:
    """Commit ``offsets`` (by default everything consumed so far); a failure is logged, not
    raised. Partitions no longer assigned are left out: their new owner reads them again.

    A refused or failed commit only means the records are delivered again, which each
    consumer makes harmless; ``on_failure`` says so in the log line (e.g. ``the batch will be
    redelivered and skipped``).
    """
    if offsets is not None:
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if not offsets:
            return
    try:
        await (consumer.commit() if offsets is None else consumer.commit(offsets))
    except CommitFailedError as exc:
        # The group rebalanced: the partition's new owner gets these records again.
        log.warning("offset commit refused after a rebalance: %s", exc)
    except KafkaError:
        log.exception("offset commit failed; %s", on_failure)


async def dead_letter(
    producer: AIOKafkaProducer,
    poisons: Sequence[deadletter.Poison],
    *,
    consumer: str,
    prefix: str,
) -> None:
    """Publish each poison to its dead-letter topic, wait for the acks, log one line each."""
    await deadletter.send(
        producer,
        poisons,
        consumer=consumer,
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


async def open_pool(settings: config.Settings) -> AsyncConnectionPool[Any]:
    """A traced pool of ``FINTECH_DB_POOL_MAX_SIZE`` connections, open once one connects."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database.url,
        min_size=1,
        max_size=settings.database.pool_size_max,
        timeout=settings.database.timeout_seconds,
        open=False,
        connection_class=tracing.TracedConnection,
    )
    await pool.open(wait=True, timeout=settings.database.timeout_seconds)
    return pool


def main(
    service: str,
    settings: config.Settings,
    run: Callable[[config.Settings, asyncio.Event], Awaitable[None]],
) -> int:
    """The body of a consumer process's entry point; returns its exit status.

    JSON logs, tracing and ``/metrics`` under ``service`` (``settings`` were loaded by ``cli``),
    then ``run(settings, stop)`` until it returns; SIGINT and SIGTERM set ``stop``.
    """
    # Stopped while still starting (nothing opened yet): a clean exit, not death by signal.
    # The event loop's handlers below take over once it runs.
    signal.signal(signal.SIGTERM, _exit_while_starting)
    logs.configure(settings.logs.level)
    lifecycle.start_process(settings, service)  # tracing; /metrics when a port is set

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    asyncio.run(runner())
    return 0


def _exit_while_starting(signum: int, _frame: object) -> None:
    raise SystemExit(0)
