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

When the server is a process of this machine (``--own-platform``, or a local ``DATABASE_URL``),
each line also gives the server's CPU per posting: every PostgreSQL process's CPU over the run,
from ``/proc`` (``server_cpu.py``), divided by the postings.

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

import server_cpu
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
    server_cpu_seconds: float | None = None

    def line(self) -> str:
        q = statistics.quantiles(self.latencies_ms, n=100)
        rate = self.postings / self.seconds
        cpu = (
            ""
            if self.server_cpu_seconds is None
            else f"  server CPU {self.server_cpu_seconds / self.postings * 1e6:5.0f}us/posting"
        )
        return (
            f"{self.name:<24} conns={self.connections:<3} postings={self.postings:<6}"
            f" {rate:7.0f}/s  p50={q[49]:6.2f}ms  p99={q[98]:6.2f}ms{cpu}"
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


@dataclass(frozen=True)
class Server:
    """Where the postings go and how: the DSN, the spend guard, the postmaster's pid (when
    the server is a process of this machine, for its CPU)."""

    dsn: str
    guard: bool
    postmaster: int | None


async def measure(
    server: Server, name: str, cards: list[str], connections: int, total: int
) -> Result:
    dsn, guard, postmaster = server.dsn, server.guard, server.postmaster
    cpu_before = server_cpu.cpu_seconds(postmaster) if postmaster else None
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
    used = None
    if postmaster and cpu_before is not None:
        used = server_cpu.cpu_seconds(postmaster) - cpu_before
    return Result(name, connections, per_worker * connections, seconds, latencies, used)


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
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT pg_backend_pid()")
            row = await cur.fetchone()
    postmaster = server_cpu.postmaster_of_backend(int(row[0])) if row else None
    print(f"ledger bench {run_id}: {args.postings} purchases per run, guard={args.guard}")
    server, total = Server(dsn, args.guard, postmaster), args.postings
    print((await measure(server, "single connection", cards[:1], 1, total)).line())
    for n in args.concurrency:
        print((await measure(server, "one card per connection", cards[:n], n, total)).line())
        print((await measure(server, "all on one card", cards[:1], n, total)).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
