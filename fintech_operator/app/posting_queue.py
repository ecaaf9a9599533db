"""The operator's posting queue: per-card order, a few workers, postings batched (issue 14).

Before it, every Posting handler ran its own transaction at once: a burst of 2,000 became
2,000 transactions racing for the same card locks and the same system balance rows, which
turned into lock timeouts, TemporaryError retries and several status patches per posting.
Here a handler hands its command to :meth:`PostingQueue.submit` and waits for the outcome;

- postings of one card are decided in the order they were submitted, one batch at a time:
  a card in a batch that has not committed yet is not given to another worker, so no two
  transactions ever wait for the same card account (per-card serialisation in the operator,
  not in row locks);
- ``workers`` tasks each take up to ``batch_max`` postings (different cards, or consecutive
  postings of one card, in order) and decide them in ONE database transaction through the
  :class:`PostingBatch` port, each under its own savepoint: a rejected posting rolls back only
  its own savepoint and keeps its own decision (the same :func:`posting.decide` a single
  posting uses); the batch commits once, so a burst costs one commit per batch;
- at most ``waiting_max`` postings wait; past that :meth:`submit` raises :class:`QueueFull`
  at once (the handler turns it into a short kopf retry: back-pressure, not memory growth).

Shutdown (:meth:`stop`): no new batch starts, batches in flight commit (or roll back, if
cancelled after the timeout), postings still waiting fail with :class:`Stopped`. A posting is
never posted twice: its idempotency key makes a retry after a restart a replay.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from fintech_operator.app import posting

log = logging.getLogger(__name__)

# The ledger a step is given decides against the batch's transaction.
Step = Callable[[posting.PostingLedger], Awaitable[posting.Outcome]]
Decide = Callable[[posting.Command, posting.PostingLedger], Coroutine[None, None, posting.Outcome]]
STOP_TIMEOUT_SECONDS: Final = 30.0


class PostingBatch(Protocol):
    """Runs steps in ONE transaction, each under its own savepoint, in order."""

    async def run(self, steps: Sequence[Step]) -> list[posting.Outcome | Exception]:
        """Each step's outcome, or the exception that rolled back its savepoint (the others
        still commit). Raises when the transaction itself fails (nothing was committed)."""
        ...


class QueueFull(Exception):
    """Too many postings wait already: try again a little later."""


class Stopped(Exception):
    """The operator is stopping: the posting stays undecided and is retried after a restart."""


@dataclass(frozen=True)
class Limits:
    """The queue's bounds; checked on construction, so a bad setting fails at start-up."""

    workers: int = 3  # batches in flight at once (each holds one pooled connection)
    batch_max: int = 20  # postings in one transaction
    waiting_max: int = 20_000  # postings waiting; more are refused with QueueFull

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 64:
            raise ValueError(f"workers must be in 1..64, got {self.workers}")
        if not 1 <= self.batch_max <= 500:
            raise ValueError(f"batch_max must be in 1..500, got {self.batch_max}")
        if not 1 <= self.waiting_max <= 1_000_000:
            raise ValueError(f"waiting_max must be in 1..1000000, got {self.waiting_max}")


@dataclass
class _Job:
    card: Hashable
    command: posting.Command
    done: asyncio.Future[posting.Outcome]
    # The submitting handler's context (its trace span, its log fields): the posting's SQL and
    # outbox event belong to the handler's trace, not to the worker's.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


@dataclass
class _State:
    """Who waits and which cards are free. A card is in ``ready`` exactly when it has waiting
    jobs and is in no batch in flight (``busy``)."""

    waiting: dict[Hashable, collections.deque[_Job]] = field(default_factory=dict)
    ready: collections.deque[Hashable] = field(default_factory=collections.deque)
    busy: set[Hashable] = field(default_factory=set)
    count: int = 0


class PostingQueue:
    """See the module's docstring. ``decide`` is :func:`posting.decide` (a test may wrap it)."""

    def __init__(
        self, batch: PostingBatch, limits: Limits, decide: Decide = posting.decide
    ) -> None:
        self._batch = batch
        self._limits = limits
        self._decide = decide
        self._state = _State()
        self._changed = asyncio.Condition()
        self._stopping = False
        self._workers: list[asyncio.Task[None]] = []

    @property
    def waiting(self) -> int:
        """Postings submitted and not yet taken into a batch."""
        return self._state.count

    def start(self) -> None:
        if self._workers:
            raise RuntimeError("the posting queue is already started")
        self._workers = [
            asyncio.create_task(self._work(), name=f"posting-worker-{index}")
            for index in range(self._limits.workers)
        ]
        for task in self._workers:
            task.add_done_callback(_log_if_failed)

    async def submit(self, card: Hashable, command: posting.Command) -> posting.Outcome:
        """Queue ``command`` behind the earlier postings of ``card``; its outcome when decided.

        Raises :class:`QueueFull` or :class:`Stopped` at once, or the exception of a batch
        that did not commit (nothing of it was written: the caller retries).
        """
        if self._stopping:
            raise Stopped("the operator is stopping")
        state = self._state
        if state.count >= self._limits.waiting_max:
            raise QueueFull(f"{state.count} postings wait (at most {self._limits.waiting_max})")
        job = _Job(card, command, asyncio.get_running_loop().create_future())
        async with self._changed:
            queue = state.waiting.get(card)
            if queue is None:
                queue = state.waiting[card] = collections.deque()
                if card not in state.busy:
                    state.ready.append(card)
            queue.append(job)
            state.count += 1
            self._changed.notify()
        return await job.done

    async def stop(self, timeout_seconds: float = STOP_TIMEOUT_SECONDS) -> None:
        """Let the batches in flight finish (cancelled after ``timeout_seconds``: they roll
        back), then fail every posting still waiting with :class:`Stopped`."""
        async with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=timeout_seconds)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        state = self._state
        for queue in state.waiting.values():
            for job in queue:
                if not job.done.done():
                    job.done.set_exception(Stopped("the operator stopped before this posting"))
        state.waiting.clear()
        state.ready.clear()
        state.count = 0

    async def _work(self) -> None:
        while True:
            taken = await self._next_batch()
            if taken is None:
                return
            jobs, cards = taken
            try:
                await self._run(jobs)
            finally:
                await self._release(cards)

    async def _run(self, jobs: list[_Job]) -> None:
        steps = [self._step_of(job) for job in jobs]
        results: Sequence[posting.Outcome | Exception]
        try:
            results = await self._batch.run(steps)
            if len(results) != len(jobs):
                raise RuntimeError(f"{len(results)} results for a batch of {len(jobs)}")
        except asyncio.CancelledError:
            # Stopped past the timeout: the transaction rolled back, nothing was decided.
            _settle(jobs, [Stopped("the operator stopped during this posting")] * len(jobs))
            raise
        except Exception as exc:  # the transaction failed: nothing of the batch committed
            log.warning("a batch of %d postings did not commit: %s", len(jobs), exc)
            results = [exc] * len(jobs)
        _settle(jobs, results)

    def _step_of(self, job: _Job) -> Step:
        async def step(ledger: posting.PostingLedger) -> posting.Outcome:
            # Its own task only to run in the submitter's context; awaited at once, so the
            # batch's connection is still used by one step at a time.
            decided = self._decide(job.command, ledger)
            return await asyncio.create_task(decided, context=job.context)

        return step

    async def _next_batch(self) -> tuple[list[_Job], list[Hashable]] | None:
        """Up to ``batch_max`` jobs from the cards that are ready, in order; None to stop."""
        state, batch_max = self._state, self._limits.batch_max
        async with self._changed:
            while not state.ready and not self._stopping:
                await self._changed.wait()
            if self._stopping:
                return None
            jobs: list[_Job] = []
            cards: list[Hashable] = []
            while state.ready and len(jobs) < batch_max:
                card = state.ready.popleft()
                state.busy.add(card)
                cards.append(card)
                queue = state.waiting[card]
                while queue and len(jobs) < batch_max:
                    job = queue.popleft()
                    state.count -= 1
                    if not job.done.done():  # a cancelled handler's job is dropped
                        jobs.append(job)
                if not queue:
                    del state.waiting[card]
            return jobs, cards

    async def _release(self, cards: list[Hashable]) -> None:
        """The batch committed (or failed): its cards' next postings may go."""
        state = self._state
        async with self._changed:
            for card in cards:
                state.busy.discard(card)
                if card in state.waiting:
                    state.ready.append(card)
            self._changed.notify_all()


def _log_if_failed(task: asyncio.Task[None]) -> None:
    """A worker ends only when the queue stops; one that failed is a bug: say so loudly, since
    the postings it would have decided wait for the other workers only."""
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped with an error: %r", task.get_name(), task.exception())


def _settle(jobs: Sequence[_Job], results: Sequence[posting.Outcome | Exception]) -> None:
    for job, result in zip(jobs, results, strict=True):
        if job.done.done():  # its handler was cancelled (the operator stops)
            continue
        if isinstance(result, Exception):
            job.done.set_exception(result)
        else:
            job.done.set_result(result)


__all__ = ["Limits", "PostingBatch", "PostingQueue", "QueueFull", "Stopped"]
