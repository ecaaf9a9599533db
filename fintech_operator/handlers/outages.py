"""A database outage in a handler is a short, jittered retry, not an error (issue 16).

PostgreSQL restarting (a fault campaign's ``pg_ctl -m immediate``, a failover) ends every open
connection: the handler that was using one raises ``psycopg.OperationalError`` (the connection
was lost, ``AdminShutdown``, ``CannotConnectNow``). kopf treats that as an arbitrary exception:
an ERROR with a traceback per handler, and a retry after its error delays, all at once. It is an
outage, expected and transient, so (house rule 8) it becomes a ``kopf.TemporaryError`` with a
delay drawn from 0.5 to 3 s, so a burst's retries spread out, and one WARNING naming the outage.
The transaction rolled back, so the retry is safe (every handler is idempotent).

Installed after :mod:`~fintech_operator.handlers.slots` (whose wrapper already turns the busy
kinds of ``OperationalError``, pool and lock timeouts, into its own retry), so it wraps that
wrapper; like it, it replaces handler entries in kopf's registry, which has no middleware hook.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import kopf
import psycopg

from fintech_operator.handlers import report, slots

log = logging.getLogger(__name__)
HandlerFn = Callable[..., Awaitable[Any]]
_MARK: Final = "__fintech_db_outage__"


def temporary(exc: psycopg.OperationalError, handler_name: str) -> kopf.TemporaryError:
    """The retry for an outage seen by ``handler_name``, logged once at WARNING."""
    delay = slots.retry_delay_seconds()
    what = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    log.warning("database outage in %s (%s); retrying in %.1f s", handler_name, what, delay)
    # The wait prefix makes kopf's own "failed temporarily" line an INFO (runtime's log filter).
    return kopf.TemporaryError(
        f"{report.WAIT_PREFIX}database outage ({what}); retrying in {delay:.1f} s", delay=delay
    )


def guard(fn: HandlerFn) -> HandlerFn:
    """``fn`` with its database outages turned into :func:`temporary` retries."""
    if getattr(fn, _MARK, False):
        return fn
    name = getattr(fn, "__qualname__", repr(fn))

    @functools.wraps(fn)
    async def guarded(**kwargs: Any) -> Any:
        try:
            return await fn(**kwargs)
        except psycopg.OperationalError as exc:
            raise temporary(exc, name) from exc

    setattr(guarded, _MARK, True)
    return guarded


def install(registry: Any) -> int:
    """Guard every async handler of ``registry`` (the operator's); return how many."""
    try:
        parts = (
            registry._changing._handlers,
            registry._spawning._handlers,
            registry._watching._handlers,
        )
    except AttributeError as exc:
        raise RuntimeError(
            f"kopf's registry has changed shape ({exc}): database outages are not guarded"
        ) from None
    guarded = 0
    for entries in parts:
        for position, handler in enumerate(entries):
            fn = handler.fn
            if not inspect.iscoroutinefunction(fn) or getattr(fn, _MARK, False):
                continue
            entries[position] = dataclasses.replace(handler, fn=guard(fn))
            guarded += 1
    log.info("%d handlers retry database outages after 0.5 to 3 s", guarded)
    return guarded


__all__ = ["guard", "install", "temporary"]
