"""The gateway's two limits on work: a global in-flight limit and a per-answer deadline.

Every signed, valid request takes one slot out of ``in_flight_max`` before it touches the
database. With none free it waits for one in a FIFO queue of at most ``queue_max`` requests,
for at most ``queue_wait_seconds``; a request that finds the queue full, or whose wait ends
without a slot, is declined ``Overloaded`` (nothing written, so a retry may be approved). A
slot freed while requests wait passes to the oldest of them. The queue is what lets a burst
be answered: a thousand authorizations arriving together are worked through at the ledger's
rate inside their deadline, where a limit without a queue declined all but ``in_flight_max``
of them (bench/RESULTS.md, "Bursts at the gateway"). A slot is held until the request's
database work is over, not just until it is answered, so a stalled PostgreSQL fills the slots,
then the queue; its waiters are declined when their wait ends, and every request beyond the
queue at once: nothing waits longer than ``queue_wait_seconds`` for a database that does not
answer, and the queue never holds more than ``queue_max``.

The store's work runs in its own task. If it has not answered when the request's deadline
passes, the request is declined with ``IssuerUnavailable`` at once, and in the background the
task is cancelled and awaited, then ``store.settle_timed_out`` is called (retried, bounded) so
that a hold committed late is released and a retry gets the same decline. The same happens
when the store raises: the outcome of a transaction whose COMMIT failed half-way is unknown.

The settle is told the attempt's age: how long ago this gateway received it, on its monotonic
clock, from the moment the request was read (``started``). An answer the id already had before
then was committed by an earlier attempt (one cut by a fault, or answered and sent again), and
the settle leaves it alone: a retry of any request gets its first committed answer and changes
nothing. The processor's signed ``webhook-timestamp`` is not used for this: it has whole
seconds and another machine's clock, and a cutoff that is early by a second would withdraw an
approval answered a moment before the retry arrived.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from fintech_operator.authorizations import contract
from fintech_operator.gateway import answers
from fintech_operator.observability import metrics

log = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[Any]
# Opens a connection (from the pool) waiting at most the given seconds for it.
Connect = Callable[[float], AbstractAsyncContextManager[Connection]]
Work = Callable[[Connection], Awaitable[contract.Answer]]

SETTLE_BACKOFF_FIRST_SECONDS: Final = 0.05
SETTLE_BACKOFF_MAX_SECONDS: Final = 5.0


@dataclass(frozen=True)
class Limits:
    """How much work a gate takes on and how long it gives it (see the module's docstring)."""

    deadline_seconds: float
    in_flight_max: int
    settle_timeout_seconds: float
    queue_max: int = 0
    queue_wait_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.in_flight_max < 1 or self.queue_max < 0 or self.queue_wait_seconds < 0:
            raise ValueError("in_flight_max >= 1, queue_max >= 0 and queue_wait_seconds >= 0")


class Gate:
    """Runs store calls under the in-flight limit and the deadline; owns the settle tasks."""

    def __init__(
        self,
        store: contract.Store,
        connect: Connect,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._connect = connect
        self._deadline_seconds = limits.deadline_seconds
        self._in_flight_max = limits.in_flight_max
        self._queue_max = limits.queue_max
        self._queue_wait_seconds = limits.queue_wait_seconds
        self._settle_timeout_seconds = limits.settle_timeout_seconds
        self._clock = clock
        self._in_flight = 0
        # Requests waiting for a slot, oldest first; a slot is handed over by resolving one.
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def store(self) -> contract.Store:
        return self._store

    async def run(
        self, request_id: str, work: Work, *, started: float, settle: bool = True
    ) -> contract.Answer:
        """``work``'s answer, or a decline: Overloaded (no slot), IssuerUnavailable (late).

        ``settle`` is False for reads: a late read wrote nothing, and ``request_id`` is then
        the id of an existing authorization, which settling would release.
        """
        if not await self._slot(started):
            return self._declined(request_id, contract.Reason.OVERLOADED, settle=settle)
        remaining = self._deadline_seconds - (self._clock() - started)
        task = asyncio.create_task(self._with_connection(work, max(remaining, 0.001)))
        try:
            done, _ = await asyncio.wait({task}, timeout=max(remaining, 0.0))
        except asyncio.CancelledError:
            # The caller went away (shutdown): the work finishes on its own and frees its slot.
            self._spawn(self._finish(task))
            raise
        if task in done and task.exception() is None:
            self._release()
            return task.result()
        if task in done:
            log.warning(
                "store call failed; declining IssuerUnavailable and settling",
                extra={"request_id": request_id, "error": type(task.exception()).__name__},
            )
        else:
            log.warning(
                "deadline passed; declining IssuerUnavailable and settling",
                extra={"request_id": request_id, "deadline_ms": self._deadline_seconds * 1000},
            )
        self._spawn(
            self._settle(task, request_id, started) if settle else self._finish(task, cancel=True)
        )
        return self._declined(request_id, contract.Reason.ISSUER_UNAVAILABLE, settle=settle)

    @staticmethod
    def _declined(request_id: str, reason: contract.Reason, *, settle: bool) -> contract.Answer:
        if settle:
            return answers.decline(request_id, reason)
        # A read declines nothing: it is simply not answered now.
        return contract.Answer(503, answers.refusal("unavailable", f"{reason}: retry later"))

    async def _with_connection(self, work: Work, wait_seconds: float) -> contract.Answer:
        async with self._connect(wait_seconds) as conn:
            return await work(conn)

    async def _slot(self, started: float) -> bool:
        """Whether this request got a slot: a free one at once, or one handed over while it
        waited in the queue (no longer than the queue's wait, nor past its own deadline)."""
        if self._in_flight < self._in_flight_max:
            self._in_flight += 1
            metrics.gateway_in_flight.set(self._in_flight)
            return True
        wait_seconds = min(
            self._queue_wait_seconds, self._deadline_seconds - (self._clock() - started)
        )
        if len(self._waiters) >= self._queue_max or wait_seconds <= 0:
            return False
        handed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(handed)
        metrics.gateway_waiting.set(len(self._waiters))
        try:
            await asyncio.wait({handed}, timeout=wait_seconds)
        except asyncio.CancelledError:
            # The caller went away (shutdown). A slot handed over meanwhile passes on.
            if handed.done():
                self._release()
            raise
        finally:
            if not handed.done():
                handed.cancel()
                self._waiters.remove(handed)
                metrics.gateway_waiting.set(len(self._waiters))
        return handed.done() and not handed.cancelled()

    def _release(self) -> None:
        """Free a slot: to the oldest waiter (which then counts as in flight), or to the pool."""
        while self._waiters:
            # A waiter leaves the queue itself when its wait ends, so each one here still
            # waits; a done one would be skipped all the same.
            handed = self._waiters.popleft()
            metrics.gateway_waiting.set(len(self._waiters))
            if not handed.done():
                handed.set_result(None)
                return
        self._in_flight -= 1
        metrics.gateway_in_flight.set(self._in_flight)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finish(self, task: asyncio.Task[contract.Answer], *, cancel: bool = False) -> None:
        try:
            if cancel:
                task.cancel()
            await asyncio.wait({task})
            if not task.cancelled():
                task.exception()
        finally:
            self._release()

    async def _settle(
        self, task: asyncio.Task[contract.Answer], request_id: str, received: float
    ) -> None:
        """Stop the late work, then make sure it left nothing; the slot is freed at the end."""
        try:
            task.cancel()
            # The late transaction must be over (committed or rolled back) before settling,
            # or the settle could run before a hold it should release exists.
            await asyncio.wait({task}, timeout=self._settle_timeout_seconds)
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: logged above, not an unhandled-task warning
            metrics.gateway_settled(await self._settle_with_retries(request_id, received))
        finally:
            self._release()

    async def _settle_with_retries(self, request_id: str, received: float) -> bool:
        give_up_at = self._clock() + self._settle_timeout_seconds
        delay = SETTLE_BACKOFF_FIRST_SECONDS
        while True:
            remaining = give_up_at - self._clock()
            try:
                async with asyncio.timeout(max(remaining, 0.001)):
                    async with self._connect(max(remaining, 0.001)) as conn:
                        # Measured now, after the connection was had: the database subtracts
                        # it from its own clock to find when this attempt arrived.
                        age_seconds = max(0.0, self._clock() - received)
                        await self._store.settle_timed_out(conn, request_id, age_seconds)
            except Exception as exc:
                if self._clock() + delay >= give_up_at:
                    log.error(
                        "could not settle a request that missed its deadline",
                        extra={"request_id": request_id, "error": type(exc).__name__},
                    )
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, SETTLE_BACKOFF_MAX_SECONDS)
            else:
                log.info(
                    "settled a request that missed its deadline", extra={"request_id": request_id}
                )
                return True

    async def drain(self, timeout_seconds: float) -> int:
        """Wait for settle tasks at shutdown; the number still running when time ran out."""
        pending = set(self._background)
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait(pending, timeout=timeout_seconds)
        return sum(1 for task in pending if not task.done())
