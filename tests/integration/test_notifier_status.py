"""Webhook status through the real operator: the delivery log shown on the resource.

The operator (with its relay, on the module's topic prefix) and a notifier process run
for this module; postings are written through the ledger engine into the module's
database, so the operator's relay publishes them and the notifier delivers them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kubectl, OperatorProcesses, RunningPlatform
from tests.integration.test_notifier import (
    SECRET,
    Receiver,
    _apply,
    notifier_process,
    secret_object,
    webhook_object,
)
from tests.integration.test_relay import (
    eventually,
    open_cards,
    open_pool,
    post,
    scalar,
    settings_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def operator_env(operator_env: dict[str, str]) -> dict[str, str]:
    """The shared operator environment with a quick Webhook status refresh."""
    return {**operator_env, "FINTECH_WEBHOOK_STATUS_INTERVAL_SECONDS": "1"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(SECRET)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_of(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    out = kubectl("get", "-n", namespace, "webhook", name, "-o", "json").stdout
    status: dict[str, Any] = json.loads(out).get("status") or {}
    return status


async def test_webhook_status_shows_deliveries_failures_and_waiting_events(
    platform_running: RunningPlatform,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
    kubectl: Kubectl,
    op_namespace: str,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """A working endpoint is Active with its last delivery; a refused one is Failing with
    its circuit open; one without its Secret is Failing (SecretNotFound) with its events
    pending. Each has a Ready condition and observedGeneration."""
    database_url = operator_env["DATABASE_URL"]
    # The module's operator publishes with the module's topic prefix; the notifier reads it.
    settings = settings_for(platform_running, database_url, operator_env["FINTECH_TOPIC_PREFIX"])
    _apply(
        kubectl,
        op_namespace,
        secret_object("hook-secret", SECRET),
        webhook_object("good", f"{receiver.url}/ok"),
        webhook_object(
            "down",
            f"http://127.0.0.1:{closed_port()}/x",
            circuitBreaker={"failureThreshold": 1, "openSeconds": 600},
        ),
        webhook_object("lost", f"{receiver.url}/ok", secretRef={"name": "no-such-secret"}),
    )
    try:
        good, down, lost, ids = await _exercise(
            platform_running, settings, database_url, kubectl, op_namespace, tmp_path
        )
    except AssertionError:
        lines = operator_processes.log("operator").splitlines()
        print("\n".join(line for line in lines if "Timer 'refresh'" not in line)[-6000:])
        raise
    try:
        assert good["phase"] == "Active"
        assert good["lastDelivery"]["outcome"] == "Delivered"
        assert good["lastDelivery"]["eventId"] in ids
        assert good["pendingDeliveries"] == 0
        assert _ready(good) == "True"
        assert (down["reason"], down["circuit"]) == ("CircuitOpen", "Open")
        assert down["lastDelivery"]["outcome"] == "Failed"
        assert _ready(down) == "False"
        assert (lost["phase"], lost["reason"]) == ("Failing", "SecretNotFound")
        assert all(s.get("observedGeneration") == 1 for s in (good, down, lost))
    except AssertionError:
        print(operator_processes.log("operator")[-4000:])
        raise
    assert {s.event_id for s in receiver.requests("/ok")} == ids


async def _exercise(
    platform_running: RunningPlatform,
    settings: Any,
    database_url: str,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], set[str]]:
    """Run a notifier, post two events, and wait for the three statuses to settle."""
    async with (
        notifier_process(platform_running, settings, namespace, "g-status", tmp_path),
        open_pool(database_url) as pool,
    ):
        await eventually("the operator to see the webhooks", lambda: _seen(kubectl, namespace), 90)
        await open_cards(pool, namespace, ("alice",))
        ids = {str((await post(pool, namespace, "alice"))[1].event_id) for _ in range(2)}
        good = await eventually(
            "good Active with both delivered",
            lambda: _status_when(kubectl, namespace, "good", deliveredTotal=2),
            90,
        )
        down = await eventually(
            "down Failing", lambda: _status_when(kubectl, namespace, "down", phase="Failing")
        )
        lost = await eventually(
            "lost Failing with two waiting",
            lambda: _status_when(kubectl, namespace, "lost", pendingDeliveries=2),
        )
    return good, down, lost, ids


async def _seen(kubectl: Kubectl, namespace: str) -> bool:
    return all(
        status_of(kubectl, namespace, name).get("phase") for name in ("good", "down", "lost")
    )


async def _status_when(kubectl: Kubectl, namespace: str, name: str, **wanted: Any) -> Any:
    status = status_of(kubectl, namespace, name)
    return status if all(status.get(k) == v for k, v in wanted.items()) else None


def _ready(status: dict[str, Any]) -> str | None:
    return next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"), None)


async def test_a_refused_destination_shows_before_any_event_and_fails_without_a_connection(
    platform_running: RunningPlatform,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
    kubectl: Kubectl,
    op_namespace: str,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """With only 127.0.0.2 allowed beyond public addresses, a Webhook whose URL is the
    receiver on 127.0.0.1, and one that names it ``localhost`` (resolved like any host, here
    by the hosts file), are Failing with reason DestinationRefused, Ready=False and a Warning
    Event as soon as the notifier serves them, before any event. Events then fail after
    exactly one attempt each (never retried, although retries are due every second), with
    the words of the status in the delivery log, and the receiver accepts no TCP connection.
    Editing the URL to an allowed address clears the reason: Active, Delivering, "no event
    delivered yet"."""
    database_url = operator_env["DATABASE_URL"]
    settings = settings_for(platform_running, database_url, operator_env["FINTECH_TOPIC_PREFIX"])
    webhook = f"{op_namespace}/local"
    fast_retry = {"retry": {"initialDelaySeconds": 1, "maxDelaySeconds": 1}}
    _apply(
        kubectl,
        op_namespace,
        secret_object("hook-secret", SECRET),
        webhook_object("local", f"{receiver.url}/ok", **fast_retry),
        webhook_object("named", f"{receiver.url.replace('127.0.0.1', 'localhost')}/ok"),
    )
    refusal = (
        "127.0.0.1: loopback address, not allowed by the notifier's FINTECH_WEBHOOK_ALLOWED_CIDRS"
    )
    async with (
        notifier_process(
            platform_running,
            settings,
            op_namespace,
            "g-refused",
            tmp_path,
            allowed_cidrs="127.0.0.2/32",
        ),
        open_pool(database_url) as pool,
    ):
        shown: dict[str, dict[str, Any]] = {}
        for name in ("local", "named"):
            shown[name] = await eventually(
                f"{name} to show the refusal before any event",
                functools.partial(
                    _status_when, kubectl, op_namespace, name, reason="DestinationRefused"
                ),
                90,
            )
        warned = await eventually(
            "the Warning Event", lambda: _warning(kubectl, op_namespace, "local"), 30
        )
        queued = await scalar(
            database_url, "SELECT count(*) FROM webhook_deliveries WHERE webhook = %s", webhook
        )
        assert queued == 0, "the refusal was shown only after an event"
        await open_cards(pool, op_namespace, ("alice",))
        for _ in range(2):
            await post(pool, op_namespace, "alice")
        refused = await eventually(
            "both events failed at once",
            lambda: _status_when(
                kubectl, op_namespace, "local", reason="DestinationRefused", failedTotal=2
            ),
            90,
        )
        await asyncio.sleep(3)  # Room for a wrong retry or connection to show up.
        rows = await _deliveries(database_url, webhook)
        kubectl(
            "patch",
            "-n",
            op_namespace,
            "webhook",
            "local",
            "--type=merge",
            "-p",
            json.dumps({"spec": {"url": receiver.url.replace("127.0.0.1", "127.0.0.2")}}),
        )
        edited = await eventually(
            "the reason cleared by the edit",
            lambda: _status_when(kubectl, op_namespace, "local", phase="Active"),
            30,
        )
    assert receiver.connections == 0, "a refused destination was connected to"
    assert receiver.seen == []
    for name, status in shown.items():
        assert status["phase"] == "Failing", name
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "DestinationRefused"), name
    assert shown["local"]["message"] == refusal
    assert shown["named"]["message"].startswith("localhost resolves to ")
    assert warned["message"] == refusal
    assert len(rows) == 2
    for state, attempts, error in rows:
        assert (state, attempts) == ("failed", 1)
        assert error == f"DestinationRefused: {refusal}"  # The status's words, the same.
    attempts = await scalar(
        database_url,
        "SELECT count(*) FROM webhook_delivery_attempts a JOIN webhook_deliveries d"
        " ON d.id = a.delivery_id WHERE d.webhook = %s AND a.outcome = 'Failed'"
        " AND a.status_code IS NULL",
        webhook,
    )
    assert attempts == 2
    assert (refused["phase"], refused["message"]) == ("Failing", refusal)
    assert refused["circuit"] == "Closed", "a refusal must not open the circuit"
    assert (edited["reason"], edited["message"]) == ("Delivering", "no event delivered yet")


async def _warning(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    selector = f"involvedObject.name={name},type=Warning,reason=DestinationRefused"
    out = kubectl("get", "events", "-n", namespace, "--field-selector", selector, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out.stdout).get("items") or []
    return items[0] if items else None


async def _deliveries(database_url: str, webhook: str) -> list[tuple[Any, ...]]:
    async with open_pool(database_url, size=1) as pool, pool.connection() as conn:
        cur = await conn.execute(
            "SELECT state, attempts, last_error FROM webhook_deliveries WHERE webhook = %s",
            (webhook,),
        )
        return list(await cur.fetchall())
