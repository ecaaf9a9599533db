"""Outbox relay throughput beside its anchor, a bare aiokafka producer, in the same run.

    .venv/bin/python bench/bench_relay.py [--events 100000] [--batch-size N] [--repeat 2]

On its own throwaway platform (PostgreSQL with fsync on). For each repeat:

1. **anchor**: a bare ``AIOKafkaProducer`` with the relay's own options (``relay.new_producer``:
   acks=all, idempotence, the same linger and batch size) sends the same N records (same keys,
   same bytes, same headers) to a fresh topic, ``send()`` for all then awaiting every ack.
2. **relay**: the same N events sit unpublished in the outbox (filled set-wise with COPY); the
   product's ``relay.run`` is started and timed until the outbox is drained (all acknowledged
   and marked published).

It prints both rates and the ratio (issue 14's goal: ratio >= 0.5 and >= 30,000 events/s).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import time
import uuid
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from psycopg_pool import AsyncConnectionPool

from fintech_devstack import platform
from fintech_operator import config
from fintech_operator.events import envelope, kafka, relay, schema
from fintech_operator.ledger import migrate

EVENTS_MAX = 1_000_000
CARDS = 1_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Outbox relay vs a bare aiokafka producer.")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=None, help="FINTECH_RELAY_BATCH_SIZE")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not 0 < args.events <= EVENTS_MAX:
        parser.error(f"--events must be in 1..{EVENTS_MAX}")
    return args


def sample_events(count: int) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(event id, topic, key, payload) of ``count`` posting.posted events over CARDS cards."""
    now = datetime.datetime.now(datetime.UTC)
    rows = []
    for i in range(count):
        card = f"card-{i % CARDS}"
        event = schema.PostingPosted(
            namespace="bench",
            name=f"p-{i}",
            card=card,
            posting_type="Purchase",
            amount_minor=1_000 + i,
            currency="USD",
            rewards_rate_bps=100,
            earn_on=["Purchase"],
            occurred_at=now,
            now=now,
        ).outbox()
        payload = dict(event.payload)
        # Rows written by a journal get its id filled in by the relay; these have none.
        payload["data"] = {**payload["data"], "journalId": i + 1}  # type: ignore[dict-item]
        rows.append((str(event.event_id), event.topic, event.key or card, payload))
    return rows


def fill_outbox(dsn: str, rows: list[tuple[str, str, str, dict[str, Any]]]) -> None:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy("COPY outbox (event_id, topic, key, payload, headers) FROM STDIN") as copy:
            for event_id, topic, key, payload in rows:
                copy.write_row((event_id, topic, key, envelope.encode(payload).decode(), "{}"))
        conn.commit()


async def anchor(
    settings: config.Settings, rows: list[tuple[str, str, str, dict[str, Any]]]
) -> float:
    """Events/s of a bare producer sending the relay's records to a fresh topic."""
    messages = [
        relay.to_message(
            relay.OutboxRow(i, event_id, topic, key, payload, None, None), settings.topics.prefix
        )
        for i, (event_id, topic, key, payload) in enumerate(rows)
    ]
    producer: AIOKafkaProducer = relay.new_producer(settings)
    await producer.start()
    try:
        started = time.monotonic()
        futures = [
            await producer.send(m.topic, m.value, key=m.key, headers=list(m.headers))
            for m in messages
        ]
        await asyncio.gather(*futures)
        return len(rows) / (time.monotonic() - started)
    finally:
        await producer.stop()


async def relay_drain(settings: config.Settings, count: int) -> float:
    """Events/s of ``relay.run`` draining ``count`` unpublished rows."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.database.url, min_size=1, max_size=2, open=False
    )
    await pool.open(wait=True)
    stop = asyncio.Event()
    try:
        started = time.monotonic()
        task = asyncio.create_task(relay.run(settings, pool, stop))
        async with pool.connection() as conn:
            while True:
                row = await (
                    await conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                ).fetchone()
                if row is not None and row[0] == 0:
                    break
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        stop.set()
        await task
        return count / elapsed
    finally:
        await pool.close()


def fresh_settings(plat: platform.Platform, batch_size: int | None) -> config.Settings:
    name = f"bench_relay_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(plat.database_url_for("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = plat.database_url_for(name)
    migrate.apply(dsn)
    extra = {} if batch_size is None else {"FINTECH_RELAY_BATCH_SIZE": str(batch_size)}
    return config.load(
        {
            "DATABASE_URL": dsn,
            **plat.kafka_client_env("PLAINTEXT"),
            "FINTECH_TOPIC_PREFIX": f"b{uuid.uuid4().hex[:8]}.",
            "FINTECH_TOPIC_PARTITIONS": "3",
            **extra,
        }
    )


async def one_round(plat: platform.Platform, args: argparse.Namespace) -> tuple[float, float]:
    settings = fresh_settings(plat, args.batch_size)
    rows = sample_events(args.events)
    await kafka.ensure_topics(settings)
    bare = await anchor(settings, rows)
    fill_outbox(settings.database.url, rows)
    product = await relay_drain(settings, len(rows))
    return bare, product


def main() -> None:
    args = parse_args()
    with platform.throwaway("bench-relay-", fast_disk=False) as plat:
        for i in range(args.repeat):
            bare, product = asyncio.run(one_round(plat, args))
            print(
                f"round {i + 1}: {args.events} events; "
                f"bare aiokafka producer {bare:,.0f} events/s; "
                f"relay {product:,.0f} events/s; ratio {product / bare:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
