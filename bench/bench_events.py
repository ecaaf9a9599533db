"""Events throughput and lag on a real PostgreSQL and Kafka (not run by the tests).

    .venv/bin/python bench/bench_events.py                 # starts its own platform
    DATABASE_URL=... KAFKA_BOOTSTRAP_SERVERS=... .venv/bin/python bench/bench_events.py --use-env

Three measurements, each on a fresh database and topic prefix:

1. **relay**: N postings are written through the ledger engine with the relay stopped, then
   the relay is started and timed until the outbox is drained (events/s through the relay).
2. **rewards**: the rewards consumer is started on those N published events and timed until
   all are recorded in ``processed_events`` (events/s through the consumer).
3. **lag**: the relay and the consumer run while postings arrive at a target rate; the lag of
   each posting is ``rewards_ledger.created_at - journals.posted_at`` (both the database's
   clock: posting transaction start to rewards transaction start). Prints p50/p95/p99/max.

The platform it starts uses the tests' fast-disk settings (no fsync), like CI.

Results on the shared 2-CPU development machine (load average 1.5 to 5 from other work, so
read them as orders of magnitude; every component on the same two cores):

    run                          events   wall incl. start-up   first to last batch
    relay                        10000    5300-7500 events/s    6100-8400 events/s
    rewards consumer             10000    4200-7500 events/s    7400-11500 events/s
    lag, relay+consumer as tasks  6000 at 273/s: p50 37 ms, p95 76 ms, p99 102 ms, max 163 ms
    lag, relay+consumer as tasks  9000 at 210/s: p50 48 ms, p95 100 ms, p99 140 ms, max 227 ms
    lag, own processes            9000 at 137-178/s: p50 56-74 ms, p95 123-171 ms, p99 172-239 ms

The posting rate in the lag runs is what the ledger reached (target 300/s) with 8 posting
connections sharing the CPUs with PostgreSQL, Kafka, the relay and the consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from fintech_devstack import platform
from fintech_operator import config
from fintech_operator.events import kafka as kafka_admin
from fintech_operator.events import relay, schema
from fintech_operator.ledger import engine, migrate, model, rules
from fintech_operator.rewards import consumer

POSTINGS_MAX = 200_000
CARDS = 50


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Relay, rewards consumer and lag benchmark.")
    parser.add_argument("--events", type=int, default=5000, help="events for runs 1 and 2")
    parser.add_argument("--rate", type=int, default=300, help="postings per second in run 3")
    parser.add_argument("--seconds", type=int, default=20, help="duration of run 3")
    parser.add_argument("--concurrency", type=int, default=8, help="posting connections")
    parser.add_argument("--use-env", action="store_true", help="use DATABASE_URL and Kafka")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run 3 with the relay and consumer as tasks of this process, not as processes",
    )
    parser.add_argument(
        "--kafka-security",
        choices=("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL"),
        default="PLAINTEXT",
        help="the local broker's listener to use (SCRAM-SHA-512 for SASL); own platform only",
    )
    args = parser.parse_args()
    if not 0 < args.events <= POSTINGS_MAX or not 0 < args.rate * args.seconds <= POSTINGS_MAX:
        parser.error(f"at most {POSTINGS_MAX} postings per run")
    if not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be in 1..64")
    return args


@contextlib.contextmanager
def a_platform(use_env: bool, protocol: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(admin DSN, Kafka settings) of the environment's platform or of a fresh one."""
    if use_env:
        dsn = os.environ["DATABASE_URL"]
        kafka = {k: v for k, v in os.environ.items() if k.startswith(("KAFKA_", "FINTECH_KAFKA_"))}
        yield dsn.rsplit("/", 1)[0] + "/postgres", kafka
        return
    with platform.throwaway("bench-events-") as plat:
        yield plat.database_url_for("postgres"), plat.kafka_client_env(protocol)


def fresh_database(admin_dsn: str) -> str:
    name = f"bench_events_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    migrate.apply(dsn)
    return dsn


def settings_for(dsn: str, kafka: dict[str, str], **extra: str) -> config.Settings:
    return config.load(
        {
            "DATABASE_URL": dsn,
            **kafka,
            "FINTECH_TOPIC_PREFIX": f"b{uuid.uuid4().hex[:8]}.",
            "FINTECH_TOPIC_PARTITIONS": "3",
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def pool_of(dsn: str, size: int) -> AsyncIterator[AsyncConnectionPool[Any]]:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(dsn, min_size=1, max_size=size, open=False)
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


async def open_cards(pool: AsyncConnectionPool[Any]) -> list[str]:
    async with pool.connection() as conn:
        await engine.ensure_system_accounts(conn, "USD")
        for i in range(CARDS):
            await engine.open_card_account(conn, "bench", f"card-{i}", "USD")
    return [f"card-{i}" for i in range(CARDS)]


async def post_one(pool: AsyncConnectionPool[Any], card: str, amount: int) -> None:
    now = datetime.datetime.now(datetime.UTC)
    name = f"p-{uuid.uuid4().hex[:16]}"
    event = schema.PostingPosted(
        namespace="bench",
        name=name,
        card=card,
        posting_type="Purchase",
        amount_minor=amount,
        currency="USD",
        rewards_rate_bps=100,
        earn_on=["Purchase"],
        occurred_at=now,
        now=now,
    ).outbox()
    account = model.card_account_code("bench", card, "USD")
    await engine.post(
        pool,
        model.PostingRequest(
            idempotency_key=f"bench/{name}",
            kind=model.PostingKind.PURCHASE,
            lines=rules.lines_for(model.PostingKind.PURCHASE, account, amount, "USD"),
            occurred_at=now,
            events=(event,),
        ),
    )


async def post_many(
    pool: AsyncConnectionPool[Any], cards: list[str], count: int, workers: int
) -> float:
    """Post ``count`` purchases from ``workers`` connections; return postings per second."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def work() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            await post_one(pool, cards[i % len(cards)], 1_000 + i)

    started = time.monotonic()
    await asyncio.gather(*(work() for _ in range(workers)))
    return count / (time.monotonic() - started)


async def scalar(dsn: str, query: str) -> Any:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute(query)).fetchone()
        return None if row is None else row[0]


async def until(dsn: str, query: str, target: int, timeout_seconds: float = 600) -> float:
    """Seconds until ``query`` returns ``target`` (polled every 50 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        if int(await scalar(dsn, query)) >= target:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise TimeoutError(query)


@contextlib.asynccontextmanager
async def task_until_stopped(factory: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(factory(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def throughput(admin: str, kafka: dict[str, str], events: int, workers: int) -> None:
    dsn = fresh_database(admin)
    settings = settings_for(dsn, kafka)
    await kafka_admin.ensure_topics(settings)
    async with pool_of(dsn, workers + 2) as pool:
        cards = await open_cards(pool)
        rate = await post_many(pool, cards, events, workers)
        print(f"setup     {events} postings written at {rate:.0f}/s (relay stopped)")
        async with task_until_stopped(lambda stop: relay.run(settings, pool, stop)):
            seconds = await until(
                dsn, "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL", events
            )
        span = await scalar(
            dsn, "SELECT extract(epoch FROM max(published_at) - min(published_at)) FROM outbox"
        )
        print(
            f"relay     {events} events in {seconds:.2f}s = {events / seconds:.0f} events/s"
            f" (start-up included; first to last batch {float(span):.2f}s)"
        )
        group = f"bench-{uuid.uuid4().hex[:6]}"
        async with task_until_stopped(lambda stop: consumer.consume(settings, group, stop)):
            seconds = await until(dsn, "SELECT count(*) FROM processed_events", events)
        span = await scalar(
            dsn,
            "SELECT extract(epoch FROM max(processed_at) - min(processed_at))"
            " FROM processed_events",
        )
        steady = events / max(float(span), 1e-3)
        print(
            f"rewards   {events} events in {seconds:.2f}s = {events / seconds:.0f} events/s"
            f" (start-up and group join included); first to last batch {float(span):.2f}s"
            f" = {steady:.0f} events/s"
        )


@contextlib.contextmanager
def processes(settings: config.Settings, kafka: dict[str, str], group: str) -> Iterator[None]:
    """The relay and the rewards consumer as their own processes, as they run in production."""
    env = {
        **os.environ,
        **kafka,
        "DATABASE_URL": settings.database.url,
        "FINTECH_TOPIC_PREFIX": settings.topics.prefix,
        "FINTECH_LOG_LEVEL": "WARNING",
    }
    commands = (
        [sys.executable, "-m", "fintech_operator.events.relay"],
        [sys.executable, "-m", "fintech_operator", "rewards", "--group", group],
    )
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for cmd in commands
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


@contextlib.asynccontextmanager
async def in_process(
    settings: config.Settings, pool: AsyncConnectionPool[Any], group: str
) -> AsyncIterator[None]:
    """The relay and the rewards consumer as tasks of this event loop."""
    async with (
        task_until_stopped(lambda stop: relay.run(settings, pool, stop)),
        task_until_stopped(lambda stop: consumer.consume(settings, group, stop)),
    ):
        yield


async def lag(
    admin: str, kafka: dict[str, str], rate: int, duration: int, workers: int, tasks: bool
) -> None:
    dsn = fresh_database(admin)
    settings = settings_for(dsn, kafka)
    await kafka_admin.ensure_topics(settings)
    total = rate * duration
    async with pool_of(dsn, workers + 2) as pool:
        cards = await open_cards(pool)
        group = f"bench-{uuid.uuid4().hex[:6]}"
        async with contextlib.AsyncExitStack() as stack:
            if tasks:
                await stack.enter_async_context(in_process(settings, pool, group))
            else:
                stack.enter_context(processes(settings, kafka, group))
            await asyncio.sleep(5)  # Start-up and group join, outside the measurement.
            achieved = await paced(pool, cards, rate, total, workers)
            await until(dsn, "SELECT count(*) FROM processed_events", total)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        row = await (
            await conn.execute(
                """
                SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms), max(ms)
                  FROM (SELECT extract(epoch FROM r.created_at - j.posted_at) * 1000 AS ms
                          FROM rewards_ledger r JOIN journals j ON j.id = r.journal_id) lags
                """
            )
        ).fetchone()
    assert row is not None
    (p50, p95, p99), worst = row
    where = "as tasks of the bench process" if tasks else "in their own processes"
    print(
        f"lag       {total} postings at {achieved:.0f}/s (relay and consumer {where}):"
        f" posting -> points p50={p50:.0f}ms p95={p95:.0f}ms p99={p99:.0f}ms max={worst:.0f}ms"
    )


async def paced(
    pool: AsyncConnectionPool[Any], cards: list[str], rate: int, total: int, workers: int
) -> float:
    """Post ``total`` purchases at ``rate`` per second (as far as the ledger keeps up)."""
    started = time.monotonic()
    next_index = 0
    lock = asyncio.Lock()

    async def work() -> None:
        nonlocal next_index
        while True:
            async with lock:
                i = next_index
                next_index += 1
            if i >= total:
                return
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await post_one(pool, cards[i % len(cards)], 1_000 + i)

    await asyncio.gather(*(work() for _ in range(workers)))
    return total / (time.monotonic() - started)


def main() -> int:
    args = parse_args()
    with a_platform(args.use_env, args.kafka_security) as (admin, kafka):
        protocol = kafka.get("FINTECH_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} cpus,"
            f" kafka {kafka['KAFKA_BOOTSTRAP_SERVERS']} over {protocol}"
        )
        asyncio.run(throughput(admin, kafka, args.events, args.concurrency))
        asyncio.run(lag(admin, kafka, args.rate, args.seconds, args.concurrency, args.in_process))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
