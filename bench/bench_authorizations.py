"""Real-time authorizations over real HTTP: an open-loop load on the real gateway and database.

    .venv/bin/python bench/bench_authorizations.py --own-platform          # fsync on
    .venv/bin/python bench/bench_authorizations.py --rate 200 --seconds 60 --clients 8

On a private platform (PostgreSQL with fsync on, as in production) it migrates, issues
``--cards`` cards (mirrored as the operator mirrors them) and runs three phases:

1. ``store``: the ledger work alone, closed loop: ``--clients`` connections call the store
   (authorize, then capture 25% / void 5% of what was approved) as fast as they can, for
   ``--store-seconds``. Requests per second is the ledger's capacity at that client count.
2. ``http``: an OPEN-LOOP load on ``fintech-operator gateway`` (a real process, uvicorn on
   loopback, pool of ``--clients`` connections): request ``i`` is sent at ``start + i / rate``
   whether or not earlier ones were answered, so a slow answer cannot hide the ones queued
   behind it. Latency is measured from each request's scheduled time. The mix is about 70%
   authorizations, 25% captures (partial or final) and 5% voids of approved authorizations.
3. ``pgbench``: PostgreSQL's own TPC-B-like benchmark with the same client count, on the same
   server, for ``--pgbench-seconds``.

It prints offered and achieved rates, p50/p99/max latency, answers by status and declines by
reason, pgbench's TPS, and the ratio of the store's rate to pgbench's. Results go to
bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--own-platform", action="store_true", help="start a private platform")
    parser.add_argument("--cards", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200.0, help="offered requests per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the HTTP phase")
    parser.add_argument("--clients", type=int, default=8, help="database connections")
    parser.add_argument(
        "--workers", type=int, default=1, help="gateway processes (the --clients are shared)"
    )
    parser.add_argument("--store-seconds", type=float, default=20.0)
    parser.add_argument("--pgbench-seconds", type=int, default=20)
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy record the gateway (.svg flame graph, .txt raw)"
    )
    args = parser.parse_args()
    if not (0 < args.rate <= RATE_MAX and 0 < args.seconds <= SECONDS_MAX):
        parser.error(f"--rate in (0, {RATE_MAX}], --seconds in (0, {SECONDS_MAX}]")
    if not (1 <= args.cards <= CARDS_MAX and 1 <= args.clients <= CLIENTS_MAX):
        parser.error(f"--cards in 1..{CARDS_MAX}, --clients in 1..{CLIENTS_MAX}")
    if not 1 <= args.workers <= min(args.clients, 32):
        parser.error("--workers in 1..min(--clients, 32)")
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


async def store_phase(dsn: str, tokens: list[str], clients: int, seconds: float) -> float:
    """Closed-loop store calls per second with ``clients`` connections."""
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
        return done / (time.monotonic() - started)


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


Due = tuple[str, str, dict[str, Any], float]  # kind, path, body, scheduled time


async def http_phase(base_url: str, tokens: list[str], rate: float, seconds: float) -> HttpResult:
    """Send ``rate * seconds`` requests on a fixed schedule; wait for every answer.

    Each of ``HTTP_CONNECTIONS`` workers owns one httpx client with one connection and takes
    due requests from a FIFO queue. (One shared httpx pool spends time in proportion to the
    requests queued in it; under a backlog it stalled the generator, not the gateway.) A
    request that waits in the queue for a free connection waits on the clock: latency counts
    from its scheduled time.
    """
    mix, result = Mix(tokens), HttpResult()
    queue: asyncio.Queue[Due | None] = asyncio.Queue()
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def worker(client: httpx.AsyncClient) -> None:
        async with client:
            while (item := await queue.get()) is not None:
                await send(client, item, mix, result)

    # Made before the clock starts: each client builds an SSL context, tens of ms each.
    clients = [
        httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits)
        for _ in range(HTTP_CONNECTIONS)
    ]
    workers = [asyncio.create_task(worker(client)) for client in clients]
    await asyncio.sleep(0)
    total = int(rate * seconds)
    start = time.monotonic() + 0.5
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((*mix.next(), scheduled))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    result.offered = total
    result.seconds = time.monotonic() - start
    return result


async def send(client: httpx.AsyncClient, due: Due, mix: Mix, result: HttpResult) -> None:
    kind, path, body, scheduled = due
    content = orjson.dumps(body)
    headers = signing.headers(KEY, f"msg_{uuid.uuid4().hex}", int(time.time()), content)
    headers["content-type"] = "application/json"
    try:
        response = await client.post(path, content=content, headers=headers)
    except httpx.HTTPError as exc:
        result.errors[type(exc).__name__] += 1
        return
    # Open loop: latency counts from when the request was due, not from when it was sent.
    result.latencies_ms.append((time.monotonic() - scheduled) * 1000)
    result.statuses[str(response.status_code)] += 1
    result.kinds[kind] += 1
    answer = response.json()
    reason = answer.get("reason") or answer.get("error") or "?"
    result.reasons[f"{kind}:{reason}"] += 1
    if kind == "authorize" and answer.get("approved"):
        mix.approved(body["id"], body["amount"])


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


# ---- phase 3: pgbench -----------------------------------------------------------------------


def pgbench_tps(plat: platform.Platform, clients: int, seconds: int) -> float:
    """TPC-B-like TPS of pgbench with ``clients`` connections on the platform's server."""
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
    out = subprocess.run(
        [binary, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), "-b",
         "tpcb-like", dsn],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out)
    if match is None:
        raise RuntimeError(f"no tps in pgbench's output: {out}")
    return float(match.group(1))


# ---- the gateway process --------------------------------------------------------------------


@contextmanager
def gateway_process(dsn: str, clients: int, workers: int, profile: str | None) -> Iterator[str]:
    """``fintech-operator gateway`` on a free port (optionally under py-spy), its ``workers``
    processes sharing ``clients`` database connections."""
    per_worker = -(-clients // workers)
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
            yield f"http://127.0.0.1:{port}"
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
    store_rate = await store_phase(dsn, tokens, args.clients, args.store_seconds)
    print(f"store: {store_rate:.0f} requests/s, closed loop, {args.clients} connections")
    with gateway_process(dsn, args.clients, args.workers, args.profile) as base_url:
        result = await http_phase(base_url, tokens, args.rate, args.seconds)
    report_http(args.rate, result)
    if plat is not None:
        tps = await asyncio.to_thread(pgbench_tps, plat, args.clients, args.pgbench_seconds)
        print(f"pgbench tpcb-like: {tps:.0f} TPS with {args.clients} clients")
        print(f"gateway {args.workers} worker(s); load average {os.getloadavg()}")
        print(f"store / pgbench = {store_rate / tps:.2f} (goal >= 0.5)")
    print(json.dumps({"store_rps": round(store_rate, 1), "clients": args.clients}))
    return 0


def main() -> int:
    args = parse_args()
    if args.own_platform:
        # fast_disk=False: PostgreSQL keeps fsync on, as the goals are stated.
        with platform.throwaway("bench-authz-", fast_disk=False) as plat:
            return asyncio.run(run(args, plat, plat.database_url))
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        print("set DATABASE_URL to a PostgreSQL DSN for benchmarks, or --own-platform")
        return 2
    return asyncio.run(run(args, None, dsn))


if __name__ == "__main__":
    sys.exit(main())
