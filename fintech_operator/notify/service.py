"""The notifier process (``fintech-operator notifier``): events in, signed webhooks out.

Three loops share one PostgreSQL pool:

1. **Routing** (a Kafka consumer group over ``cards``, ``postings``, ``compliance`` and
   ``recon``): each poll's events are matched against the Webhooks (same namespace,
   subscribed type, happened at or after the Webhook's creationTimestamp) and queued in
   ``webhook_deliveries`` in one transaction; offsets are committed after it. A poll is
   matched only against a list of Webhooks that started after its newest event (plus
   ``FINTECH_NOTIFIER_CLOCK_SKEW_SECONDS``), so a Webhook the notifier has not seen yet
   cannot miss events (:mod:`coverage`); until it has one, the poll is held, at most
   ``FINTECH_NOTIFIER_ROUTE_HOLD_MAX_SECONDS``. A message that is not a valid event goes
   to ``<topic>.notifier.dlq`` with the reason. Routing never waits for an endpoint, so a
   slow endpoint cannot slow the stream.
2. **Refresh** (every ``FINTECH_NOTIFIER_REFRESH_INTERVAL_SECONDS``, and whenever routing
   finds a Webhook added, changed or deleted): re-reads Webhooks and
   their Secrets, and takes ownership of endpoints with PostgreSQL session advisory
   locks, so with several replicas each endpoint is delivered by exactly one of them
   (its rate limit and breaker are exact); a replica that dies releases its locks with
   its connection, and another takes its endpoints at its next refresh.
3. **Delivery**: one :class:`worker.EndpointWorker` per owned endpoint, woken at once by
   ``NOTIFY fintech_webhook_delivery`` (migration 0022) when its deliveries are queued.

Limits: an event waits for its endpoint at most ``retry.maxAgeSeconds`` (default 3
days) and is tried at most ``retry.maxAttempts`` times (default 10, doubling waits from
5 s, capped at 1 h); then it is marked failed in the delivery log, never dropped
silently. Finished deliveries are kept ``FINTECH_WEBHOOK_LOG_RETENTION_HOURS``. Requests
go only to public addresses and ``FINTECH_WEBHOOK_ALLOWED_CIDRS`` (:mod:`destination`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from fintech_operator import config
from fintech_operator.events import (
    consuming,
    deadletter,
    envelope,
    kafka,
    relay,
    schema,
    topics,
    wakeup,
)
from fintech_operator.notify import coverage, destination, endpoints, store, worker
from fintech_operator.observability import metrics, tracing

log = logging.getLogger(__name__)
CONSUMER_NAME: Final = topics.NOTIFIER
DELIVERY_CHANNEL: Final = "fintech_webhook_delivery"
# "notf" in ASCII: the class of the per-endpoint advisory locks (two-int form, its own space).
LOCK_CLASS: Final = 0x6E6F7466
ROUTE_BATCH_MAX: Final = 500
CLEAN_EVERY_SECONDS: Final = 3600.0
CLEAN_BATCH_MAX: Final = 10_000


Event = tuple[Any, envelope.CloudEvent]  # a record and its decoded event


def parse(records: Iterable[Any]) -> tuple[list[Event], list[deadletter.Poison]]:
    """Decode records (pure): events to route, and poison to dead-letter.

    A known type must also pass its data schema; an unknown type with a valid envelope is
    delivered as it is (a newer producer's event is still an event).
    """
    events: list[Event] = []
    poisons: list[deadletter.Poison] = []
    for record in records:
        try:
            cloud = envelope.decode(record.value)
            if cloud.type in schema.CATALOG:
                schema.typed(cloud)
        except (envelope.EnvelopeError, schema.EventError) as exc:
            poisons.append(deadletter.Poison(record, f"invalid event: {exc}"))
            continue
        events.append((record, cloud))
    return events, poisons


def match(
    events: Iterable[Event], subscribed: Sequence[endpoints.Endpoint]
) -> list[store.Delivery]:
    """The deliveries of decoded events to the endpoints that want them (pure)."""
    deliveries: list[store.Delivery] = []
    for record, cloud in events:
        namespace, moment = cloud.namespace, cloud.moment
        deliveries += [
            store.Delivery(ep.uid, ep.ref, cloud.event_id, cloud.type, bytes(record.value))
            for ep in subscribed
            if ep.wants(namespace, cloud.type, moment)
        ]
    return deliveries


def route(
    records: Iterable[Any], subscribed: Sequence[endpoints.Endpoint]
) -> tuple[list[store.Delivery], list[deadletter.Poison]]:
    """Match records to endpoints (pure): deliveries to queue, and poison to dead-letter."""
    events, poisons = parse(records)
    return match(events, subscribed), poisons


def lock_id(uid: uuid.UUID) -> int:
    """The advisory lock object id of an endpoint (a collision only shares an owner)."""
    return int.from_bytes(uid.bytes[:4], "big", signed=True)


@dataclass(frozen=True)
class Routed:
    """What one poll did (the field names are the ones the consumer metrics count)."""

    applied: int
    dead_lettered: int
    queued: int
    duplicates: int = 0
    held_seconds: float = 0.0
    covered: bool = True


class Ownership:
    """Session advisory locks on one dedicated connection: the endpoints this process serves."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.held: set[uuid.UUID] = set()

    async def sync(self, wanted: set[uuid.UUID]) -> set[uuid.UUID]:
        """Try to hold every wanted endpoint, release the others; return those held."""
        try:
            conn = await self._connection()
            for uid in sorted(wanted - self.held):
                row = await (
                    await conn.execute(
                        "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, lock_id(uid))
                    )
                ).fetchone()
                if row and row[0]:
                    self.held.add(uid)
            for uid in sorted(self.held - wanted):
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, lock_id(uid)))
                self.held.discard(uid)
        except psycopg.Error:
            # The connection (and so every lock) is gone: serve nothing until it is back.
            log.exception("notifier: lost the ownership connection")
            await self.close()
        return set(self.held)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self.held = set()
            self._conn = await psycopg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=10
            )
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
        self._conn = None
        self.held = set()


class Notifier:
    """The state of one notifier process: endpoints, owned workers, and its loops."""

    def __init__(
        self,
        settings: config.Settings,
        pool: AsyncConnectionPool[Any],
        client: destination.GuardedClient,
        source: Any,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.client = client
        self.source = source
        self.owner = f"{socket.gethostname()}/{os.getpid()}"
        self.ownership = Ownership(settings.database.url)
        self.endpoints: list[endpoints.Endpoint] = []
        self.gate = coverage.Gate(
            source,
            self.refresh,
            skew_seconds=settings.notifier.clock_skew_seconds,
            hold_max_seconds=settings.notifier.route_hold_max_seconds,
        )
        self.workers: dict[uuid.UUID, worker.EndpointWorker] = {}
        self.in_flight = asyncio.Semaphore(settings.notifier.in_flight_max)
        self._reported: set[str] = set()
        # The periodic refresh and the router's catch-up may both ask for one; they take turns.
        self._refreshing = asyncio.Lock()

    async def refresh(self) -> None:
        """Re-read Webhooks, take or give up endpoints, start, update or stop their workers."""
        async with self._refreshing:
            view = await self.source.load()
            # Routing reads these two together; no await between them keeps them consistent.
            self.endpoints = view.endpoints
            self.gate.note(view.versions, view.listed_at)
            for problem in set(view.problems) - self._reported:
                log.warning("notifier: Webhook cannot be served: %s", problem)
            self._reported = set(view.problems)
            await self._serve(view.endpoints)

    async def _serve(self, found: list[endpoints.Endpoint]) -> None:
        """Take or give up endpoints, start, update or stop their workers."""
        by_uid = {ep.uid: ep for ep in found}
        owned = await self.ownership.sync(set(by_uid))
        async with self.pool.connection() as conn:
            for uid in owned:
                await store.register(conn, by_uid[uid], self.owner)
        for uid in set(self.workers) - owned:
            await self.workers.pop(uid).stop()
        for uid in owned:
            current = self.workers.get(uid)
            if current is None:
                self.workers[uid] = self._start(by_uid[uid])
            elif current.endpoint != by_uid[uid]:
                current.update(by_uid[uid])

    def _start(self, endpoint: endpoints.Endpoint) -> worker.EndpointWorker:
        started = worker.EndpointWorker(
            endpoint,
            self.pool,
            self.client,
            self.in_flight,
            self.settings.notifier.poll_interval_ms / 1000,
        )
        started.start()
        log.info("notifier: serving %s (%s)", endpoint.ref, endpoint.url)
        return started

    def wake(self, payloads: Iterable[str]) -> None:
        for payload in payloads:
            with contextlib.suppress(ValueError):
                found = self.workers.get(uuid.UUID(payload))
                if found is not None:
                    found.wake()

    async def stop(self) -> None:
        for each in list(self.workers.values()):
            await each.stop()
        self.workers.clear()
        await self.ownership.close()

    @tracing.kafka_process(CONSUMER_NAME)  # a span per poll; counts applied and dead-lettered
    async def route_batch(self, producer: AIOKafkaProducer, records: Sequence[Any]) -> Routed:
        """Queue one poll's deliveries in one transaction and dead-letter its poison, once
        the Webhook list covers its newest event (or the hold limit passed)."""
        events, poisons = parse(records)
        started = time.monotonic()
        needed = coverage.needed_at((cloud.moment for _, cloud in events), self.gate.skew_seconds)
        covered = await self.gate.hold(needed)
        held_seconds = time.monotonic() - started
        metrics.notifier_route_held(held_seconds, 0 if covered else len(events))
        if not covered:
            log.warning(
                "notifier: routing %d records with the Webhook list of %s, older than their "
                "events: no list for %.0fs or more (FINTECH_NOTIFIER_ROUTE_HOLD_MAX_SECONDS); "
                "a Webhook created after that list gets none of them",
                len(events),
                _utc_text(self.gate.listed_at),
                self.gate.hold_max_seconds,
            )
        deliveries = match(events, self.endpoints)
        queued = 0
        if deliveries:
            async with self.pool.connection() as conn, conn.transaction():
                queued = await store.enqueue(conn, deliveries)
        await consuming.dead_letter(
            producer, poisons, consumer=CONSUMER_NAME, prefix=self.settings.topics.prefix
        )
        return Routed(
            applied=len(records) - len(poisons),
            dead_lettered=len(poisons),
            queued=queued,
            held_seconds=held_seconds,
            covered=covered,
        )


def _utc_text(epoch_seconds: float) -> str:
    if not math.isfinite(epoch_seconds):
        return "never"
    return envelope.time_text(datetime.datetime.fromtimestamp(epoch_seconds, datetime.UTC))


def new_consumer(settings: config.Settings, group_id: str) -> AIOKafkaConsumer:
    """A consumer of every source topic in batches of ``ROUTE_BATCH_MAX``.

    It starts at the ``earliest`` record: a new group reads the topics' retention once;
    events from before a Webhook existed are filtered out by time, so nothing old is sent and
    nothing new is skipped, even when the group's offsets were never committed.
    """
    return consuming.new_consumer(
        settings, group_id, topics.SOURCES, max_poll_records=ROUTE_BATCH_MAX
    )


async def _refresh_loop(notifier: Notifier, stop: asyncio.Event) -> None:
    interval = notifier.settings.notifier.refresh_interval_seconds
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        try:
            await notifier.refresh()
        except Exception:  # The API server or the database is away: keep the last view.
            log.exception("notifier: refresh failed; keeping the current endpoints")


async def _wake_loop(notifier: Notifier, listener: wakeup.Listener, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if await listener.wait(1.0):
            notifier.wake(listener.clear())


async def _clean_loop(notifier: Notifier, stop: asyncio.Event) -> None:
    retention = notifier.settings.webhooks.log_retention_hours * 3600.0
    while not stop.is_set():
        try:
            async with notifier.pool.connection() as conn:
                removed = await store.clean(conn, retention, CLEAN_BATCH_MAX)
            if removed:
                log.info("notifier: deleted %d finished deliveries past retention", removed)
        except psycopg.Error:
            log.exception("notifier: clean-up of the delivery log failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CLEAN_EVERY_SECONDS)


async def _route_loop(
    notifier: Notifier, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, stop: asyncio.Event
) -> None:
    async for records in consuming.batches(consumer, stop, records_max=ROUTE_BATCH_MAX):
        routed = await notifier.route_batch(producer, records)
        # After the deliveries' transaction; routing a record again queues nothing new.
        await consuming.commit(consumer, on_failure="the records will be routed again (no effect)")
        log.info(
            "routed %d records: %d new deliveries (held %.1fs for the Webhook list)",
            len(records),
            routed.queued,
            routed.held_seconds,
            extra={"consumer": CONSUMER_NAME},  # docs/operations.md: consumer lines carry it
        )


async def _first_refresh(notifier: Notifier, stop: asyncio.Event) -> None:
    """Routing must not start before the Webhooks are known, or their events would be missed."""
    delay = 1.0
    while not stop.is_set():
        try:
            await notifier.refresh()
            return
        except Exception:
            log.exception("notifier: cannot read Webhooks yet; retrying in %.0fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)


async def run(
    settings: config.Settings, namespaces: Sequence[str], group_id: str, stop: asyncio.Event
) -> None:
    """Run the notifier until ``stop`` is set."""
    if not await kafka.until_reachable_or_stopped(settings, stop):
        return
    pool = await consuming.open_pool(settings)
    # Every connection goes through the destination guard: public addresses only, plus the
    # allow-list (SSRF protection; see notify/destination.py).
    allow = destination.networks(settings.webhooks.allowed_cidrs)
    log.info(
        "notifier: webhook destinations are public addresses%s",
        f" and {', '.join(map(str, allow))}" if allow else " only",
    )
    client = destination.new_client(allow, max_connections=settings.notifier.in_flight_max)
    notifier = Notifier(settings, pool, client, endpoints.KubeSource(namespaces))
    listener = wakeup.Listener(settings.database.url, DELIVERY_CHANNEL)
    listener.start()
    producer = relay.new_producer(settings)
    consumer = new_consumer(settings, group_id)
    tasks: list[asyncio.Task[None]] = []
    try:
        await _first_refresh(notifier, stop)
        await producer.start()
        await consumer.start()
        log.info("notifier started in group %s", group_id)
        tasks = [
            asyncio.create_task(_route_loop(notifier, consumer, producer, stop), name="route"),
            asyncio.create_task(_refresh_loop(notifier, stop), name="refresh"),
            asyncio.create_task(_wake_loop(notifier, listener, stop), name="wake"),
            asyncio.create_task(_clean_loop(notifier, stop), name="clean"),
        ]
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        for task in done:
            if task is not stopping and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await notifier.stop()
        await listener.close()
        await kafka.stop_all(consumer, producer)
        await client.aclose()
        await pool.close()


def main(settings: config.Settings, namespaces: Sequence[str], group_id: str) -> int:
    """Entry point of ``fintech-operator notifier``."""
    # httpx logs every request at INFO; the worker logs failures itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return consuming.main(
        "fintech-notifier",
        settings,
        lambda settings, stop: run(settings, namespaces, group_id, stop),
    )
