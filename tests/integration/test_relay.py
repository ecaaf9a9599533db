"""The outbox relay on the real PostgreSQL and Kafka of the session.

Each module uses its own database and its own topic prefix, so nothing it publishes is
seen by another module's consumers. The helpers here (posting through the real ledger
engine, reading a topic, waiting without blocking the event loop) are shared with the
rewards and notifier tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg_pool import AsyncConnectionPool

from fintech_operator import config
from fintech_operator.events import kafka, relay, schema
from fintech_operator.ledger import engine, model, rules
from tests.conftest import RunningPlatform

pytestmark = pytest.mark.integration
CARDS = ("alice", "bob", "carol", "dave", "erin")


# --- Shared helpers ------------------------------------------------------------------------------


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."


def settings_for(
    plat: RunningPlatform, database_url: str, prefix: str, **extra: str
) -> config.Settings:
    """Settings of a product process on this module's database and topic prefix."""
    env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": plat.kafka_bootstrap_servers,
        "FINTECH_TOPIC_PREFIX": prefix,
        "FINTECH_TOPIC_PARTITIONS": "3",
        **extra,
    }
    return config.load(env)


def process_env(plat: RunningPlatform, settings: config.Settings, **extra: str) -> dict[str, str]:
    """Environment of a product subprocess with the same settings."""
    return {
        **plat.env,
        "DATABASE_URL": settings.database.url,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "FINTECH_TOPIC_PREFIX": settings.topics.prefix,
        "FINTECH_HEALTH_PORT": "0",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


@contextlib.asynccontextmanager
async def open_pool(database_url: str, size: int = 4) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=1, max_size=size, open=False, timeout=30
    )
    await pool.open(wait=True, timeout=30)
    try:
        yield pool
    finally:
        await pool.close()


async def open_cards(
    pool: AsyncConnectionPool[Any], namespace: str, cards: tuple[str, ...]
) -> None:
    async with pool.connection() as conn:
        await engine.ensure_system_accounts(conn, "USD")
        for card in cards:
            await engine.open_card_account(conn, namespace, card, "USD")


async def post(
    pool: AsyncConnectionPool[Any],
    namespace: str,
    card: str,
    *,
    posting_type: str = "Purchase",
    amount_minor: int = 12_500,
    rate_bps: int = 100,
    earn_on: tuple[str, ...] = ("Purchase",),
    name: str | None = None,
) -> tuple[int, model.OutboxEvent]:
    """Post through the real ledger engine with its event; return (journal id, event)."""
    name = name or f"p-{uuid.uuid4().hex[:12]}"
    now = datetime.datetime.now(datetime.UTC)
    event = schema.PostingPosted(
        namespace=namespace,
        name=name,
        card=card,
        posting_type=posting_type,
        amount_minor=amount_minor,
        currency="USD",
        rewards_rate_bps=rate_bps,
        earn_on=earn_on,
        occurred_at=now,
        now=now,
    ).outbox()
    kind = model.PostingKind(posting_type)
    account = model.card_account_code(namespace, card, "USD")
    request = model.PostingRequest(
        idempotency_key=f"{namespace}/{name}",
        kind=kind,
        lines=rules.lines_for(kind, account, amount_minor, "USD"),
        occurred_at=now,
        events=(event,),
    )
    result = await engine.post(pool, request)
    return result.journal.id, event


async def read_topic(
    bootstrap: str, topic: str, count: int, timeout_seconds: float = 60.0
) -> list[Any]:
    """Every record of ``topic`` from the beginning until at least ``count`` (or time out)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds
        while len(records) < count and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            records += [r for part in batches.values() for r in part]
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    for _ in range(100):
        found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {topic} has no partitions")


async def eventually(
    what: str, probe: Callable[[], Awaitable[Any]], timeout_seconds: float = 60.0
) -> Any:
    """Await ``probe`` until truthy, yielding to the loop between tries (tasks keep running)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds
    last: Any = None
    while loop.time() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_seconds}s waiting for {what}; last={last!r}")


async def scalar(database_url: str, query: str, *args: Any) -> Any:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        row = await (await conn.execute(query, args)).fetchone()
        return None if row is None else row[0]


async def unpublished(database_url: str) -> int:
    return int(await scalar(database_url, "SELECT count(*) FROM outbox WHERE published_at IS NULL"))


@contextlib.asynccontextmanager
async def running_relay(
    settings: config.Settings, pool: AsyncConnectionPool[Any]
) -> AsyncIterator[asyncio.Task[None]]:
    """The relay as a task of this event loop, stopped (and checked for errors) on exit."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(settings, pool, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def first_copies_by_key(records: list[Any]) -> dict[bytes, list[str]]:
    """Per key, event ids in the order of their FIRST copy on the topic (duplicates ignored)."""
    seen: set[str] = set()
    order: dict[bytes, list[str]] = {}
    for record in records:
        event_id = json.loads(record.value)["id"]
        if event_id not in seen:
            seen.add(event_id)
            order.setdefault(record.key, []).append(event_id)
    return order


async def outbox_order_by_key(database_url: str) -> dict[bytes, list[str]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (await conn.execute("SELECT key, event_id FROM outbox ORDER BY id")).fetchall()
    order: dict[bytes, list[str]] = {}
    for key, event_id in rows:
        order.setdefault(str(key).encode(), []).append(str(event_id))
    return order


class Subprocess:
    """A product process started by a test, killed by it, its log kept for failures."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no clean-up, no flush, exactly like a crashed pod."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def table_share_lock(database_url: str, table: str) -> Iterator[psycopg.Connection[Any]]:
    """Hold SHARE on ``table``: reads and row locks pass, INSERT/UPDATE wait until released."""
    conn = psycopg.connect(database_url)
    try:
        conn.execute(f"LOCK TABLE {table} IN SHARE MODE")
        yield conn
    finally:
        conn.rollback()
        conn.close()


async def waiting_on_lock(database_url: str, statement: str) -> bool:
    """True when some session of this database waits for a lock in ``statement``."""
    count = await scalar(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query ILIKE %s",
        f"%{statement}%",
    )
    return bool(count)


# --- Tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefix() -> str:
    return new_prefix()


async def test_notify_wakes_the_relay_and_events_follow_the_schema(
    platform_running: RunningPlatform, migrated_database_url: str, prefix: str
) -> None:
    """With a 60 s fallback scan, a posting is published at once: NOTIFY woke the relay.

    The published records are CloudEvents with the journal id filled in, keyed by card,
    valid against docs/events/, with the event id and content type in headers.
    """
    from tests.unit.test_events_schema import validator  # noqa: PLC0415

    settings = settings_for(
        platform_running, migrated_database_url, prefix, FINTECH_RELAY_IDLE_INTERVAL_MS="60000"
    )
    await kafka.ensure_topics(settings)
    async with open_pool(migrated_database_url) as pool:
        await open_cards(pool, "wake", ("alice",))
        async with running_relay(settings, pool):
            await asyncio.sleep(1)  # The relay's first scan found nothing; now it only listens.
            journal_id, event = await post(pool, "wake", "alice")
            await eventually(
                "the row to be published", lambda: _is_zero(unpublished(migrated_database_url)), 30
            )
    records = await read_topic(platform_running.kafka_bootstrap_servers, f"{prefix}postings", 1)
    [record] = [r for r in records if json.loads(r.value)["id"] == str(event.event_id)]
    body = json.loads(record.value)
    validator(schema.POSTING_POSTED).validate(body)
    assert body["data"]["journalId"] == journal_id
    assert record.key == b"wake/alice"
    headers = dict(record.headers)
    assert headers["event-id"] == str(event.event_id).encode()
    assert headers["content-type"].startswith(b"application/cloudevents+json")


async def _is_zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def test_two_relays_publish_every_row_once_in_card_order(
    platform_running: RunningPlatform, migrated_database_url: str, prefix: str
) -> None:
    """Two relays on one outbox (two operator replicas): each row is published exactly once,
    and each card's events reach Kafka in outbox order, while postings keep arriving."""
    settings = settings_for(
        platform_running, migrated_database_url, prefix, FINTECH_RELAY_BATCH_SIZE="20"
    )
    await kafka.ensure_topics(settings)  # not left to an earlier test: each test runs alone too
    before = await scalar(migrated_database_url, "SELECT count(*) FROM outbox")
    async with open_pool(migrated_database_url) as pool, open_pool(migrated_database_url) as other:
        await open_cards(pool, "two", CARDS)
        async with running_relay(settings, pool), running_relay(settings, other):
            for i in range(150):
                await post(pool, "two", CARDS[i % len(CARDS)], amount_minor=100 + i)
            await eventually(
                "every row published", lambda: _is_zero(unpublished(migrated_database_url))
            )
    total = int(before) + 150
    records = await read_topic(platform_running.kafka_bootstrap_servers, f"{prefix}postings", total)
    ids = [json.loads(r.value)["id"] for r in records]
    assert len(ids) == total
    assert len(set(ids)) == total, "a row was published twice"
    expected = await outbox_order_by_key(migrated_database_url)
    assert first_copies_by_key(records) == expected


async def test_relay_killed_between_publish_and_mark_republishes(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    prefix: str,
    tmp_path: Path,
) -> None:
    """SIGKILL the relay process after Kafka acknowledged a batch but before it was marked:
    the rows stay unpublished, the next relay publishes them again (twice on the topic),
    and the rewards consumer still applies each event exactly once."""
    from fintech_operator.rewards import consumer  # noqa: PLC0415

    settings = settings_for(platform_running, migrated_database_url, prefix)
    async with open_pool(migrated_database_url) as pool:
        await open_cards(pool, "kill", CARDS)
        posted = [
            (await post(pool, "kill", CARDS[i % len(CARDS)], amount_minor=1_000 + i))[1]
            for i in range(40)
        ]
    ours = {str(event.event_id) for event in posted}
    topic = f"{prefix}postings"
    env = process_env(platform_running, settings)
    with table_share_lock(migrated_database_url, "outbox"):
        first = Subprocess("relay", ["-m", "fintech_operator.events.relay"], env, tmp_path)
        try:
            # Kafka has the batch, and the relay is stuck on marking it: kill it right there.
            await eventually(
                "the batch on Kafka", lambda: _has_all(platform_running, topic, ours), 90
            )
            await eventually(
                "the relay waiting to mark the batch",
                lambda: waiting_on_lock(migrated_database_url, "UPDATE outbox SET published_at"),
            )
            first.kill()
        except AssertionError:
            print(first.log()[-3000:])
            raise
    assert await unpublished(migrated_database_url) >= len(ours)
    second = Subprocess("relay", ["-m", "fintech_operator.events.relay"], env, tmp_path)
    try:
        await eventually(
            "the rows published again", lambda: _is_zero(unpublished(migrated_database_url))
        )
    finally:
        second.stop()
    records = await read_topic(platform_running.kafka_bootstrap_servers, topic, 2 * len(ours))
    copies = [json.loads(r.value)["id"] for r in records]
    assert all(copies.count(event_id) == 2 for event_id in ours), "expected each event twice"

    stop = asyncio.Event()
    task = asyncio.create_task(consumer.consume(settings, f"g-{uuid.uuid4().hex[:6]}", stop))
    try:
        await eventually(
            "every event applied",
            lambda: _count_processed(migrated_database_url, ours, len(ours)),
        )
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    rows = await scalar(
        migrated_database_url,
        "SELECT count(*) FROM rewards_ledger WHERE event_id = ANY(%s::uuid[])",
        list(ours),
    )
    assert rows == len(ours)


async def _has_all(plat: RunningPlatform, topic: str, ids: set[str]) -> bool:
    records = await read_topic(plat.kafka_bootstrap_servers, topic, len(ids), timeout_seconds=2)
    return ids <= {json.loads(r.value)["id"] for r in records}


async def _count_processed(database_url: str, ids: set[str], expected: int) -> bool:
    count = await scalar(
        database_url,
        "SELECT count(*) FROM processed_events WHERE consumer = 'rewards'"
        " AND event_id = ANY(%s::uuid[])",
        list(ids),
    )
    return int(count) >= expected


async def test_a_second_relay_stands_by_while_one_publishes(
    platform_running: RunningPlatform, migrated_database_url: str, prefix: str
) -> None:
    """While one relay holds the publishing lock, another publishes nothing (STANDBY) and
    leaves the rows alone; once the lock is free it publishes them."""
    settings = settings_for(platform_running, migrated_database_url, prefix)
    async with open_pool(migrated_database_url) as pool:
        await open_cards(pool, "standby", ("alice",))
        await post(pool, "standby", "alice")
        producer = relay.new_producer(settings)
        await producer.start()
        try:
            async with await psycopg.AsyncConnection.connect(migrated_database_url) as other:
                await other.execute("SELECT pg_advisory_xact_lock(%s)", (relay.RELAY_LOCK_KEY,))
                outcome = await relay.publish_batch(pool, producer, 10, prefix=prefix)
                assert outcome == relay.STANDBY
                assert await unpublished(migrated_database_url) == 1
                await other.rollback()
            assert await relay.publish_batch(pool, producer, 10, prefix=prefix) == 1
        finally:
            await producer.stop()
    assert await unpublished(migrated_database_url) == 0
