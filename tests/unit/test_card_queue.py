"""The card issuance queue (issue 14): first come first served, one entry per card, bounded,
retries at the back after their delay, deleted cards dropped, and a clean stop. Pure asyncio."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import kopf
import pytest

from fintech_operator import config, runtime
from fintech_operator.app import card_state
from fintech_operator.handlers import card_queue
from fintech_operator.handlers.card_queue import CardQueue, Job
from fintech_operator.handlers.context import OperatorMemo

SETTINGS = {"DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # fmt: skip


def _job(n: int) -> Job:
    return Job(f"uid-{n}", "ns", f"card-{n}")


async def test_cards_come_out_in_the_order_they_were_queued() -> None:
    queue = CardQueue(10)
    for n in range(5):
        assert queue.offer(_job(n))
    got = [await queue.get() for _ in range(5)]
    assert [job.name for job in got if job is not None] == [f"card-{n}" for n in range(5)]


async def test_a_card_already_queued_is_not_queued_twice() -> None:
    """A pending card gets many watch events (its wait's status patches): one entry only."""
    queue = CardQueue(10)
    assert queue.offer(_job(1))
    assert queue.offer(_job(1))
    assert len(queue) == 1
    job = await queue.get()
    assert job == _job(1)
    assert queue.offer(_job(1))  # in a worker's hands: still one entry, not handed out again
    assert len(queue) == 1
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not second.done()  # the one entry is in hand: nothing else to hand out
    second.cancel()


async def test_the_bound_refuses_offers_and_a_put_waits_for_room() -> None:
    queue = CardQueue(2)
    assert queue.offer(_job(1))
    assert queue.offer(_job(2))
    assert not queue.offer(_job(3))
    waiting = asyncio.create_task(queue.put(_job(3)))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # full: the producer waits
    first = await queue.get()
    assert first is not None
    queue.done(first.uid)
    assert await asyncio.wait_for(waiting, 1) is True
    assert len(queue) == 2


async def test_a_waiting_card_comes_back_at_the_end_after_its_delay_with_its_attempt() -> None:
    queue = CardQueue(10)
    queue.offer(_job(1))
    queue.offer(_job(2))
    first = await queue.get()
    assert first == _job(1)
    queue.retry_later(first, 0.05)
    assert len(queue) == 2  # it keeps its place in the bound while it waits
    assert await queue.get() == _job(2)
    again = await asyncio.wait_for(queue.get(), 1)
    assert again == _job(1)._replace(attempt=1)


async def test_a_deleted_card_is_dropped_unless_a_worker_holds_it() -> None:
    queue = CardQueue(10)
    for n in range(3):
        queue.offer(_job(n))
    held = await queue.get()
    assert held == _job(0)
    queue.discard("uid-1")
    queue.discard("uid-0")  # in hand: the worker finds the card gone itself
    assert "uid-0" in queue
    assert "uid-1" not in queue
    assert await queue.get() == _job(2)


async def test_close_wakes_workers_with_none_and_refuses_producers() -> None:
    queue = CardQueue(1)
    worker = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    queue.offer(_job(1))
    assert await worker == _job(1)
    producer = asyncio.create_task(queue.put(_job(2)))  # full: waits for room
    idle = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    queue.close()
    assert await asyncio.wait_for(producer, 1) is False
    assert await asyncio.wait_for(idle, 1) is None
    assert not queue.offer(_job(3))


async def test_a_retry_pending_at_close_is_cancelled() -> None:
    queue = CardQueue(4)
    queue.offer(_job(1))
    job = await queue.get()
    assert job is not None
    queue.retry_later(job, 0.01)
    queue.close()
    await asyncio.sleep(0.03)
    assert await queue.get() is None


def test_a_queue_without_room_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CardQueue(0)


def test_workers_are_half_the_handlers_slots_and_at_least_one() -> None:
    assert card_queue.workers_for(8) == 3  # 6 slots
    assert card_queue.workers_for(4) == 1  # 2 slots
    assert card_queue.workers_for(1) == 1
    assert card_queue.workers_for(22) == 10


def test_failures_are_retried_later_and_later_up_to_a_minute() -> None:
    delays = [card_queue.error_delay_seconds(n) for n in range(10)]
    assert delays == sorted(delays)
    assert delays[0] == 1.0
    assert delays[-1] == 60.0


def _card(phase: str | None, account: str | None = None) -> kopf.Body:
    raw: dict[str, Any] = {"metadata": {"name": "c", "namespace": "ns", "uid": "u"}}
    if phase is not None:
        raw["status"] = {"phase": phase, **({"account": account} if account else {})}
    return kopf.Body(cast(kopf.RawBody, raw))


@pytest.mark.parametrize("phase", [None, "Pending"])
def test_undecided_cards_are_queued_on_every_event(phase: str | None) -> None:
    """kopf has no handler for them (``cards.decided`` is False): the queue is all they have."""
    assert not card_queue.cards.decided(_card(phase))
    for event_type in (None, "ADDED", "MODIFIED", "DELETED"):
        assert card_queue.wanted(_card(phase), type=event_type)


@pytest.mark.parametrize("phase", ["Active", "Frozen"])
def test_issued_cards_are_queued_only_when_listed_at_start_or_deleted(phase: str) -> None:
    """Their resume: the ledger's freeze and the mirror follow the status once per start; and
    their deletion, whose account is closed even when kopf never put its finalizer on."""
    assert card_queue.cards.decided(_card(phase))
    assert card_queue.wanted(_card(phase), type=None)
    assert card_queue.wanted(_card(phase), type="DELETED")
    for event_type in ("ADDED", "MODIFIED"):
        assert not card_queue.wanted(_card(phase), type=event_type)


async def test_a_deleted_issued_card_queues_the_closing_of_its_account() -> None:
    """Apart from the card's own job (a worker may still hold it while its status patch
    lands), so the closing is never swallowed as 'already queued'."""
    memo = OperatorMemo()
    card_queue.start(memo, kopf.OperatorSettings(), pool_max_size=8)
    runtime = memo.card_queue
    runtime.queue.offer(Job("u", "ns", "c"))
    assert await runtime.queue.get() == Job("u", "ns", "c")  # in a worker's hands
    body = _card("Active", account="card:ns/c:USD")
    await card_queue.enqueue(body=body, type="DELETED", memo=memo)
    closing = await runtime.queue.get()
    assert closing is not None
    assert closing.uid == "u/deleted"
    assert closing.deleted == card_state.IssuedCard(
        namespace="ns", name="c", uid="u", generation=0, phase="Active", account="card:ns/c:USD"
    )
    runtime.queue.close()


async def test_a_deleted_undecided_card_is_only_dropped() -> None:
    memo = OperatorMemo()
    card_queue.start(memo, kopf.OperatorSettings(), pool_max_size=8)
    runtime = memo.card_queue
    runtime.queue.offer(Job("u", "ns", "c"))
    await card_queue.enqueue(body=_card(None), type="DELETED", memo=memo)
    assert len(runtime.queue) == 0
    runtime.queue.close()


@pytest.mark.parametrize("phase", ["Rejected", "PendingReview", "Closed"])
def test_other_decided_cards_are_never_queued(phase: str) -> None:
    assert card_queue.cards.decided(_card(phase))
    for event_type in (None, "ADDED", "MODIFIED"):
        assert not card_queue.wanted(_card(phase), type=event_type)


def test_every_card_handler_of_kopf_is_for_decided_cards_only() -> None:
    """kopf stores nothing for an object none of its handlers match: no per-card state while a
    card waits in the queue (issue 14)."""
    registry = runtime.build_registry(config.load(SETTINGS))
    changing = [
        h
        for h in registry._changing._handlers
        if "cards" in (h.selector.plural, h.selector.any_name)
    ]
    assert changing
    assert all(h.when is card_queue.cards.decided for h in changing)
