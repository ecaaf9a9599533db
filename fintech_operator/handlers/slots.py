"""Handlers queue for the database instead of failing on it (issue 17).

kopf starts a handler for every new object at once: 2,000 Postings applied together became
2,000 handlers waiting on an 8-connection pool, and every wait past the pool timeout failed
and came back 60 seconds later as one wave (kopf's delay for an arbitrary exception). Here a
handler takes a slot of one semaphore sized from the pool (leaving connections for the outbox
relay and the metrics collector) when it first asks for a connection, and keeps it until it
returns; a handler without a slot waits in line (first come, first served) and costs nothing
but memory, and a handler that needs no connection never waits. A pool wait that still times
out (a slow database) becomes a short, jittered retry, not a 60-second wave.

kopf has no public middleware hook: like ``observability.reconcile``, :func:`install` replaces
the handler entries in kopf's registry, and must run before that module's instrumentation so
that a queued handler's retry is counted as ``retry``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import kopf
import psycopg
import psycopg_pool

log = logging.getLogger(__name__)
HandlerFn = Callable[..., Awaitable[Any]]
_MARK: Final = "__fintech_db_slot__"
# Connections kept out of the handlers' share: the outbox relay's and the metrics collector's.
RESERVED_CONNECTIONS: Final = 2
# A pool wait that timed out is retried after a delay drawn from this range (seconds), so the
# retries of a burst spread out instead of coming back together.
RETRY_DELAY_MIN_SECONDS: Final = 0.5
RETRY_DELAY_MAX_SECONDS: Final = 3.0
_random = secrets.SystemRandom()
# The database was busy, not broken: no connection free in time, a row lock held past
# lock_timeout, a statement past statement_timeout. Each rolled back; a retry is safe.
_BUSY: Final = (
    psycopg_pool.PoolTimeout,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.QueryCanceled,
)


def slots_for(pool_max_size: int) -> int:
    """Handlers allowed to run at once for a pool of ``pool_max_size`` connections."""
    return max(1, pool_max_size - RESERVED_CONNECTIONS)


def retry_delay_seconds() -> float:
    return _random.uniform(RETRY_DELAY_MIN_SECONDS, RETRY_DELAY_MAX_SECONDS)


class _SlottedPool:
    """The handler's view of the pool: its first ``connection()`` takes one of the slots,
    which the handler keeps (for its later connections too) until it returns. A handler that
    never touches the database (a field handler on creation, a wait) never queues."""

    def __init__(self, pool: Any, slots: asyncio.Semaphore) -> None:
        self._pool = pool
        self._slots = slots
        self._asked = False
        self._held = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    @contextlib.asynccontextmanager
    async def connection(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - psycopg_pool's own signature
    ) -> AsyncIterator[Any]:
        if not self._asked:
            self._asked = True  # a concurrent second call of the same handler does not queue
            await self._slots.acquire()
            self._held = True
        async with self._pool.connection(timeout=timeout) as conn:
            yield conn

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()


def limit(fn: HandlerFn, slots: asyncio.Semaphore) -> HandlerFn:
    """``fn`` holding one of ``slots`` from its first database connection until it returns;
    a database timeout (pool wait, row lock, statement) becomes a short jittered retry."""
    if getattr(fn, _MARK, False):
        return fn

    @functools.wraps(fn)
    async def limited(**kwargs: Any) -> Any:
        memo: kopf.Memo | None = kwargs.get("memo")
        pool = _SlottedPool(memo.pool, slots) if memo is not None and "pool" in memo else None
        if memo is not None and pool is not None:
            # A copy of kopf's per-object memo (itself a shallow copy of the operator's): the
            # handler sees its slotted pool, everything else is shared as before.
            kwargs = {**kwargs, "memo": type(memo)({**memo, "pool": pool})}
        try:
            return await fn(**kwargs)
        except _BUSY as exc:
            delay = retry_delay_seconds()
            raise kopf.TemporaryError(
                f"database busy ({exc}); retrying in {delay:.1f} s", delay=delay
            ) from exc
        finally:
            if pool is not None:
                pool.release()

    setattr(limited, _MARK, True)
    return limited


# The semaphore of the operator's handlers, shared with the card queue's workers
# (``card_queue``) so that the two together never take more than the slots.
_shared: list[asyncio.Semaphore] = []


def shared(pool_max_size: int) -> asyncio.Semaphore:
    """The operator's one semaphore of database slots (made on first use)."""
    if not _shared:
        _shared.append(asyncio.Semaphore(slots_for(pool_max_size)))
    return _shared[0]


def install(pool_max_size: int, registry: Any) -> int:
    """Put every async resource and timer handler of ``registry`` (the operator's) behind the
    one semaphore sized from the pool (:func:`shared`), which the card queue's workers take
    too; return how many handlers were wrapped."""
    slots = shared(pool_max_size)
    try:
        parts = (registry._changing._handlers, registry._spawning._handlers)
    except AttributeError:
        log.error("kopf's registry has changed shape: handlers are not queued for the database")
        return 0
    wrapped = 0
    for entries in parts:
        for position, handler in enumerate(entries):
            # Daemons hold their slot for the object's lifetime: they are left out.
            daemon = not hasattr(handler, "interval") and hasattr(handler, "cancellation_timeout")
            if daemon or not asyncio.iscoroutinefunction(handler.fn):
                continue
            entries[position] = dataclasses.replace(handler, fn=limit(handler.fn, slots))
            wrapped += 1
    log.info("%d handlers share %d database slots", wrapped, slots_for(pool_max_size))
    return wrapped


__all__ = ["install", "limit", "retry_delay_seconds", "shared", "slots_for"]
