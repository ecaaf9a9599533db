"""The operator process: kopf, the ledger's connection pool and the outbox relay.

Start-up order matters: migrations first (locked, so several replicas are safe),
then topics, then the pool and the relay, and only then do handlers run. kopf keeps
its own bookkeeping in ``status.kopf`` rather than in annotations, so GitOps tools
see no drift in what users wrote.

The operator runs on its own kopf registry, built by :func:`build_registry` from the settings
``cli`` loaded; kopf's default registry stays empty (importing a handler registers nothing).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import socket
from typing import Any

import kopf
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api, config, handlers, kube, logs, memory
from fintech_operator.app import posting_queue, stores
from fintech_operator.authorizations import expiry
from fintech_operator.cards import http_tokenizer, tokenizer
from fintech_operator.events import collector, kafka, relay
from fintech_operator.handlers import card_queue, context
from fintech_operator.handlers.context import OperatorMemo
from fintech_operator.ledger import grants, migrate
from fintech_operator.observability import lifecycle, tracing

log = logging.getLogger(__name__)
FINALIZER = f"{api.GROUP}/finalizer"
# How long the startup waits for the API server to serve our kinds before the process fails
# (and is restarted by its supervisor): an API server restart re-serves CRDs within seconds.
KINDS_SERVED_TIMEOUT_SECONDS = 120.0


class _WaitsLogAsInfo(logging.Filter):
    """kopf logs every TemporaryError at ERROR; a resource waiting for something that is not
    there yet (a product, a card, the processor) is expected, so its retries log at INFO. The
    message carries the attempt count ("attempt 3 of 30")."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._mark = f"failed temporarily: {prefix}"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and self._mark in str(record.msg):
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


def _stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (kopf's stop flag), which a second signal sets again,
    harmlessly. kopf's own handlers resolve a future, and a second signal while the operator
    stops (``dev`` forwards SIGTERM to a child the process group already got it from) raised
    InvalidStateError from that future."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _signalled, stop, signum)


def _signalled(stop: asyncio.Event, signum: int) -> None:
    if stop.is_set():
        log.info("signal %s received again while stopping: ignored", signal.Signals(signum).name)
        return
    log.info("signal %s received: the operator stops", signal.Signals(signum).name)
    stop.set()


async def _startup(settings: kopf.OperatorSettings, memo: OperatorMemo, **_: Any) -> None:
    # kopf installs its signal handlers just before the startup handlers run: replace them.
    _stop_on_signals(memo.stop_flag)
    app = memo.settings  # loaded once, by cli
    # kopf scans API discovery once, right after this handler: wait until it lists our kinds
    # (a fault campaign found an operator restarted during an etcd restart blind for good).
    await kube.wait_until_served(
        frozenset(kind.plural for kind in api.KINDS), KINDS_SERVED_TIMEOUT_SECONDS
    )
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(
        field="status.kopf.last-handled-configuration"
    )
    # Our own Events (kopf.info/warn) say what a user needs; kopf's per-handler log
    # chatter stays in the logs. The level also filters explicit events, so it must
    # stay at INFO for the Normal "Posted"/"Issued" Events to reach the API.
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.networking.request_timeout = 60
    settings.watching.server_timeout = 300
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]

    applied = await asyncio.to_thread(migrate.apply_configured, app.database)
    log.info("database migrations applied: %s", applied or "none (up to date)")
    await kafka.until_reachable(app)  # retried quickly while the broker restarts
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        app.database.url,
        min_size=app.database.pool_size_min,
        max_size=app.database.pool_size_max,
        timeout=app.database.timeout_seconds,
        open=False,
        connection_class=tracing.TracedConnection,
        # psycopg takes whole seconds, at least 2; FINTECH_DB_TIMEOUT_SECONDS bounds it too.
        kwargs={"connect_timeout": max(2, int(app.database.timeout_seconds))},
    )
    await pool.open(wait=True, timeout=app.database.timeout_seconds)
    await _warn_if_owner(pool)
    # The relay owns its Kafka producer: it replaces it after a failed batch so that nothing
    # an abandoned producer still holds can overtake a retry. Trace context travels in the
    # outbox rows' headers, which the relay publishes as Kafka headers.
    stop = asyncio.Event()
    relay_task = asyncio.create_task(relay.run(app, pool, stop), name="outbox-relay")
    # Holds past their product's TTL are released here too (one statement per pass, SKIP
    # LOCKED, exactly once however many replicas run it); `authorization-expiry` runs it alone.
    expiry_task = asyncio.create_task(
        expiry.run(app, stop, expiry.Limits()), name="authorization-expiry"
    )
    # A burst's freed memory goes back to the system (issue 14; see fintech_operator.memory).
    trim_task = asyncio.create_task(memory.trim_until(stop), name="memory-trim")
    memo.pool = pool
    memo.relay_stop = stop
    memo.relay_task = relay_task
    memo.expiry_task = expiry_task
    memo.trim_task = trim_task
    _start_collector_and_queue(app, pool, memo)
    _start_cards(memo, settings, app)
    _stop_on_signals(memo.stop_flag)  # Again, in case kopf's handlers were installed after ours.


def _start_cards(memo: OperatorMemo, settings: kopf.OperatorSettings, app: config.Settings) -> None:
    """The cards' operator-wide state: the namespaces' refresh and review timers, and the
    bounded queue from which a few workers on the handlers' slots issue new cards."""
    memo.card_refresh_last = {}  # namespace -> monotonic time of its last batched card refresh
    memo.card_orphan_sweep_last = {}  # namespace -> monotonic end of its last orphan sweep
    memo.card_review_waits = {}  # card uid -> (attempts, monotonic time of the next) of its review
    card_queue.start(memo, settings, app.database.pool_size_max)


def _start_collector_and_queue(
    app: config.Settings, pool: AsyncConnectionPool[Any], memo: OperatorMemo
) -> None:
    memo.metrics_collector = collector.start(app, pool)  # outbox backlog, consumer lag
    # Postings queue per card and are decided in batches (issue 14, app/posting_queue.py).
    memo.posting_queue = posting_queue.PostingQueue(
        stores.PostingBatch(pool),
        posting_queue.Limits(app.postings.workers, app.postings.batch_max, app.postings.queue_max),
    )
    memo.posting_queue.start()


async def _warn_if_owner(pool: AsyncConnectionPool[Any]) -> None:
    async with pool.connection() as conn:
        owned = await grants.owned_table_count(conn)
    if owned:
        # Allowed (development runs as one role), but the guards of the ledger are then only
        # as strong as this process: say so where an operator of the platform will look.
        log.warning(
            "connected to the ledger as the owner of %d tables: it could disable the ledger's "
            "triggers; in production set FINTECH_MIGRATION_DATABASE_URL and "
            "FINTECH_DATABASE_RUNTIME_ROLE (docs/install.md, 'Database roles')",
            owned,
        )


def _ignore_signals_from_now_on() -> None:
    """Past cleanup only the interpreter's exit is left: a signal that arrives now (the
    second of a pair) is ignored. Removing the loop's handlers first matters: closing the loop
    would otherwise reset them to the default action, which kills the process."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)


async def _cleanup(memo: OperatorMemo, **_: Any) -> None:
    _ignore_signals_from_now_on()
    await card_queue.stop(memo)  # before the pool closes: a worker may hold a card
    await collector.stop(memo.get("metrics_collector"))
    queue: posting_queue.PostingQueue | None = memo.get("posting_queue")
    if queue is not None:
        # Batches in flight commit (or roll back); postings still waiting stay undecided and
        # are decided after a restart, where their idempotency keys make a repeat a replay.
        await queue.stop()
    stop: asyncio.Event | None = memo.get("relay_stop")
    if stop is not None:
        stop.set()
        await asyncio.wait_for(memo.relay_task, timeout=30)
        await asyncio.wait_for(memo.expiry_task, timeout=30)
        await asyncio.wait_for(memo.trim_task, timeout=30)
    if "pool" in memo:
        await memo.pool.close()


def _check_probe_port(host: str, port: int) -> None:
    """Refuse to start when the probe's port is taken: kopf would fail later, inside a task,
    with a message that names neither the port nor the setting."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As aiohttp binds it: a stopped listener's TIME_WAIT connections do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise config.SettingsError(
                f"cannot serve the liveness probe on {host}:{port} (--liveness-port or "
                f"FINTECH_HEALTH_PORT): {exc.strerror}"
            ) from None


def run_operator(
    settings: config.Settings, namespaces: list[str], liveness_port: int | None
) -> int:
    """Entry point of ``fintech-operator run``, with the settings ``cli`` loaded;
    ``liveness_port`` (the flag) wins over ``FINTECH_HEALTH_PORT``."""
    logs.configure(settings.logs.level)
    config.check_operator(settings)  # fail now, naming the variables
    # Fail closed before anything starts: no processor URL and no explicit development opt-in.
    if isinstance(http_tokenizer.from_settings(settings), tokenizer.BuiltinTokenizer):
        log.warning(
            "card tokenizer: the built-in development tokenizer (FINTECH_TOKENIZER=development); "
            "cards get random last 4 digits and no processor knows them: never in production"
        )
    if liveness_port is None:
        liveness_port = settings.health.port
    host = settings.health.host
    _check_probe_port(host, liveness_port)
    registry = build_registry(settings)
    logging.getLogger("kopf.objects").addFilter(_WaitsLogAsInfo(handlers.report.WAIT_PREFIX))
    # Queue handlers for the pool's connections (issue 17); before the timing wraps them.
    handlers.slots.install(settings.database.pool_size_max, registry)
    handlers.outages.install(registry)  # a lost database connection is a short retry (issue 16)
    handlers.readiness.install()  # one readiness waiter per toggle set, not per object
    lifecycle.start_operator(settings, registry)  # tracing, /metrics, timing of every handler
    liveness = f"http://{host}:{liveness_port}/healthz" if liveness_port else None
    kopf_settings = _kopf_settings(settings, namespaces)
    asyncio.run(_operate(settings, registry, kopf_settings, namespaces, liveness))
    return 0


def _kopf_settings(settings: config.Settings, namespaces: list[str]) -> kopf.OperatorSettings:
    """kopf's settings known before it starts (``_startup`` sets the rest)."""
    kopf_settings = kopf.OperatorSettings()
    # The chart grants no access to Namespaces or CRDs: exact namespace names need no scanning
    # (patterns, used in development, do), and new CRDs come with an upgrade, which restarts us.
    kopf_settings.scanning.disabled = not any(set(ns) & set("*?[!") for ns in namespaces)
    # One active operator: the chart names a kopf peering object, which is then mandatory (as
    # kopf.operator(peering_name=...) makes it); without one (development, tests) the operator
    # is standalone. Without a priority each replica takes a random one.
    kopf_settings.peering.standalone = not settings.peering.name
    if settings.peering.name:
        kopf_settings.peering.mandatory = True
        kopf_settings.peering.name = settings.peering.name
    kopf_settings.peering.priority = settings.peering.priority or secrets.randbelow(2**31 - 2) + 1
    return kopf_settings


def build_registry(settings: config.Settings) -> kopf.OperatorRegistry:
    """The operator's kopf registry: login, start-up and clean-up, then every handler.

    A fresh registry, not kopf's default one: nothing is registered by importing a module, and
    what runs is what this function lists, configured from ``settings``.
    """
    registry = kopf.OperatorRegistry()
    # kopf's default registry logs in through the kubernetes client library (in-cluster
    # credentials, else the kubeconfig), as kube.py's client does; an explicit registry
    # starts with no login handler, so the same one is named here.
    kopf.on.login(registry=registry, id="login_via_client", errors=kopf.ErrorsMode.IGNORED)(
        kopf.login_via_client
    )
    # Ours before the handlers' own (handlers.recon): the pool and the relay exist first, and
    # on the way out the card queue and the posting queue stop before the pool closes.
    kopf.on.startup(registry=registry)(_startup)
    kopf.on.cleanup(registry=registry)(_cleanup)
    handlers.register(registry, settings)
    return registry


async def _operate(
    settings: config.Settings,
    registry: kopf.OperatorRegistry,
    kopf_settings: kopf.OperatorSettings,
    namespaces: list[str],
    liveness: str | None,
) -> None:
    # The stop flag lives in this loop; the startup handler points the signals at it.
    stop = asyncio.Event()
    await kopf.operator(
        registry=registry,
        # All of an object's due handlers in one cycle, so one status patch: kopf's default
        # runs one per cycle (a new Card has three: issue and two field handlers), a patch each.
        lifecycle=kopf.lifecycles.all_at_once,
        memo=context.OperatorMemo.for_operator(settings, stop),
        stop_flag=stop,
        settings=kopf_settings,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
