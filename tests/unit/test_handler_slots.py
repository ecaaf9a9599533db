"""Handlers queue for database slots instead of failing (issue 17), and the helpers around it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import types
from collections.abc import AsyncIterator
from typing import Any

import kopf
import psycopg
import psycopg_pool
import pytest


@pytest.fixture(autouse=True)
def handlers() -> types.ModuleType:
    # Importing the package registers nothing and reads no environment (issue 12).
    return importlib.import_module("fintech_operator.handlers")


def _mod(name: str) -> Any:
    return importlib.import_module(name)


def test_slots_leave_connections_for_the_relay_and_collector() -> None:
    assert _mod("fintech_operator.handlers.slots").slots_for(8) == 6
    assert _mod("fintech_operator.handlers.slots").slots_for(2) == 1
    assert (
        _mod("fintech_operator.handlers.slots").slots_for(1) == 1
    )  # never zero: handlers must run


class _Pool:
    """Stands in for psycopg_pool's pool: hands out connections without a limit of its own, so
    only the slots limit how many handlers use one at once."""

    @contextlib.asynccontextmanager
    async def connection(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - psycopg_pool's own signature
    ) -> AsyncIterator[str]:
        del timeout
        yield "conn"


async def test_at_most_the_slots_use_the_database_at_once_and_the_rest_wait() -> None:
    """60 handlers started together on 3 slots: never more than 3 inside, all 60 finish, and
    a handler keeps its slot for its second connection."""
    inside, most = 0, 0

    async def handler(memo: kopf.Memo, **_: Any) -> str:
        nonlocal inside, most
        async with memo.pool.connection():
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
        async with memo.pool.connection(timeout=5):
            await asyncio.sleep(0.001)
        inside -= 1
        return "done"

    semaphore = asyncio.Semaphore(3)
    limited = _mod("fintech_operator.handlers.slots").limit(handler, semaphore)
    memo = kopf.Memo(pool=_Pool())
    results = await asyncio.gather(*(limited(memo=memo) for _ in range(60)))
    assert results == ["done"] * 60
    assert most == 3
    assert not semaphore.locked()  # every slot given back


async def test_a_handler_without_a_connection_never_waits_for_a_slot() -> None:
    semaphore = asyncio.Semaphore(1)
    await semaphore.acquire()  # every slot taken

    async def handler(**_: Any) -> str:
        return "no database needed"

    limited = _mod("fintech_operator.handlers.slots").limit(handler, semaphore)
    result = await asyncio.wait_for(limited(memo=kopf.Memo(pool=_Pool())), timeout=5)
    assert result == "no database needed"


async def test_a_pool_timeout_is_a_short_jittered_retry() -> None:
    """Not kopf's 60-second delay for an arbitrary exception: a TemporaryError of 0.5-3 s."""

    async def handler(**_: Any) -> None:
        raise psycopg_pool.PoolTimeout("couldn't get a connection after 10.00 sec")

    limited = _mod("fintech_operator.handlers.slots").limit(handler, asyncio.Semaphore(1))
    delays = set()
    for _ in range(20):
        with pytest.raises(kopf.TemporaryError) as caught:
            await limited()
        assert caught.value.delay is not None
        assert (
            _mod("fintech_operator.handlers.slots").RETRY_DELAY_MIN_SECONDS
            <= caught.value.delay
            <= _mod("fintech_operator.handlers.slots").RETRY_DELAY_MAX_SECONDS
        )
        delays.add(caught.value.delay)
    assert len(delays) > 1, "the delay is jittered"


async def test_other_errors_pass_through_and_free_the_slot() -> None:
    semaphore = asyncio.Semaphore(1)

    async def handler(memo: kopf.Memo, **_: Any) -> None:
        async with memo.pool.connection():
            raise ValueError("bad")

    limited = _mod("fintech_operator.handlers.slots").limit(handler, semaphore)
    with pytest.raises(ValueError, match="bad"):
        await limited(memo=kopf.Memo(pool=_Pool()))
    assert not semaphore.locked()


def test_install_wraps_resource_and_timer_handlers_once() -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.create("example.dev", "v1", "things", registry=registry)
    async def create(**_: Any) -> None: ...

    @kopf.timer("example.dev", "v1", "things", interval=1, registry=registry)
    async def tick(**_: Any) -> None: ...

    @kopf.daemon("example.dev", "v1", "things", registry=registry)
    async def forever(**_: Any) -> None: ...

    assert _mod("fintech_operator.handlers.slots").install(8, registry) == 2
    assert (
        _mod("fintech_operator.handlers.slots").install(8, registry) == 2
    )  # already wrapped: the same functions again


@pytest.mark.parametrize(
    ("products", "expected"),
    [
        ([], None),
        ([("b", False), ("a", False)], "a"),
        ([("a", True), ("b", False)], "b"),  # a product being deleted has no timer
        ([("b", True), ("a", True)], "a"),
    ],
)
def test_the_first_live_product_refreshes_the_namespace(
    products: list[tuple[str, bool]], expected: str | None
) -> None:
    assert _mod("fintech_operator.handlers.card_refresh").owner(products) == expected


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("kopf.objects", level, __file__, 1, msg, None, None)


def test_waits_log_at_info_and_other_failures_stay_errors() -> None:
    prefix = _mod("fintech_operator.handlers.report").WAIT_PREFIX
    waits = _mod("fintech_operator.runtime")._WaitsLogAsInfo(prefix)
    wait = _record(
        logging.ERROR,
        f"Handler 'issue' failed temporarily: {prefix}waiting for card product "
        "'gold' (attempt 3 of 30, next in 2 s)",
    )
    other = _record(logging.ERROR, "Handler 'issue' failed temporarily: database busy")
    assert waits.filter(wait)
    assert waits.filter(other)
    assert (wait.levelno, wait.levelname) == (logging.INFO, "INFO")
    assert other.levelno == logging.ERROR


@pytest.mark.parametrize(
    "error",
    [
        psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
    ],
)
async def test_lock_and_statement_timeouts_are_short_retries_too(error: Exception) -> None:
    async def handler(**_: Any) -> None:
        raise error

    limited = _mod("fintech_operator.handlers.slots").limit(handler, asyncio.Semaphore(1))
    with pytest.raises(kopf.TemporaryError) as caught:
        await limited()
    assert caught.value.delay is not None
    assert caught.value.delay <= 3.0
