"""A Webhook gets every matching event from its creation on, however late the notifier
learns of it (issue 11, item 1).

The notifier re-reads Webhooks only every ``FINTECH_NOTIFIER_REFRESH_INTERVAL_SECONDS``; these
tests set that to its maximum (300 s), far longer than they run, so any event delivered to a
new Webhook proves the router did not wait for the periodic refresh. Everything is real: the
Webhook in the API server, the ledger and outbox in PostgreSQL, the relay and Kafka, signed
HTTP to a receiver on 127.0.0.1 (the fixtures of ``test_notifier``).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from pathlib import Path

import psycopg
import pytest

from fintech_operator.notify import coverage
from tests.conftest import Kubectl, RunningPlatform
from tests.integration.test_notifier import (
    SECRET,
    Receiver,
    _apply,
    _has,
    _settings_with_topics,
    notifier_process,
    receiver,
    secret_object,
    webhook_object,
)
from tests.integration.test_relay import (
    Subprocess,
    eventually,
    open_cards,
    open_pool,
    post,
    running_relay,
    scalar,
)

pytestmark = pytest.mark.integration
__all__ = ["receiver"]  # the fixture, imported so that pytest finds it here
REFRESH_LONG_SECONDS = 300  # the setting's maximum: no periodic refresh happens in a test
EVENTS = 12


async def _started(proc: Subprocess) -> bool:
    return "notifier started in group" in proc.log()


async def _rows_for_event(database_url: str, event_id: str) -> int:
    return int(
        await scalar(
            database_url, "SELECT count(*) FROM webhook_deliveries WHERE event_id = %s", event_id
        )
    )


async def test_a_new_webhook_gets_every_event_from_its_creation_on(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    crds_installed: None,
    kubectl: Kubectl,
    namespace: str,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """A notifier is routing (refresh interval 300 s) before the Webhook exists. An event
    from before the Webhook's creation is not delivered to it; the Webhook is then applied
    and twelve events are produced at once: each gets a delivery row and reaches the
    receiver once, correctly signed, long before any periodic refresh."""
    settings = await _settings_with_topics(platform_running, migrated_database_url)
    _apply(kubectl, namespace, secret_object("hook-secret", SECRET))
    async with (
        open_pool(migrated_database_url) as pool,
        notifier_process(
            platform_running,
            settings,
            namespace,
            "g-new-hook",
            tmp_path,
            refresh_interval_seconds=REFRESH_LONG_SECONDS,
        ) as proc,
    ):
        await open_cards(pool, namespace, ("dana",))
        await eventually("the notifier routing", lambda: _started(proc), 90)
        async with running_relay(settings, pool):
            early = str((await post(pool, namespace, "dana"))[1].event_id)
            # creationTimestamp has whole seconds: 1.5 s later it is surely after the event.
            await asyncio.sleep(1.5)
            _apply(kubectl, namespace, webhook_object("fresh", f"{receiver.url}/ok"))
            ids = [str((await post(pool, namespace, "dana"))[1].event_id) for _ in range(EVENTS)]
            await eventually(
                "every event after the Webhook's creation delivered",
                lambda: _has(receiver, "/ok", ids, 200),
                90,
            )
            await asyncio.sleep(2)  # Room for a wrong extra request to show up.
        log = proc.log()
    delivered = [s.event_id for s in receiver.requests("/ok")]
    assert sorted(delivered) == sorted(ids), "an event went twice, or one that should not"
    assert all(s.verified for s in receiver.requests("/ok"))
    rows = await scalar(
        migrated_database_url,
        "SELECT count(*) FROM webhook_deliveries WHERE webhook = %s",
        f"{namespace}/fresh",
    )
    assert rows == EVENTS
    # The early event shares the card (so the partition) and was routed before the others.
    assert await _rows_for_event(migrated_database_url, early) == 0
    assert "Traceback" not in log, log[-3000:]


async def test_a_webhook_created_while_the_notifier_is_down_gets_its_events_after_restart(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    crds_installed: None,
    kubectl: Kubectl,
    namespace: str,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """The notifier is stopped after committing offsets; a Webhook is created and events are
    produced while it is down; the restarted notifier (same group, refresh 300 s) resumes at
    its committed offsets and delivers every one of them, and nothing from before."""
    settings = await _settings_with_topics(platform_running, migrated_database_url)
    _apply(kubectl, namespace, secret_object("hook-secret", SECRET))
    group = "g-restart"
    async with open_pool(migrated_database_url) as pool:
        await open_cards(pool, namespace, ("erin",))
        async with running_relay(settings, pool):
            before = str((await post(pool, namespace, "erin"))[1].event_id)
            async with notifier_process(
                platform_running,
                settings,
                namespace,
                group,
                tmp_path,
                refresh_interval_seconds=REFRESH_LONG_SECONDS,
            ) as first:
                await eventually("the first event routed", lambda: _routed_any(first), 90)
            await asyncio.sleep(1.5)  # The Webhook's whole-second creation time is after it.
            _apply(kubectl, namespace, webhook_object("late", f"{receiver.url}/ok"))
            ids = [str((await post(pool, namespace, "erin"))[1].event_id) for _ in range(5)]
            async with notifier_process(
                platform_running,
                settings,
                namespace,
                group,
                tmp_path,
                refresh_interval_seconds=REFRESH_LONG_SECONDS,
            ):
                await eventually(
                    "the events made while down delivered",
                    lambda: _has(receiver, "/ok", ids, 200),
                    90,
                )
                await asyncio.sleep(2)
    assert sorted(s.event_id for s in receiver.requests("/ok")) == sorted(ids)
    assert await _rows_for_event(migrated_database_url, before) == 0


async def _routed_any(proc: Subprocess) -> bool:
    return "routed 1 records" in proc.log()


class CuttableRelay:
    """A TCP relay on 127.0.0.1 to the real API server that the test can cut: while cut, it
    accepts and at once closes every connection (and has closed the open ones), so the
    notifier behind it cannot list Webhooks while kubectl, going direct, still can."""

    def __init__(self) -> None:
        self.target = ("127.0.0.1", 0)  # set once the kubeconfig names the API server
        self.cut = False
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()
            self.writers.discard(writer)

    def cut_off(self) -> None:
        self.cut = True
        for writer in list(self.writers):
            writer.close()

    async def close(self) -> None:
        self.cut_off()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def _kubeconfig_through(source: Path, target: Path, port: int) -> tuple[str, int]:
    """Copy ``source`` to ``target`` with the server moved to 127.0.0.1:``port``; return the
    API server's own host and port. The server certificate names 127.0.0.1, so TLS passes."""
    kubeconfig = json.loads(source.read_text())
    server = urllib.parse.urlsplit(kubeconfig["clusters"][0]["cluster"]["server"])
    kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    target.write_text(json.dumps(kubeconfig))
    target.chmod(0o600)
    return str(server.hostname), int(server.port or 443)


async def _event_ids_to(database_url: str, webhook: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        rows = await (
            await conn.execute(
                "SELECT event_id::text FROM webhook_deliveries WHERE webhook = %s", (webhook,)
            )
        ).fetchall()
    return {str(row[0]) for row in rows}


async def test_when_webhooks_cannot_be_listed_routing_waits_the_hold_limit_and_says_so(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    crds_installed: None,
    kubectl: Kubectl,
    namespace: str,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """The notifier reaches the API server through a relay the test cuts. While cut, a
    Webhook ``unseen`` is created (kubectl goes direct) and three events are made: the
    notifier holds them the hold limit (10 s), then routes them with its last list (``kept``
    gets them, ``unseen`` cannot), logs a WARNING and counts them. When the relay is back,
    the next event reaches both Webhooks."""
    settings = await _settings_with_topics(platform_running, migrated_database_url)
    _apply(kubectl, namespace, secret_object("hook-secret", SECRET))
    relay_to_api = CuttableRelay()
    port = await relay_to_api.start()
    relay_to_api.target = _kubeconfig_through(
        platform_running.kubeconfig, tmp_path / "kubeconfig", port
    )
    extra = {
        "KUBECONFIG": str(tmp_path / "kubeconfig"),
        "FINTECH_NOTIFIER_ROUTE_HOLD_MAX_SECONDS": "10",
    }
    kept, unseen = f"{namespace}/kept", f"{namespace}/unseen"

    async def _has_ids(webhook: str, ids: set[str]) -> bool:
        return ids <= await _event_ids_to(migrated_database_url, webhook)

    try:
        async with (
            open_pool(migrated_database_url) as pool,
            notifier_process(
                platform_running,
                settings,
                namespace,
                "g-cut",
                tmp_path,
                refresh_interval_seconds=REFRESH_LONG_SECONDS,
                extra_env=extra,
            ) as proc,
        ):
            await open_cards(pool, namespace, ("gus",))
            await eventually("the notifier routing", lambda: _started(proc), 90)
            _apply(kubectl, namespace, webhook_object("kept", f"{receiver.url}/ok"))
            async with running_relay(settings, pool):
                first = str((await post(pool, namespace, "gus"))[1].event_id)
                await eventually("kept to get the first event", lambda: _has_ids(kept, {first}))
                relay_to_api.cut_off()
                _apply(kubectl, namespace, webhook_object("unseen", f"{receiver.url}/ok"))
                posted_at = time.monotonic()
                cut = {str((await post(pool, namespace, "gus"))[1].event_id) for _ in range(3)}
                await eventually(
                    "kept to get the events made while cut", lambda: _has_ids(kept, cut)
                )
                held = time.monotonic() - posted_at
                log_while_cut = proc.log()
                relay_to_api.cut = False
                await asyncio.sleep(coverage.RETRY_MAX_SECONDS + 1)  # the next retry is due
                after = {str((await post(pool, namespace, "gus"))[1].event_id)}
                await eventually("both to get the event after", lambda: _has_ids(unseen, after))
                await eventually("kept too", lambda: _has_ids(kept, after))
    finally:
        await relay_to_api.close()
    assert held >= 9.0, f"the events made while cut were routed after {held:.1f}s, not held"
    assert "cannot list Webhooks" in log_while_cut
    assert "with the Webhook list of" in log_while_cut
    assert await _event_ids_to(migrated_database_url, unseen) == after
    assert await _event_ids_to(migrated_database_url, kept) == {first} | cut | after
