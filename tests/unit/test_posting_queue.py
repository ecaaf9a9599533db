"""The posting queue keeps each card's order, batches postings, bounds what waits, and hands
each posting its own outcome (issue 14). A fake PostingBatch port stands in for PostgreSQL:
it runs the steps in order and, like a savepoint, turns one step's exception into that
posting's result only."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Sequence
from typing import Any, cast

import pytest

from fintech_operator.app import posting, posting_queue


class FakeLedger:
    """What the steps were given: records the commands decided, in order."""

    def __init__(self) -> None:
        self.decided: list[str] = []


class FakeBatch:
    """Runs the steps in order; a step's exception is its own result (a savepoint's rollback).
    ``gate``, when set, holds every batch until opened; ``running`` tracks the cards in
    batches in flight so a test can see two batches never share one."""

    def __init__(self, fail_whole: bool = False) -> None:
        self.ledger = FakeLedger()
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.in_flight_max = 0
        self.cards_in_flight: list[set[str]] = []
        self.shared_card = False
        self.fail_whole = fail_whole

    async def run(self, steps: Sequence[posting_queue.Step]) -> list[posting.Outcome | Exception]:
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            before = len(self.ledger.decided)
            results: list[posting.Outcome | Exception] = []
            for step in steps:
                try:
                    results.append(await step(cast(posting.PostingLedger, self.ledger)))
                except Exception as exc:
                    results.append(exc)
            self.batches.append(self.ledger.decided[before:])
            if self.fail_whole:
                raise ConnectionError("commit failed")
            return results
        finally:
            self.in_flight -= 1


async def fake_decide(command: Any, ledger: Any) -> posting.Outcome:
    """Rejected with the command as its message; a command named "bad-..." raises."""
    ledger.decided.append(command)
    await asyncio.sleep(0)  # a real decision awaits the database: let others run meanwhile
    if str(command).startswith("bad"):
        raise ValueError(f"{command} failed")
    return posting.Rejected("Test", str(command))


def _queue(batch: FakeBatch, **limits: int) -> posting_queue.PostingQueue:
    queue = posting_queue.PostingQueue(batch, posting_queue.Limits(**limits), fake_decide)
    queue.start()
    return queue


async def _submit(queue: posting_queue.PostingQueue, card: str, command: str) -> posting.Outcome:
    return await queue.submit(card, cast(posting.Command, command))


async def test_each_card_keeps_its_order_and_every_posting_gets_its_own_outcome() -> None:
    batch = FakeBatch()
    queue = _queue(batch, workers=3, batch_max=4)
    names = [(f"card-{i % 3}", f"p-{i:02d}") for i in range(30)]
    outcomes = await asyncio.gather(*(_submit(queue, card, name) for card, name in names))
    await queue.stop()
    assert [cast(posting.Rejected, o).message for o in outcomes] == [n for _, n in names]
    for card in ("card-0", "card-1", "card-2"):
        mine = [n for c, n in names if c == card]
        assert [n for n in batch.ledger.decided if n in mine] == mine


async def test_postings_that_arrive_together_share_batches_up_to_batch_max() -> None:
    batch = FakeBatch()
    queue = _queue(batch, workers=1, batch_max=3)
    await asyncio.gather(*(_submit(queue, f"c{i}", f"p{i}") for i in range(7)))
    await queue.stop()
    assert [len(b) for b in batch.batches] == [3, 3, 1]


async def test_one_card_is_never_in_two_batches_at_once() -> None:
    """Per-card serialisation: with three workers and one card, batches run one at a time,
    each with consecutive postings of that card in order."""
    batch = FakeBatch()
    queue = _queue(batch, workers=3, batch_max=5)
    await asyncio.gather(*(_submit(queue, "only", f"p{i:02d}") for i in range(23)))
    await queue.stop()
    assert batch.in_flight_max == 1
    assert [len(b) for b in batch.batches] == [5, 5, 5, 5, 3]
    assert [name for b in batch.batches for name in b] == [f"p{i:02d}" for i in range(23)]


async def test_different_cards_run_in_parallel_batches() -> None:
    batch = FakeBatch()
    batch.gate = asyncio.Event()
    queue = _queue(batch, workers=3, batch_max=1)
    tasks = [asyncio.create_task(_submit(queue, f"c{i}", f"p{i}")) for i in range(3)]
    for _ in range(10):
        await asyncio.sleep(0)
    assert batch.in_flight == 3
    batch.gate.set()
    await asyncio.gather(*tasks)
    await queue.stop()


async def test_a_failed_posting_fails_alone_in_its_batch() -> None:
    """The savepoint isolation, as the port reports it: the failing posting gets its own
    exception, the others of the same batch their outcomes."""
    batch = FakeBatch()
    queue = _queue(batch, workers=1, batch_max=10)
    results = await asyncio.gather(
        _submit(queue, "a", "p1"),
        _submit(queue, "b", "bad-p2"),
        _submit(queue, "c", "p3"),
        return_exceptions=True,
    )
    await queue.stop()
    assert len(batch.batches) == 1
    assert cast(posting.Rejected, results[0]).message == "p1"
    assert isinstance(results[1], ValueError)
    assert cast(posting.Rejected, results[2]).message == "p3"


async def test_a_batch_that_does_not_commit_fails_each_of_its_postings() -> None:
    batch = FakeBatch(fail_whole=True)
    queue = _queue(batch, workers=1, batch_max=10)
    results = await asyncio.gather(
        _submit(queue, "a", "p1"), _submit(queue, "a", "p2"), return_exceptions=True
    )
    await queue.stop()
    assert all(isinstance(result, ConnectionError) for result in results)


async def test_past_waiting_max_a_posting_is_refused_at_once() -> None:
    batch = FakeBatch()
    batch.gate = asyncio.Event()
    queue = _queue(batch, workers=1, batch_max=1, waiting_max=2)
    first = asyncio.create_task(_submit(queue, "a", "p0"))  # taken into the held batch
    for _ in range(5):
        await asyncio.sleep(0)
    waiting = [asyncio.create_task(_submit(queue, "a", f"p{i}")) for i in (1, 2)]
    await asyncio.sleep(0)
    assert queue.waiting == 2
    with pytest.raises(posting_queue.QueueFull, match="at most 2"):
        await _submit(queue, "b", "p3")
    batch.gate.set()
    await asyncio.gather(first, *waiting)
    await queue.stop()


async def test_stop_fails_the_waiting_postings_and_refuses_new_ones() -> None:
    batch = FakeBatch()
    batch.gate = asyncio.Event()
    queue = _queue(batch, workers=1, batch_max=1)
    in_flight = asyncio.create_task(_submit(queue, "a", "p0"))
    for _ in range(5):
        await asyncio.sleep(0)
    waiting = asyncio.create_task(_submit(queue, "a", "p1"))
    await asyncio.sleep(0)
    stopping = asyncio.create_task(queue.stop(timeout_seconds=5))
    await asyncio.sleep(0)
    batch.gate.set()  # the batch in flight finishes and commits
    await stopping
    assert cast(posting.Rejected, await in_flight).message == "p0"
    with pytest.raises(posting_queue.Stopped):
        await waiting
    with pytest.raises(posting_queue.Stopped):
        await _submit(queue, "a", "p2")
    assert batch.ledger.decided == ["p0"]


async def test_stop_past_its_timeout_cancels_the_batch_and_fails_its_postings() -> None:
    batch = FakeBatch()
    batch.gate = asyncio.Event()  # never opened: the batch hangs
    queue = _queue(batch, workers=1, batch_max=1)
    in_flight = asyncio.create_task(_submit(queue, "a", "p0"))
    for _ in range(5):
        await asyncio.sleep(0)
    await queue.stop(timeout_seconds=0.05)
    with pytest.raises(posting_queue.Stopped):
        await in_flight


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": 65}, "workers"),
        ({"batch_max": 0}, "batch_max"),
        ({"batch_max": 501}, "batch_max"),
        ({"waiting_max": 0}, "waiting_max"),
    ],
)
def test_bad_limits_fail_on_construction(limits: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        posting_queue.Limits(**limits)


def test_the_default_limits_are_the_documented_ones() -> None:
    assert posting_queue.Limits() == posting_queue.Limits(3, 20, 20_000)


async def test_starting_twice_is_refused() -> None:
    queue = _queue(FakeBatch())
    with pytest.raises(RuntimeError, match="already started"):
        queue.start()
    await queue.stop()


TRACE: contextvars.ContextVar[str] = contextvars.ContextVar("trace", default="worker's")


async def test_each_posting_is_decided_in_its_submitters_context() -> None:
    """A posting's SQL and outbox event must join its handler's trace: the decision runs in the
    context the handler submitted from (its current span lives in a context variable), even
    though a worker task of the queue runs the batch."""
    seen: dict[str, str] = {}

    async def decide(command: Any, ledger: Any) -> posting.Outcome:
        seen[str(command)] = TRACE.get()
        return posting.Rejected("Test", str(command))

    queue = posting_queue.PostingQueue(FakeBatch(), posting_queue.Limits(), decide)
    queue.start()

    async def handler(name: str) -> posting.Outcome:
        TRACE.set(f"trace-of-{name}")
        return await queue.submit(name, cast(posting.Command, name))

    await asyncio.gather(*(handler(f"p{index}") for index in range(5)))
    await queue.stop()
    assert seen == {f"p{index}": f"trace-of-p{index}" for index in range(5)}
