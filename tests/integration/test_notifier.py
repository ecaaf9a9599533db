"""The notifier process end to end: Webhook and Secret in the real API server, events through
the real relay and Kafka, signed HTTP deliveries to a receiver this test runs on 127.0.0.1.

The receiver checks each signature with its own few lines of HMAC (not the product's
code), answers per path (``/ok`` always 200, ``/flaky`` 500 twice per event then 200,
``/slow`` answers after the notifier's timeout, ``/throttled`` 429 with ``Retry-After: 3``
once per event then 200, ``/redirect`` a 302 to ``/ok``), and records every request and
counts every TCP connection it accepts.

The receiver listens on 127.0.0.1, which the notifier's destination guard refuses unless
allowed: these notifiers run with ``FINTECH_WEBHOOK_ALLOWED_CIDRS`` = loopback (as the dev
stack does), except where a test proves the refusal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fintech_operator import config
from fintech_operator.events import kafka
from tests.conftest import Kubectl, RunningPlatform
from tests.integration.test_relay import (
    Subprocess,
    eventually,
    new_prefix,
    open_cards,
    open_pool,
    post,
    process_env,
    running_relay,
    scalar,
    settings_for,
)

pytestmark = pytest.mark.integration
LOOPBACK_ALLOWED = "127.0.0.0/8,::1/128"
SECRET = "whsec_" + base64.b64encode(b"fintech-operator-test-key-0123").decode()
SLOW_SECONDS = 2.5


@dataclass(frozen=True)
class Seen:
    path: str
    event_id: str
    status: int
    verified: bool
    body: dict[str, Any]
    at: float


class Receiver:
    """A loopback HTTP server that verifies Standard Webhooks signatures independently."""

    def __init__(self, secret: str) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.seen: list[Seen] = []
        self.connections = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                event_id = self.headers.get("webhook-id", "")
                verified = receiver.verify(dict(self.headers), body)
                with receiver.lock:
                    earlier = sum(
                        1 for s in receiver.seen if (s.path, s.event_id) == (self.path, event_id)
                    )
                status, extra = receiver.answer(self.path, earlier)
                if self.path == "/slow":
                    time.sleep(SLOW_SECONDS)
                with receiver.lock:
                    receiver.seen.append(
                        Seen(self.path, event_id, status, verified, json.loads(body), time.time())
                    )
                with contextlib.suppress(OSError):  # The notifier may have hung up (timeout).
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.end_headers()

            def do_GET(self) -> None:  # Only a followed redirect would GET: recorded.
                with receiver.lock:
                    receiver.seen.append(Seen(self.path, "", 405, False, {}, time.time()))
                with contextlib.suppress(OSError):
                    self.send_response(405)
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: Any, client_address: Any) -> bool:
                with receiver.lock:  # Called once per accepted TCP connection.
                    receiver.connections += 1
                return True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def verify(self, headers: dict[str, str], body: bytes) -> bool:
        lower = {k.lower(): v for k, v in headers.items()}
        signed = f"{lower['webhook-id']}.{lower['webhook-timestamp']}.".encode() + body
        expected = hmac.new(self.key, signed, hashlib.sha256).digest()
        offered = [s.removeprefix("v1,") for s in lower["webhook-signature"].split(" ")]
        fresh = abs(time.time() - int(lower["webhook-timestamp"])) < 300
        return fresh and any(
            hmac.compare_digest(base64.b64encode(expected).decode(), sig) for sig in offered
        )

    @staticmethod
    def answer(path: str, earlier: int) -> tuple[int, dict[str, str]]:
        """Status and extra headers for the request to ``path`` after ``earlier`` of its event."""
        if path == "/flaky":
            return (500 if earlier < 2 else 200), {}
        if path == "/throttled" and earlier == 0:
            return 429, {"Retry-After": "3"}
        if path == "/redirect":
            return 302, {"Location": "/ok"}
        return 200, {}

    def requests(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(SECRET)
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def _apply(kubectl: Kubectl, namespace: str, *objects: dict[str, Any]) -> None:
    kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def secret_object(name: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"secret": value},
    }


def webhook_object(name: str, url: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fintech.dev/v1alpha1",
        "kind": "Webhook",
        "metadata": {"name": name},
        "spec": {
            "url": url,
            "eventTypes": ["dev.fintech.posting.*"],
            "secretRef": {"name": "hook-secret"},
            **spec,
        },
    }


@contextlib.asynccontextmanager
async def notifier_process(
    plat: RunningPlatform,
    settings: config.Settings,
    namespace: str,
    group: str,
    log_dir: Path,
    allowed_cidrs: str = LOOPBACK_ALLOWED,
    refresh_interval_seconds: float = 1,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Subprocess]:
    """A notifier for ``namespace``; by default it may deliver to this machine's receivers."""
    env = process_env(
        plat,
        settings,
        FINTECH_NOTIFIER_REFRESH_INTERVAL_SECONDS=str(refresh_interval_seconds),
        FINTECH_NOTIFIER_POLL_INTERVAL_MS="200",
        FINTECH_WEBHOOK_ALLOWED_CIDRS=allowed_cidrs,
        **(extra_env or {}),
    )
    proc = Subprocess(
        "notifier",
        ["-m", "fintech_operator", "notifier", "--namespace", namespace, "--group", group],
        env,
        log_dir,
    )
    try:
        yield proc
    except BaseException:
        print(proc.log()[-4000:])
        raise
    finally:
        proc.stop()


async def served(database_url: str, names: list[str]) -> bool:
    count = await scalar(
        database_url,
        "SELECT count(*) FROM webhook_endpoints WHERE name = ANY(%s) AND owner IS NOT NULL",
        names,
    )
    return int(count) == len(names)


async def _settings_with_topics(plat: RunningPlatform, database_url: str) -> config.Settings:
    """Settings of a test's own topic prefix, its topics created."""
    settings = settings_for(plat, database_url, new_prefix())
    await kafka.ensure_topics(settings)
    return settings


def _apply_signed(kubectl: Kubectl, namespace: str, *webhooks: dict[str, Any]) -> None:
    """The Webhooks, with the Secret ``hook-secret`` they sign with."""
    _apply(kubectl, namespace, secret_object("hook-secret", SECRET), *webhooks)


@contextlib.asynccontextmanager
async def _posted_and_relayed(
    plat: RunningPlatform,
    settings: config.Settings,
    namespace: str,
    group: str,
    log_dir: Path,
    *,
    card: str,
    webhook: str,
    events: int = 1,
) -> AsyncIterator[list[str]]:
    """``events`` postings on a new card ``card``, made once a notifier (consumer group
    ``group``) serves Webhook ``webhook``; yields their event ids while a relay publishes
    them. The notifier's log is printed if the body fails."""
    async with open_pool(settings.database.url) as pool:
        await open_cards(pool, namespace, (card,))
        async with notifier_process(plat, settings, namespace, group, log_dir):
            await eventually(
                "the notifier serving it", lambda: served(settings.database.url, [webhook])
            )
            ids = [str((await post(pool, namespace, card))[1].event_id) for _ in range(events)]
            async with running_relay(settings, pool):
                yield ids


async def _delivery_state(database_url: str, webhook: str) -> Any:
    return await scalar(
        database_url, "SELECT state FROM webhook_deliveries WHERE webhook = %s", webhook
    )


async def test_signed_deliveries_with_retries_isolation_and_no_duplicates(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    crds_installed: None,
    kubectl: Kubectl,
    namespace: str,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """Five postings reach three Webhooks of the namespace:

    - ``ok`` gets each event once, correctly signed, with the CloudEvent as body;
    - ``flaky`` fails twice per event, is retried, then gets each event, and after its 2xx
      the event is never sent again (not even by a restarted notifier in a new group that
      reads every event again);
    - ``slow`` times out, opens its circuit, and never held up the other two: they were
      complete while ``slow`` had delivered nothing;
    - an event of another namespace reaches nobody.
    """
    settings = await _settings_with_topics(platform_running, migrated_database_url)
    fast_retry = {"retry": {"initialDelaySeconds": 1, "maxDelaySeconds": 2}}
    _apply_signed(
        kubectl,
        namespace,
        webhook_object("ok", f"{receiver.url}/ok"),
        webhook_object(
            "flaky",
            f"{receiver.url}/flaky",
            circuitBreaker={"failureThreshold": 100},  # This one tests retries, not the breaker.
            **fast_retry,
        ),
        webhook_object(
            "slow",
            f"{receiver.url}/slow",
            timeoutSeconds=1,
            circuitBreaker={"failureThreshold": 2, "openSeconds": 60},
            **fast_retry,
        ),
    )
    async with open_pool(migrated_database_url) as pool:
        await open_cards(pool, namespace, ("alice", "bob"))
        await open_cards(pool, "not-watched", ("eve",))
        async with notifier_process(
            platform_running, settings, namespace, "g-notify-1", tmp_path
        ) as first:
            await eventually(
                "the notifier serving all three",
                lambda: served(migrated_database_url, ["ok", "flaky", "slow"]),
            )
            ids = [
                str(
                    (await post(pool, namespace, ("alice", "bob")[i % 2], amount_minor=100 + i))[
                        1
                    ].event_id
                )
                for i in range(5)
            ]
            await post(pool, "not-watched", "eve")
            async with running_relay(settings, pool):
                await eventually("ok to have all five", lambda: _has(receiver, "/ok", ids, 200))
                slow_done = [s for s in receiver.requests("/slow") if s.status == 200]
                await eventually(
                    "flaky to have all five", lambda: _has(receiver, "/flaky", ids, 200), 90
                )
                await asyncio.sleep(3)  # Room for any wrong extra attempt to show up.
            first_log = first.log()
        # A new group reads every event again: the delivery log keeps them from going twice.
        async with notifier_process(
            platform_running, settings, namespace, "g-notify-2", tmp_path
        ) as second:
            await eventually("the new group to route the events again", lambda: _routed(second), 60)
            await asyncio.sleep(3)
            assert "0 new deliveries" in second.log()
            routed = [
                json.loads(line)
                for line in second.log().splitlines()
                if line.startswith("{") and '"routed ' in line
            ]
            assert routed
            assert {line.get("consumer") for line in routed} == {"notifier"}

    ok, flaky = receiver.requests("/ok"), receiver.requests("/flaky")
    assert all(s.verified for s in receiver.seen), "a request with a bad signature arrived"
    assert sorted(s.event_id for s in ok) == sorted(ids), "ok saw an event twice or missed one"
    assert {s.body["id"] for s in ok} == set(ids)
    assert all(s.body["type"] == "dev.fintech.posting.posted.v1" for s in ok)
    per_event = Counter(s.event_id for s in flaky)
    assert per_event == dict.fromkeys(ids, 3), per_event
    for event_id in ids:
        statuses = [s.status for s in flaky if s.event_id == event_id]
        assert statuses == [500, 500, 200], "a request followed a success"
    assert slow_done == [], "the slow endpoint answered in time after all?"
    assert all(s.body["subject"].startswith(f"namespaces/{namespace}/") for s in receiver.seen)
    attempts = await scalar(
        migrated_database_url,
        "SELECT count(*) FROM webhook_delivery_attempts a JOIN webhook_deliveries d"
        " ON d.id = a.delivery_id WHERE d.webhook = %s",
        f"{namespace}/flaky",
    )
    assert attempts == 15
    circuit = await scalar(
        migrated_database_url, "SELECT circuit FROM webhook_endpoints WHERE name = 'slow'"
    )
    assert circuit in ("Open", "HalfOpen"), circuit
    assert "Traceback" not in first_log, first_log[-3000:]


async def _has(receiver: Receiver, path: str, ids: list[str], status: int) -> bool:
    done = {s.event_id for s in receiver.requests(path) if s.status == status}
    return set(ids) <= done


async def _routed(proc: Subprocess) -> bool:
    return "routed 6 records" in proc.log()


async def test_events_wait_for_a_missing_secret_and_go_once_it_exists(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    crds_installed: None,
    kubectl: Kubectl,
    namespace: str,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """A Webhook whose Secret does not exist yet queues its events (nothing is lost); when
    the Secret is created, the waiting events are delivered, signed with it."""
    settings = await _settings_with_topics(platform_running, migrated_database_url)
    _apply(kubectl, namespace, webhook_object("late", f"{receiver.url}/ok"))
    async with _posted_and_relayed(
        platform_running,
        settings,
        namespace,
        "g-late",
        tmp_path,
        card="carol",
        webhook="late",
        events=3,
    ) as ids:
        await eventually(
            "three deliveries queued",
            lambda: _pending(migrated_database_url, f"{namespace}/late", 3),
        )
        problem = await scalar(
            migrated_database_url,
            "SELECT problem FROM webhook_endpoints WHERE name = 'late'",
        )
        assert str(problem).startswith("SecretNotFound")
        assert receiver.requests("/ok") == []
        _apply(kubectl, namespace, secret_object("hook-secret", SECRET))
        await eventually("the waiting events delivered", lambda: _has(receiver, "/ok", ids, 200))
    assert all(s.verified for s in receiver.requests("/ok"))


async def _pending(database_url: str, webhook: str, expected: int) -> bool:
    count = await scalar(
        database_url,
        "SELECT count(*) FROM webhook_deliveries WHERE webhook = %s AND state = 'pending'",
        webhook,
    )
    return int(count) >= expected


async def test_the_delivery_log_stays_bounded(migrated_database_url: str) -> None:
    """Clean-up fails deliveries nobody can serve any more (older than the longest allowed
    age), deletes finished ones past the retention with their attempts, and a delivered row
    can never be set back to pending."""
    from fintech_operator.notify import store  # noqa: PLC0415

    async with open_pool(migrated_database_url) as pool, pool.connection() as conn:
        rows = await (
            await conn.execute(
                """
                INSERT INTO webhook_deliveries
                  (webhook_uid, webhook, event_id, event_type, body, state, created_at, finished_at)
                VALUES (gen_random_uuid(), 'gone/hook', gen_random_uuid(), 'dev.fintech.x.v1',
                        '{}', 'pending', now() - interval '8 days', NULL),
                       (gen_random_uuid(), 'old/hook', gen_random_uuid(), 'dev.fintech.x.v1',
                        '{}', 'delivered', now() - interval '30 days', now() - interval '20 days'),
                       (gen_random_uuid(), 'new/hook', gen_random_uuid(), 'dev.fintech.x.v1',
                        '{}', 'delivered', now(), now())
                RETURNING id
                """
            )
        ).fetchall()
        gone, old, new = (row[0] for row in rows)
        await conn.execute(
            "INSERT INTO webhook_delivery_attempts (delivery_id, attempt, outcome, duration_ms)"
            " VALUES (%s, 1, 'Delivered', 5)",
            (old,),
        )
        removed = await store.clean(conn, retention_seconds=14 * 86_400, limit=100)
        states = dict(
            await (
                await conn.execute(
                    "SELECT id, state FROM webhook_deliveries WHERE id = ANY(%s)",
                    ([gone, old, new],),
                )
            ).fetchall()
        )
        with pytest.raises(psycopg.errors.RestrictViolation):
            await conn.execute(
                "UPDATE webhook_deliveries SET state = 'pending' WHERE id = %s", (new,)
            )
    assert removed == 1
    assert states == {gone: "failed", new: "delivered"}


async def _rows(database_url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        return list(await (await conn.execute(query, args)).fetchall())


async def _attempts(database_url: str, webhook: str) -> list[tuple[Any, ...]]:
    """(attempt, outcome, status code, error) of every attempt to ``webhook``, in order."""
    return await _rows(
        database_url,
        "SELECT a.attempt, a.outcome, a.status_code, a.error FROM webhook_delivery_attempts a"
        " JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.webhook = %s"
        " ORDER BY a.attempt",
        webhook,
    )


async def test_retry_after_is_honoured_then_the_event_is_delivered_once(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    crds_installed: None,
    kubectl: Kubectl,
    namespace: str,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """A receiver answering 429 with ``Retry-After: 3`` gets the retry after at least three
    seconds, although the Webhook's own schedule would have retried after one; the retry's
    200 ends it: exactly two requests, the second delivered, nothing after."""
    settings = await _settings_with_topics(platform_running, migrated_database_url)
    _apply_signed(
        kubectl,
        namespace,
        webhook_object(
            "throttled",
            f"{receiver.url}/throttled",
            retry={"initialDelaySeconds": 1, "maxDelaySeconds": 10},
        ),
    )
    async with _posted_and_relayed(
        platform_running, settings, namespace, "g-429", tmp_path, card="alice", webhook="throttled"
    ) as [event_id]:
        await eventually(
            "the retry delivered", lambda: _has(receiver, "/throttled", [event_id], 200), 30
        )
        await asyncio.sleep(3)  # Room for any wrong extra attempt to show up.
    seen = receiver.requests("/throttled")
    assert [(s.event_id, s.status) for s in seen] == [(event_id, 429), (event_id, 200)]
    assert all(s.verified for s in seen)
    gap = seen[1].at - seen[0].at
    assert 3.0 <= gap < 20, f"retried {gap:.2f}s after the 429"
    attempts = await _attempts(migrated_database_url, f"{namespace}/throttled")
    assert [a[:3] for a in attempts] == [(1, "Failed", 429), (2, "Delivered", 200)]
    assert await _delivery_state(migrated_database_url, f"{namespace}/throttled") == "delivered"


async def test_redirects_are_not_followed_and_count_as_failures(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    crds_installed: None,
    kubectl: Kubectl,
    namespace: str,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """A 302 to another path is a failed attempt: the notifier never requests the
    redirect's target, retries the Webhook's URL on its schedule, and gives up after
    ``maxAttempts``, with the redirect named in the delivery log."""
    settings = await _settings_with_topics(platform_running, migrated_database_url)
    _apply_signed(
        kubectl,
        namespace,
        webhook_object(
            "moved",
            f"{receiver.url}/redirect",
            retry={"maxAttempts": 2, "initialDelaySeconds": 1, "maxDelaySeconds": 1},
        ),
    )
    async with _posted_and_relayed(
        platform_running, settings, namespace, "g-302", tmp_path, card="bob", webhook="moved"
    ) as [event_id]:
        await eventually(
            "the delivery given up",
            lambda: _finished(migrated_database_url, f"{namespace}/moved"),
            30,
        )
        await asyncio.sleep(2)
    assert [(s.event_id, s.status) for s in receiver.requests("/redirect")] == [
        (event_id, 302),
        (event_id, 302),
    ]
    assert receiver.requests("/ok") == [], "the redirect was followed"
    attempts = await _attempts(migrated_database_url, f"{namespace}/moved")
    assert [a[:3] for a in attempts] == [(1, "Failed", 302), (2, "Failed", 302)]
    assert all("redirect to /ok not followed" in str(a[3]) for a in attempts), attempts
    assert await _delivery_state(migrated_database_url, f"{namespace}/moved") == "failed"


async def _finished(database_url: str, webhook: str) -> bool:
    count = await scalar(
        database_url,
        "SELECT count(*) FROM webhook_deliveries WHERE webhook = %s AND state <> 'pending'",
        webhook,
    )
    return int(count) >= 1
