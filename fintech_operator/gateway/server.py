"""``fintech-operator gateway``: the app on uvicorn (uvloop, httptools) with a connection pool.

The process reads nothing from the Kubernetes API: every decision is the store's, in
PostgreSQL. It holds one psycopg pool of ``FINTECH_GATEWAY_DB_POOL_MAX_SIZE`` connections;
requests wait for one inside their deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import fastapi
import psycopg
import uvicorn
from psycopg_pool import AsyncConnectionPool

from fintech_operator import logs
from fintech_operator.authorizations import contract
from fintech_operator.gateway import app as gateway_app
from fintech_operator.gateway import gate, settings, trust
from fintech_operator.notify import signing
from fintech_operator.observability import lifecycle, metrics

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS: Final = 2.0
DRAIN_TIMEOUT_SECONDS: Final = 10.0
STORE_MODULE: Final = "fintech_operator.authorizations.store"


def load_store() -> contract.Store:
    """The PostgreSQL store (imported here so the gateway depends on the contract only)."""
    module: Any = importlib.import_module(STORE_MODULE)
    store: contract.Store = module.PostgresStore()
    return store


def build(config: settings.GatewaySettings, store: contract.Store) -> fastapi.FastAPI:
    """The app with its pool, gate and secret source, opened and closed by its lifespan."""
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        config.database_url,
        min_size=config.db_pool_min_size,
        max_size=config.db_pool_max_size,
        open=False,
        timeout=config.deadline_ms / 1000,
        # Autocommit: each store call is one statement, its own transaction, one round trip.
        kwargs={
            "autocommit": True,
            "connect_timeout": max(1, round(config.db_connect_timeout_seconds)),
            # PostgreSQL cancels a statement still running at the deadline, so a request the
            # gateway already declined cannot commit a hold later on its own: if this process
            # dies before it settles (kill -9 while the statement waits on a lock), nobody
            # would release that hold (found by the fault campaign, tests/faults).
            "options": f"-c statement_timeout={config.deadline_ms}",
        },
        name="gateway",
    )

    def connect(wait_seconds: float) -> contextlib.AbstractAsyncContextManager[gate.Connection]:
        return pool.connection(timeout=wait_seconds)

    the_gate = gate.Gate(
        store,
        connect,
        deadline_seconds=config.deadline_ms / 1000,
        in_flight_max=config.in_flight_max,
        settle_timeout_seconds=config.settle_timeout_seconds,
    )

    async def ready() -> bool:
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                async with pool.connection(timeout=READY_TIMEOUT_SECONDS) as conn:
                    await conn.execute("SELECT 1")
        except Exception:
            return False
        return True

    @contextlib.asynccontextmanager
    async def lifespan(_app: fastapi.FastAPI) -> AsyncIterator[None]:
        # wait=False: the gateway starts (and says not ready) while PostgreSQL is down.
        await pool.open(wait=False)
        try:
            yield
        finally:
            left = await the_gate.drain(DRAIN_TIMEOUT_SECONDS)
            if left:
                log.error("stopping with requests not yet settled", extra={"count": left})
            await pool.close()

    deps = gateway_app.Deps(
        gate=the_gate,
        secrets=trust.SecretSource(config.signing_secret_file, config.secret_refresh_seconds),
        limits=gateway_app.Limits(config.body_bytes_max, config.signature_tolerance_seconds),
        ready=ready,
        serve_metrics=config.metrics_port == 0,
    )
    return gateway_app.create_app(deps, lifespan)


def create_secret_file(path: str) -> bool:
    """Write a fresh ``whsec_`` secret to ``path`` (mode 0600) unless it exists; True if written.

    For development (``make dev``); in a cluster the secret comes from a Secret.
    """
    target = Path(path)
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(signing.format_secret(os.urandom(32)) + "\n")
    return True


def main(*, create_secret: bool = False) -> int:
    """Run the gateway until SIGTERM or SIGINT."""
    logs.configure()
    try:
        config = settings.load()
    except settings.GatewaySettingsError as exc:
        log.error("%s", exc)
        return 2
    if create_secret and create_secret_file(config.signing_secret_file):
        log.info("wrote a new signing secret", extra={"path": config.signing_secret_file})
    try:
        trust.SecretSource(config.signing_secret_file, 0).keys()
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    metrics.build_info.labels(lifecycle.version(), "fintech-gateway").set(1)
    if config.metrics_port:
        metrics.serve(config.metrics_host, config.metrics_port)
    app = build(config, load_store())
    server_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        # Our own log lines say what happened without ever printing a path or a body.
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=int(DRAIN_TIMEOUT_SECONDS),
        backlog=2048,
    )
    log.info("gateway listening", extra={"host": config.host, "port": config.port})
    uvicorn.Server(server_config).run()
    return 0
