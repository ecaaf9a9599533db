"""Real-time authorizations over real HTTP: an open-loop load on the real gateway and database.

    .venv/bin/python bench/bench_authorizations.py --own-platform          # fsync on
    .venv/bin/python bench/bench_authorizations.py --rate 200 --seconds 60 --clients 8 --pool 32

On a private platform (PostgreSQL with fsync on, as in production) it migrates, issues
``--cards`` cards (mirrored as the operator mirrors them) and runs three phases:

1. ``store``: the ledger work alone, closed loop: ``--clients`` connections call the store
   (authorize, then capture 25% / void 5% of what was approved) as fast as they can, for
   ``--store-seconds``. Requests per second is the ledger's capacity at that client count.
2. ``http``: an OPEN-LOOP load on ``fintech-operator gateway`` (a real process, uvicorn on
   loopback, pool of ``--pool`` connections): request ``i`` is sent at ``start + i / rate``
   whether or not earlier ones were answered, so a slow answer cannot hide the ones queued
   behind it. Latency is measured from each request's scheduled time. The mix is about 70%
   authorizations, 25% captures (partial or final) and 5% voids of approved authorizations.
   The client is raw asyncio over ``--connections`` keep-alive HTTP/1.1 connections with every
   request built and signed before the clock starts, and it runs ``--nice`` (after the gateway
   started, which keeps the normal priority): on 2 shared cores the load generator must not
   take the CPU of what it measures.
3. ``burst``: with the same gateway, ``--burst`` authorizations (default 1,000) all due at the
   same instant, twice: first over the steady phase's ``--connections`` keep-alive connections
   (a processor whose connection pool queues the burst on its side), then over as many
   connections as requests (the whole burst at the gateway at once, where its in-flight limit
   answers what is beyond it ``Overloaded``). Latency counts from that instant. Each burst
   reports its answers by reason, p50/p99/max, the time until the last answer, and its drain
   rate (answers per second) against the store phase's closed-loop rate, its anchor. A burst
   starts once the previous phase's answers are all in and the gateway has settled for
   ``BURST_PAUSE_SECONDS``; ``--burst 0`` skips it.
4. ``pgbench``: PostgreSQL's own TPC-B-like benchmark (``-M prepared``) with the same client
   count as the store phase, on the same server, for ``--pgbench-seconds``.

Everything runs on uvloop, the gateway's event loop. The ``store / pgbench`` ratio here is one
store phase and one pgbench run minutes apart (the HTTP phase between them);
``bench_authorizations_store.py`` alternates the two in rounds and reports the median.

WARM-UP: before phase 1 the store mix runs for ``--warmup-seconds`` (default 5) and then
``ANALYZE``: the phases measure a ledger in use, as pgbench's initialisation leaves its own
tables analyzed, not plpgsql's cached plans made while the ledger tables were empty.

WAL written per request (``pg_current_wal_lsn`` before and after) is printed for the store
and HTTP phases.

It prints offered and achieved rates, p50/p99/max latency, answers by status and declines by
reason, pgbench's TPS, and the ratio of the store's rate to pgbench's. Results go to
bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import uvloop
from psycopg_pool import AsyncConnectionPool

from fintech_devstack import platform
from fintech_operator import api
from fintech_operator.authorizations import contract, mirror, store
from fintech_operator.ledger import engine, migrate
from fintech_operator.notify import signing

NAMESPACE = "bench"
SECRET = signing.format_secret(os.urandom(32))
KEY = signing.parse_secret(SECRET)
RATE_MAX = 5000
SECONDS_MAX = 3600
CARDS_MAX = 100_000
CLIENTS_MAX = 64
HTTP_CONNECTIONS = 64
BURST_MAX = 1000  # a connection each in the second burst: within the default 1,024 open files
BURST_PAUSE_SECONDS = 2.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--own-platform", action="store_true", help="start a private platform")
    parser.add_argument("--cards", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="offered requests per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the HTTP phase")
    parser.add_argument(
        "--clients", type=int, default=8, help="connections of the store phase and of pgbench"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="gateway processes (the --pool is shared)"
    )
    parser.add_argument(
        "--pool", type=int, default=32, help="the gateway's database connections (all workers)"
    )
    parser.add_argument(
        "--connections", type=int, default=HTTP_CONNECTIONS, help="HTTP keep-alive connections"
    )
    parser.add_argument(
        "--nice", type=int, default=10, help="the load generator's niceness during the HTTP phase"
    )
    parser.add_argument("--store-seconds", type=float, default=20.0)
    parser.add_argument(
        "--burst", type=int, default=1000,
        help="authorizations sent at one instant after the steady phase (0: no burst phase)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup-seconds", type=float, default=5.0,
        help="store mix before the phases, then ANALYZE (0: none); see WARM-UP in the docstring",
    )  # fmt: skip
    parser.add_argument("--pgbench-seconds", type=int, default=20)
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy record the gateway (.svg flame graph, .txt raw)"
    )
    args = parser.parse_args()
    if not (0 < args.rate <= RATE_MAX and 0 < args.seconds <= SECONDS_MAX):
        parser.error(f"--rate in (0, {RATE_MAX}], --seconds in (0, {SECONDS_MAX}]")
    if not (1 <= args.cards <= CARDS_MAX and 1 <= args.clients <= CLIENTS_MAX):
        parser.error(f"--cards in 1..{CARDS_MAX}, --clients in 1..{CLIENTS_MAX}")
    if not (1 <= args.pool <= CLIENTS_MAX and 1 <= args.connections <= 1024):
        parser.error(f"--pool in 1..{CLIENTS_MAX}, --connections in 1..1024")
    if not 1 <= args.workers <= min(args.pool, 32):
        parser.error("--workers in 1..min(--pool, 32)")
    if not 0 <= args.burst <= BURST_MAX:
        parser.error(f"--burst in 0..{BURST_MAX}")
    if not 0 <= args.nice <= 19:
        parser.error("--nice in 0..19")
    if not 0 <= args.warmup_seconds <= SECONDS_MAX:
        parser.error(f"--warmup-seconds in [0, {SECONDS_MAX}]")
    return args


# ---- set-up ---------------------------------------------------------------------------------


async def issue_cards(dsn: str, count: int) -> list[str]:
    """``count`` cards of one product (USD, a monthly limit far above the run's spend)."""
    product = f"bench-{uuid.uuid4().hex[:6]}"
    product_spec = api.CardProductSpec.model_validate(
        {"currency": "USD", "rewardsRateBps": 100, "overCaptureBps": 1000}
    )
    tokens = []
    async with AsyncConnectionPool(dsn, min_size=1, max_size=1, open=False) as pool:
        async with pool.connection() as conn:
            await mirror.put_product(conn, NAMESPACE, product, product_spec)
        for i in range(count):
            name, token = f"card-{i:05d}-{product}", f"tok_{uuid.uuid4().hex}"
            spec = api.CardSpec.model_validate(
                {
                    "userId": f"u{i}",
                    "product": product,
                    "holder": {"name": "Bench", "country": "US", "kycStatus": "Accepted"},
                    "spendLimit": {"amount": 100_000_000, "interval": "Monthly"},
                }
            )
            async with pool.connection() as conn:
                account = await engine.open_card_account(conn, NAMESPACE, name, "USD")
                await mirror.put_card(
                    conn, namespace=NAMESPACE, name=name, account=account.code, token=token,
                    spec=spec,
                )  # fmt: skip
            tokens.append(token)
    return tokens


# ---- the mix --------------------------------------------------------------------------------


@dataclass
class Mix:
    """Chooses each request: authorize, or capture / void one of the approved, open ones."""

    tokens: list[str]
    rng: random.Random = field(default_factory=lambda: random.Random(13))  # noqa: S311
    open_auths: list[tuple[str, int]] = field(default_factory=list)

    def next(self) -> tuple[str, str, dict[str, Any]]:
        """(kind, path, body) of the next request."""
        roll = self.rng.random()
        if roll < 0.30 and self.open_auths:
            index = self.rng.randrange(len(self.open_auths))
            auth_id, amount = self.open_auths.pop(index)
            if roll < 0.05:
                return "void", f"/v1/authorizations/{auth_id}/void", {"id": f"v_{auth_id}"}
            partial = self.rng.random() < 0.5
            body = {
                "id": f"c_{auth_id}",
                "amount": amount // 2 if partial else amount,
                "final": True,
            }
            return "capture", f"/v1/authorizations/{auth_id}/captures", body
        auth_id = f"a_{uuid.uuid4().hex}"
        amount = self.rng.randrange(100, 20_000)
        body = {
            "id": auth_id,
            "card": self.rng.choice(self.tokens),
            "amount": amount,
            "currency": "USD",
            "merchant": {"name": "Bench Shop", "mcc": "5812", "country": "US"},
        }
        return "authorize", "/v1/authorizations", body

    def approved(self, auth_id: str, amount: int) -> None:
        self.open_auths.append((auth_id, amount))


# ---- phase 1: the store alone ---------------------------------------------------------------


async def store_phase(
    dsn: str, tokens: list[str], clients: int, seconds: float
) -> tuple[float, int]:
    """Closed-loop store calls per second with ``clients`` connections, and their count."""
    the_store = store.PostgresStore()
    mix = Mix(tokens)
    done = 0
    stop_at = time.monotonic() + seconds

    async def worker(pool: AsyncConnectionPool[Any]) -> None:
        nonlocal done
        async with pool.connection() as conn:
            while time.monotonic() < stop_at:
                kind, path, body = mix.next()
                await call_store(the_store, conn, kind, path, body, mix)
                done += 1

    async with AsyncConnectionPool(
        dsn, min_size=clients, max_size=clients, open=False, kwargs={"autocommit": True}
    ) as pool:
        await pool.wait(timeout=60)
        started = time.monotonic()
        await asyncio.gather(*(worker(pool) for _ in range(clients)))
        return done / (time.monotonic() - started), done


async def analyze(dsn: str) -> None:
    """Fresh statistics of every table, as pgbench's own initialisation leaves its tables."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("ANALYZE")


async def call_store(
    the_store: store.PostgresStore, conn: Any, kind: str, path: str, body: dict[str, Any], mix: Mix
) -> None:
    auth_id = path.split("/")[3] if kind != "authorize" else body["id"]
    if kind == "authorize":
        answer = await the_store.authorize(conn, contract.AuthorizeRequest.model_validate(body))
        if orjson.loads(answer.body).get("approved"):
            mix.approved(auth_id, body["amount"])
    elif kind == "capture":
        await the_store.capture(conn, auth_id, contract.CaptureRequest.model_validate(body))
    else:
        await the_store.void(conn, auth_id, contract.VoidRequest.model_validate(body))


# ---- phase 2: open-loop HTTP ----------------------------------------------------------------


@dataclass
class HttpResult:
    offered: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0
    late_sends: int = 0  # requests handed to a connection more than 5 ms after their time
    client_cpu_seconds: float = 0.0  # the load generator's own CPU during the phase


@dataclass(frozen=True)
class Planned:
    """One request of the schedule, its bytes on the wire built and signed before the run."""

    at: float  # seconds after the start
    kind: str
    wire: bytes


# A capture or void is planned only for an authorization planned at least this long before it,
# so that (at any latency the goals allow) the authorization was answered when it is sent.
FOLLOW_UP_LAG_SECONDS = 1.0


def plan(tokens: list[str], rate: float, seconds: float, wall_start: float) -> list[Planned]:
    """The whole schedule: request ``i`` at ``i / rate``, about 70% authorizations, 25%
    captures (half partial, half the full amount, all final) and 5% voids of earlier
    authorizations. Every authorization is approvable (1,000 cards, limits far above the run),
    so follow-ups can be planned ahead; an unexpected decline or 404 shows in the reasons.
    Each request is signed with the wall-clock second it is due at, as a processor would."""
    rng = random.Random(13)  # noqa: S311
    pending: collections.deque[tuple[float, str, int]] = collections.deque()  # (at, id, amount)
    ready: list[tuple[str, int]] = []
    out = []
    body: dict[str, Any]
    for i in range(int(rate * seconds)):
        at = i / rate
        while pending and pending[0][0] <= at - FOLLOW_UP_LAG_SECONDS:
            _, auth_id, amount = pending.popleft()
            ready.append((auth_id, amount))
        roll = rng.random()
        if roll < 0.30 and ready:
            auth_id, amount = ready.pop(rng.randrange(len(ready)))
            if roll < 0.05:
                kind, path = "void", f"/v1/authorizations/{auth_id}/void"
                body = {"id": f"v_{auth_id}"}
            else:
                partial = rng.random() < 0.5
                kind, path = "capture", f"/v1/authorizations/{auth_id}/captures"
                body = {"id": f"c_{auth_id}", "amount": amount // 2 if partial else amount,
                        "final": True}  # fmt: skip
        else:
            auth_id = f"a_{uuid.uuid4().hex}"
            amount = rng.randrange(100, 20_000)
            kind, path = "authorize", "/v1/authorizations"
            body = {
                "id": auth_id,
                "card": rng.choice(tokens),
                "amount": amount,
                "currency": "USD",
                "merchant": {"name": "Bench Shop", "mcc": "5812", "country": "US"},
            }
            pending.append((at, auth_id, amount))
        out.append(Planned(at, kind, wire(path, body, int(wall_start + at))))
    return out


def plan_burst(tokens: list[str], count: int, wall_start: float, seed: int) -> list[Planned]:
    """``count`` authorizations, all due at the burst's instant, on cards chosen at random."""
    rng = random.Random(seed)  # noqa: S311
    out = []
    for _ in range(count):
        body = {
            "id": f"b_{uuid.uuid4().hex}",
            "card": rng.choice(tokens),
            "amount": rng.randrange(100, 20_000),
            "currency": "USD",
            "merchant": {"name": "Bench Shop", "mcc": "5812", "country": "US"},
        }
        out.append(Planned(0.0, "authorize", wire("/v1/authorizations", body, int(wall_start))))
    return out


def wire(path: str, body: dict[str, Any], timestamp: int) -> bytes:
    """A signed HTTP/1.1 keep-alive POST, as bytes."""
    content = orjson.dumps(body)
    signed = signing.headers(KEY, f"msg_{uuid.uuid4().hex}", timestamp, content)
    head = [f"POST {path} HTTP/1.1", "host: 127.0.0.1", "content-type: application/json",
            f"content-length: {len(content)}"]  # fmt: skip
    head += [f"{name}: {value}" for name, value in signed.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + content


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a content-length (uvicorn's answers)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    return status, await reader.readexactly(length)


async def http_phase(port: int, planned: list[Planned], connections: int) -> HttpResult:
    """Send the planned requests at their times over ``connections`` keep-alive connections.

    A raw asyncio client: the requests are bytes built before the clock starts, and a
    connection only writes them and reads the answers (about 0.2-0.3 ms of client CPU per
    request, against several ms with httpx, which on 2 shared cores took CPU from the gateway
    it was measuring). Open loop: a request whose time has come waits for a free connection on
    the clock, and latency counts from its planned time, not from when it was written.
    """
    result = HttpResult(offered=len(planned))
    queue: asyncio.Queue[tuple[Planned, float] | None] = asyncio.Queue()
    # Each connection task and this one meet here once its connection is open.
    all_open = asyncio.Barrier(connections + 1)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await all_open.wait()
        try:
            while (item := await queue.get()) is not None:
                request, due = item
                try:
                    writer.write(request.wire)
                    status, body = await read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.errors[type(exc).__name__] += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                result.latencies_ms.append((time.monotonic() - due) * 1000)
                result.statuses[str(status)] += 1
                result.kinds[request.kind] += 1
                answer = orjson.loads(body)
                reason = answer.get("reason") or answer.get("error") or "?"
                result.reasons[f"{request.kind}:{reason}"] += 1
        finally:
            writer.close()

    cpu_before = time.process_time()
    tasks = [asyncio.create_task(connection()) for _ in range(connections)]
    # Every connection open before the clock starts (a burst opens up to BURST_MAX of them).
    await asyncio.wait_for(all_open.wait(), timeout=60)
    start = time.monotonic() + 0.3
    for request in planned:
        due = start + request.at
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            result.late_sends += 1
        queue.put_nowait((request, due))
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    result.seconds = time.monotonic() - start
    result.client_cpu_seconds = time.process_time() - cpu_before
    return result


def report_http(rate: float, result: HttpResult) -> None:
    done = len(result.latencies_ms)
    q = statistics.quantiles(result.latencies_ms, n=100) if done > 1 else [0.0] * 99
    print(
        f"http: offered {rate:.0f}/s ({result.offered} requests), achieved "
        f"{done / result.seconds:.1f}/s over {result.seconds:.1f}s; latency p50={q[49]:.1f}ms "
        f"p99={q[98]:.1f}ms max={max(result.latencies_ms, default=0):.1f}ms"
    )
    print(f"      statuses {dict(result.statuses)}  errors {dict(result.errors)}")
    print(f"      by kind {dict(result.kinds)}")
    print(f"      answers by reason {dict(sorted(result.reasons.items()))}")
    print(f"      sends more than 5 ms late (client behind its schedule): {result.late_sends}")
    per_request = result.client_cpu_seconds / max(done, 1) * 1000
    print(f"      load generator CPU {per_request:.3f} ms per request")


def report_burst(label: str, result: HttpResult, store_rate: float) -> None:
    """One burst: its answers, latency from the burst's instant, and its drain rate against
    the store's closed-loop rate (the anchor: what the ledger does with no HTTP and no queue)."""
    done = len(result.latencies_ms)
    q = statistics.quantiles(result.latencies_ms, n=100) if done > 1 else [0.0] * 99
    last_s = max(result.latencies_ms, default=0.0) / 1000
    drain = done / last_s if last_s > 0 else 0.0
    print(
        f"burst ({label}): {result.offered} authorizations at one instant, {done} answered, "
        f"the last after {last_s * 1000:.0f} ms; latency p50={q[49]:.1f}ms p99={q[98]:.1f}ms; "
        f"drained at {drain:.0f}/s = {drain / store_rate:.2f} x the store's closed-loop rate"
    )
    print(f"      statuses {dict(result.statuses)}  errors {dict(result.errors)}")
    print(f"      answers by reason {dict(sorted(result.reasons.items()))}")


async def burst_phase(port: int, tokens: list[str], count: int, connections: int) -> HttpResult:
    """One burst of ``count`` authorizations over ``connections`` connections."""
    await asyncio.sleep(BURST_PAUSE_SECONDS)
    planned = plan_burst(tokens, count, time.time() + 0.5, seed=connections)
    return await http_phase(port, planned, connections)


# ---- phase 4: pgbench -----------------------------------------------------------------------


def pgbench_tps(plat: platform.Platform, clients: int, seconds: int) -> tuple[float, float]:
    """TPC-B-like TPS of pgbench with ``clients`` connections on the platform's server
    (prepared statements, as the store's are), and the WAL it wrote per transaction."""
    binary = shutil.which("pgbench") or next(
        str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True)
    )
    dsn = plat.database_url_for("pgbench")
    admin = plat.database_url_for("postgres")
    subprocess.run(["psql", admin, "-qc", "DROP DATABASE IF EXISTS pgbench"], check=True)
    subprocess.run(["psql", admin, "-qc", "CREATE DATABASE pgbench"], check=True)
    # Scale = clients, so clients do not all fight over one branch row (pgbench's advice).
    subprocess.run([binary, "-i", "-q", "-s", str(max(clients, 1)), dsn], check=True,
                   capture_output=True)  # fmt: skip
    wal_before = wal_lsn(dsn)
    out = subprocess.run(
        [binary, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), "-M",
         "prepared", "-b", "tpcb-like", dsn],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if match is None:
        raise RuntimeError(f"no tps in pgbench's output: {out}")
    wal = wal_lsn(dsn) - wal_before
    done = re.search(r"number of transactions actually processed: ([0-9]+)", out)
    return float(match.group(1)), wal / max(int(done.group(1)) if done else 0, 1)


def wal_lsn(dsn: str) -> int:
    """The server's current WAL position in bytes (WAL per request = the difference / count:
    on a private platform nothing else writes, bar autovacuum and checkpoints)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


# ---- the gateway process --------------------------------------------------------------------


@contextmanager
def gateway_process(dsn: str, pool: int, workers: int, profile: str | None) -> Iterator[int]:
    """``fintech-operator gateway`` on a free port (optionally under py-spy), its ``workers``
    processes sharing ``pool`` database connections; yields the port."""
    per_worker = -(-pool // workers)
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "secret"
        secret.write_text(SECRET + "\n")
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "FINTECH_GATEWAY_PORT": str(port),
            "FINTECH_GATEWAY_SIGNING_SECRET_FILE": str(secret),
            "FINTECH_GATEWAY_DB_POOL_MIN_SIZE": str(per_worker),
            "FINTECH_GATEWAY_DB_POOL_MAX_SIZE": str(per_worker),
            "FINTECH_GATEWAY_WORKERS": str(workers),
            "FINTECH_LOG_LEVEL": "WARNING",
        }
        cmd = [sys.executable, "-m", "fintech_operator", "gateway"]
        if profile:
            # A .txt profile is py-spy's "raw" format (collapsed stacks), easy to total up.
            form = ["--format", "raw"] if profile.endswith(".txt") else []
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            cmd = [
                spy,
                "record",
                "--rate",
                "200",
                "--subprocesses",
                *form,
                "-o",
                profile,
                "--",
                *cmd,
            ]
        log = Path(tmp) / "gateway.log"
        with log.open("wb") as out:
            # Its own process group: SIGINT reaches py-spy (which then writes its profile) and
            # the gateway (which then stops gracefully) together.
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc, log)
            yield port
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base_url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited: {log.read_text()}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the gateway was not ready in 60 s")


# ---- main -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, plat: platform.Platform | None, dsn: str) -> int:
    await migrate.apply_async(dsn)
    started = time.monotonic()
    tokens = await issue_cards(dsn, args.cards)
    print(f"issued {len(tokens)} cards in {time.monotonic() - started:.1f}s")
    if args.warmup_seconds > 0:
        warm_rate, _ = await store_phase(dsn, tokens, args.clients, args.warmup_seconds)
        await analyze(dsn)
        print(f"warm-up: {warm_rate:.0f} requests/s for {args.warmup_seconds:.0f}s, then ANALYZE")
    wal_before = wal_lsn(dsn)
    store_rate, store_done = await store_phase(dsn, tokens, args.clients, args.store_seconds)
    store_wal = (wal_lsn(dsn) - wal_before) / max(store_done, 1)
    print(f"store: {store_rate:.0f} requests/s, closed loop, {args.clients} connections; "
          f"WAL {store_wal:.0f} B per request")  # fmt: skip
    print(f"load average before the HTTP phase {os.getloadavg()}")
    planned = plan(tokens, args.rate, args.seconds, time.time() + 1.0)
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    with gateway_process(dsn, args.pool, args.workers, args.profile) as port:
        # The gateway started at our priority; the load generator now yields the CPU to it.
        os.nice(args.nice)
        wal_before = wal_lsn(dsn)
        result = await http_phase(port, planned, args.connections)
        http_wal = (wal_lsn(dsn) - wal_before) / max(len(result.latencies_ms), 1)
        bursts = []
        if args.burst:
            for connections in (min(args.connections, args.burst), args.burst):
                label = f"{connections} connections"
                bursts.append((label, await burst_phase(port, tokens, args.burst, connections)))
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, niceness)  # pgbench at the store's priority
    report_http(args.rate, result)
    print(f"      WAL {http_wal:.0f} B per request; load average {os.getloadavg()}")
    for label, burst in bursts:
        report_burst(label, burst, store_rate)
    if plat is not None:
        tps, pgbench_wal = await asyncio.to_thread(
            pgbench_tps, plat, args.clients, args.pgbench_seconds
        )
        print(
            f"pgbench tpcb-like -M prepared: {tps:.0f} TPS with {args.clients} clients; "
            f"WAL {pgbench_wal:.0f} B per transaction"
        )
        print(f"gateway {args.workers} worker(s), pool {args.pool}; load average {os.getloadavg()}")
        print(f"store / pgbench = {store_rate / tps:.2f} (goal >= 0.5)")
    print(json.dumps({"store_rps": round(store_rate, 1), "clients": args.clients}))
    return 0


def main() -> int:
    args = parse_args()
    if args.own_platform:
        # fast_disk=False: PostgreSQL keeps fsync on, as the goals are stated.
        with platform.throwaway("bench-authz-", fast_disk=False) as plat:
            return _run(run(args, plat, plat.database_url))
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        print("set DATABASE_URL to a PostgreSQL DSN for benchmarks, or --own-platform")
        return 2
    return _run(run(args, None, dsn))


def _run(main_coroutine: Coroutine[Any, Any, int]) -> int:
    """On uvloop, the event loop the gateway runs on (gateway/server.py): the store phase is
    the gateway's path minus HTTP, and the load generator's own CPU per request is smaller."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_coroutine)


if __name__ == "__main__":
    sys.exit(main())
