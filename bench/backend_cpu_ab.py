"""One backend's CPU per operation on two schemas, A (migrations below ``--below``) and B (all),
alternated in rounds (issue 13: what a migration saves per capture and per Posting).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/backend_cpu_ab.py --below 66 --rounds 4 --ops 1500

A change not yet shipped is measured with ``--candidate FILE.sql``: A has every shipped
migration, B the same plus FILE applied as the next migration (so an idea is tried without
writing it into the package's migrations folder)::

    DATABASE_URL=... .venv/bin/python bench/backend_cpu_ab.py --candidate /tmp/idea.sql

It creates two databases, ``ab_a_<run>`` and ``ab_b_<run>``, on the server of ``DATABASE_URL``
(which must be a process of this machine: the CPU is read from ``/proc``), seeds each with the
store benchmark's 1,000 cards (bench_authorizations_store.seed_cards), warms both up (300 of
each operation, then ANALYZE) and then, per round, on ONE connection per schema, runs
``--ops`` of each operation below on A and on B in turn (one on A, one on B; A first on even
turns, B first on odd ones), so that both schemas meet the same load of a shared machine:

* ``pair``: an authorization then its final capture (the SQL functions the gateway's store
  calls, as bench_authorizations_store.py's pgbench scripts do);
* ``posting``: a Posting-style Purchase as the ledger engine writes it in one transaction: the
  card account locked, the journal (with a reference, so the settlement reference moves), its
  two entries (one executemany, as ``engine._insert_entries``), one outbox event.

Each operation reads utime + stime of its connection's backend (``/proc/<pid>/stat``, clock
ticks of 10 ms, exact only as a sum over many operations) and its scheduler run time
(``/proc/<pid>/schedstat``, nanoseconds) before and after: the server CPU of exactly that
work, which a busy shared machine distorts far less than a wall clock. Only one connection
runs at a time. A round's line per schema is its CPU per operation; ``B - A`` per round
compares operations run side by side.
The databases are dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

import bench_authorizations_store
import psycopg
from psycopg.types.json import Jsonb

from fintech_operator.ledger import migrate

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
WARMUP_OPS = 300


def backend_cpu(pid: int) -> tuple[float, float]:
    """The backend's CPU seconds so far: utime + stime (``/proc/<pid>/stat``, clock ticks) and
    the scheduler's run time (``/proc/<pid>/schedstat``, nanoseconds: the same time, finer)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    run_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return ticks / _TICKS_PER_SECOND, run_ns / 1e9


def pair(conn: psycopg.Connection[Any], rng: random.Random) -> None:
    auth = f"ab-{uuid.uuid4().hex}"
    token = f"tok_bench_{rng.randrange(bench_authorizations_store.CARDS)}"
    conn.execute(
        "SELECT * FROM authorization_authorize(%s, %s, 1000, 'USD', 'Bench Cafe', '5812', 'US')",
        (auth, token),
    )
    conn.execute("SELECT * FROM authorization_capture(%s, %s, 900, true)", (auth, f"c{auth}"))


def posting(conn: psycopg.Connection[Any], rng: random.Random, settlement: int) -> None:
    card = rng.randrange(bench_authorizations_store.CARDS)
    key = uuid.uuid4().hex
    with conn.transaction(), conn.cursor() as cur:
        row = cur.execute(
            "SELECT id FROM accounts WHERE code = %s FOR NO KEY UPDATE",
            (f"card:bench/c{card}:USD",),
        ).fetchone()
        assert row is not None
        account = int(row[0])
        journal = cur.execute(
            "INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at,"
            " reverses_journal_id, metadata, namespace)"
            " VALUES (%s, %s, %s, %s, coalesce(%s::timestamptz, now()), %s, %s, %s)"
            " ON CONFLICT (namespace, idempotency_key) DO NOTHING RETURNING id",
            (f"bench/{key}", "0" * 64, "Purchase", f"ref-{key}", None, None,
             Jsonb({"card": f"bench/c{card}"}), "bench"),
        ).fetchone()  # fmt: skip
        assert journal is not None
        cur.executemany(
            "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
            " VALUES (%s, %s, %s, %s, %s)",
            sorted([(journal[0], account, "debit", 1250, "USD"),
                    (journal[0], settlement, "credit", 1250, "USD")]),
        )  # fmt: skip
        cur.execute(
            "INSERT INTO outbox (event_id, topic, key, payload, headers, journal_id)"
            " SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::jsonb[],"
            " %s::jsonb[], %s::bigint[]) ON CONFLICT (event_id) DO NOTHING",
            ([uuid.uuid4()], ["postings"], [f"bench/c{card}"], [Jsonb({"amount": 1250})],
             [Jsonb({"type": "posting.posted"})], [journal[0]]),
        )  # fmt: skip


class Schema:
    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        row = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self.pid = int(row[0])
        row = self.conn.execute(
            "SELECT id FROM accounts WHERE code = 'system:network_settlement:USD'"
        ).fetchone()
        assert row is not None
        self.settlement = int(row[0])
        self.rng = random.Random(7)  # noqa: S311 - picks cards, not secrets
        self.results: dict[str, list[tuple[float, float]]] = {"pair": [], "posting": []}

    def one(self, what: str) -> tuple[float, float]:
        """One operation ``what``; the backend's CPU seconds it took (utime + stime, and the
        scheduler's run time)."""
        ticks_before, run_before = backend_cpu(self.pid)
        if what == "pair":
            pair(self.conn, self.rng)
        else:
            posting(self.conn, self.rng, self.settlement)
        ticks_after, run_after = backend_cpu(self.pid)
        return ticks_after - ticks_before, run_after - run_before


def block(schemas: dict[str, Schema], what: str, ops: int) -> dict[str, tuple[float, float]]:
    """``ops`` operations ``what`` on each schema, one on A and one on B in turn (A first on
    even turns, B first on odd ones), so both meet the same machine load; microseconds of
    backend CPU per operation per schema, from utime + stime and from schedstat."""
    totals = {side: [0.0, 0.0] for side in schemas}
    for i in range(ops):
        for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
            ticks, run = schemas[side].one(what)
            totals[side][0] += ticks
            totals[side][1] += run
    return {side: (t[0] / ops * 1e6, t[1] / ops * 1e6) for side, t in totals.items()}


def parse_sides() -> tuple[argparse.Namespace, dict[str, list[migrate.Migration]], str]:
    """The arguments, the migrations of schemas A and B, and how A is named in the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--below", type=int, help="A: the shipped migrations below this")
    which.add_argument(
        "--candidate", type=Path, help="B: every shipped migration, then this SQL file"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--ops", type=int, default=1500)
    args = parser.parse_args()
    if not 1 <= args.rounds <= 20 or not 100 <= args.ops <= 20_000:
        parser.error("--rounds must be in 1..20 and --ops in 100..20000")
    shipped = migrate.discover()
    if args.candidate is None:
        below = [m for m in shipped if m.version < args.below]
        return args, {"A": below, "B": shipped}, f"A (below {args.below})"
    if not args.candidate.is_file():
        parser.error(f"--candidate {args.candidate}: no such file")
    sql = args.candidate.read_text(encoding="utf-8")
    candidate = migrate.Migration(shipped[-1].version + 1, "candidate", sql)
    return args, {"A": shipped, "B": [*shipped, candidate]}, "A (shipped)"


def report(schemas: dict[str, Schema], a_label: str) -> None:
    """Per operation and CPU source: B - A of each round and both sides' medians."""
    for what in ("pair", "posting"):
        for i, source in enumerate(("utime+stime", "schedstat")):
            a = [x[i] for x in schemas["A"].results[what]]
            b = [x[i] for x in schemas["B"].results[what]]
            paired = [y - x for x, y in zip(a, b, strict=True)]
            print(
                f"{what:<7} {source:<11} B - A per round: "
                f"{', '.join(f'{d:+.0f}' for d in paired)} us/op"
                f" (median {statistics.median(paired):+.0f})"
            )
            print(
                f"{what:<7} {source:<11} {a_label}: "
                f"{', '.join(f'{x:.0f}' for x in a)} (median {statistics.median(a):.0f});"
                f" B: {', '.join(f'{x:.0f}' for x in b)}"
                f" (median {statistics.median(b):.0f});"
                f" B - A {statistics.median(b) - statistics.median(a):+.0f} us/op"
            )


def main() -> int:
    args, sides, a_label = parse_sides()
    base = os.environ["DATABASE_URL"]
    run = uuid.uuid4().hex[:6]
    names = {"A": f"ab_a_{run}", "B": f"ab_b_{run}"}
    try:
        schemas = {}
        for side, name in names.items():
            url = bench_authorizations_store.create_db(base, name)
            migrate.apply(url, sides[side])
            bench_authorizations_store.seed_cards(url)
            schemas[side] = Schema(side, url)
        for what in ("pair", "posting"):
            block(schemas, what, WARMUP_OPS)
        for schema in schemas.values():
            schema.conn.execute("ANALYZE")
        for r in range(args.rounds):
            for what in ("pair", "posting"):
                measured = block(schemas, what, args.ops)
                for side, (ticks_us, run_us) in measured.items():
                    schemas[side].results[what].append((ticks_us, run_us))
                    print(
                        f"round {r + 1} {side} {what:<7} utime+stime {ticks_us:6.0f} us/op,"
                        f" schedstat {run_us:6.0f} us/op",
                        flush=True,
                    )
        report(schemas, a_label)
        for schema in schemas.values():
            schema.conn.close()
    finally:
        for name in names.values():
            bench_authorizations_store.drop_db(base, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
