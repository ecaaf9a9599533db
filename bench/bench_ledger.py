"""Ledger posting throughput against a real PostgreSQL (not run by the tests).

    DATABASE_URL=postgresql://user@127.0.0.1:5432/bench .venv/bin/python bench/bench_ledger.py

Applies the migrations to ``DATABASE_URL`` (use a database made for benchmarks: it writes
cards under a fresh ``bench-<run>`` namespace and never deletes them), then posts purchases:
first through one connection, then with N concurrent connections, each on its own card, and
finally N connections on ONE card (the worst case: every posting waits for the card's lock).
Every purchase also credits the currency's network-settlement account, a hot row that all
postings share. Prints postings per second and latency percentiles per run.

Measured on the 2-core development machine (PostgreSQL 15, fsync on, loopback, other test
suites running alongside), 2000 purchases per run, each with one outbox event:

    single connection        conns=1    332/s  p50= 2.81ms  p99=  6.58ms
    one card per connection  conns=4    333/s  p50=11.41ms  p99= 27.45ms
    all on one card          conns=4    297/s  p50=12.41ms  p99= 25.16ms
    one card per connection  conns=16   366/s  p50=28.82ms  p99=204.46ms
    all on one card          conns=16   295/s  p50=52.44ms  p99=112.09ms
    single connection, Daily guard      225/s  p50= 4.39ms  p99=  7.65ms

Throughput does not grow with connections here because this one asyncio process is CPU-bound
on a machine whose two cores it shares with PostgreSQL; each posting is about ten round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from fintech_devstack import platform
from fintech_operator.ledger import engine, migrate, model, rules

POSTINGS_MAX = 100_000  # Bounds a run whatever the arguments say.
CONCURRENCY_MAX = 64
AMOUNT_MINOR = 1250


@dataclass(frozen=True)
class Result:
    name: str
    connections: int
    postings: int
    seconds: float
    latencies_ms: list[float]

    def line(self) -> str:
        q = statistics.quantiles(self.latencies_ms, n=100)
        rate = self.postings / self.seconds
        return (
            f"{self.name:<24} conns={self.connections:<3} postings={self.postings:<6}"
            f" {rate:7.0f}/s  p50={q[49]:6.2f}ms  p99={q[98]:6.2f}ms"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Ledger posting throughput.")
    parser.add_argument("--postings", type=int, default=2000, help="postings per run")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[4, 16], help="connections per run"
    )
    parser.add_argument("--guard", action="store_true", help="add a Daily spend guard")
    parser.add_argument("--own-platform", action="store_true", help="start a private platform")
    args = parser.parse_args()
    if not 0 < args.postings <= POSTINGS_MAX:
        parser.error(f"--postings must be in 1..{POSTINGS_MAX}")
    if not all(0 < n <= CONCURRENCY_MAX for n in args.concurrency):
        parser.error(f"--concurrency values must be in 1..{CONCURRENCY_MAX}")
    return args


async def open_cards(pool: AsyncConnectionPool[Any], run_id: str, count: int) -> list[str]:
    async with pool.connection() as conn:
        await engine.ensure_system_accounts(conn, "USD")
        return [
            (await engine.open_card_account(conn, f"bench-{run_id}", f"card-{i}", "USD")).code
            for i in range(count)
        ]


def purchase(card: str, guard: bool) -> model.PostingRequest:
    now = datetime.now(UTC)
    return model.PostingRequest(
        idempotency_key=f"bench/{uuid.uuid4()}",
        kind=model.PostingKind.PURCHASE,
        lines=rules.lines_for(model.PostingKind.PURCHASE, card, AMOUNT_MINOR, "USD"),
        occurred_at=now,
        reference="bench",
        events=(model.OutboxEvent(uuid.uuid4(), "bench", card, {"amountMinor": AMOUNT_MINOR}),),
        guard=model.SpendGuard(card, 10**15, model.SpendInterval.DAILY, now) if guard else None,
    )


async def worker(
    pool: AsyncConnectionPool[Any], card: str, count: int, guard: bool, out: list[float]
) -> None:
    for _ in range(count):
        started = time.perf_counter()
        await engine.post(pool, purchase(card, guard))
        out.append((time.perf_counter() - started) * 1000)


async def measure(
    dsn: str, name: str, cards: list[str], connections: int, total: int, guard: bool
) -> Result:
    async with AsyncConnectionPool(
        dsn, min_size=connections, max_size=connections, open=False, timeout=30
    ) as pool:
        await pool.wait(timeout=30)
        latencies: list[float] = []
        per_worker = max(1, total // connections)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                worker(pool, cards[i % len(cards)], per_worker, guard, latencies)
                for i in range(connections)
            )
        )
        seconds = time.perf_counter() - started
    return Result(name, connections, per_worker * connections, seconds, latencies)


def main() -> int:
    args = parse_args()
    if args.own_platform:
        with platform.throwaway("bench-ledger-") as plat:
            return asyncio.run(run(args, plat.database_url))
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        print("set DATABASE_URL to a PostgreSQL DSN for benchmarks, or --own-platform")
        return 2
    return asyncio.run(run(args, dsn))


async def run(args: argparse.Namespace, dsn: str) -> int:
    await migrate.apply_async(dsn)
    run_id = uuid.uuid4().hex[:8]
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
        cards = await open_cards(pool, run_id, max(args.concurrency))
    print(f"ledger bench {run_id}: {args.postings} purchases per run, guard={args.guard}")
    total, guard = args.postings, args.guard
    print((await measure(dsn, "single connection", cards[:1], 1, total, guard)).line())
    for n in args.concurrency:
        print((await measure(dsn, "one card per connection", cards[:n], n, total, guard)).line())
        print((await measure(dsn, "all on one card", cards[:1], n, total, guard)).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
