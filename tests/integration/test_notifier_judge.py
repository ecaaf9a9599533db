"""A Webhook's destination judged before any event, by an endpoint worker on the real
PostgreSQL: what it records in ``webhook_endpoints.problem`` (the Webhook's status reason).

The worker runs in this process with the notifier's own client (``destination.new_client``)
over a resolver the test controls, and a clock the test moves. Host names are made up
(``*.example.test``) and the addresses they "resolve" to are refused before any socket is
opened, so no packet leaves the process; only PostgreSQL on 127.0.0.1 is talked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from fintech_operator.notify import destination, endpoints, policy, store, worker
from tests.conftest import RunningPlatform
from tests.integration.test_relay import eventually, open_pool, scalar

pytestmark = pytest.mark.integration
HOST = "hooks.example.test"
REFUSED = (
    f"DestinationRefused: {HOST} resolves to 10.0.0.7: private (RFC 1918) address, "
    "not allowed by the notifier's FINTECH_WEBHOOK_ALLOWED_CIDRS"
)


class Dns:
    """Answers ``10.0.0.7`` for a name once ``up`` (before that, a name fails like an unknown
    one) and an address literal with itself, as getaddrinfo does. Every question is
    recorded."""

    def __init__(self) -> None:
        self.up = False
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        with contextlib.suppress(ValueError):
            return [str(ipaddress.ip_address(host))]
        if not self.up:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return ["10.0.0.7"]


class Clock:
    """Wall-clock time the test can move forward."""

    def __init__(self) -> None:
        self.ahead_seconds = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead_seconds


def _endpoint(**changes: Any) -> endpoints.Endpoint:
    base = endpoints.Endpoint(
        uid=uuid.uuid4(),
        namespace="judge",
        name=f"hook-{uuid.uuid4().hex[:6]}",
        generation=1,
        created_at=datetime.datetime.now(datetime.UTC),
        url=f"https://{HOST}/in",
        event_types=("*",),
        timeout_seconds=5.0,
        retry=policy.RetryPolicy(),
        rate_per_second=10.0,
        burst=20,
        failure_threshold=5,
        open_seconds=30.0,
        suspend=False,
        secret_ref=("hook-secret", "secret"),
        key=b"k" * 32,
    )
    return dataclasses.replace(base, **changes)


@asynccontextmanager
async def _serving(
    pool: AsyncConnectionPool[Any], endpoint: endpoints.Endpoint, dns: Dns, clock: Clock
) -> AsyncIterator[worker.EndpointWorker]:
    """Register ``endpoint`` as the notifier's refresh does, then run its worker."""
    async with pool.connection() as conn:
        await store.register(conn, endpoint, "test-notifier")
    async with destination.new_client((), 4, resolver=dns) as client:
        served = worker.EndpointWorker(endpoint, pool, client, asyncio.Semaphore(4), 0.05, clock)
        served.start()
        try:
            yield served
        finally:
            await served.stop()


async def _problem(database_url: str, endpoint: endpoints.Endpoint) -> Any:
    return await scalar(
        database_url,
        "SELECT problem FROM webhook_endpoints WHERE webhook_uid = %s",
        endpoint.uid,
    )


async def test_a_name_that_does_not_resolve_is_judged_again_later_never_refused(
    platform_running: RunningPlatform, migrated_database_url: str
) -> None:
    """At its start the worker asks the guard about the URL. The name does not resolve yet:
    no problem is recorded (a delivery would fail and retry, not be refused), and the name is
    not asked again on every round. JUDGE_AGAIN_SECONDS later it is asked again; now it
    resolves to a private address and the refusal is recorded with the very words a refused
    delivery then records in the delivery log, before any event was queued."""
    dns, clock, endpoint = Dns(), Clock(), _endpoint()
    url = migrated_database_url
    async with open_pool(url) as pool, _serving(pool, endpoint, dns, clock) as served:
        await eventually("the first question", lambda: _asked(dns, 1))
        await asyncio.sleep(1.0)  # Twenty rounds of 0.05 s: none may ask again.
        assert dns.asked == [(HOST, 443)]
        assert await _problem(url, endpoint) is None
        dns.up = True
        clock.ahead_seconds = worker.JUDGE_AGAIN_SECONDS + 1
        served.wake()
        assert await eventually("the refusal", lambda: _problem(url, endpoint)) == REFUSED
        assert len(dns.asked) == 2
        event_id = uuid.uuid4()
        async with pool.connection() as conn:
            delivery = store.Delivery(endpoint.uid, endpoint.ref, event_id, "dev.test.v1", b"{}")
            assert await store.enqueue(conn, [delivery]) == 1
        served.wake()
        error = await eventually("the delivery refused", lambda: _failed_error(url, event_id))
    assert error == REFUSED
    assert await _problem(url, endpoint) == REFUSED


async def test_a_secret_problem_stays_and_the_destination_is_judged_when_it_is_fixed(
    platform_running: RunningPlatform, migrated_database_url: str
) -> None:
    """A Webhook whose Secret is missing shows that problem: the worker's verdict on the URL
    does not replace it. Once the Secret is fixed (the refresh registers the endpoint without
    a problem and hands the worker its new configuration), the URL is judged again and the
    refusal shows. An edit (a new generation, registered by the refresh) clears the refusal
    and the new URL is judged: a public address is no refusal."""
    dns, clock = Dns(), Clock()
    dns.up = True
    secret_missing = "SecretNotFound: Secret 'hook-secret' or its key 'secret' does not exist"
    endpoint = _endpoint(key=None, problem=secret_missing)
    url = migrated_database_url
    async with open_pool(url) as pool, _serving(pool, endpoint, dns, clock) as served:
        await eventually("the first question", lambda: _asked(dns, 1))
        await asyncio.sleep(0.5)
        assert await _problem(url, endpoint) == secret_missing
        fixed = dataclasses.replace(endpoint, key=b"k" * 32, problem=None)
        async with pool.connection() as conn:
            await store.register(conn, fixed, "test-notifier")
        served.update(fixed)
        assert await eventually("the refusal", lambda: _problem(url, fixed)) == REFUSED
        edited = dataclasses.replace(fixed, generation=2, url="https://93.184.216.34/in")
        async with pool.connection() as conn:
            await store.register(conn, edited, "test-notifier")
        assert await _problem(url, edited) is None  # A new generation clears the refusal.
        served.update(edited)
        await asyncio.sleep(0.5)
        assert await _problem(url, edited) is None
    assert dns.asked == [(HOST, 443), (HOST, 443), ("93.184.216.34", 443)]


async def _asked(dns: Dns, count: int) -> bool:
    return len(dns.asked) >= count


async def _failed_error(database_url: str, event_id: uuid.UUID) -> Any:
    return await scalar(
        database_url,
        "SELECT last_error FROM webhook_deliveries WHERE event_id = %s AND state = 'failed'",
        event_id,
    )
