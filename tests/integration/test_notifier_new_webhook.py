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
from pathlib import Path

import pytest

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
