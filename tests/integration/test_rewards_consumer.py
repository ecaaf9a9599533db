"""The rewards consumer on the real PostgreSQL and Kafka: points, poison, crashes, replays."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from fintech_operator import config
from fintech_operator.events import envelope, kafka, outbox, relay, schema, topics
from fintech_operator.ledger import engine, model
from fintech_operator.rewards import consumer, store
from tests.conftest import RunningPlatform
from tests.integration.test_relay import (
    CARDS,
    Subprocess,
    eventually,
    new_prefix,
    open_cards,
    open_pool,
    post,
    process_env,
    read_topic,
    running_relay,
    scalar,
    settings_for,
    table_share_lock,
    unpublished,
    waiting_on_lock,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prefix() -> str:
    return new_prefix()


@contextlib.asynccontextmanager
async def running_consumer(settings: config.Settings, group: str) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.consume(settings, group, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def processed(database_url: str) -> int:
    return int(
        await scalar(
            database_url, "SELECT count(*) FROM processed_events WHERE consumer = 'rewards'"
        )
    )


async def balance(pool: AsyncConnectionPool[Any], card: str) -> int:
    async with pool.connection() as conn:
        return await store.points_balance(conn, card)


async def drain(database_url: str) -> bool:
    return await unpublished(database_url) == 0


async def test_refunds_reversals_and_types_outside_earn_on(
    platform_running: RunningPlatform, migrated_database_url: str, prefix: str
) -> None:
    """Through the real relay and consumer: purchases earn 1%, refunds and reversals take
    back, payments and fees outside earnOn give nothing, a balance may go negative, each
    rewards_ledger row says where it came from, and balances agree with the ledger."""
    settings = settings_for(platform_running, migrated_database_url, prefix)
    ns = "rw"
    async with open_pool(migrated_database_url) as pool:
        await open_cards(pool, ns, ("alice", "bob"))
        purchase_journal, purchase = await post(pool, ns, "alice", amount_minor=20_050, name="buy")
        await post(pool, ns, "alice", posting_type="Refund", amount_minor=5_000, name="refund")
        await post(pool, ns, "alice", posting_type="Payment", amount_minor=9_999, name="pay")
        await post(pool, ns, "alice", posting_type="Fee", amount_minor=2_500, name="fee")
        # Bob's product earns on fees too; his refund comes before any purchase.
        fee_terms = {"earn_on": ("Purchase", "Fee"), "rate_bps": 200}
        await post(pool, ns, "bob", posting_type="Fee", amount_minor=1_000, **fee_terms)  # type: ignore[arg-type]
        await post(pool, ns, "bob", posting_type="Refund", amount_minor=10_000, **fee_terms)  # type: ignore[arg-type]
        # Reverse Alice's purchase the way the Posting handler does: the event copies the
        # original's terms from the outbox.
        async with pool.connection() as conn:
            original = await outbox.posted_event(conn, purchase_journal)
        assert original is not None
        reversal_event = schema.PostingReversed(
            original,
            reverses_journal_id=purchase_journal,
            namespace=ns,
            name="undo-buy",
            reason="duplicate capture",
            now=datetime.datetime.now(datetime.UTC),
        ).outbox()
        reversal = await engine.reverse(
            pool,
            model.ReversalRequest(
                f"{ns}/undo-buy", purchase_journal, "duplicate capture", events=[reversal_event]
            ),
        )
        async with running_relay(settings, pool), running_consumer(settings, "g-rw"):
            await eventually(
                "all seven events applied", lambda: _at_least(processed, migrated_database_url, 7)
            )
        alice, bob = await balance(pool, f"{ns}/alice"), await balance(pool, f"{ns}/bob")
        async with pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT posting, kind, points, posting_type, event_type, journal_id,"
                    " reverses_journal_id FROM rewards_ledger WHERE card = %s ORDER BY id",
                    (f"{ns}/alice",),
                )
            ).fetchall()
            drift = await store.balance_drift(conn)
    assert rows == [
        (f"{ns}/buy", "accrual", 200, "Purchase", schema.POSTING_POSTED, purchase_journal, None),
        (f"{ns}/refund", "reversal", -50, "Refund", schema.POSTING_POSTED, rows[1][5], None),
        (
            f"{ns}/undo-buy",
            "reversal",
            -200,
            "Purchase",
            schema.POSTING_REVERSED,
            reversal.journal.id,
            purchase_journal,
        ),
    ]
    assert alice == -50  # The refund outlived its purchase's reversal: below zero is allowed.
    assert bob == 20 - 200
    assert drift == []
    assert purchase.event_id != reversal_event.event_id


async def _at_least(count: Any, database_url: str, expected: int) -> bool:
    return int(await count(database_url)) >= expected


async def test_poison_goes_to_the_dead_letter_topic_and_the_stream_goes_on(
    platform_running: RunningPlatform, migrated_database_url: str, prefix: str
) -> None:
    """Garbage, the old flat format, a bad amount and an unknown type between good events:
    each lands in postings.rewards.dlq with its reason, and every good event is applied."""
    settings = settings_for(platform_running, migrated_database_url, prefix)
    ns = "poison"
    topic = topics.qualified(topics.POSTINGS, prefix)
    async with open_pool(migrated_database_url) as pool:
        await open_cards(pool, ns, ("alice",))
        good = [await post(pool, ns, "alice", amount_minor=1_000 + i) for i in range(3)]
        async with running_relay(settings, pool):
            await eventually("good events published", lambda: drain(migrated_database_url))
    valid = json.loads(
        relay.to_message(
            relay.OutboxRow(1, "x", "postings", "k", good[0][1].payload, {}, good[0][0]), ""
        ).value
    )
    bad_amount = {**valid, "id": str(uuid.uuid4()), "data": {**valid["data"], "amount": 12.5}}
    unknown = {**valid, "id": str(uuid.uuid4()), "type": "dev.fintech.posting.annotated.v1"}
    poisons = [
        b"\x00not json",
        json.dumps({"schemaVersion": 1, "type": "posting.posted", "amountMinor": 1}).encode(),
        json.dumps(bad_amount).encode(),
        json.dumps(unknown).encode(),
    ]
    producer = AIOKafkaProducer(
        bootstrap_servers=platform_running.kafka_bootstrap_servers, acks="all"
    )
    await producer.start()
    try:
        for value in poisons:
            await producer.send_and_wait(topic, value, key=f"{ns}/alice".encode())
    finally:
        await producer.stop()
    async with open_pool(migrated_database_url) as pool:
        after = [await post(pool, ns, "alice", amount_minor=5_000 + i) for i in range(2)]
        async with running_relay(settings, pool), running_consumer(settings, "g-poison"):
            await eventually(
                "the good events after the poison applied",
                lambda: _applied(migrated_database_url, [e.event_id for _, e in good + after]),
            )
    dlq = await read_topic(
        platform_running.kafka_bootstrap_servers,
        topics.qualified(topics.dead_letter(topics.POSTINGS, topics.REWARDS), prefix),
        len(poisons),
    )
    assert sorted(r.value for r in dlq) == sorted(poisons)
    reasons = {dict(r.headers)["dlq-reason"].decode() for r in dlq}
    assert all(reason.startswith("invalid event") for reason in reasons), reasons
    assert any("unsupported event type" in reason for reason in reasons)
    assert all(dict(r.headers)["dlq-consumer"] == b"rewards" for r in dlq)
    assert all(dict(r.headers)["dlq-source"].startswith(topic.encode()) for r in dlq)


async def _applied(database_url: str, event_ids: list[uuid.UUID]) -> bool:
    count = await scalar(
        database_url,
        "SELECT count(*) FROM processed_events WHERE consumer = 'rewards' AND event_id = ANY(%s)",
        event_ids,
    )
    return int(count) == len(event_ids)


async def test_duplicates_poison_and_a_refused_event_in_one_batch_apply_each_event_once(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One poll holding the relay's four events, then a copy of the first, garbage, an event
    whose journal does not exist (valid JSON, refused by the database's foreign key) and a copy
    of the second; later, a third copy of the first. Each good event is applied once, the copies
    count as duplicates, the garbage and the refused event go to the dead-letter topic with
    their reasons, and the rest of the batch is applied in spite of them."""
    prefix = new_prefix()  # a topic of its own: exact counts
    settings = settings_for(platform_running, migrated_database_url, prefix)
    await kafka.ensure_topics(settings)
    ns, topic = "batch", topics.qualified(topics.POSTINGS, prefix)
    async with open_pool(migrated_database_url) as pool:
        await open_cards(pool, ns, ("alice",))
        good = [await post(pool, ns, "alice", amount_minor=1_000 * (i + 1)) for i in range(4)]
        async with running_relay(settings, pool):
            await eventually("the four events published", lambda: drain(migrated_database_url))
    published = [
        relay.to_message(
            relay.OutboxRow(1, str(e.event_id), e.topic, e.key, e.payload, {}, j), prefix
        ).value
        for j, e in good
    ]
    assert all(schema.canonical_posting(v) is not None for v in published)  # the fast path
    orphan = json.loads(published[2])
    orphan["id"], orphan["data"]["journalId"] = str(uuid.uuid4()), 999_999_999
    refused = envelope.encode_stored(orphan)
    garbage = b"\x00not json"
    await _produce(platform_running, topic, [published[0], garbage, refused, published[1]])
    group = f"g-{uuid.uuid4().hex[:6]}"
    ids = [e.event_id for _, e in good]
    with caplog.at_level(logging.INFO, logger=consumer.__name__):
        async with running_consumer(settings, group):
            await eventually(
                "the good events applied", lambda: _applied(migrated_database_url, ids)
            )
            await _produce(platform_running, topic, [published[0]])  # a later batch
            await eventually("all nine records handled", lambda: _caught_up(settings, group, 9))
    url = migrated_database_url
    ledger = "SELECT count(*), sum(points) FROM rewards_ledger WHERE event_id = ANY(%s)"
    marks = "SELECT count(*) FROM processed_events WHERE event_id = ANY(%s)"
    assert await _row(url, ledger, ids) == (4, 10 + 20 + 30 + 40)
    assert await scalar(url, marks, ids) == 4
    assert await scalar(url, "SELECT count(*) FROM rewards_balance_drift") == 0
    assert not await _applied(migrated_database_url, [uuid.UUID(orphan["id"])])
    dlq = await read_topic(
        platform_running.kafka_bootstrap_servers,
        topics.qualified(topics.dead_letter(topics.POSTINGS, topics.REWARDS), prefix),
        2,
    )
    reasons = {r.value: dict(r.headers)["dlq-reason"].decode() for r in dlq}
    assert reasons.keys() == {garbage, refused}
    assert reasons[garbage].startswith("invalid event")
    assert reasons[refused].startswith("refused by the database"), reasons[refused]
    assert "foreign key" in reasons[refused]
    batches = re.findall(
        r"batch of (\d+): (\d+) applied, (\d+) duplicates, (\d+) dead-lettered", caplog.text
    )
    assert batches[0] == ("8", "4", "2", "2")  # the first poll: all eight, in one batch
    totals = [sum(int(b[i]) for b in batches) for i in range(4)]
    assert totals == [9, 4, 3, 2]
    # Each batch's summary names its consumer, as docs/operations.md's log fields say.
    summaries = [r for r in caplog.records if r.getMessage().startswith("batch of ")]
    assert {getattr(r, "consumer", None) for r in summaries} == {consumer.CONSUMER_NAME}


async def _row(database_url: str, query: str, *params: Any) -> tuple[Any, ...]:
    async with (
        await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn,
        conn.cursor() as cur,
    ):
        await cur.execute(query, params)
        row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _produce(plat: RunningPlatform, topic: str, values: list[bytes]) -> None:
    """Each value to ``topic`` on alice's key (the relay's partition for her events)."""
    producer = AIOKafkaProducer(bootstrap_servers=plat.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"batch/alice")
    finally:
        await producer.stop()


async def test_consumer_killed_mid_batch_applies_everything_exactly_once(
    platform_running: RunningPlatform, migrated_database_url: str, tmp_path: Path
) -> None:
    """SIGKILL the consumer process while a batch's transaction is half written: after a
    restart every event is applied exactly once; then replaying the whole topic from
    offset 0 (as after a crash between the database commit and the offset commit)
    changes nothing."""
    prefix = new_prefix()  # A topic of its own: exact counts.
    settings = settings_for(
        platform_running, migrated_database_url, prefix, FINTECH_CONSUMER_BATCH_SIZE="50"
    )
    await kafka.ensure_topics(settings)
    ns = "crash"
    group = f"g-{uuid.uuid4().hex[:6]}"
    env = process_env(platform_running, settings, FINTECH_CONSUMER_BATCH_SIZE="50")
    args = ["-m", "fintech_operator", "rewards", "--group", group]
    expected_points = 0
    async with open_pool(migrated_database_url) as pool:
        await open_cards(pool, ns, CARDS)
        first_ids: list[uuid.UUID] = []
        for i in range(100):
            first_ids.append(
                (await post(pool, ns, CARDS[i % 5], amount_minor=10_000 + i))[1].event_id
            )
            expected_points += (10_000 + i) // 100
        async with running_relay(settings, pool):
            await eventually("first wave published", lambda: drain(migrated_database_url))
            base = await processed(migrated_database_url)
            first = Subprocess("rewards", args, env, tmp_path)
            try:
                await eventually(
                    "first wave applied", lambda: _applied(migrated_database_url, first_ids)
                )
                with table_share_lock(migrated_database_url, "rewards_ledger"):
                    second_ids = []
                    for i in range(150):
                        second_ids.append(
                            (await post(pool, ns, CARDS[i % 5], amount_minor=20_000 + i))[
                                1
                            ].event_id
                        )
                        expected_points += (20_000 + i) // 100
                    await eventually(
                        "a batch blocked half-way through its transaction",
                        lambda: waiting_on_lock(
                            migrated_database_url, "INSERT INTO rewards_ledger"
                        ),
                    )
                    first.kill()
            except AssertionError:
                print(first.log()[-3000:])
                raise
            assert not await _applied(migrated_database_url, second_ids)
            restarted = Subprocess("rewards", args, env, tmp_path)
            try:
                await eventually(
                    "second wave applied", lambda: _applied(migrated_database_url, second_ids)
                )
            finally:
                restarted.stop()
        ids = first_ids + second_ids
        await _assert_exactly_once(migrated_database_url, ids, expected_points, base)

        # Replay everything from offset 0 in the same group: nothing may change.
        await _rewind(settings, group)
        replay = Subprocess("rewards", args, env, tmp_path)
        try:
            await eventually(
                "the group to reach the end again", lambda: _caught_up(settings, group, len(ids))
            )
        finally:
            replay.stop()
        await _assert_exactly_once(migrated_database_url, ids, expected_points, base)
        batches = re.findall(r"batch of \d+: (\d+) applied, (\d+) duplicates", replay.log())
        assert sum(int(applied) for applied, _ in batches) == 0
        assert sum(int(duplicates) for _, duplicates in batches) == len(ids)


async def _assert_exactly_once(
    database_url: str, ids: list[uuid.UUID], expected_points: int, base: int
) -> None:
    rows = await scalar(
        database_url,
        "SELECT count(*) FROM rewards_ledger WHERE event_id = ANY(%s)",
        ids,
    )
    points = await scalar(
        database_url,
        "SELECT sum(points) FROM rewards_ledger WHERE event_id = ANY(%s)",
        ids,
    )
    assert (rows, points) == (len(ids), expected_points)
    assert await processed(database_url) == base + len(ids)
    assert await scalar(database_url, "SELECT count(*) FROM rewards_balance_drift") == 0


async def _rewind(settings: config.Settings, group: str) -> None:
    """Commit offset 0 for the group on every partition (the consumer is stopped)."""
    rewinder = AIOKafkaConsumer(
        topics.qualified(topics.POSTINGS, settings.topics.prefix),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
    )
    await rewinder.start()
    try:
        await eventually("an assignment", lambda: _assigned(rewinder))
        partitions = rewinder.assignment()
        await rewinder.commit(dict.fromkeys(partitions, 0))
    finally:
        await rewinder.stop()


async def _assigned(kafka_consumer: AIOKafkaConsumer) -> bool:
    await kafka_consumer.getmany(timeout_ms=200)
    return bool(kafka_consumer.assignment())


async def _caught_up(settings: config.Settings, group: str, total: int) -> bool:
    """The group's committed offsets cover every record of the topic."""
    probe = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    await probe.start()
    try:
        from aiokafka import TopicPartition  # noqa: PLC0415

        topic = topics.qualified(topics.POSTINGS, settings.topics.prefix)
        partitions = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        ends = await probe.end_offsets(partitions)
    finally:
        await probe.stop()
    checker = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await checker.start()
    try:
        committed = [await checker.committed(tp) or 0 for tp in partitions]
    finally:
        await checker.stop()
    return sum(ends.values()) >= total and committed == [ends[tp] for tp in partitions]
