"""New Cards are issued from a bounded in-process queue by a few workers (issue 14).

A kopf handler that waits for the database keeps, for as long as it waits, the card's body,
kopf's per-object worker, queue and cause, and its own coroutine: 10,000 cards applied at once
held about 70 KiB each for a quarter of an hour, and the operator's memory never came back down.
Here the waiting happens outside kopf, in a few bytes per card:

- kopf is blind to an undecided card: every changing handler of Card is filtered with
  ``when=cards.decided``, and kopf stores no state (no progress, no last-handled
  configuration, no finalizer) for an object none of its handlers match. A watch-event handler
  (:func:`enqueue`, which keeps nothing) records the card's uid, namespace and name in the queue
  and returns.
- ``workers_for(pool)`` workers (half of the handlers' database slots, and they take those same
  slots, so the queue and kopf's handlers together never use more connections than the slots)
  take the cards first come, first served. A worker reads the card as it is now
  (:func:`kube.get`), runs the issuance (``cards.issue``, which calls ``app.issuance``) and writes
  ONE status patch: the decision and, in it, kopf's last-handled configuration of the spec it
  decided on, so kopf then sees a decided card with nothing to do. A wait (a missing product,
  the processor) patches the wait's status and puts the card back in the queue after its delay.
- Nothing is lost when the operator stops: a card in the queue has no status yet, so after a
  restart kopf's listing shows it undecided and it is queued again (the issuance is idempotent:
  a decision recorded before the stop is found, not made twice). On start the issued cards are
  queued once too, as ``resume`` jobs: the ledger's freeze and the authorization mirror follow
  each card's status, as kopf's resume handler did.
- A card deleted while queued is dropped (the DELETED event takes it out; a worker that reads
  no card, or whose status patch finds the card gone or replaced, issues nothing or closes the
  account it has just opened). The DELETED event of an issued card queues the closing of its
  account too: a card deleted in the moment after its status patch and before kopf put its
  finalizer on gets no kopf delete handler, and would otherwise keep an open account.

The queue holds at most ``QUEUE_SIZE_MAX`` cards; past that the watch-event handler waits for
room, which holds kopf's per-object worker as before: the bound only says where memory grows
again, not that cards are dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple, cast

import kopf

from fintech_operator import api, kube
from fintech_operator.app import card_state, stores
from fintech_operator.handlers import cards, slots
from fintech_operator.handlers.context import OperatorMemo
from fintech_operator.observability import reconcile

if TYPE_CHECKING:
    from fintech_operator import config

log = logging.getLogger(__name__)
# Cards queued at once (a few hundred bytes each); past it the watch handler waits for room.
QUEUE_SIZE_MAX: Final = 100_000
# A stopping operator lets its workers finish the card in hand this long, then cancels them
# (a cancelled issuance is repeated after the restart; it is idempotent).
WORKER_STOP_SECONDS: Final = 10.0
# An unexpected failure of one card is retried after these delays (then every 60 s), as kopf
# retried a failed handler (runtime's ``error_delays``).
ERROR_DELAYS_SECONDS: Final = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# The indexes an issuance reads (kopf passes each to a handler under its function's name).
INDEXES: Final = ("cardproducts", "cards_by_user", "riskpolicies", "compliancepolicies")


class Job(NamedTuple):
    """One card to work: issue it (``resume`` False) or make its ledger follow it (True), or,
    when ``deleted`` is set, close the ledger account of an issued card that is gone."""

    uid: str
    namespace: str
    name: str
    resume: bool = False
    attempt: int = 0
    deleted: card_state.IssuedCard | None = None


class CardQueue:
    """First come, first served; one entry per card uid (queued, waiting to retry, or in a
    worker's hands); at most ``size_max`` entries. Pure asyncio, no I/O."""

    def __init__(self, size_max: int) -> None:
        if size_max < 1:
            raise ValueError(f"the card queue needs room for at least 1 card, not {size_max}")
        self.size_max = size_max
        self._jobs: dict[str, Job] = {}
        self._order: collections.deque[str] = collections.deque()
        self._working: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self.closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, uid: object) -> bool:
        return uid in self._jobs

    def offer(self, job: Job) -> bool:
        """Queue ``job`` unless its card is already in; False only when full or closed."""
        if self.closed:
            return False
        if job.uid in self._jobs:
            return True
        if len(self._jobs) >= self.size_max:
            return False
        self._jobs[job.uid] = job
        self._order.append(job.uid)
        self._wakeup.set()
        return True

    async def put(self, job: Job) -> bool:
        """:meth:`offer`, waiting for room; False when the queue is (or gets) closed."""
        while not self.offer(job):
            if self.closed:
                return False
            self._room.clear()
            await self._room.wait()
        return True

    async def get(self) -> Job | None:
        """The next card, marked as in hand until :meth:`done` or :meth:`retry_later`; None
        once the queue is closed."""
        while True:
            if self.closed:
                return None
            while self._order:
                uid = self._order.popleft()
                job = self._jobs.get(uid)
                if job is not None and uid not in self._working and uid not in self._timers:
                    self._working.add(uid)
                    return job
            self._wakeup.clear()
            await self._wakeup.wait()

    def done(self, uid: str) -> None:
        """The card in hand is finished (decided, gone, or nothing to do): forget it."""
        self._working.discard(uid)
        self._forget(uid)

    def retry_later(self, job: Job, delay_seconds: float) -> None:
        """The card in hand waits: back at the end of the queue after ``delay_seconds``,
        keeping its place in the bound meanwhile."""
        self._working.discard(job.uid)
        if self.closed or job.uid not in self._jobs:
            self._forget(job.uid)
            return
        self._jobs[job.uid] = job._replace(attempt=job.attempt + 1)
        loop = asyncio.get_running_loop()
        self._timers[job.uid] = loop.call_later(max(0.0, delay_seconds), self._due, job.uid)

    def discard(self, uid: str) -> None:
        """The card was deleted: drop it unless a worker has it in hand (that worker finds
        the card gone)."""
        if uid not in self._working:
            self._forget(uid)

    def close(self) -> None:
        """Stop: waiting workers get None, waiting producers False; queued cards are dropped
        (their cards have no status yet: the next start queues them again)."""
        self.closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._wakeup.set()
        self._room.set()

    def _due(self, uid: str) -> None:
        self._timers.pop(uid, None)
        if uid in self._jobs and not self.closed:
            self._order.append(uid)
            self._wakeup.set()

    def _forget(self, uid: str) -> None:
        if self._jobs.pop(uid, None) is not None:
            self._room.set()
        timer = self._timers.pop(uid, None)
        if timer is not None:
            timer.cancel()


def workers_for(pool_max_size: int) -> int:
    """Workers for a pool: half of the handlers' database slots, at least one."""
    return max(1, slots.slots_for(pool_max_size) // 2)


def error_delay_seconds(attempt: int) -> float:
    return ERROR_DELAYS_SECONDS[min(attempt, len(ERROR_DELAYS_SECONDS) - 1)]


# --- The operator's queue and its workers ---------------------------------------------------------


@dataclass
class _Runtime:
    """What the workers share: the queue, the operator's memo, kopf's storages, the slots."""

    queue: CardQueue
    memo: OperatorMemo
    settings: kopf.OperatorSettings
    slots: asyncio.Semaphore
    workers: int
    indexes: dict[str, Any] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def start(memo: OperatorMemo, settings: kopf.OperatorSettings, pool_max_size: int) -> None:
    """Make the operator's queue (from its startup handler; the workers start with the first
    card, inside kopf's context, so that their Events reach kopf's poster)."""
    memo.card_queue = _Runtime(
        queue=CardQueue(QUEUE_SIZE_MAX),
        memo=memo,
        settings=settings,
        slots=slots.shared(pool_max_size),
        workers=workers_for(pool_max_size),
    )


async def stop(memo: OperatorMemo) -> None:
    """Close the queue; let each worker finish its card for a bounded time (before the pool
    closes: the operator's cleanup calls this first)."""
    runtime: _Runtime | None = memo.get("card_queue")
    if runtime is None:
        return
    runtime.queue.close()
    if not runtime.tasks:
        return
    _, pending = await asyncio.wait(runtime.tasks, timeout=WORKER_STOP_SECONDS)
    for task in pending:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*pending, return_exceptions=True)
    log.info("card queue stopped: %d card(s) left for the next start", len(runtime.queue))


def wanted(body: kopf.Body, type: str | None, **_: Any) -> bool:
    """The events :func:`enqueue` acts on: an undecided card (and its deletion), and an issued
    card in kopf's listing at start (``type`` None), whose ledger follows its status."""
    if not cards.decided(body):
        return True
    issued = (body.get("status") or {}).get("phase") in cards.ISSUED_PHASES
    return issued and type in (None, "DELETED")


async def enqueue(
    body: kopf.Body,
    type: str | None,
    memo: OperatorMemo,
    **kwargs: Any,
) -> None:
    """Queue an undecided card for a worker (or a listed issued card for its resume)."""
    runtime: _Runtime | None = memo.get("card_queue")
    if runtime is None:
        return  # not started (a test registry): nothing to queue into
    meta = body.metadata
    uid = str(meta.uid)
    if type == "DELETED" or meta.get("deletionTimestamp") is not None:
        runtime.queue.discard(uid)
        if type == "DELETED" and cards.decided(body):
            await runtime.queue.put(_closing_job(body))
        return
    if not runtime.tasks:
        _start_workers(runtime, kwargs)
    job = Job(uid, str(meta.namespace), str(meta.name), resume=cards.decided(body))
    await runtime.queue.put(job)


def _closing_job(body: kopf.Body) -> Job:
    """An issued card is gone: its account is closed (again: closing is idempotent). kopf's
    delete handler closes it too, but only for a card that carries kopf's finalizer, and a card
    deleted just after the worker's status patch, before kopf put its finalizer on, has none.
    Keyed apart from the card's own job, which a worker may still hold while its patch lands."""
    card = cards.issued_card(body)
    return Job(f"{card.uid}/deleted", card.namespace, card.name, deleted=card)


def _start_workers(runtime: _Runtime, kwargs: dict[str, Any]) -> None:
    # kopf hands the same live index objects to every handler: keep them for the workers.
    runtime.indexes = {name: kwargs[name] for name in INDEXES}
    for number in range(runtime.workers):
        task = asyncio.create_task(_worker(runtime), name=f"card-issuance-{number}")
        runtime.tasks.append(task)
    log.info("card issuance: %d workers on the handlers' database slots", runtime.workers)


async def _worker(runtime: _Runtime) -> None:
    queue = runtime.queue
    while (job := await queue.get()) is not None:
        try:
            delay = await _work(runtime, job)
        except Exception:  # one card's failure must not stop the worker
            delay = error_delay_seconds(job.attempt)
            log.exception("card %s/%s: issuance failed; retried in %.0f s", *job[1:3], delay)
        if delay is None:
            queue.done(job.uid)
        else:
            queue.retry_later(job, delay)


# Timed, traced and logged as kopf's handlers are (``reconcile Card`` span, the reconcile
# histogram, rejections by reason): the queue runs the issuance where kopf's handler used to.
_ISSUE: Final = reconcile.wrap(cards.issue, "issue")


async def _work(runtime: _Runtime, job: Job) -> float | None:
    """One card; returns the delay before its next attempt, or None when it is finished."""
    if job.deleted is not None:
        await _slotted(runtime, _delete)(card=job.deleted, memo=runtime.memo)
        return None
    return await _issue_or_resume(runtime, job)


async def _issue_or_resume(runtime: _Runtime, job: Job) -> float | None:
    raw = await kube.get("cards", job.namespace, job.name)
    if raw is None or (raw.get("metadata") or {}).get("uid") != job.uid:
        return None  # deleted (or replaced by a newer card of the same name) while queued
    body = kopf.Body(cast(kopf.RawBody, raw))
    if body.metadata.get("deletionTimestamp") is not None:
        return None
    if job.resume:
        await _slotted(runtime, _resume)(body=body, memo=runtime.memo)
        return None
    if cards.decided(body):
        return None  # decided meanwhile (by a previous run whose patch landed)
    patch = kopf.Patch()
    delay: float | None = None
    try:
        await _slotted(runtime, _ISSUE)(
            body=body, spec=body.spec, patch=patch, retry=job.attempt, memo=runtime.memo,
            **runtime.indexes,
        )  # fmt: skip
        _store_handled(runtime.settings, body, patch)
    except kopf.TemporaryError as exc:  # a wait: its status is in the patch
        delay = exc.delay if exc.delay is not None else error_delay_seconds(job.attempt)
        log.info("card %s/%s: %s", job.namespace, job.name, exc)
    if patch.status and not await _patch(job, patch):
        await _card_gone(runtime, body, patch)
        return None
    return delay


def _store_handled(settings: kopf.OperatorSettings, body: kopf.Body, patch: kopf.Patch) -> None:
    """kopf's last-handled configuration of the decided card, in the same patch: kopf then
    finds no change to handle (its handlers' ``spec.*`` fields are inside the essence already,
    so no extra fields are needed)."""
    persistence = settings.persistence
    essence = persistence.diffbase_storage.build(body=body)
    essence = persistence.progress_storage.clear(essence=essence)
    persistence.diffbase_storage.store(body=body, patch=patch, essence=essence)
    if (body.status.get("kopf") or {}).get("progress"):  # left by an older operator's handler
        patch["status"]["kopf"]["progress"] = None


async def _patch(job: Job, patch: kopf.Patch) -> bool:
    return await kube.patch_status(
        "cards", job.namespace, job.name, job.uid, cast(dict[str, Any], patch["status"])
    )


async def _card_gone(runtime: _Runtime, body: kopf.Body, patch: kopf.Patch) -> None:
    """The card was deleted while its issuance ran: close the account just opened."""
    account = patch.status.get("account")
    meta = body.metadata
    log.info("card %s/%s was deleted while being issued", meta.namespace, meta.name)
    if not account:
        return
    card = card_state.IssuedCard(
        namespace=str(meta.namespace),
        name=str(meta.name),
        uid=str(meta.uid),
        generation=int(meta.get("generation") or 0),
        phase=patch.status.get("phase"),
        account=str(account),
    )
    await _slotted(runtime, _delete)(card=card, memo=runtime.memo)


async def _delete(card: card_state.IssuedCard, memo: OperatorMemo) -> None:
    outcome = await card_state.delete_card(card, stores.Cards(memo.pool))
    log.info("card %s/%s deleted: %s", card.namespace, card.name, outcome)


async def _resume(body: kopf.Body, memo: OperatorMemo) -> None:
    await cards.resume(body, body.spec, memo)


def _slotted(runtime: _Runtime, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``fn`` on one of the operator's database slots (see ``slots.limit``)."""
    return slots.limit(fn, runtime.slots)


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add :func:`enqueue` to ``registry`` (see ``handlers.register``); the workers start
    with the operator (:func:`start`)."""
    kopf.on.event(api.GROUP, api.VERSION, "cards", when=wanted, registry=registry)(enqueue)


__all__ = [
    "QUEUE_SIZE_MAX",
    "CardQueue",
    "Job",
    "enqueue",
    "error_delay_seconds",
    "register",
    "start",
    "stop",
    "wanted",
    "workers_for",
]
