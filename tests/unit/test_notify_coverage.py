"""The notifier's routing gate: no event is matched against a Webhook list older than it.

Pure: a scripted source of Webhook versions stands in for the API server's list, and the
gate's limits are made small (tenths of a second) so the waits are real but short.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import time

import pytest

from fintech_operator.notify import coverage, endpoints

ONE: frozenset[endpoints.Version] = frozenset({("uid-1", 1)})
TWO: frozenset[endpoints.Version] = frozenset({("uid-1", 1), ("uid-2", 1)})


class Source:
    """Lists answered from a script: a version set, or an exception to raise."""

    def __init__(self, *answers: frozenset[endpoints.Version] | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[float] = []

    async def versions(self) -> tuple[frozenset[endpoints.Version], float]:
        listed_at = time.time()
        self.calls.append(listed_at)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer, listed_at


def gate_of(source: Source, hold_max_seconds: float = 5.0) -> tuple[coverage.Gate, list[int]]:
    """A gate whose reload lists in full (counted) and notes what it listed."""
    reloads: list[int] = []

    async def reload() -> None:
        versions, listed_at = await source.versions()
        reloads.append(1)
        gate.note(versions, listed_at)

    gate = coverage.Gate(source, reload, skew_seconds=0.3, hold_max_seconds=hold_max_seconds)
    return gate, reloads


def test_needed_at_is_the_newest_event_plus_the_skew() -> None:
    base = datetime.datetime(2026, 12, 5, 7, 0, tzinfo=datetime.UTC)
    times = [base, base + datetime.timedelta(seconds=3), base + datetime.timedelta(seconds=1)]
    assert coverage.needed_at(times, 2.0) == base.timestamp() + 5.0
    assert coverage.needed_at([], 2.0) == -math.inf  # only poison: nothing to wait for


def test_retry_delay_doubles_up_to_its_cap() -> None:
    delays = [coverage.retry_delay_seconds(n) for n in (1, 2, 3, 4, 10, 1000)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


async def test_a_covering_list_routes_at_once_without_listing() -> None:
    source = Source(ONE)
    gate, _ = gate_of(source)
    gate.note(ONE, time.time())
    assert await gate.hold(time.time() - 1.0)
    assert source.calls == []


async def test_a_fresh_event_waits_for_a_list_started_after_its_time_plus_the_skew() -> None:
    """The list the event is routed with started at or after event time + skew, however
    recent the last list was; an unchanged set of Webhooks needs no full reload."""
    source = Source(ONE)
    gate, reloads = gate_of(source)
    gate.note(ONE, time.time())
    needed = coverage.needed_at([datetime.datetime.now(datetime.UTC)], gate.skew_seconds)
    assert await gate.hold(needed)
    assert len(source.calls) == 1
    assert source.calls[0] >= needed
    assert gate.listed_at >= needed
    assert reloads == []


async def test_a_new_webhook_in_the_list_reloads_before_routing() -> None:
    """When the list shows a Webhook added (or changed, or deleted), the gate opens only
    after a full re-read: the endpoints routed with are those of a covering list."""
    source = Source(TWO)
    gate, reloads = gate_of(source)
    gate.note(ONE, time.time() - 100)  # A periodic refresh long ago, before uid-2 existed.
    needed = time.time() + 0.05
    assert await gate.hold(needed)
    assert reloads == [1]
    assert gate.versions == TWO
    assert gate.listed_at >= needed


async def test_an_unreadable_api_server_holds_at_most_the_limit_then_recovers() -> None:
    """Lists fail: the batch is held (retried with backoff) for the hold limit, then
    released uncovered; the next batch is not held again while the outage lasts; once a
    list succeeds, batches are covered again."""
    source = Source(ConnectionError("refused"))
    gate, _ = gate_of(source, hold_max_seconds=0.8)
    gate.note(ONE, time.time() - 100)
    started = time.monotonic()
    assert not await gate.hold(time.time() - 50)  # an old event, newer than the last list
    held = time.monotonic() - started
    assert 0.7 <= held < 3.0, held
    assert len(source.calls) >= 2, "no retry within the hold"
    started = time.monotonic()
    assert not await gate.hold(time.time() - 50)
    assert time.monotonic() - started < 0.5, "a batch was held again during the outage"
    source.answers = [ONE]
    # The API server is back: once the backoff of the last failure is over, one try is made.
    await asyncio.sleep(coverage.retry_delay_seconds(len(source.calls)))
    assert await gate.hold(time.time() - 50)
    assert gate.listed_at > time.time() - 5
    assert await gate.hold(time.time() + 0.05), "a fresh event after recovery was not covered"


async def test_an_event_stamped_far_in_the_future_is_not_held_past_the_limit() -> None:
    """A producer clock far ahead cannot stall routing: the wait it asks for is longer
    than the hold limit, so the batch goes at once (uncovered, and said so by the caller)."""
    source = Source(ONE)
    gate, _ = gate_of(source, hold_max_seconds=1.0)
    gate.note(ONE, time.time())
    started = time.monotonic()
    assert not await gate.hold(time.time() + 3600)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("versions", [ONE, TWO])
def test_note_never_moves_an_unchanged_list_back_in_time(
    versions: frozenset[endpoints.Version],
) -> None:
    """An older list of the same Webhooks keeps the newer time; a list of other Webhooks
    replaces the view and its time (a later, slower full read is never overtaken)."""
    gate, _ = gate_of(Source(ONE))
    gate.note(ONE, 1000.0)
    gate.note(versions, 900.0)
    assert gate.listed_at == (1000.0 if versions == ONE else 900.0)


async def test_catch_up_lists_are_at_most_one_a_second() -> None:
    """Polls in quick succession, each newer than the last list, do not list the Webhooks
    more than once a second: the second waits, then one list covers it."""
    source = Source(ONE)
    gate, _ = gate_of(source)
    gate.note(ONE, time.time() - 100)
    assert await gate.hold(time.time() - 50)
    assert await gate.hold(time.time() + 0.01)
    assert len(source.calls) == 2
    assert source.calls[1] - source.calls[0] >= coverage.LIST_INTERVAL_MIN_SECONDS - 0.01
