"""The authorization gateway over real HTTP (uvicorn on loopback) on the real store and
PostgreSQL: trust refusals write nothing, card numbers are refused and never logged, a paused
database gives IssuerUnavailable within the budget and leaves no hold, a gateway killed
between commit and answer is answered on retry, and overload is declined at once."""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from fintech_operator.ledger import migrate
from tests.conftest import RunningPlatform, wait_for, with_user
from tests.integration import authz_support as authz
from tests.integration import gateway_support as gw
from tests.integration import tls_support as tls

pytestmark = pytest.mark.integration

VISA_TEST_PAN = "4111111111111111"


@pytest.fixture(scope="module")
def gateway_url(platform_running: RunningPlatform, migrated_database_url: str) -> Iterator[str]:
    """The module's database as a role that has only the gateway's privileges, so every test
    here also proves grants.GATEWAY_PRIVILEGES is enough (and the owner is never used)."""
    role = f"gw_{uuid.uuid4().hex[:10]}"
    admin = platform_running.database_url_for("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    migrate.apply(migrated_database_url, gateway_role=role)
    yield with_user(migrated_database_url, role)
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
    with psycopg.connect(admin, autocommit=True) as conn:
        dbname = psycopg.conninfo.conninfo_to_dict(migrated_database_url)["dbname"]
        conn.execute(f'REVOKE ALL ON DATABASE "{dbname}" FROM {role}')
        conn.execute(f"DROP ROLE {role}")


@pytest.fixture(scope="module")
def gateway(gateway_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[gw.Gateway]:
    """The module's gateway with default limits."""
    process = gw.Gateway(gateway_url, tmp_path_factory.mktemp("gateway")).start()
    yield process
    process.stop()


def auth_payload(card: authz.Card, amount: int, **change: Any) -> dict[str, Any]:
    return {
        "id": f"auth_{uuid.uuid4().hex}",
        "card": card.token,
        "amount": amount,
        "currency": "USD",
        "merchant": {"name": "Blue Bottle", "mcc": "5814", "country": "US"},
        **change,
    }


async def test_authorize_partial_capture_and_void_over_real_http(
    gateway: gw.Gateway, pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """The README's flow: a hold, a partial capture, a void of the rest; GET shows it."""
    card = await authz.new_card(pool, limit_minor=100_000)
    auth = auth_payload(card, 5000)
    approved = gateway.post("/v1/authorizations", auth)
    assert approved.status_code == 200, approved.text
    assert approved.json()["approved"] is True
    assert approved.json()["held"] == 5000
    assert authz.held(raw, card) == 5000
    path = f"/v1/authorizations/{auth['id']}"
    capture = gateway.post(f"{path}/captures", {"id": f"cap_{uuid.uuid4().hex}", "amount": 3000})
    assert capture.status_code == 200, capture.text
    void = gateway.post(f"{path}/void", {"id": f"void_{uuid.uuid4().hex}"})
    assert void.status_code == 200, void.text
    state = gateway.get(path)
    assert state.status_code == 200
    assert (state.json()["held"], state.json()["captured"]) == (0, 3000)
    assert authz.held(raw, card) == 0
    retry = gateway.post("/v1/authorizations", auth)
    assert retry.content == approved.content
    assert retry.headers["idempotent-replayed"] == "true"


async def test_untrusted_and_oversized_requests_are_refused_with_nothing_written(
    gateway: gw.Gateway, pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Unsigned, badly signed, stale and oversized requests: 401/413, counted, no row."""
    card = await authz.new_card(pool, limit_minor=100_000)
    body = json.dumps(auth_payload(card, 100)).encode()
    oversized = json.dumps(auth_payload(card, 100, merchant={"name": "x" * 9000})).encode()
    cases = [
        ("unsigned", body, {"content-type": "application/json"}, 401),
        ("bad_signature", body, gw.signed(body, key=b"w" * 32), 401),
        ("stale", body, gw.signed(body, stamp=int(time.time()) - 600), 401),
        ("too_large", oversized, gw.signed(oversized), 413),
    ]
    before_rows = gw.request_rows(raw)
    for kind, content, headers, status in cases:
        before = gateway.metric("fintech_gateway_refused_total", {"reason": kind})
        response = gateway.post("/v1/authorizations", content, headers=headers)
        assert response.status_code == status, (kind, response.text)
        assert response.json()["error"] == kind
        assert gateway.metric("fintech_gateway_refused_total", {"reason": kind}) == before + 1
    assert gw.request_rows(raw) == before_rows
    assert authz.held(raw, card) == 0


async def test_invalid_fields_are_422_naming_them_with_nothing_written(
    gateway: gw.Gateway, pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Each bad field is named in the 422; the store never sees the request."""
    card = await authz.new_card(pool, limit_minor=100_000)
    before_rows = gw.request_rows(raw)
    for change, field in (
        ({"amount": 0}, "amount"),
        ({"amount": 10.5}, "amount"),
        ({"currency": "dollars"}, "currency"),
        ({"merchant": {"name": "x", "mcc": "12345", "country": "US"}}, "merchant.mcc"),
        # A NUL byte, which PostgreSQL's text cannot hold: refused as input, not a server error.
        ({"merchant": {"name": "Cafe\u0000", "mcc": "5812", "country": "US"}}, "merchant.name"),
    ):
        response = gateway.post("/v1/authorizations", {**auth_payload(card, 100), **change})
        assert response.status_code == 422, response.text
        assert field in response.json()["fields"]
    capture = gateway.post("/v1/authorizations/a1/captures", {"id": "c1"})
    assert capture.status_code == 422
    assert "amount" in capture.json()["fields"]
    assert gw.request_rows(raw) == before_rows


async def test_a_card_number_is_refused_and_never_logged(
    gateway: gw.Gateway, pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A PAN as the card, in the merchant name or grouped by spaces: 422, no row, and not one
    of its digits runs appears in the gateway's log or answer."""
    card = await authz.new_card(pool, limit_minor=100_000)
    before_rows = gw.request_rows(raw)
    for change in (
        {"card": VISA_TEST_PAN},
        {"merchant": {"name": f"SHOP {VISA_TEST_PAN}", "mcc": "5814", "country": "US"}},
        {"card": "4111 1111 1111 1111"},
    ):
        response = gateway.post("/v1/authorizations", {**auth_payload(card, 100), **change})
        assert response.status_code == 422
        assert response.json()["error"] == "card_number"
        assert "1111" not in response.text
    assert gw.request_rows(raw) == before_rows
    log = gateway.log()
    assert "refused" in log  # the refusals were logged, without the number
    assert "1111 1111" not in log
    assert VISA_TEST_PAN not in log


async def test_a_paused_database_gives_issuer_unavailable_in_budget_and_no_hold(
    platform_running: RunningPlatform,
    gateway_url: str,
    pool: AsyncConnectionPool[Any],
    raw: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """PostgreSQL stopped (SIGSTOP on every one of its processes) mid-request: the answer is
    IssuerUnavailable within the 800 ms budget; after SIGCONT no hold is left, and a retry
    gets the same decline byte for byte."""
    process = gw.Gateway(gateway_url, tmp_path, deadline_ms="800").start()
    try:
        card = await authz.new_card(pool, limit_minor=100_000)
        auth = auth_payload(card, 2500)
        pids = gw.postgres_pids(platform_running.platform.state_dir)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = process.post("/v1/authorizations", auth)
            elapsed = time.monotonic() - started
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        assert answer.status_code == 200
        assert answer.json()["reason"] == "IssuerUnavailable"
        assert answer.json()["approved"] is False
        assert elapsed < 0.8 + 0.5, elapsed
        wait_for("the settle to record the decline", lambda: _stored(raw, auth["id"]), 60)
        assert authz.held(raw, card) == 0
        assert authz.hold_drift(raw) == []
        retry = process.post("/v1/authorizations", auth)
        assert retry.content == answer.content
    finally:
        process.stop()


def _stored(raw: psycopg.Connection[Any], request_id: str) -> bytes | None:
    row = raw.execute(
        "SELECT answer FROM authorization_requests WHERE request_id = %s", (request_id,)
    ).fetchone()
    return bytes(row[0]) if row else None


async def test_a_gateway_killed_between_commit_and_answer_is_answered_on_retry(
    gateway_url: str,
    pool: AsyncConnectionPool[Any],
    migrated_database_url: str,
    raw: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """The request waits on the card's row lock; the gateway is SIGKILLed; the lock is let go,
    so the statement commits with nobody to answer. A new gateway answers the processor's
    retry with that committed approval (replayed), and holds it once."""
    (tmp_path / "a").mkdir()
    first = gw.Gateway(gateway_url, tmp_path / "a", deadline_ms="20000").start()
    card = await authz.new_card(pool, limit_minor=100_000)
    auth = auth_payload(card, 4200)
    with gw.account_locked(migrated_database_url, card.account) as blocker:
        async with httpx.AsyncClient(base_url=first.base_url, timeout=30) as client:
            sent = asyncio.create_task(gw.post_signed(client, "/v1/authorizations", auth))
            await asyncio.to_thread(
                wait_for, "the request to wait on the card lock", lambda: _waiting(raw), 30
            )
            first.stop(kill=True)
            with pytest.raises(httpx.HTTPError):
                await sent
        blocker.rollback()
    wait_for("the orphaned statement to commit", lambda: _stored(raw, auth["id"]), 30)
    assert authz.held(raw, card) == 4200
    (tmp_path / "b").mkdir()
    second = gw.Gateway(gateway_url, tmp_path / "b").start()
    try:
        retry = second.post("/v1/authorizations", auth)
        assert retry.status_code == 200
        assert retry.json()["approved"] is True
        assert retry.headers["idempotent-replayed"] == "true"
        assert retry.content == _stored(raw, auth["id"])
        assert authz.held(raw, card) == 4200
    finally:
        second.stop()


async def test_a_declined_request_cannot_commit_a_hold_after_the_gateway_died(
    gateway_url: str,
    pool: AsyncConnectionPool[Any],
    migrated_database_url: str,
    raw: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """Found by the fault campaign: the request waits on the card's row lock past the 500 ms
    deadline, so the processor is told IssuerUnavailable; the settle waits for the pool's one
    connection, which the stuck statement holds; the gateway is SIGKILLed before it settles.
    When the lock is let go, PostgreSQL must not commit the approval nobody can release: the
    statement was cancelled at the deadline, and no hold survives the declined answer."""
    process = gw.Gateway(
        gateway_url, tmp_path, deadline_ms="500", db_pool_min_size="1", db_pool_max_size="1"
    ).start()
    card = await authz.new_card(pool, limit_minor=100_000)
    auth = auth_payload(card, 4300)
    with gw.account_locked(migrated_database_url, card.account) as blocker:
        try:
            answer = await asyncio.to_thread(process.post, "/v1/authorizations", auth)
        finally:
            process.stop(kill=True)
        await asyncio.sleep(1.0)
        blocker.rollback()
    assert answer.json()["reason"] == "IssuerUnavailable"
    await asyncio.sleep(1.0)  # a statement still waiting would commit now
    assert raw.execute(
        "SELECT count(*) FROM authorizations WHERE id = %s", (auth["id"],)
    ).fetchone() == (0,)
    assert authz.held(raw, card) == 0


async def test_a_capture_and_a_void_cut_off_by_the_deadline_are_answered_the_same_on_retry(
    gateway_url: str,
    pool: AsyncConnectionPool[Any],
    migrated_database_url: str,
    raw: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """A capture and a void wait on the card's row lock past the 500 ms deadline: each is
    answered IssuerUnavailable and settled before anything commits. A retry of each with the
    same id gets those very bytes again, marked Idempotent-Replayed, and nothing was captured,
    posted or released; the hold is still there for a capture with a new id. Before migration
    0074 the retries were 409 IdempotencyConflict (field kind)."""
    process = gw.Gateway(gateway_url, tmp_path, deadline_ms="500").start()
    try:
        card = await authz.new_card(pool, limit_minor=100_000)
        auth = auth_payload(card, 5000)
        assert process.post("/v1/authorizations", auth).json()["approved"] is True
        path = f"/v1/authorizations/{auth['id']}"
        follow_ups = {
            "captures": {"id": f"cap_{uuid.uuid4().hex}", "amount": 3000, "final": True},
            "void": {"id": f"void_{uuid.uuid4().hex}"},
        }
        with gw.account_locked(migrated_database_url, card.account) as blocker:
            first = {
                segment: await asyncio.to_thread(process.post, f"{path}/{segment}", payload)
                for segment, payload in follow_ups.items()
            }
            for payload in follow_ups.values():
                stored = functools.partial(_stored, raw, payload["id"])
                wait_for("the settle to record the decline", stored, 60)
            blocker.rollback()
        for segment, payload in follow_ups.items():
            answer = first[segment]
            assert answer.status_code == 200, answer.text
            assert answer.json() == {
                "held": 0,
                "reason": "IssuerUnavailable",
                "status": "declined",
                "approved": False,
                "authorization": payload["id"],
            }
            assert "idempotent-replayed" not in answer.headers
            assert _stored(raw, payload["id"]) == answer.content
        await asyncio.sleep(0.5)  # a late statement would have committed by now
        for segment, payload in follow_ups.items():
            retry = process.post(f"{path}/{segment}", payload)
            assert (retry.status_code, retry.content) == (200, first[segment].content)
            assert retry.headers["idempotent-replayed"] == "true"
        assert (authz.held(raw, card), authz.posted(raw, card)) == (5000, 0)
        state = process.get(path).json()
        assert (state["status"], state["held"], state["captured"], state["released"]) == (
            "pending", 5000, 0, 0,
        )  # fmt: skip
        journals = raw.execute(
            "SELECT count(*) FROM journals WHERE reference = %s", (auth["id"],)
        ).fetchone()
        assert journals == (0,)
        new_id = f"cap_{uuid.uuid4().hex}"
        fresh = process.post(f"{path}/captures", {**follow_ups["captures"], "id": new_id})
        assert (fresh.status_code, fresh.json()["captured"]) == (200, 3000), fresh.text
        assert (authz.held(raw, card), authz.posted(raw, card)) == (0, 3000)
    finally:
        process.stop()


def _waiting(raw: psycopg.Connection[Any]) -> bool:
    row = raw.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND query LIKE '%authorization_authorize%'"
    ).fetchone()
    return bool(row and row[0])


async def test_overload_is_declined_at_once(
    gateway_url: str,
    pool: AsyncConnectionPool[Any],
    migrated_database_url: str,
    raw: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """With its one in-flight slot taken by a request stuck on a row lock and no queue, the
    gateway declines the next request (another card) Overloaded at once, writing nothing."""
    process = gw.Gateway(
        gateway_url, tmp_path, in_flight_max="1", queue_max="0", deadline_ms="10000"
    ).start()
    try:
        stuck_card = await authz.new_card(pool, limit_minor=100_000)
        other_card = await authz.new_card(pool, limit_minor=100_000)
        with gw.account_locked(migrated_database_url, stuck_card.account) as blocker:
            async with httpx.AsyncClient(base_url=process.base_url, timeout=30) as client:
                stuck = asyncio.create_task(
                    gw.post_signed(client, "/v1/authorizations", auth_payload(stuck_card, 100))
                )
                await asyncio.to_thread(wait_for, "the lock wait", lambda: _waiting(raw), 30)
                other = auth_payload(other_card, 100)
                started = time.monotonic()
                declined = await gw.post_signed(client, "/v1/authorizations", other)
                elapsed = time.monotonic() - started
                blocker.rollback()
                assert (await stuck).json()["approved"] is True
        assert declined.json()["reason"] == "Overloaded"
        assert elapsed < 0.5, elapsed
        assert _stored(raw, other["id"]) is None
        again = process.post("/v1/authorizations", other)
        assert again.json()["approved"] is True
    finally:
        process.stop()


async def test_a_queued_request_is_answered_when_the_slot_frees(
    gateway_url: str,
    pool: AsyncConnectionPool[Any],
    migrated_database_url: str,
    raw: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """With its one slot taken by a request stuck on a row lock, the next requests (another
    card) wait in the queue: one whose wait ends first is declined Overloaded with nothing
    written, and one still waiting when the lock goes is approved, as the stuck one is."""
    process = gw.Gateway(
        gateway_url, tmp_path, in_flight_max="1", queue_max="8", queue_wait_ms="3000",
        deadline_ms="10000",
    ).start()  # fmt: skip
    try:
        stuck_card = await authz.new_card(pool, limit_minor=100_000)
        other_card = await authz.new_card(pool, limit_minor=100_000)
        with gw.account_locked(migrated_database_url, stuck_card.account) as blocker:
            async with httpx.AsyncClient(base_url=process.base_url, timeout=30) as client:

                def send(payload: dict[str, Any]) -> asyncio.Task[httpx.Response]:
                    return asyncio.create_task(
                        gw.post_signed(client, "/v1/authorizations", payload)
                    )

                stuck = send(auth_payload(stuck_card, 100))
                await asyncio.to_thread(wait_for, "the lock wait", lambda: _waiting(raw), 30)
                timed_out = auth_payload(other_card, 100)
                started = time.monotonic()
                declined = await send(timed_out)
                waited = time.monotonic() - started
                queued = auth_payload(other_card, 200)
                approved = send(queued)
                await asyncio.sleep(1.0)  # inside its 3 s wait
                blocker.rollback()
                assert (await stuck).json()["approved"] is True
                answer = (await approved).json()
        assert declined.json()["reason"] == "Overloaded"
        assert 3.0 <= waited < 5.0, waited
        assert _stored(raw, timed_out["id"]) is None
        assert answer["approved"] is True, answer
        assert _stored(raw, queued["id"]) is not None
    finally:
        process.stop()


async def test_a_burst_beyond_the_in_flight_limit_is_answered_not_declined(
    gateway_url: str,
    pool: AsyncConnectionPool[Any],
    migrated_database_url: str,
    raw: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """120 authorizations sent at once on 120 connections to a gateway working on 4 at a time:
    while a row lock keeps the first ones working, the others wait in the queue (its gauge
    shows them); once the lock goes, every one is approved and held, none Overloaded, and the
    queue and the slots are empty after."""
    process = gw.Gateway(
        gateway_url, tmp_path, in_flight_max="4", queue_wait_ms="20000", deadline_ms="30000"
    ).start()
    try:
        cards = [await authz.new_card(pool, limit_minor=1_000_000) for _ in range(12)]
        payloads = [auth_payload(cards[i % len(cards)], 100) for i in range(120)]
        limits = httpx.Limits(max_connections=len(payloads))
        with gw.account_locked(migrated_database_url, cards[0].account) as blocker:
            async with httpx.AsyncClient(
                base_url=process.base_url, timeout=60, limits=limits
            ) as client:
                burst = asyncio.gather(
                    *(gw.post_signed(client, "/v1/authorizations", p) for p in payloads)
                )

                def waiting() -> float:
                    return process.metric("fintech_gateway_waiting", {})

                seen = await asyncio.to_thread(wait_for, "requests waiting", waiting, 30)
                blocker.rollback()
                answers = await burst
        assert seen > 0
        reasons = collections.Counter(answer.json()["reason"] for answer in answers)
        assert reasons == {"Approved": 120}, reasons
        assert sum(authz.held(raw, card) for card in cards) == 120 * 100
        assert process.metric("fintech_gateway_waiting", {}) == 0
        assert process.metric("fintech_gateway_in_flight", {}) == 0
    finally:
        process.stop()


def test_the_gateway_role_reaches_only_its_tables(gateway_url: str) -> None:
    """The gateway's own role cannot read webhook secrets or settlement files, cannot change
    an entry or a journal, and cannot switch the ledger's triggers off."""
    with psycopg.connect(gateway_url, autocommit=True) as conn:
        for statement in (
            "SELECT * FROM webhook_endpoints",
            "SELECT * FROM recon_runs",
            "SELECT * FROM rewards_ledger",
            "UPDATE entries SET amount_minor = amount_minor",
            "DELETE FROM journals",
            "TRUNCATE authorizations",
            "ALTER TABLE entries DISABLE TRIGGER ALL",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


async def test_several_workers_share_the_port_and_sum_their_metrics(
    gateway_url: str,
    pool: AsyncConnectionPool[Any],
    tmp_path: Path,
) -> None:
    """FINTECH_GATEWAY_WORKERS=2: two worker processes answer on one port, and /metrics
    (whichever worker serves it) counts every request of both."""
    process = gw.Gateway(gateway_url, tmp_path, workers="2").start()
    try:
        children = wait_for(
            "two workers", lambda: len(_children(process)) == 2 and _children(process)
        )
        card = await authz.new_card(pool, limit_minor=1_000_000)
        for _ in range(20):
            # A new connection each time: the kernel spreads them over the two workers.
            answer = process.post("/v1/authorizations", auth_payload(card, 100))
            assert answer.status_code == 200, answer.text
            assert answer.json()["approved"] is True
        for _ in range(4):
            counted = process.metric(
                "fintech_gateway_requests_total", {"endpoint": "authorize", "code": "200"}
            )
            assert counted == 20
    finally:
        process.stop()
    assert len(children) == 2
    assert _running(children) == []


def _running(pids: list[int]) -> list[int]:
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def _children(process: gw.Gateway) -> list[int]:
    """The pids of the gateway process's worker children (uvicorn's spawned workers)."""
    assert process.proc is not None
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            cmdline = (entry / "cmdline").read_bytes() if (entry / "cmdline").exists() else b""
            if (
                int(stat.rsplit(")", 1)[1].split()[1]) == process.proc.pid
                and b"spawn_main" in cmdline
            ):
                found.append(int(entry.name))
    return found


async def test_mtls_refuses_a_client_without_a_certificate_of_the_ca(
    gateway_url: str,
    pool: AsyncConnectionPool[Any],
    raw: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """With a server certificate and a client CA, the gateway speaks HTTPS only and the TLS
    handshake requires a client certificate signed by that CA: a client without one, or with
    one of another CA, or in plain HTTP, is cut off before any HTTP (nothing written); a
    client with a certificate of the CA is answered."""
    ca, rogue = tls.Authority(tmp_path, "processor-ca"), tls.Authority(tmp_path, "rogue-ca")
    server = ca.issue("gateway", server=True)
    good = tls.client_context(ca.cert_path, ca.issue("processor", server=False))
    process = gw.Gateway(
        gateway_url,
        tmp_path,
        client_tls=good,
        tls_cert_file=str(server.cert),
        tls_key_file=str(server.key),
        tls_client_ca_file=str(ca.cert_path),
    ).start()
    try:
        card = await authz.new_card(pool, limit_minor=100_000)
        before = gw.request_rows(raw)
        body = json.dumps(auth_payload(card, 100)).encode()
        for refused in (
            tls.client_context(ca.cert_path),
            tls.client_context(ca.cert_path, rogue.issue("intruder", server=False)),
            None,
        ):
            assert _cut_off(process.base_url, refused, body)
        assert gw.request_rows(raw) == before
        answer = process.post("/v1/authorizations", auth_payload(card, 100))
        assert answer.status_code == 200, answer.text
        assert answer.json()["approved"] is True
    finally:
        process.stop()


def _cut_off(base_url: str, context: Any, body: bytes) -> str:
    """The transport error a signed authorization meets with this TLS context (None: plain
    HTTP to the HTTPS port), or fail when it is answered."""
    url = base_url if context is not None else base_url.replace("https://", "http://")
    with httpx.Client(base_url=url, verify=context or True, timeout=10) as client:
        try:
            response = client.post("/v1/authorizations", content=body, headers=gw.signed(body))
        except httpx.TransportError as exc:
            return type(exc).__name__
    raise AssertionError(f"answered {response.status_code} without a client certificate")
