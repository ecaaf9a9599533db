"""kafka.stop_all: every client is stopped, each within its bound, whatever the others do."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from aiokafka.errors import KafkaConnectionError

from fintech_operator import config
from fintech_operator.events import kafka


class Client:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.stopped = False

    async def stop(self) -> None:
        if self.behaviour == "raises":
            raise ConnectionError("broker gone")
        if self.behaviour == "hangs":
            await asyncio.sleep(3600)
        if self.behaviour == "cancelled":
            # aiokafka's consumer.stop() with the broker gone: it awaits the fetch task it has
            # just cancelled, and that task's CancelledError comes out of stop().
            fetch = asyncio.ensure_future(asyncio.sleep(3600))
            await asyncio.sleep(0)
            fetch.cancel()
            await fetch
        self.stopped = True


async def test_a_failing_or_hanging_client_does_not_leave_the_others_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing, hanging, last = Client("raises"), Client("hangs"), Client("ok")
    with caplog.at_level(logging.WARNING, logger="fintech_operator.events.kafka"):
        await asyncio.wait_for(
            kafka.stop_all(failing, None, hanging, last, timeout_seconds=0.2), timeout=5
        )
    assert last.stopped
    assert not failing.stopped
    assert not hanging.stopped
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert "ConnectionError('broker gone')" in warnings[0]
    assert "TimeoutError" in warnings[1]


async def test_clients_that_stop_log_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clients = [Client("ok"), Client("ok")]
    with caplog.at_level(logging.WARNING, logger="fintech_operator.events.kafka"):
        await kafka.stop_all(*clients)
    assert all(c.stopped for c in clients)
    assert caplog.records == []


async def test_a_client_whose_stop_raises_cancelled_error_does_not_stop_the_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A consumer's stop() that raises its own cancelled task's CancelledError (Kafka gone at
    SIGTERM) is logged and left like any failure; the next client is stopped and stop_all
    returns rather than ending the process with a traceback."""
    cancelled, last = Client("cancelled"), Client("ok")
    with caplog.at_level(logging.WARNING, logger="fintech_operator.events.kafka"):
        await asyncio.wait_for(kafka.stop_all(cancelled, last, timeout_seconds=1), timeout=5)
    assert last.stopped
    assert not cancelled.stopped
    assert ["CancelledError" in r.getMessage() for r in caplog.records] == [True]


async def test_cancelling_stop_all_itself_still_cancels_it() -> None:
    """Only a CancelledError that is not this task's own is swallowed."""
    hanging, last = Client("hangs"), Client("ok")
    task = asyncio.ensure_future(kafka.stop_all(hanging, last, timeout_seconds=60))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not last.stopped


async def test_a_stop_ends_the_wait_for_kafka_even_when_the_attempt_swallows_the_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGTERM while the broker is down: the attempt in flight may turn its cancellation into a
    connection error (aiokafka's bootstrap does, now and then: the relay then retried for 60 s
    after SIGTERM in CI). The wait still ends as stopped, at the attempt's end, not retried."""
    attempts: list[float] = []
    third = asyncio.Event()

    async def swallowing_attempt(_settings: object, _timeout_seconds: float) -> list[str]:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) == 3:
            third.set()
        # What the broker client does with a cancellation: a connection failure.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)
        raise KafkaConnectionError("Unable to bootstrap")

    monkeypatch.setattr(kafka, "ensure_topics", swallowing_attempt)
    monkeypatch.setattr(kafka, "REACHABLE_BACKOFF_FIRST_SECONDS", 0.01)
    monkeypatch.setattr(kafka, "REACHABLE_BACKOFF_MAX_SECONDS", 0.01)
    settings = config.load({"DATABASE_URL": "postgresql://x", "KAFKA_BOOTSTRAP_SERVERS": "b:1"})
    stop = asyncio.Event()
    waiting = asyncio.ensure_future(kafka.until_reachable_or_stopped(settings, stop))
    await asyncio.wait_for(third.wait(), timeout=5)
    await asyncio.sleep(0.05)  # inside the third attempt
    stop.set()
    assert await asyncio.wait_for(waiting, timeout=5) is False
    settled = len(attempts)
    await asyncio.sleep(0.3)
    assert len(attempts) == settled  # no attempt after the stop
