"""The expiry worker, ``fintech-operator authorization-expiry`` (issue 13, item 2).

An approved authorization holds funds until it is captured, voided, or reaches its product's
``authorizationTtlSeconds``; this process releases the expired ones. Each pass is ONE statement
(``authorization_expire`` of migration 0050): it expires up to ``batch_max`` due
authorizations, skipping a card whose row another transaction holds (``SKIP LOCKED``: expiry
never waits behind a purchase), and re-checks each authorization's status under the card's lock,
so a hold is released exactly once however many workers run and wherever one is killed: a
killed pass rolls back whole, and the next pass (of this worker restarted, or of another) does
it again. Nothing is kept in memory between passes; the database is the worker's only state.

A full batch is followed at once by another; otherwise the worker sleeps ``interval_seconds``.
A lost database connection is retried with backoff (capped), for as long as the process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from fintech_operator import config
from fintech_operator.authorizations import store
from fintech_operator.events import consuming

log = logging.getLogger(__name__)
SERVICE: Final = "fintech-authorization-expiry"
BACKOFF_MAX_SECONDS: Final = 30.0
CONNECT_TIMEOUT_SECONDS: Final = 10


@dataclass(frozen=True)
class Limits:
    """How often and how much one worker expires. Checked at start-up."""

    interval_seconds: float = 1.0  # Pause after a pass that found fewer than batch_max.
    batch_max: int = 500  # Authorizations expired per pass (one transaction).
    statement_timeout_ms: int = 30_000  # Longest pass; a stuck one rolls back.

    def __post_init__(self) -> None:
        if not 0.01 <= self.interval_seconds <= 3600:
            raise ValueError("interval_seconds must be in 0.01..3600")
        if not 1 <= self.batch_max <= store.EXPIRE_BATCH_MAX:
            raise ValueError(f"batch_max must be in 1..{store.EXPIRE_BATCH_MAX}")
        if not 100 <= self.statement_timeout_ms <= 600_000:
            raise ValueError("statement_timeout_ms must be in 100..600000")


async def run(settings: config.Settings, stop: asyncio.Event, limits: Limits) -> None:
    """Expire due authorizations until ``stop`` is set."""
    failures = 0
    while not stop.is_set():
        try:
            async with await _connect(settings, limits) as conn:
                failures = 0
                await _passes(conn, stop, limits)
        except psycopg.OperationalError as exc:
            failures += 1
            delay = min(BACKOFF_MAX_SECONDS, 0.5 * 2 ** min(failures, 10))
            log.warning(
                "authorization expiry: database unavailable (%s); retry in %.1fs", exc, delay
            )
            await _sleep(stop, delay)


async def _connect(settings: config.Settings, limits: Limits) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(
        settings.database.url,
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        options=f"-c statement_timeout={int(limits.statement_timeout_ms)}",
    )


async def _passes(conn: psycopg.AsyncConnection[Any], stop: asyncio.Event, limits: Limits) -> None:
    expirer = store.PostgresStore()
    while not stop.is_set():
        expired = await expirer.expire(conn, limits.batch_max)
        if expired:
            log.info("authorization expiry: released %d expired hold(s)", expired)
        if expired < limits.batch_max:
            await _sleep(stop, limits.interval_seconds)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def main(settings: config.Settings, limits: Limits) -> int:
    """Entry point of ``fintech-operator authorization-expiry``."""
    return consuming.main(SERVICE, settings, lambda settings, stop: run(settings, stop, limits))


__all__ = ["Limits", "main", "run"]
