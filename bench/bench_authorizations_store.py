"""The authorization store alone against pgbench's TPC-B on the same PostgreSQL (issue 13).

    DATABASE_URL=postgresql://user@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/bench_authorizations_store.py --clients 4 8 --rounds 5 --seconds 10
    .venv/bin/python bench/bench_authorizations_store.py --own-platform --history 30

For each client count it runs ``--rounds`` rounds (default 5), each of these phases one after
another on the same server, so that every ratio compares phases seconds apart:

1. ``store``: that many asyncio clients in ``--processes`` Python processes (default 2; see
   PROCESSES below) on uvloop (the gateway's event loop), each client on its own autocommit
   connection, calling ``PostgresStore`` in a closed loop on 1,000 cards: a mix of about 70%
   authorizations, 25% captures (final, of an authorization the client holds) and 5% voids.
   Each call builds its request model as the gateway does. This is the gateway's own path
   minus HTTP.
2. ``sql``: pgbench with the same client count running the statements the store sends, in
   the same mix (authorize; authorize then a final capture; authorize then a void) on random
   cards: the ledger's work alone, no Python, counted in statements per second.
3. ``tpcb``: pgbench's built-in TPC-B-like script with the same client count (scale = client
   count, so clients do not all queue on one branch row), prepared statements like the store.

Then, once per client count, ``cpu``: when the server is a process of this machine
(``--own-platform``, or a local ``DATABASE_URL``), the server's CPU per operation of phases 1
and 2 (every PostgreSQL process, from ``/proc``: see ``server_cpu.py``), the client's own CPU
per store operation (``getrusage``), and two more pgbench runs with the same clients:
authorizations alone, and an authorization then its final capture; their difference is the
server's CPU per capture. The same two runs give the ``kinds`` line: each kind's own rate
against the rounds' median TPC-B (a hold alone, and a capture alone, derived from the pairs).

The ``ratio`` line gives the MEDIAN over the rounds of store / tpcb and sql / tpcb, with every
round's value: on a shared 2-core machine one phase can meet an autovacuum or a checkpoint that
the next one does not, and a single pair of phases moved the ratio by 0.15 between runs minutes
apart (bench/RESULTS.md).

With ``--history N`` every card first gets N Purchase journals posted today (as if it had been
used N times this day), so a Daily limit's spend window has something to count: the running
windows of migration 0054 read one row however long that history is.

FRESH STATE: each client count gets a new ledger database (migrated, seeded, warmed up), as it
gets new TPC-B tables (``pgbench -i``). Before, one ledger served every client count, so the
8-client rounds met a ledger grown by the 4-client rounds (about 200,000 operations more, the
outbox's unpublished rows among them: no relay runs here) and autovacuum working on it, while
TPC-B started afresh: 0.48 at 8 clients after the 4-client rounds, 0.56 and 0.61 with 8 clients
alone, the same code, minutes apart (bench/RESULTS.md, "Each client count on a fresh ledger").

WARM-UP: before each client count's rounds, the store mix runs for ``--warmup-seconds``
(default 5) with that many clients and then ``ANALYZE``, so that every run measures a ledger in
use, as pgbench's initialisation leaves its own tables analyzed. Without it the first run met
the statistics of empty ledger tables (the seeding analyzes them before the first journal):
plpgsql's cached plans made for empty tables cost about 30% more server CPU per operation
(1,625 against 1,229 us, same server, same mix, before and after one ANALYZE) until
autovacuum's next analyze replaced them.

PROCESSES: the store's clients run in ``--processes`` processes (default 2), each on its own
event loop with its share of the connections, started together: the chart runs the gateway
as 2 replicas (and ``--workers`` processes each), and pgbench runs its clients on 2 threads
(``-j 2``). With one process, that process is one runnable task among the server's 8 busy
backends on 2 cores and feeds all 8 connections: under other load on the machine it was
descheduled with all of them waiting (2 processes did 20-30% more then). On a quiet machine
the medians were close (8 clients: 0.44 with 2, 0.41 with 1; 4 clients: 0.49 both), and each
process's event loop then serves fewer connections per turn, so the client's CPU per operation
is higher with 2 (bench/RESULTS.md, "One call per table's row rules"). ``--processes 1`` is
the earlier bench.

With ``--own-platform`` it starts a private platform (PostgreSQL with fsync on) and stops it
after. It creates two databases, ``bench_authz_<run>`` and ``bench_tpcb_<run>``, and drops
them at the end. Results are printed one line per run; copy them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
import server_cpu
import uvloop
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fintech_devstack import platform
from fintech_operator.authorizations import contract
from fintech_operator.authorizations.store import PostgresStore
from fintech_operator.ledger import migrate

CARDS = 1_000
CLIENTS_MAX = 64
SECONDS_MAX = 600
ROUNDS_MAX = 20
PROCESSES_MAX = 16
HISTORY_MAX = 1_000
PGBENCH = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"


@dataclass
class Tally:
    ops: int = 0
    authorizations: int = 0
    approved: int = 0
    latencies_ms: list[float] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seconds", type=int, default=10, help="of each phase of a round")
    parser.add_argument("--rounds", type=int, default=5, help="store, sql, tpcb rounds")
    parser.add_argument("--history", type=int, default=0, help="Purchases per card before")
    parser.add_argument(
        "--processes", type=int, default=2,
        help="store processes sharing the clients (see PROCESSES in the docstring)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-seconds", type=int, default=5,
        help="store mix before the runs, then ANALYZE (0: none); see WARM-UP in the docstring",
    )  # fmt: skip
    parser.add_argument("--own-platform", action="store_true", help="start a private platform")
    args = parser.parse_args()
    if not 0 <= args.history <= HISTORY_MAX:
        parser.error(f"--history must be in 0..{HISTORY_MAX}")
    if not all(0 < n <= CLIENTS_MAX for n in args.clients):
        parser.error(f"--clients must be in 1..{CLIENTS_MAX}")
    if not 0 < args.processes <= PROCESSES_MAX:
        parser.error(f"--processes must be in 1..{PROCESSES_MAX}")
    if not 0 < args.rounds <= ROUNDS_MAX:
        parser.error(f"--rounds must be in 1..{ROUNDS_MAX}")
    if not 0 < args.seconds <= SECONDS_MAX:
        parser.error(f"--seconds must be in 1..{SECONDS_MAX}")
    if not 0 <= args.warmup_seconds <= SECONDS_MAX:
        parser.error(f"--warmup-seconds must be in 0..{SECONDS_MAX}")
    return args


def url_for(base: str, dbname: str) -> str:
    return make_conninfo(base, dbname=dbname)


def create_db(base: str, name: str) -> str:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url_for(base, name)


def drop_db(base: str, name: str) -> None:
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed_cards(url: str) -> list[str]:
    """1,000 card accounts with a Daily limit far above the run, mirrored for authorizations."""
    tokens = [f"tok_bench_{i}" for i in range(CARDS)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency, metadata)"
            " SELECT 'card:bench/c' || i || ':USD', 'card', 'debit', 'USD',"
            " jsonb_build_object('card', 'bench/c' || i) FROM generate_series(0, %s) i",
            (CARDS - 1,),
        )
        conn.execute(
            "INSERT INTO authorization_products (product, currency, spend_limit_minor,"
            " spend_interval, rewards_rate_bps)"
            " VALUES ('bench/std', 'USD', 1000000000000, 'Daily', 100)"
        )
        conn.execute(
            "INSERT INTO authorization_cards (account_id, token, card, namespace, product)"
            " SELECT a.id, 'tok_bench_' || substr(a.code, 13, length(a.code) - 16),"
            " 'bench/c' || substr(a.code, 13, length(a.code) - 16), 'bench', 'bench/std'"
            " FROM accounts a WHERE a.kind = 'card'"
        )
        conn.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency)"
            " VALUES ('system:network_settlement:USD', 'system', 'credit', 'USD')"
        )
        conn.execute("ANALYZE")
    return tokens


def seed_history(url: str, per_card: int) -> None:
    """``per_card`` Purchase journals of 1.00 on every card, posted now, through the ledger's
    own triggers, about 500 journals per transaction (every one of them also updates the one
    settlement account's balance row, and a row updated thousands of times in one transaction
    gets slow to find)."""
    if per_card == 0:
        return
    cards_per_batch = max(1, 500 // per_card)
    with psycopg.connect(url, autocommit=True) as conn:
        for first in range(0, CARDS, cards_per_batch):
            conn.execute(
                """
                WITH j AS (
                    INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at,
                                          namespace)
                    SELECT 'history-' || a.id || '-' || g, repeat('0', 64), 'Purchase', now(),
                           'bench'
                      FROM accounts a CROSS JOIN generate_series(1, %s::int) g
                     WHERE a.kind = 'card'
                       AND a.code = ANY(%s)
                    RETURNING id, split_part(idempotency_key, '-', 2)::bigint AS account_id
                )
                INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)
                SELECT j.id, j.account_id, 'debit', 100, 'USD' FROM j
                UNION ALL
                SELECT j.id, s.id, 'credit', 100, 'USD' FROM j
                  JOIN accounts s ON s.code = 'system:network_settlement:USD'
                """,
                (
                    per_card,
                    [f"card:bench/c{i}:USD" for i in range(first, first + cards_per_batch)],
                ),
            )
        conn.execute("ANALYZE")


async def client(url: str, tokens: list[str], stop_at: float, tally: Tally) -> None:
    store = PostgresStore()
    rng = random.Random()  # noqa: S311 - picks cards and operations, not secrets
    pending: list[str] = []
    # The gateway's connection class (its pool's): the store calls prepared statements on it.
    async with await contract.StoreConnection.connect(url, autocommit=True) as conn:
        while time.monotonic() < stop_at:
            roll = rng.random()
            started = time.perf_counter()
            if roll < 0.25 and pending:
                req = contract.CaptureRequest(id=f"c{uuid.uuid4().hex}", amount=900, final=True)
                await store.capture(conn, pending.pop(), req)
            elif roll < 0.30 and pending:
                await store.void(
                    conn, pending.pop(), contract.VoidRequest(id=f"v{uuid.uuid4().hex}")
                )
            else:
                answer = await store.authorize(conn, authorize(rng.choice(tokens)))
                tally.authorizations += 1
                if b'"approved": true' in answer.body:
                    tally.approved += 1
                    pending.append(
                        answer.body.split(b'"authorization": "')[1].split(b'"')[0].decode()
                    )
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            tally.ops += 1


def authorize(token: str) -> contract.AuthorizeRequest:
    return contract.AuthorizeRequest(
        id=f"a{uuid.uuid4().hex}",
        card=token,
        amount=1_000,
        currency="USD",
        merchant=contract.Merchant(name="Bench Cafe", mcc="5812", country="US"),
    )


async def _run_clients(url: str, tokens: list[str], clients: int, seconds: int) -> Tally:
    tally = Tally()
    stop_at = time.monotonic() + seconds
    await asyncio.gather(*(client(url, tokens, stop_at, tally) for _ in range(clients)))
    return tally


@dataclass(frozen=True)
class ProcessRun:
    """What one store process did over its phase (sent back to the parent)."""

    tally: Tally
    elapsed_seconds: float
    cpu_seconds: float  # user + system of that process over the phase


def _store_process(
    url: str, tokens: list[str], clients: int, seconds: int, start: Any
) -> ProcessRun:
    """One store process: ``clients`` clients on uvloop, the event loop the gateway runs on
    (gateway/server.py), started with the other processes at ``start`` (a barrier)."""
    start.wait()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        tally = runner.run(_run_clients(url, tokens, clients, seconds))
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ProcessRun(tally, elapsed, cpu)


@dataclass(frozen=True)
class StoreRun:
    line: str
    ops_per_second: float
    ops: int
    client_cpu_seconds: float  # user + system of the store processes over the phase


def run_store(url: str, tokens: list[str], clients: int, seconds: int, processes: int) -> StoreRun:
    """The store phase: ``clients`` connections shared out over ``processes`` processes (see
    PROCESSES in the docstring), all started together."""
    processes = min(processes, clients)
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(processes, mp_context=context) as pool:
        start = manager.Barrier(processes)
        futures = [pool.submit(_store_process, url, tokens, n, seconds, start) for n in shares]
        runs = [f.result() for f in futures]
    ops = sum(r.tally.ops for r in runs)
    ops_per_second = sum(r.tally.ops / r.elapsed_seconds for r in runs)
    authorizations = sum(r.tally.authorizations / r.elapsed_seconds for r in runs)
    approved = sum(r.tally.approved for r in runs)
    q = statistics.quantiles([ms for r in runs for ms in r.tally.latencies_ms], n=100)
    line = (
        f"store  clients={clients:<3} {ops_per_second:7.0f} ops/s"
        f" ({authorizations:.0f} authorizations/s, {approved} approved;"
        f" {processes} process{'es' if processes > 1 else ''})"
        f"  p50={q[49]:.2f}ms p99={q[98]:.2f}ms"
    )
    return StoreRun(line, ops_per_second, ops, sum(r.cpu_seconds for r in runs))


def pgbench(url: str, clients: int, seconds: int, *extra: str) -> float:
    """Run pgbench and return its TPS (excluding connection time)."""
    params = conninfo_to_dict(url)
    env = {**os.environ, "PGPASSWORD": str(params.get("password") or "")}
    cmd = [
        PGBENCH, "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
        "-T", str(seconds), "-h", str(params.get("host", "127.0.0.1")),
        "-p", str(params.get("port", 5432)), "-U", str(params.get("user", "postgres")),
        *extra, str(params["dbname"]),
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith("tps =") and "without initial connection time" in line:
            return float(line.split()[2])
    raise RuntimeError(f"no TPS in pgbench output:\n{out}")


_SQL_PRELUDE = (
    "\\set card random(0, 999)\n"
    "\\set id random(1, 9000000000000000)\n"
    "SELECT * FROM authorization_authorize('s' || :client_id || '-' || :id,"
    " 'tok_bench_' || :card, 1000, 'USD', 'Bench Cafe', '5812', 'US');\n"
)
# pgbench scripts and weights giving the store's mix: of every 100 statements, 70
# authorizations, 25 final captures and 5 voids (each follow-up after its own authorization).
_SQL_SCRIPTS = (
    (_SQL_PRELUDE, 40),
    (
        _SQL_PRELUDE + "SELECT * FROM authorization_capture('s' || :client_id || '-' || :id,"
        " 'c' || :client_id || '-' || :id, 900, true);\n",
        25,
    ),
    (
        _SQL_PRELUDE + "SELECT * FROM authorization_void('s' || :client_id || '-' || :id,"
        " 'v' || :client_id || '-' || :id);\n",
        5,
    ),
)
_SQL_STATEMENTS_PER_SCRIPT = 100 / 70


def run_sql(url: str, clients: int, seconds: int) -> tuple[str, float]:
    files = []
    try:
        for script, weight in _SQL_SCRIPTS:
            with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as file:
                file.write(script)
            files += ["-f", f"{file.name}@{weight}"]
        tps = pgbench(url, clients, seconds, *files)
    finally:
        for name in files[1::2]:
            os.unlink(name.rsplit("@", 1)[0])
    ops = tps * _SQL_STATEMENTS_PER_SCRIPT
    line = (
        f"sql    clients={clients:<3} {ops:7.0f} ops/s (pgbench running the store's statements,"
        " 70% authorize, 25% final capture, 5% void)"
    )
    return line, ops


_CAPTURE_SCRIPTS = (
    ("authorize", _SQL_PRELUDE),
    ("authorize+capture", _SQL_SCRIPTS[1][0]),
)


def run_capture_cpu(url: str, clients: int, seconds: int, postmaster: int, tpcb_tps: float) -> str:
    """The server's CPU per transaction of pgbench running authorizations alone, then an
    authorization and its final capture; the difference is what a capture costs it.

    Also each kind's own rate against ``tpcb_tps`` (the median TPC-B of the rounds): a hold
    is about the work of a TPC-B transaction, a capture is a whole double-entry posting (a
    journal, two entries and their balances, the spend window, the settlement reference,
    the capture row, the event and the stored answer), so the mix's ratio sits between
    them. A capture's own rate is derived: one pair takes 1/pairs s, of which 1/alone s is
    the authorization."""
    per_txn: dict[str, float] = {}
    rate: dict[str, float] = {}
    for name, script in _CAPTURE_SCRIPTS:
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as file:
            file.write(script)
        try:
            before = server_cpu.cpu_seconds(postmaster)
            tps = pgbench(url, clients, seconds, "-f", file.name)
            used = server_cpu.cpu_seconds(postmaster) - before
        finally:
            os.unlink(file.name)
        per_txn[name] = used / (tps * seconds) * 1e6
        rate[name] = tps
    alone, both = per_txn["authorize"], per_txn["authorize+capture"]
    auth_rate, pair_rate = rate["authorize"], rate["authorize+capture"]
    capture_rate = 1 / (1 / pair_rate - 1 / auth_rate) if pair_rate < auth_rate else float("nan")
    return (
        f"cpu    clients={clients:<3} server CPU: {alone:.0f} us per authorization alone,"
        f" {both:.0f} us per authorization + final capture, so {both - alone:.0f} us per capture\n"
        f"kinds  clients={clients:<3} pgbench: authorizations alone {auth_rate:.0f}/s"
        f" ({auth_rate / tpcb_tps:.2f} x TPC-B {tpcb_tps:.0f}); authorization + final capture"
        f" {pair_rate:.0f} pairs/s, so captures alone about {capture_rate:.0f}/s"
        f" ({capture_rate / tpcb_tps:.2f} x TPC-B)"
    )


def init_tpcb(url: str, scale: int) -> None:
    params = conninfo_to_dict(url)
    subprocess.run(
        [PGBENCH, "-i", "-q", "-s", str(scale), "-h", str(params.get("host", "127.0.0.1")),
         "-p", str(params.get("port", 5432)), "-U", str(params.get("user", "postgres")),
         str(params["dbname"])],
        check=True, capture_output=True,
    )  # fmt: skip


def compare(
    args: argparse.Namespace,
    url: str,
    tpcb: str,
    tokens: list[str],
    clients: int,
    postmaster: int | None,
) -> None:
    """``--rounds`` rounds of store, sql and tpcb at one client count, then the CPU lines and
    the median ratios."""
    store_ratios: list[float] = []
    sql_ratios: list[float] = []
    store_cpu_us: list[float] = []
    sql_cpu_us: list[float] = []
    client_cpu_us: list[float] = []
    tpcb_tps: list[float] = []
    for round_no in range(1, args.rounds + 1):
        cpu_before = server_cpu.cpu_seconds(postmaster) if postmaster else 0.0
        store = run_store(url, tokens, clients, args.seconds, args.processes)
        cpu_store = server_cpu.cpu_seconds(postmaster) if postmaster else 0.0
        sql_line, sql_ops = run_sql(url, clients, args.seconds)
        cpu_sql = server_cpu.cpu_seconds(postmaster) if postmaster else 0.0
        tps = pgbench(tpcb, clients, args.seconds)
        print(f"round {round_no}", flush=True)
        print(f"  {store.line}", flush=True)
        print(f"  {sql_line}", flush=True)
        print(f"  tpcb   clients={clients:<3} {tps:7.0f} TPS (pgbench TPC-B-like, scale {clients})")
        print(
            f"  ratio  store / tpcb = {store.ops_per_second / tps:.2f},"
            f" sql / tpcb = {sql_ops / tps:.2f}",
            flush=True,
        )
        store_ratios.append(store.ops_per_second / tps)
        tpcb_tps.append(tps)
        sql_ratios.append(sql_ops / tps)
        client_cpu_us.append(store.client_cpu_seconds / store.ops * 1e6)
        if postmaster:
            # Throughput is measured over the phase's seconds; the CPU too (plus the settle).
            store_cpu_us.append((cpu_store - cpu_before) / store.ops * 1e6)
            sql_cpu_us.append((cpu_sql - cpu_store) / (sql_ops * args.seconds) * 1e6)
    print(
        f"cpu    clients={clients:<3} per store operation: client (the store processes)"
        f" {statistics.median(client_cpu_us):.0f} us"
        + (
            f", server {statistics.median(store_cpu_us):.0f} us; per sql operation: server"
            f" {statistics.median(sql_cpu_us):.0f} us (medians of {args.rounds} rounds)"
            if postmaster
            else " (server CPU: not a local server)"
        ),
        flush=True,
    )
    if postmaster:
        tpcb_median = statistics.median(tpcb_tps)
        print(run_capture_cpu(url, clients, args.seconds, postmaster, tpcb_median), flush=True)
    print(
        f"ratio  clients={clients:<3} store / tpcb = {statistics.median(store_ratios):.2f},"
        f" sql / tpcb = {statistics.median(sql_ratios):.2f}: medians of {args.rounds} rounds"
        f" (store {_values(store_ratios)}; sql {_values(sql_ratios)}) (goal >= 0.5)",
        flush=True,
    )


def _values(ratios: list[float]) -> str:
    return ", ".join(f"{r:.2f}" for r in ratios)


def main() -> int:
    args = parse_args()
    if args.own_platform:
        # fast_disk=False: PostgreSQL keeps fsync on, as the goals are stated.
        with platform.throwaway("bench-authz-store-", fast_disk=False) as plat:
            return bench(args, plat.database_url)
    base = os.environ.get("DATABASE_URL")
    if not base:
        print("set DATABASE_URL to a server you may create databases on", file=sys.stderr)
        return 2
    return bench(args, base)


def bench(args: argparse.Namespace, base: str) -> int:
    run = uuid.uuid4().hex[:6]
    authz_db, tpcb_db = f"bench_authz_{run}", f"bench_tpcb_{run}"
    try:
        tpcb = create_db(base, tpcb_db)
        with psycopg.connect(base) as conn:
            fsync = conn.execute("SHOW fsync").fetchone()
            sync = conn.execute("SHOW synchronous_commit").fetchone()
            postmaster = server_cpu.postmaster_of(conn)
        settings = f"fsync={fsync and fsync[0]} synchronous_commit={sync and sync[0]}"
        for clients in args.clients:
            # FRESH STATE: each client count starts from the same ledger, as TPC-B starts from
            # the same `pgbench -i` tables.
            drop_db(base, authz_db)
            url, tokens = new_ledger(args, base, authz_db, clients, settings)
            init_tpcb(tpcb, clients)
            compare(args, url, tpcb, tokens, clients, postmaster)
    finally:
        drop_db(base, authz_db)
        drop_db(base, tpcb_db)
    return 0


def new_ledger(
    args: argparse.Namespace, base: str, name: str, clients: int, settings: str
) -> tuple[str, list[str]]:
    """A migrated, seeded ledger database, warmed up with ``clients`` clients and analyzed."""
    url = create_db(base, name)
    migrate.apply(url)
    tokens = seed_cards(url)
    started = time.monotonic()
    seed_history(url, args.history)
    print(
        f"server {settings}, {CARDS} cards, {args.history} purchases per card before"
        f" (seeded in {time.monotonic() - started:.0f}s)"
    )
    if args.warmup_seconds:
        warm = run_store(url, tokens, clients, args.warmup_seconds, args.processes)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
        print(f"warm-up {warm.line.removeprefix('store').strip()}, then ANALYZE", flush=True)
    return url, tokens


if __name__ == "__main__":
    sys.exit(main())
