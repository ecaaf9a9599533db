"""``fintech-operator gateway``: the app on uvicorn (uvloop, httptools) with a connection pool.

The process reads nothing from the Kubernetes API: every decision is the store's, in
PostgreSQL. It holds one psycopg pool of ``FINTECH_GATEWAY_DB_POOL_MAX_SIZE`` connections;
requests wait for one inside their deadline.

With ``FINTECH_GATEWAY_WORKERS`` (or ``--workers``) above 1, uvicorn's supervisor binds the
socket and runs that many worker processes on it, each building its own app from the
environment (:func:`worker_app`); their metrics go to a shared directory and ``/metrics``
shows the sum (:func:`fintech_operator.observability.metrics.exposed_registry`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import fastapi
import psycopg
import uvicorn
from prometheus_client import multiprocess
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
WORKER_APP: Final = "fintech_operator.gateway.server:worker_app"


def load_store() -> contract.Store:
    """The PostgreSQL store (imported here so the gateway depends on the contract only)."""
    module: Any = importlib.import_module(STORE_MODULE)
    store: contract.Store = module.PostgresStore()
    return store


def _pool(
    config: settings.GatewayProcessSettings,
) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
    """The gateway's pool, not yet open: a pool wait never outlasts a request's deadline."""
    return AsyncConnectionPool(
        config.database.url,
        min_size=config.gateway.db_pool_min_size,
        max_size=config.gateway.db_pool_max_size,
        open=False,
        timeout=config.gateway.deadline_ms / 1000,
        # The store calls its prepared statements on these directly (contract.StoreConnection).
        connection_class=contract.StoreConnection,
        # Autocommit: each store call is one statement, its own transaction, one round trip.
        kwargs={
            "autocommit": True,
            "connect_timeout": max(1, round(config.gateway.db_connect_timeout_seconds)),
            # PostgreSQL cancels a statement still running at the deadline, so a request the
            # gateway already declined cannot commit a hold later on its own: if this process
            # dies before it settles (kill -9 while the statement waits on a lock), nobody
            # would release that hold (found by the fault campaign, tests/faults).
            "options": f"-c statement_timeout={config.gateway.deadline_ms}",
        },
        name="gateway",
    )


def build(config: settings.GatewayProcessSettings, store: contract.Store) -> fastapi.FastAPI:
    """The app with its pool, gate and secret source, opened and closed by its lifespan."""
    pool = _pool(config)

    def connect(wait_seconds: float) -> contextlib.AbstractAsyncContextManager[gate.Connection]:
        return pool.connection(timeout=wait_seconds)

    the_gate = gate.Gate(
        store,
        connect,
        gate.Limits(
            deadline_seconds=config.gateway.deadline_ms / 1000,
            in_flight_max=config.gateway.in_flight_max,
            settle_timeout_seconds=config.gateway.settle_timeout_seconds,
            queue_max=config.gateway.queue_max,
            queue_wait_seconds=config.gateway.queue_wait_seconds,
        ),
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
        # Everything built so far (modules, the app, the pool) lives as long as the process:
        # out of the collector's sight, so a full collection under load does not walk it
        # (tens of ms each on this machine: found in the bench's p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            left = await the_gate.drain(DRAIN_TIMEOUT_SECONDS)
            if left:
                log.error("stopping with requests not yet settled", extra={"count": left})
            await pool.close()
            if metrics.multiprocess_dir() is not None:
                # This worker's in-flight gauge leaves the sum (a "live" gauge).
                multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    deps = gateway_app.Deps(
        gate=the_gate,
        secrets=trust.SecretSource(
            config.gateway.signing_secret_file, config.gateway.secret_refresh_seconds
        ),
        limits=gateway_app.Limits(
            config.gateway.body_bytes_max, config.gateway.signature_tolerance_seconds
        ),
        ready=ready,
        serve_metrics=config.metrics.port == 0,
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


def worker_app() -> fastapi.FastAPI:
    """The app of one worker process (uvicorn's factory), configured from the environment
    the supervisor checked before starting the workers."""
    config = settings.load()
    logs.configure(config.logs.level)
    metrics.build_info.labels(lifecycle.version(), "fintech-gateway").set(1)
    return build(config, load_store())


def main(*, create_secret: bool = False, workers: int | None = None) -> int:
    """Run the gateway until SIGTERM or SIGINT; ``workers`` overrides FINTECH_GATEWAY_WORKERS."""
    logs.configure()
    if workers is not None:
        # Through the environment: checked like the variable, and the workers inherit it.
        os.environ[settings.env_name("workers")] = str(workers)
    try:
        config = settings.load()
    except settings.GatewaySettingsError as exc:
        log.error("%s", exc)
        return 2
    logs.configure(config.logs.level)
    if create_secret and create_secret_file(config.gateway.signing_secret_file):
        log.info("wrote a new signing secret", extra={"path": config.gateway.signing_secret_file})
    try:
        trust.SecretSource(config.gateway.signing_secret_file, 0).keys()
        check_tls(config)
        check_listen(config)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    log.info(
        "gateway listening",
        extra={
            "host": config.gateway.host,
            "port": config.gateway.port,
            "workers": config.gateway.workers,
        },
    )
    if config.gateway.workers == 1:
        metrics.build_info.labels(lifecycle.version(), "fintech-gateway").set(1)
        if config.metrics.port:
            metrics.serve(config.health.host, config.metrics.port)
        uvicorn.Server(
            uvicorn.Config(build(config, load_store()), **_uvicorn_options(config))
        ).run()
        return 0
    with _shared_metrics_dir():
        if config.metrics.port:
            metrics.serve(config.health.host, config.metrics.port)
        uvicorn.run(
            WORKER_APP, factory=True, workers=config.gateway.workers, **_uvicorn_options(config)
        )
    return 0


def _uvicorn_options(config: settings.GatewayProcessSettings) -> dict[str, Any]:
    return {
        "host": config.gateway.host,
        "port": config.gateway.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        # Our own log lines say what happened without ever printing a path or a body.
        "access_log": False,
        "log_config": None,
        "timeout_graceful_shutdown": int(DRAIN_TIMEOUT_SECONDS),
        "backlog": 2048,
        **tls_options(config),
    }


def tls_options(config: settings.GatewayProcessSettings) -> dict[str, Any]:
    """uvicorn's TLS options: none for plain HTTP; with a client CA, a client certificate
    signed by it is required in the handshake (a connection without one is closed before any
    HTTP is read)."""
    if config.gateway.tls_cert_file is None:
        return {}
    options: dict[str, Any] = {
        "ssl_certfile": config.gateway.tls_cert_file,
        "ssl_keyfile": config.gateway.tls_key_file,
    }
    if config.gateway.tls_client_ca_file is not None:
        options["ssl_ca_certs"] = config.gateway.tls_client_ca_file
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def check_tls(config: settings.GatewayProcessSettings) -> None:
    """Load the TLS files once at start, so a bad one stops the process naming its variable
    (:class:`ValueError`) instead of failing in uvicorn (or in each worker)."""
    if config.gateway.tls_cert_file is None or config.gateway.tls_key_file is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert, key = settings.env_name("tls_cert_file"), settings.env_name("tls_key_file")
    try:
        context.load_cert_chain(config.gateway.tls_cert_file, config.gateway.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{cert} / {key}: cannot load the certificate and key: {exc}") from None
    if config.gateway.tls_client_ca_file is not None:
        try:
            context.load_verify_locations(config.gateway.tls_client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            name = settings.env_name("tls_client_ca_file")
            raise ValueError(f"{name}: cannot load the client CA: {exc}") from None


def check_listen(config: settings.GatewayProcessSettings) -> None:
    """Bind the gateway's address once before serving, so a port that is taken (another
    gateway, a second `dev`) or a host that does not resolve stops the start naming the
    variables (:class:`ValueError`), as the metrics and probe ports do, instead of uvicorn's
    own error after "gateway listening"."""
    host, port = config.gateway.host, config.gateway.port
    names = f"{settings.env_name('host')} / {settings.env_name('port')}"
    try:
        # As uvicorn binds (its family rule, SO_REUSEADDR): a port in TIME_WAIT is free, one
        # that listens is not.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ValueError(f"{names}: cannot listen on {host}:{port}: {reason}") from None


@contextlib.contextmanager
def _shared_metrics_dir() -> Iterator[None]:
    """A fresh directory for the workers' metrics (prometheus_client's multiprocess mode),
    removed at exit; one the environment already names is used as it is. It is handed to the
    workers through the environment, the one channel both uvicorn's worker processes and
    prometheus_client read (see ``metrics.multiprocess_dir``)."""
    if metrics.multiprocess_dir() is not None:
        yield
        return
    path = tempfile.mkdtemp(prefix="fintech-gateway-metrics-")
    os.environ[metrics.MULTIPROCESS_DIR_VARIABLE] = path
    try:
        yield
    finally:
        del os.environ[metrics.MULTIPROCESS_DIR_VARIABLE]
        shutil.rmtree(path, ignore_errors=True)
