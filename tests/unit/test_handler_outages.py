"""A database outage in a handler becomes a short jittered TemporaryError (issue 16): pure."""

from __future__ import annotations

import importlib
import logging
import types
from typing import Any

import kopf
import psycopg
import pytest


@pytest.fixture(autouse=True)
def handlers(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    # Importing the handler package reads timer intervals from settings; nothing connects.
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused@127.0.0.1:1/unused")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    return importlib.import_module("fintech_operator.handlers")


def _outages() -> Any:
    return importlib.import_module("fintech_operator.handlers.outages")


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("consuming input failed: server closed the connection"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.CannotConnectNow("the database system is starting up"),
    ],
)
async def test_an_outage_is_a_jittered_temporary_error_logged_as_a_warning(
    error: psycopg.OperationalError, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(**_: Any) -> None:
        raise error

    guarded = _outages().guard(handler)
    delays = set()
    with caplog.at_level(logging.INFO, logger="fintech_operator.handlers.outages"):
        for _ in range(20):
            with pytest.raises(kopf.TemporaryError) as caught:
                await guarded(memo=kopf.Memo())
            assert caught.value.delay is not None
            assert 0.5 <= caught.value.delay <= 3.0
            assert caught.value.__cause__ is error
            delays.add(caught.value.delay)
    assert len(delays) > 1, "the delay is jittered"
    records = [r for r in caplog.records if r.name == "fintech_operator.handlers.outages"]
    assert records
    assert all(r.levelno == logging.WARNING for r in records)
    assert all(r.exc_info is None for r in records), "no traceback"
    assert type(error).__name__ in records[0].getMessage()
    # kopf's own "failed temporarily" line is lowered to INFO by runtime's filter (wait prefix).
    assert str(caught.value).startswith(
        importlib.import_module("fintech_operator.handlers.report").WAIT_PREFIX
    )


async def test_other_errors_and_results_pass_through() -> None:
    """Bad input and bugs are not outages: they keep kopf's own handling."""

    async def fine(**_: Any) -> str:
        return "ok"

    async def broken(**_: Any) -> None:
        raise psycopg.errors.UniqueViolation("duplicate key")

    assert await _outages().guard(fine)() == "ok"
    with pytest.raises(psycopg.errors.UniqueViolation):
        await _outages().guard(broken)()


def test_install_guards_every_async_handler_once() -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.create("example.com", "v1", "things", registry=registry)
    async def created(**_: Any) -> None: ...

    @kopf.timer("example.com", "v1", "things", interval=10, registry=registry)
    async def ticked(**_: Any) -> None: ...

    @kopf.on.event("example.com", "v1", "things", registry=registry)
    async def seen(**_: Any) -> None: ...

    @kopf.on.update("example.com", "v1", "things", registry=registry)
    def synchronous(**_: Any) -> None: ...

    assert _outages().install(registry) == 3
    assert _outages().install(registry) == 0, "already guarded"


def test_install_fails_loudly_on_another_registry_shape() -> None:
    with pytest.raises(RuntimeError, match="changed shape"):
        _outages().install(object())
