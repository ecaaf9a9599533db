"""Rewards consumer throughput beside its anchor, a bare aiokafka consumer, in the same run.

    .venv/bin/python bench/bench_rewards.py [--events 100000] [--repeat 2]

On its own throwaway platform (PostgreSQL with fsync on). N ``posting.posted`` events (over
1,000 cards, referencing real journals) are produced to the postings topic once; then, each
from the earliest offset in a fresh consumer group:

1. **anchor**: a bare ``AIOKafkaConsumer`` with the product's consumer options reads all N;
2. **decode**: the pure ``decode_batch()`` step over those records (decode and points, no
   database);
3. **rewards**: the product's ``consume`` runs until its group has committed all N offsets
   (which it does only after their database transaction), then all N are checked in
   ``processed_events``.

Wall times include joining the group. Issue 14's goal: rewards >= 0.2x the anchor and
>= 30,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import time
import uuid
from typing import Any

import bench_events  # the sibling benchmark: fresh databases and postings through the engine
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from fintech_devstack import platform
from fintech_operator import config
from fintech_operator.events import kafka, relay, schema, topics
from fintech_operator.rewards import consumer

EVENTS_MAX = 1_000_000
CARDS = 1_000
JOURNALS = 50


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Rewards consumer vs a bare aiokafka consumer.")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="FINTECH_CONSUMER_BATCH_SIZE (default: its)"
    )
    args = parser.parse_args()
    if not 0 < args.events <= EVENTS_MAX:
        parser.error(f"--events must be in 1..{EVENTS_MAX}")
    return args


async def produce(settings: config.Settings, journal_ids: list[int], count: int) -> None:
    now = datetime.datetime.now(datetime.UTC)
    producer = relay.new_producer(settings)
    await producer.start()
    try:
        futures = []
        for i in range(count):
            event = schema.PostingPosted(
                namespace="bench",
                name=f"p-{i}",
                card=f"card-{i % CARDS}",
                posting_type="Purchase",
                amount_minor=1_000 + i,
                currency="USD",
                rewards_rate_bps=100,
                earn_on=["Purchase"],
                occurred_at=now,
                now=now,
            ).outbox()
            payload = dict(event.payload)
            payload["data"] = {**payload["data"], "journalId": journal_ids[i % len(journal_ids)]}  # type: ignore[dict-item]
            message = relay.to_message(
                relay.OutboxRow(
                    i, str(event.event_id), event.topic, event.key, payload, None, None
                ),
                settings.topics.prefix,
            )
            futures.append(
                await producer.send(
                    message.topic, message.value, key=message.key, headers=list(message.headers)
                )
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def anchor(settings: config.Settings, count: int) -> tuple[float, list[Any]]:
    """Events/s of a bare consumer reading the topic from the start; the records it read."""
    bare: AIOKafkaConsumer = consumer.new_consumer(settings, f"anchor-{uuid.uuid4().hex[:6]}")
    started = time.monotonic()
    await bare.start()
    records: list[Any] = []
    try:
        while len(records) < count:
            batch = await bare.getmany(timeout_ms=1000, max_records=settings.consumers.batch_max)
            for part in batch.values():
                records.extend(part)
        return count / (time.monotonic() - started), records
    finally:
        await bare.stop()


def plan_rate(records: list[Any]) -> float:
    """Events/s of the pure decode step over a whole batch (no database)."""
    started = time.monotonic()
    decoded = consumer.decode_batch(records)
    elapsed = time.monotonic() - started
    assert len(decoded.rows) == len(records), "a sample event was refused"
    return len(records) / elapsed


async def committed_total(settings: config.Settings, group: str) -> int:
    """Records the group has committed on the postings topic (offsets commit after the
    batch's database transaction: a cheap end signal that adds no load to PostgreSQL)."""
    topic = topics.qualified(topics.POSTINGS, settings.topics.prefix)
    partitions = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
    checker = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await checker.start()
    try:
        return sum([await checker.committed(tp) or 0 for tp in partitions])
    finally:
        await checker.stop()


async def product(settings: config.Settings, count: int) -> float:
    stop = asyncio.Event()
    group = f"bench-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    task = asyncio.create_task(consumer.consume(settings, group, stop))
    while await committed_total(settings, group) < count:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.wait_for(task, 60)
    async with await psycopg.AsyncConnection.connect(settings.database.url, autocommit=True) as c:
        row = await (await c.execute("SELECT count(*) FROM processed_events")).fetchone()
    processed = row[0] if row else 0
    if processed != count:
        raise SystemExit(f"{processed} events processed, {count} expected")
    return count / elapsed


async def prepare(plat: platform.Platform, count: int, extra: dict[str, str]) -> config.Settings:
    dsn = bench_events.fresh_database(plat.database_url_for("postgres"))
    settings = bench_events.settings_for(dsn, plat.kafka_client_env("PLAINTEXT"), **extra)
    await kafka.ensure_topics(settings)
    async with bench_events.pool_of(dsn, 2) as pool:
        cards = await bench_events.open_cards(pool)
        for i in range(JOURNALS):
            await bench_events.post_one(pool, cards[i % len(cards)], 1_000 + i)
        async with pool.connection() as conn:
            rows = await (await conn.execute("SELECT id FROM journals ORDER BY id")).fetchall()
    await produce(settings, [row[0] for row in rows], count)
    return settings


async def one_round(
    plat: platform.Platform, count: int, extra: dict[str, str]
) -> tuple[float, float, float]:
    settings = await prepare(plat, count, extra)
    bare, records = await anchor(settings, count)
    planned = plan_rate(records)
    return bare, planned, await product(settings, count)


def main() -> None:
    args = parse_args()
    extra = {} if args.batch_size is None else {"FINTECH_CONSUMER_BATCH_SIZE": str(args.batch_size)}
    with platform.throwaway("bench-rewards-", fast_disk=False) as plat:
        for i in range(args.repeat):
            bare, planned, rewards = asyncio.run(one_round(plat, args.events, extra))
            print(
                f"round {i + 1}: {args.events} events; bare aiokafka consumer {bare:,.0f}/s; "
                f"decode alone {planned:,.0f}/s; rewards consumer {rewards:,.0f}/s; "
                f"ratio {rewards / bare:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
