"""kafka.stop_all: every client is stopped, each within its bound, whatever the others do."""

from __future__ import annotations

import asyncio
import logging

import pytest

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
