"""Wake a worker on PostgreSQL NOTIFY, with a periodic scan as the safety net.

A :class:`Listener` holds one dedicated autocommit connection that LISTENs on a
channel and sets an :class:`asyncio.Event` for every notification. A notification
is sent at COMMIT of the transaction that inserted a row (migrations 0020 and 0022
install the triggers), so a worker that waits on :meth:`Listener.wait` reacts at
once instead of polling. Notifications are not durable: while the connection is down,
or in the instant between a scan and the wait, one can be missed, so every wait also
ends after the caller's poll interval. Correctness never depends on a notification;
only latency does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_SECONDS: Final = 10
# How long one wait for notifications lasts before the connection is checked.
HEALTH_CHECK_SECONDS: Final = 30.0
RECONNECT_BACKOFF_MAX_SECONDS: Final = 10.0


class Listener:
    """LISTEN on ``channel`` in the background; :meth:`wait` returns on a notification."""

    def __init__(self, dsn: str, channel: str) -> None:
        if not channel.isidentifier() or len(channel) > 63:
            raise ValueError(f"invalid channel name {channel!r}")
        self._dsn = dsn
        self._channel = channel
        self._event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.payloads: set[str] = set()
        self.connected = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"listen-{self._channel}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def clear(self) -> set[str]:
        """Forget notifications seen so far (call before a scan); return their payloads."""
        self._event.clear()
        seen, self.payloads = self.payloads, set()
        return seen

    async def wait(self, timeout_seconds: float) -> bool:
        """Wait for a notification since the last :meth:`clear`; False on timeout."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout_seconds)
        except TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                self.connected = False
                log.warning("LISTEN %s lost (%s); retrying in %.1fs", self._channel, exc, backoff)
                # Wake the waiter: anything may have been inserted while we were deaf.
                self._event.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX_SECONDS)

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self.connected = True
            self._event.set()  # Rows may have arrived before we listened.
            while True:
                async for notify in conn.notifies(timeout=HEALTH_CHECK_SECONDS):
                    self.payloads.add(notify.payload)
                    self._event.set()
                await conn.execute("SELECT 1")  # Fails fast when the server went away.
