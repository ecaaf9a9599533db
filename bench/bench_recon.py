"""Reconciliation of a large settlement file against its anchor, COPY of the same file.

    DATABASE_URL=postgresql://user@127.0.0.1:5432/bench .venv/bin/python bench/bench_recon.py
    .venv/bin/python bench/bench_recon.py --own-platform        # a private throwaway platform

Seeds ``--records`` purchases (default 1,000,000) straight into the ledger's tables, 1,000 per
transaction, through every trigger of the schema (one ``engine.post`` each would take hours),
writes the matching settlement CSV to a temporary file with three planted discrepancies, serves
it from a loopback HTTP server, and then, ``--runs`` times in turn on the same PostgreSQL:

- the anchor: ``COPY ... FROM STDIN (FORMAT csv, HEADER)`` of the same file, read from disk in
  1 MiB pieces, into an unlogged table of the four typed columns (what loading the file costs
  PostgreSQL at the least);
- the product: the Settlement check exactly as the operator runs it (``store.execute``): the file
  streamed from the URL, loaded, validated, matched, findings and completion committed in one
  transaction. The seconds of each of its steps (prepare, load, settlement, checks and
  findings, commit) are printed under each pair.

Anchor and product alternate, so a burst of load from elsewhere on the machine hits both; the
line ``steady`` gives the medians and their ratio (product / anchor, the goal is <= 3), and the
records per second of the median product run. The process's peak resident memory is printed
before and after the product runs. Results and their conditions go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import os
import random
import resource
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from fintech_devstack import platform
from fintech_operator import api
from fintech_operator.ledger import migrate, model
from fintech_operator.recon import plans, sources, store

RECORDS_MAX = 10_000_000
BATCH = 1000

_SEED = """
WITH j AS (
    INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at, namespace)
    SELECT %(prefix)s || g, repeat('0', 64), 'Purchase', %(prefix)s || g,
           %(t0)s::timestamptz + g * interval '10 ms', 'bench'
      FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS g
    RETURNING id, reference
)
INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)
SELECT j.id, x.account_id, x.direction, 1000 + g %% 997, 'USD'
  FROM j
  CROSS JOIN LATERAL (SELECT substr(j.reference, length(%(prefix)s) + 1)::bigint AS g) n
  CROSS JOIN (VALUES (%(card)s::bigint, 'debit'), (%(settlement)s::bigint, 'credit'))
       AS x(account_id, direction)
"""


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def open_accounts(conn: psycopg.Connection[Any], prefix: str) -> tuple[int, int]:
    """A card account and the USD network settlement account, as ids."""
    card = model.card_account_code("bench", prefix.rstrip("-"), "USD")
    settlement = model.system_account_code(model.SystemAccount.NETWORK_SETTLEMENT, "USD")
    for code, kind, normal in ((card, "card", "debit"), (settlement, "system", "credit")):
        conn.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency) VALUES (%s, %s, %s, 'USD')"
            " ON CONFLICT (code) DO NOTHING",
            (code, kind, normal),
        )
    ids = dict(
        conn.execute(
            "SELECT code, id FROM accounts WHERE code IN (%s, %s)", (card, settlement)
        ).fetchall()
    )
    return int(ids[card]), int(ids[settlement])


def seed(dsn: str, prefix: str, t0: datetime.datetime, count: int) -> float:
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        card, settlement = open_accounts(conn, prefix)
        for low in range(1, count + 1, BATCH):
            with conn.transaction():
                conn.execute(
                    _SEED,
                    {
                        "prefix": prefix,
                        "t0": t0,
                        "low": low,
                        "high": min(low + BATCH - 1, count),
                        "card": card,
                        "settlement": settlement,
                    },
                )
            if low % 100_000 == 1 and low > 1:
                print(f"  seeded {low - 1} journals", flush=True)
    return time.monotonic() - started


def write_file(path: Path, prefix: str, t0: datetime.datetime, count: int) -> None:
    """Every journal's record except number 7; number 9 is off by 50; one unknown reference."""
    with path.open("w") as out:
        out.write("reference,amount,currency,occurredAt\n")
        for n in range(1, count + 1):
            if n == 7:
                continue
            amount = 1000 + n % 997 + (50 if n == 9 else 0)
            moment = t0 + datetime.timedelta(milliseconds=10 * n)
            out.write(f"{prefix}{n},{amount},USD,{moment.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}\n")
        out.write(f"{prefix}unknown,5,USD,{t0.strftime('%Y-%m-%dT%H:%M:%SZ')}\n")


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    handler = type(
        "Files",
        (http.server.SimpleHTTPRequestHandler,),
        {"log_message": lambda *_: None},
    )
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


ANCHOR_TABLE = "bench_recon_anchor"


def anchor(dsn: str, path: Path) -> float:
    """Seconds to COPY the file into an unlogged table of the same four typed columns."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {ANCHOR_TABLE}")
        conn.execute(
            f"CREATE UNLOGGED TABLE {ANCHOR_TABLE} (reference text NOT NULL,"
            " amount_minor bigint NOT NULL, currency text NOT NULL,"
            " occurred_at timestamptz NOT NULL)"
        )
        started = time.monotonic()
        with (
            conn.cursor().copy(
                f"COPY {ANCHOR_TABLE} (reference, amount_minor, currency, occurred_at)"
                " FROM STDIN (FORMAT csv, HEADER true)"
            ) as copy,
            path.open("rb") as source,
        ):
            while piece := source.read(1 << 20):
                copy.write(piece)
        seconds = time.monotonic() - started
        conn.execute(f"DROP TABLE {ANCHOR_TABLE}")
    return seconds


def product(dsn: str, url: str, window: tuple[datetime.datetime, datetime.datetime]) -> Any:
    """One reconciliation run of the file at ``url``, as the operator runs it; (outcome,
    seconds, seconds per phase of the run)."""
    spec = api.ReconciliationRunSpec.model_validate(
        {
            "source": {"http": {"url": url}},
            "checks": ["Settlement"],
            "window": {"start": window[0].isoformat(), "end": window[1].isoformat()},
            "matching": {"amountToleranceMinor": 0, "timeToleranceSeconds": 60},
        }
    )
    tag = uuid.uuid4().hex[:8]
    phases: dict[str, float] = {}
    started = time.monotonic()
    outcome = store.execute_timed(
        dsn,
        store.RunKey(str(uuid.uuid4()), "bench", f"bench-{tag}"),
        plans.plan_of(spec),
        sources.opener(spec, "bench", sources.Limits(records_max=RECORDS_MAX + 1)),
        phases,
    )
    return outcome, time.monotonic() - started, phases


def check(outcome: Any, count: int) -> None:
    summary = outcome.summary or {}
    if outcome.state != "succeeded" or summary.get("matched") != count - 2:
        raise SystemExit(f"the run did not find what was planted: {outcome}")
    if summary.get("exceptions") != 3:
        raise SystemExit(f"expected 3 exceptions: {summary}")


def bench(dsn: str, count: int, runs: int) -> None:
    migrate.apply(dsn)
    run_tag = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_tag}-"
    # A window of its own far in the future, so earlier bench data never takes part.
    t0 = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        days=random.randrange(100_000)  # noqa: S311 - spreading windows, not security
    )
    window = (t0, t0 + datetime.timedelta(milliseconds=10 * (count + 1), days=1))
    print(f"seeding {count} journals under {prefix}*", flush=True)
    seed_seconds = seed(dsn, prefix, t0, count)
    folder = Path(tempfile.mkdtemp(prefix="bench-recon-file-"))
    anchors: list[float] = []
    products: list[float] = []
    try:
        path = folder / "settlement.csv"
        write_file(path, prefix, t0, count)
        size_mib = path.stat().st_size / 2**20
        print(f"records={count} file {size_mib:.0f} MiB; seed {seed_seconds:.1f}s", flush=True)
        with serve(folder) as base:
            before = rss_mib()
            for run in range(1, runs + 1):
                anchors.append(anchor(dsn, path))
                outcome, seconds, phases = product(dsn, f"{base}/settlement.csv", window)
                check(outcome, count)
                products.append(seconds)
                print(
                    f"run {run}: anchor COPY {anchors[-1]:.2f}s; reconcile {seconds:.2f}s"
                    f" ({count / seconds:.0f} records/s); ratio {seconds / anchors[-1]:.2f}"
                    f"; load average {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                split = ", ".join(f"{name} {value:.2f}s" for name, value in phases.items())
                print(f"  phases: {split}", flush=True)
            after = rss_mib()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"outcome: {outcome.state}; {outcome.summary}")
    anchor_s, product_s = statistics.median(anchors), statistics.median(products)
    print(
        f"steady (median of {runs}): anchor COPY {anchor_s:.2f}s; reconcile {product_s:.2f}s"
        f" ({count / product_s:.0f} records/s); ratio {product_s / anchor_s:.2f} (goal <= 3);"
        f" peak RSS {before:.0f} -> {after:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records and postings")
    parser.add_argument("--runs", type=int, default=3, help="anchor + product pairs")
    parser.add_argument("--own-platform", action="store_true", help="start a private platform")
    args = parser.parse_args()
    if not 0 < args.records <= RECORDS_MAX:
        parser.error(f"--records must be in 1..{RECORDS_MAX}")
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be in 1..20")
    if args.own_platform:
        with platform.throwaway("bench-recon-") as plat:
            bench(plat.database_url, args.records, args.runs)
        return
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        parser.error("set DATABASE_URL or pass --own-platform")
    bench(dsn, args.records, args.runs)


if __name__ == "__main__":
    main()
