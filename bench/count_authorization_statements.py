"""Statements PostgreSQL executes per authorization request, by kind (issue 13).

    DATABASE_URL=postgresql://postgres@127.0.0.1:55413/postgres \\
        .venv/bin/python bench/count_authorization_statements.py --requests 200

The server must load pg_stat_statements with ``pg_stat_statements.track=all`` (statements
inside functions and triggers are counted too): ``-c shared_preload_libraries=pg_stat_statements
-c pg_stat_statements.track=all``. It creates a database, applies the migrations of the code on
``PYTHONPATH``, seeds the bench's 1,000 cards (bench_authorizations_store.seed_cards: a Daily
limit, no risk rules), and for each request kind runs ``--requests`` requests through
``PostgresStore`` and prints the nested statements per request (pg_stat_statements rows with
``toplevel = false``: every SPI statement, including those of triggers), and the heaviest ones.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from collections.abc import Awaitable, Callable

import psycopg
from bench_authorizations_store import authorize, create_db, drop_db, seed_cards

from fintech_operator.authorizations import contract
from fintech_operator.authorizations.store import PostgresStore
from fintech_operator.ledger import migrate

REQUESTS_MAX = 10_000


async def count(
    url: str, label: str, requests: int, step: Callable[[int], Awaitable[object]]
) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute("SELECT pg_stat_statements_reset()")
    for i in range(requests):
        await step(i)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements"
            " WHERE NOT toplevel AND dbid = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
        )
        row = await cur.fetchone()
        total = int(row[0]) if row else 0
        print(f"{label:<34} {total / requests:6.2f} nested statements per request")
        cur = await admin.execute(
            "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 110)"
            " FROM pg_stat_statements WHERE NOT toplevel AND dbid = (SELECT oid FROM"
            " pg_database WHERE datname = current_database()) ORDER BY calls DESC, query"
        )
        for calls, query in await cur.fetchall():
            print(f"    {calls / requests:5.2f}  {query}")


async def run(url: str, requests: int) -> None:
    store = PostgresStore()
    tokens = [f"tok_bench_{i}" for i in range(requests)]
    ids: list[str] = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:

        async def approve(i: int) -> None:
            answer = await store.authorize(conn, authorize(tokens[i]))
            ids.append(answer.body.split(b'"authorization": "')[1].split(b'"')[0].decode())

        async def capture(i: int) -> None:
            req = contract.CaptureRequest(id=f"c{uuid.uuid4().hex}", amount=900, final=True)
            await store.capture(conn, ids[i], req)

        async def void(i: int) -> None:
            await store.void(conn, ids[i], contract.VoidRequest(id=f"v{uuid.uuid4().hex}"))

        async def increment(i: int) -> None:
            req = contract.IncrementRequest(id=f"i{uuid.uuid4().hex}", amount=100)
            await store.increment(conn, ids[i], req)

        async def replay(i: int) -> None:
            await store.void(conn, ids[i], contract.VoidRequest(id=f"v{uuid.uuid4().hex}"))

        await count(url, "authorize (approved)", requests, approve)
        await count(url, "increment (approved)", requests, increment)
        await count(url, "capture (final, of a pending one)", requests, capture)
        ids.clear()
        await count(url, "authorize (approved, again)", requests, approve)
        await count(url, "void (of a pending one)", requests, void)
        await count(url, "void (of a voided one: 409)", requests, replay)
        await count(url, "capture (of a voided one: 409)", requests, capture)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await admin.execute(
                "INSERT INTO authorization_risk_rules (namespace, rule, policy, codes)"
                " VALUES ('bench', 'BlockedMcc', 'bench/p', '{7995}')"
            )
        ids.clear()
        await count(url, "authorize (approved, risk rules)", requests, approve)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="requests of each kind")
    args = parser.parse_args()
    if not 1 <= args.requests <= min(REQUESTS_MAX, 1_000):
        parser.error("--requests must be between 1 and 1000 (one card each)")
    base = os.environ.get("DATABASE_URL")
    if not base:
        print("set DATABASE_URL to a server that loads pg_stat_statements", file=sys.stderr)
        return 2
    name = f"count_authz_{uuid.uuid4().hex[:6]}"
    try:
        url = create_db(base, name)
        migrate.apply(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        seed_cards(url)
        asyncio.run(run(url, args.requests))
    finally:
        drop_db(base, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
