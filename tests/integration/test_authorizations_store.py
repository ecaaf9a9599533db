"""Real-time authorizations on a real PostgreSQL: holds, captures, voids, expiry, idempotency,
the gateway deadline, and the money invariants the database enforces by itself (issue 13)."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import referencing
from opentelemetry import context as otel_context
from opentelemetry import trace
from psycopg import errors, sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.authorizations import contract, mirror
from fintech_operator.authorizations.store import PostgresStore
from fintech_operator.events import schema
from fintech_operator.gateway import answers
from fintech_operator.ledger import engine, model, rules
from tests.integration.authz_support import (
    NAMESPACE,
    Card,
    authorize_request,
    autocommit_pool,
    body,
    held,
    hold_drift,
    new_card,
    posted,
    trial_balance_zero,
)

pytestmark = pytest.mark.integration

STORE = PostgresStore()


@pytest.fixture(scope="module")
async def fast(migrated_database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with autocommit_pool(migrated_database_url, 8) as pool:
        yield pool


async def authorize(pool: AsyncConnectionPool[Any], req: contract.AuthorizeRequest) -> Any:
    async with pool.connection() as conn:
        return await STORE.authorize(conn, req)


async def capture(
    pool: AsyncConnectionPool[Any], auth: str, amount: int, *, final: bool = False, **more: Any
) -> contract.Answer:
    req = contract.CaptureRequest(
        id=more.pop("request_id", f"cap_{uuid.uuid4().hex}"), amount=amount, final=final, **more
    )
    async with pool.connection() as conn:
        return await STORE.capture(conn, auth, req)


async def void(pool: AsyncConnectionPool[Any], auth: str, request_id: str | None = None) -> Any:
    req = contract.VoidRequest(id=request_id or f"void_{uuid.uuid4().hex}")
    async with pool.connection() as conn:
        return await STORE.void(conn, auth, req)


async def increment(pool: AsyncConnectionPool[Any], auth: str, amount: int) -> Any:
    req = contract.IncrementRequest(id=f"inc_{uuid.uuid4().hex}", amount=amount)
    async with pool.connection() as conn:
        return await STORE.increment(conn, auth, req)


def outbox_types(raw: psycopg.Connection[Any], card: Card) -> list[str]:
    rows = raw.execute(
        "SELECT payload->>'type' FROM outbox WHERE key = %s ORDER BY id", (card.ref,)
    ).fetchall()
    return [
        str(row[0]).removeprefix("dev.fintech.authorization.").removesuffix(".v1") for row in rows
    ]


def capture_journals(raw: psycopg.Connection[Any], auth: str) -> int:
    """How many journals captures of ``auth`` posted (their reference is the authorization)."""
    row = raw.execute("SELECT count(*) FROM journals WHERE reference = %s", (auth,)).fetchone()
    assert row is not None
    return int(row[0])


# --- Concurrency and limits --------------------------------------------------------------------


async def test_200_concurrent_authorizations_on_a_limit_for_50_approve_exactly_50(
    migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """200 authorizations of 100 race on one card with a Daily limit of 5,000: exactly 50 are
    approved, the rest are SpendLimitExceeded, and available never goes below zero."""
    async with autocommit_pool(migrated_database_url, 16) as pool:
        card = await new_card(pool, limit_minor=5_000)
        answers = await asyncio.gather(
            *(authorize(pool, authorize_request(card, 100)) for _ in range(200))
        )
    bodies = [body(answer) for answer in answers]
    approved = [b for b in bodies if b["approved"]]
    declined = [b for b in bodies if not b["approved"]]
    assert len(approved) == 50
    assert {b["reason"] for b in declined} == {"SpendLimitExceeded"}
    assert all(b["available"] >= 0 for b in bodies)
    assert min(b["available"] for b in approved) == 0
    assert held(raw, card) == 5_000
    assert hold_drift(raw) == []
    assert trial_balance_zero(raw)


async def test_a_decline_writes_its_record_and_event_but_never_a_hold(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Over the limit: declined, a 'declined' row and event, nothing held."""
    card = await new_card(fast, limit_minor=1_000)
    answer = await authorize(fast, authorize_request(card, 1_001))
    assert answer.status_code == 200
    assert body(answer)["approved"] is False
    assert body(answer)["reason"] == "SpendLimitExceeded"
    assert held(raw, card) == 0
    row = raw.execute(
        "SELECT status, held_minor FROM authorizations WHERE id = %s",
        (body(answer)["authorization"],),
    ).fetchone()
    assert row == ("declined", 0)
    assert outbox_types(raw, card) == ["declined"]


async def test_unknown_card_frozen_card_and_currency_are_declined_with_their_reasons(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """CardNotFound for an unknown token, CurrencyMismatch, CardNotActive once frozen."""
    card = await new_card(fast)
    unknown = authorize_request(card, 100).model_copy(update={"card": "tok_nobody"})
    assert body(await authorize(fast, unknown))["reason"] == "CardNotFound"
    euro = authorize_request(card, 100).model_copy(update={"currency": "EUR"})
    assert body(await authorize(fast, euro))["reason"] == "CurrencyMismatch"
    async with fast.connection() as conn:
        await engine.set_frozen(conn, card.account, True)
    assert body(await authorize(fast, authorize_request(card, 100)))["reason"] == "CardNotActive"
    async with fast.connection() as conn:
        await mirror.retire_card(conn, "shop", card.name)
        await engine.set_frozen(conn, card.account, False)
    assert body(await authorize(fast, authorize_request(card, 100)))["reason"] == "CardNotActive"
    assert held(raw, card) == 0


async def test_a_namespace_risk_rule_declines_with_its_name(
    fast: AsyncConnectionPool[Any],
) -> None:
    """A Decline rule of the namespace's RiskPolicy (BlockedMcc) declines in real time;
    a Review rule does not."""
    card = await new_card(fast)
    policy = api.RiskPolicySpec.model_validate(
        {
            "blockedMccs": {"codes": ["7995"], "action": "Decline"},
            "maxAmountPerTransaction": {"amount": 10, "currency": "USD", "action": "Review"},
        }
    )
    async with fast.connection() as conn:
        await mirror.put_risk_rules(conn, "shop", "shop/default", policy)
    try:
        bet = await authorize(fast, authorize_request(card, 100, mcc="7995"))
        assert body(bet)["reason"] == "RiskDeclined:BlockedMcc"
        assert body(await authorize(fast, authorize_request(card, 100)))["approved"] is True
    finally:
        async with fast.connection() as conn:
            await mirror.drop_risk_rules(conn, "shop")


async def test_a_posting_purchase_counts_holds_against_the_limit(
    fast: AsyncConnectionPool[Any], pool: AsyncConnectionPool[Any]
) -> None:
    """Invariant 8 across both paths: with 900 of 1,000 held, a Posting of 200 is refused."""
    card = await new_card(fast, limit_minor=1_000)
    assert body(await authorize(fast, authorize_request(card, 900)))["approved"] is True
    now = datetime.datetime.now(datetime.UTC)
    request = model.PostingRequest(
        idempotency_key=f"p-{uuid.uuid4()}",
        kind=model.PostingKind.PURCHASE,
        lines=rules.lines_for(model.PostingKind.PURCHASE, card.account, 200, "USD"),
        occurred_at=now,
        guard=model.SpendGuard(card.account, 1_000, model.SpendInterval.DAILY, now),
    )
    with pytest.raises(model.SpendLimitExceeded):
        await engine.post(pool, request)


# --- Idempotency -----------------------------------------------------------------------------


async def test_retries_return_the_first_answer_byte_for_byte_and_change_nothing(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """An authorization, a capture and a void asked twice: the same bytes, replayed=True,
    and no new row, event or journal."""
    card = await new_card(fast, limit_minor=10_000)
    req = authorize_request(card, 1_000)
    first = await authorize(fast, req)
    cap_id, void_id = f"cap_{uuid.uuid4().hex}", f"void_{uuid.uuid4().hex}"
    cap = await capture(fast, req.id, 400, request_id=cap_id)
    voided = await void(fast, req.id, void_id)
    before = raw.execute("SELECT count(*) FROM outbox").fetchone(), posted(raw, card)
    again = await authorize(fast, req)
    cap_again = await capture(fast, req.id, 400, request_id=cap_id)
    void_again = await void(fast, req.id, void_id)
    assert (again.body, cap_again.body, void_again.body) == (first.body, cap.body, voided.body)
    assert (again.replayed, cap_again.replayed, void_again.replayed) == (True, True, True)
    assert not first.replayed
    assert (raw.execute("SELECT count(*) FROM outbox").fetchone(), posted(raw, card)) == before
    assert posted(raw, card) == 400
    assert held(raw, card) == 0


async def test_a_store_connection_calls_prepared_statements_and_answers_as_a_plain_one(
    fast: AsyncConnectionPool[Any], migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """The gateway's connections (contract.StoreConnection) call the store's functions through
    libpq's prepared statements: the same answers as through a plain connection's cursor,
    replays byte for byte; a call that fails on the server, a session that lost its prepared
    statements and a parameter libpq would cut short each leave the connection usable."""
    card = await new_card(fast, limit_minor=10_000)
    async with await contract.StoreConnection.connect(
        migrated_database_url, autocommit=True
    ) as conn:
        req = authorize_request(card, 1_000)
        first = await STORE.authorize(conn, req)
        cap = await STORE.capture(
            conn, req.id, contract.CaptureRequest(id=f"cap_{uuid.uuid4().hex}", amount=400)
        )
        assert conn.prepared_names == {
            b"fo_authorization_authorize",
            b"fo_authorization_capture",
        }
        # An amount past bigint: the server refuses it for the function's bigint parameter.
        bad = req.model_copy(update={"amount": 2**70})
        with pytest.raises(errors.NumericValueOutOfRange):
            await STORE.authorize(conn, bad)
        # A NUL byte: libpq would send the text up to it; refused before it is sent.
        nul = authorize_request(card, 1_000).model_copy(update={"id": "a\x00b"})
        with pytest.raises(psycopg.DataError, match="NUL"):
            await STORE.authorize(conn, nul)
        # The session loses its prepared statements: the next call prepares again.
        await conn.execute("DEALLOCATE ALL")
        again = await STORE.authorize(conn, req)
        voided = await STORE.void(conn, req.id, contract.VoidRequest(id=f"v_{uuid.uuid4().hex}"))
    async with fast.connection() as plain:
        plain_again = await STORE.authorize(plain, req)
        plain_get = await STORE.get(plain, req.id)
    # Cut short at its NUL, the id would have been 'a': nothing was stored under it.
    assert raw.execute(
        "SELECT count(*) FROM authorization_requests WHERE request_id = 'a'"
    ).fetchone() == (0,)
    assert first.status_code == 200
    assert b'"approved": true' in first.body
    assert (again.body, again.replayed) == (first.body, True)
    assert plain_again.body == first.body
    assert b'"captured": 400' in cap.body
    assert json.loads(voided.body)["status"] == "closed"
    assert json.loads(plain_get.body)["released"] == 600
    assert (posted(raw, card), held(raw, card)) == (400, 0)


async def test_the_same_id_with_another_body_is_409_naming_the_field(
    fast: AsyncConnectionPool[Any],
) -> None:
    card = await new_card(fast)
    req = authorize_request(card, 1_000)
    await authorize(fast, req)
    changed = await authorize(fast, req.model_copy(update={"amount": 1_001}))
    assert changed.status_code == 409
    assert body(changed) == {
        "error": "IdempotencyConflict",
        "field": "amount",
        "message": f"request id {req.id} was used for another request: amount differs",
    }
    other_mcc = req.model_copy(
        update={"merchant": contract.Merchant(name="Cafe", mcc="5411", country="US")}
    )
    assert body(await authorize(fast, other_mcc))["field"] == "merchant.mcc"
    cap_id = f"cap_{uuid.uuid4().hex}"
    await capture(fast, req.id, 100, request_id=cap_id)
    refused = await capture(fast, req.id, 100, request_id=cap_id, final=True)
    assert (refused.status_code, body(refused)["field"]) == (409, "final")
    # The authorization's own id reused for a capture: another kind of request.
    reused = await capture(fast, req.id, 100, request_id=req.id)
    assert (reused.status_code, body(reused)["field"]) == (409, "kind")


async def test_concurrent_retries_of_one_id_hold_once(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Ten copies of one authorization at once (a processor retrying fast): one hold, one
    answer, all ten identical."""
    card = await new_card(fast, limit_minor=10_000)
    req = authorize_request(card, 700)
    answers = await asyncio.gather(*(authorize(fast, req) for _ in range(10)))
    assert len({answer.body for answer in answers}) == 1
    assert sum(not answer.replayed for answer in answers) == 1
    assert held(raw, card) == 700


# --- Captures, voids, increments ------------------------------------------------------------


async def test_partial_capture_then_final_posts_what_was_captured_and_releases_the_rest(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    card = await new_card(fast, limit_minor=10_000)
    auth = body(await authorize(fast, authorize_request(card, 1_000)))["authorization"]
    first = body(await capture(fast, auth, 300))
    assert (first["held"], first["captured"], first["status"]) == (700, 300, "pending")
    assert (held(raw, card), posted(raw, card)) == (700, 300)
    second = body(await capture(fast, auth, 200))
    third = body(await capture(fast, auth, 100, final=True))
    assert (second["held"], second["captured"]) == (500, 500)
    assert (third["held"], third["captured"], third["released"], third["status"]) == (
        0, 600, 400, "closed",
    )  # fmt: skip
    assert third["available"] == 10_000 - 600
    assert (held(raw, card), posted(raw, card)) == (0, 600)
    assert outbox_types(raw, card) == ["approved", "captured", "captured", "captured"]
    assert trial_balance_zero(raw)
    assert hold_drift(raw) == []


async def test_a_captures_journal_names_the_cards_namespace(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Captures are the namespace's money (0045): their journals say whose, like a Posting's."""
    card = await new_card(fast, limit_minor=10_000)
    auth = body(await authorize(fast, authorize_request(card, 1_000)))["authorization"]
    body(await capture(fast, auth, 400, final=True))
    rows = raw.execute(
        """SELECT DISTINCT j.namespace FROM journals j
             JOIN entries e ON e.journal_id = j.id JOIN accounts a ON a.id = e.account_id
            WHERE a.kind = 'card' AND j.reference = %s""",
        (auth,),
    ).fetchall()
    assert rows == [(NAMESPACE,)]


async def test_over_capture_is_allowed_up_to_the_product_allowance_only(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """overCaptureBps 2000: a hold of 1,000 captures up to 1,200, not 1,201."""
    card = await new_card(fast, product_terms={"overCaptureBps": 2_000})
    auth = body(await authorize(fast, authorize_request(card, 1_000)))["authorization"]
    refused = await capture(fast, auth, 1_201)
    assert (refused.status_code, body(refused)["error"]) == (409, "OverCapture")
    assert (held(raw, card), posted(raw, card)) == (1_000, 0)
    ok = body(await capture(fast, auth, 1_200, final=True))
    assert (ok["captured"], ok["held"], ok["status"]) == (1_200, 0, "closed")
    plain = await new_card(fast)
    auth2 = body(await authorize(fast, authorize_request(plain, 1_000)))["authorization"]
    assert body(await capture(fast, auth2, 1_001))["error"] == "OverCapture"


async def test_a_capture_in_another_currency_than_its_authorization_is_refused(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A capture of a pending USD authorization that says EUR is 409 CurrencyMismatch (stored
    and replayed), never a capture of the same number of USD; one that says USD, or no
    currency, captures (migration 0073)."""
    card = await new_card(fast)
    auth = body(await authorize(fast, authorize_request(card, 1_000)))["authorization"]
    refused = await capture(fast, auth, 100, currency="EUR", request_id="cap_eur_1")
    assert (refused.status_code, body(refused)) == (
        409,
        {
            "error": "CurrencyMismatch",
            "authorization": auth,
            "message": "the capture is in EUR, the authorization in USD",
        },
    )
    again = await capture(fast, auth, 100, currency="EUR", request_id="cap_eur_1")
    assert (again.status_code, again.body, again.replayed) == (409, refused.body, True)
    assert (held(raw, card), posted(raw, card)) == (1_000, 0)
    assert outbox_types(raw, card) == ["approved"]
    same = body(await capture(fast, auth, 100, currency="USD"))
    plain = body(await capture(fast, auth, 100))
    assert (same["captured"], plain["captured"], plain["held"]) == (100, 200, 800)
    assert (held(raw, card), posted(raw, card)) == (800, 200)
    assert trial_balance_zero(raw)


async def test_a_capture_naming_another_card_than_its_authorizations_is_refused(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A capture of an existing authorization whose ``card`` is another card's token (or a
    token nobody has) is 409 CardMismatch, stored and replayed, with nothing posted to either
    card; before migration 0074 the card was not read and the capture was posted to the
    authorization's card. The same for a declined authorization, whose capture would be a
    force post on its card. The authorization's own token, or no card, captures."""
    card = await new_card(fast, limit_minor=5_000, product_terms={"forcePost": True})
    other = await new_card(fast, limit_minor=5_000)
    auth = body(await authorize(fast, authorize_request(card, 1_000)))["authorization"]
    cap_id = f"cap_{uuid.uuid4().hex}"
    refused = await capture(fast, auth, 100, card=other.token, request_id=cap_id)
    assert (refused.status_code, body(refused), refused.replayed) == (
        409,
        {
            "error": "CardMismatch",
            "authorization": auth,
            "message": "the capture names another card than the authorization's",
        },
        False,
    )
    again = await capture(fast, auth, 100, card=other.token, request_id=cap_id)
    assert (again.status_code, again.body, again.replayed) == (409, refused.body, True)
    nobody = await capture(fast, auth, 100, final=True, card="tok_nobody", currency="USD")
    assert (nobody.status_code, body(nobody)["error"]) == (409, "CardMismatch")
    assert (held(raw, card), posted(raw, card), posted(raw, other)) == (1_000, 0, 0)
    assert (held(raw, other), capture_journals(raw, auth)) == (0, 0)
    assert outbox_types(raw, card) == ["approved"]
    assert outbox_types(raw, other) == []
    own = body(await capture(fast, auth, 100, card=card.token, currency="USD"))
    plain = body(await capture(fast, auth, 100, final=True))
    assert (own["captured"], plain["captured"], plain["status"]) == (100, 200, "closed")
    assert (held(raw, card), posted(raw, card), posted(raw, other)) == (0, 200, 0)
    # A declined authorization (over the limit) of the card: a capture of it is a force post
    # on that card, never on the card the capture names.
    declined = await authorize(fast, authorize_request(card, 9_000))
    assert body(declined)["reason"] == "SpendLimitExceeded"
    declined_id = body(declined)["authorization"]
    wrong = await capture(fast, declined_id, 300, card=other.token)
    assert (wrong.status_code, body(wrong)["error"]) == (409, "CardMismatch")
    assert (posted(raw, card), posted(raw, other)) == (200, 0)
    forced = body(await capture(fast, declined_id, 300, card=card.token))
    assert (forced["forcePost"], forced["captured"]) == (True, 300)
    assert (posted(raw, card), posted(raw, other)) == (500, 0)
    assert trial_balance_zero(raw)
    assert hold_drift(raw) == []


async def test_capture_after_void_and_void_after_final_capture_are_refused(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    card = await new_card(fast)
    voided = body(await authorize(fast, authorize_request(card, 500)))["authorization"]
    assert body(await void(fast, voided))["released"] == 500
    late = await capture(fast, voided, 100)
    assert (late.status_code, body(late)["error"]) == (409, "AuthorizationVoided")
    captured = body(await authorize(fast, authorize_request(card, 500)))["authorization"]
    await capture(fast, captured, 500, final=True)
    refused = await void(fast, captured)
    assert (refused.status_code, body(refused)["error"]) == (409, "AuthorizationCaptured")
    twice = await void(fast, voided)
    assert body(twice)["error"] == "AuthorizationVoided"
    assert (held(raw, card), posted(raw, card)) == (0, 500)


async def test_an_increment_raises_the_hold_within_the_limit(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    card = await new_card(fast, limit_minor=1_000)
    auth = body(await authorize(fast, authorize_request(card, 600)))["authorization"]
    raised = body(await increment(fast, auth, 300))
    assert (raised["approved"], raised["held"], raised["available"]) == (True, 900, 100)
    too_much = body(await increment(fast, auth, 101))
    assert (too_much["approved"], too_much["reason"], too_much["held"]) == (
        False, "SpendLimitExceeded", 900,
    )  # fmt: skip
    assert held(raw, card) == 900
    assert body(await capture(fast, auth, 900, final=True))["captured"] == 900
    assert (held(raw, card), posted(raw, card)) == (0, 900)


async def test_unknown_authorizations_are_404_and_not_remembered(
    fast: AsyncConnectionPool[Any],
) -> None:
    missing = f"auth_{uuid.uuid4().hex}"
    assert (await void(fast, missing)).status_code == 404
    assert (await capture(fast, missing, 100)).status_code == 404
    async with fast.connection() as conn:
        got = await STORE.get(conn, missing)
    assert (got.status_code, body(got)["error"]) == (404, "AuthorizationNotFound")


# --- Force posts -----------------------------------------------------------------------------


async def test_force_posts_only_where_the_product_allows_them(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A capture naming a card for an authorization the issuer never saw: refused
    (ForcePostNotAllowed) on a plain product, posted and recorded as a force post where the
    product sets forcePost."""
    plain = await new_card(fast)
    refused = await capture(fast, "auth_never_seen_1", 250, card=plain.token, currency="USD")
    assert (refused.status_code, body(refused)["error"]) == (409, "ForcePostNotAllowed")
    assert posted(raw, plain) == 0
    forcing = await new_card(fast, product_terms={"forcePost": True})
    missing = f"auth_{uuid.uuid4().hex}"
    forced = await capture(fast, missing, 250, card=forcing.token, currency="USD")
    assert (forced.status_code, body(forced)["forcePost"]) == (200, True)
    assert posted(raw, forcing) == 250
    row = raw.execute(
        "SELECT force_post, amount_minor FROM authorization_captures WHERE authorization_id = %s",
        (missing,),
    ).fetchone()
    assert row == (True, 250)
    assert trial_balance_zero(raw)


# --- Expiry ----------------------------------------------------------------------------------


async def expire_all(pool: AsyncConnectionPool[Any]) -> int:
    async with pool.connection() as conn:
        return await STORE.expire(conn, 1_000)


async def test_expiry_releases_a_hold_exactly_once(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """TTL 2 s: after it, expiry releases the hold once (two concurrent runs, then a third),
    one 'expired' event; a later capture is a force post, refused here."""
    card = await new_card(fast, product_terms={"authorizationTtlSeconds": 2})
    auth = body(await authorize(fast, authorize_request(card, 800)))["authorization"]
    assert await expire_all(fast) == 0
    assert held(raw, card) == 800
    await asyncio.sleep(2.2)
    results = await asyncio.gather(expire_all(fast), expire_all(fast))
    await expire_all(fast)
    assert held(raw, card) == 0
    assert outbox_types(raw, card) == ["approved", "expired"]
    assert sum(results) >= 1
    row = raw.execute(
        "SELECT status, released_minor FROM authorizations WHERE id = %s", (auth,)
    ).fetchone()
    assert row == ("expired", 800)
    assert body(await capture(fast, auth, 100))["error"] == "ForcePostNotAllowed"
    assert hold_drift(raw) == []


async def test_expiry_killed_mid_transaction_releases_once_after_restart(
    fast: AsyncConnectionPool[Any], migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """An expiry run whose connection dies before COMMIT leaves everything held; the next run
    releases it, once."""
    card = await new_card(fast, product_terms={"authorizationTtlSeconds": 1})
    await authorize(fast, authorize_request(card, 300))
    await asyncio.sleep(1.2)
    doomed = psycopg.connect(migrated_database_url)
    doomed.execute("SELECT authorization_expire(1000)")  # inside an open transaction
    pid = doomed.info.backend_pid
    assert held(raw, card) == 300  # not committed: nobody sees the release
    raw.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        doomed.execute("COMMIT")
    assert held(raw, card) == 300
    assert await expire_all(fast) >= 1
    assert await expire_all(fast) == 0
    assert held(raw, card) == 0
    assert outbox_types(raw, card) == ["approved", "expired"]


# --- The gateway's deadline ------------------------------------------------------------------

# The timed-out attempt arrived this long before the settle: every commit in these tests is
# then that attempt's own late commit. A retry that arrives now has age 0.
ARRIVED_BEFORE_SECONDS = 60.0


async def test_settle_after_a_late_commit_releases_the_hold_and_answers_issuer_unavailable(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    card = await new_card(fast, limit_minor=5_000)
    req = authorize_request(card, 2_000)
    approved = await authorize(fast, req)
    assert body(approved)["approved"] is True
    async with fast.connection() as conn:
        await STORE.settle_timed_out(conn, req.id, ARRIVED_BEFORE_SECONDS)
        await STORE.settle_timed_out(conn, req.id, ARRIVED_BEFORE_SECONDS)  # released once
    assert held(raw, card) == 0
    retry = body(await authorize(fast, req))
    assert (retry["approved"], retry["reason"]) == (False, "IssuerUnavailable")
    assert outbox_types(raw, card) == ["approved", "voided"]
    assert hold_drift(raw) == []


async def test_a_settled_late_increment_keeps_the_bytes_the_gateway_sent(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Found by the fault campaign's byte-for-byte rule: an increment that committed after the
    deadline is settled; its stored answer (what every retry gets) must be the very bytes the
    gateway declined with, which name the request id, not other bytes."""
    card = await new_card(fast, limit_minor=5_000)
    auth = body(await authorize(fast, authorize_request(card, 1_000)))["authorization"]
    req = contract.IncrementRequest(id=f"inc_{uuid.uuid4().hex}", amount=500)
    async with fast.connection() as conn:
        assert body(await STORE.increment(conn, auth, req))["approved"] is True
        await STORE.settle_timed_out(conn, req.id, ARRIVED_BEFORE_SECONDS)
    told = answers.decline(req.id, contract.Reason.ISSUER_UNAVAILABLE)
    async with fast.connection() as conn:
        retry = await STORE.increment(conn, auth, req)
    assert retry.body == told.body
    assert held(raw, card) == 1_000
    assert outbox_types(raw, card) == ["approved", "incremented", "voided"]


async def test_settle_before_the_statement_commits_makes_the_late_authorization_roll_back(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any], migrated_database_url: str
) -> None:
    """The authorization is stuck behind the card's lock when the deadline passes; settle
    stores the decline first, so the late statement fails and rolls back: no hold survives."""
    card = await new_card(fast, limit_minor=5_000)
    req = authorize_request(card, 1_000)
    blocker = await psycopg.AsyncConnection.connect(migrated_database_url)
    await blocker.execute("SELECT 1 FROM accounts WHERE code = %s FOR UPDATE", (card.account,))
    late = asyncio.create_task(authorize(fast, req))
    await asyncio.sleep(0.5)
    async with fast.connection() as conn:
        await STORE.settle_timed_out(conn, req.id, ARRIVED_BEFORE_SECONDS)
    await blocker.rollback()
    await blocker.close()
    answer = body(await late)
    assert (answer["approved"], answer["reason"]) == (False, "IssuerUnavailable")
    assert held(raw, card) == 0
    assert raw.execute(
        "SELECT count(*) FROM authorizations WHERE id = %s", (req.id,)
    ).fetchone() == (0,)
    assert outbox_types(raw, card) == []


async def _follow_up(
    pool: AsyncConnectionPool[Any], kind: str, auth: str, request_id: str
) -> contract.Answer:
    """The capture (final, 400) or the void ``request_id`` of ``auth``, always the same body."""
    if kind == "capture":
        return await capture(pool, auth, 400, final=True, request_id=request_id)
    return await void(pool, auth, request_id)


def _timed_out_record(raw: psycopg.Connection[Any], request_id: str) -> tuple[Any, ...] | None:
    return raw.execute(
        "SELECT kind, status_code, answer, timed_out FROM authorization_requests"
        " WHERE request_id = %s",
        (request_id,),
    ).fetchone()


@pytest.mark.parametrize("kind", ["capture", "void"])
async def test_a_capture_or_void_cut_off_before_it_committed_replays_its_decline(
    fast: AsyncConnectionPool[Any],
    raw: psycopg.Connection[Any],
    migrated_database_url: str,
    kind: str,
) -> None:
    """A capture or void stuck behind the card's lock when the deadline passes: the settle
    records its id as timed out first, so the late statement rolls back whole (no journal,
    nothing captured or released), and every retry of that id gets the IssuerUnavailable
    decline the gateway sent, byte for byte, marked replayed, changing nothing. Before
    migration 0074 the retry (and the late statement's own retry) got 409
    IdempotencyConflict naming ``kind``: another answer than the first."""
    card = await new_card(fast, limit_minor=5_000)
    auth = body(await authorize(fast, authorize_request(card, 1_000)))["authorization"]
    request_id = f"{kind}_{uuid.uuid4().hex}"
    told = answers.decline(request_id, contract.Reason.ISSUER_UNAVAILABLE)
    blocker = await psycopg.AsyncConnection.connect(migrated_database_url)
    await blocker.execute("SELECT 1 FROM accounts WHERE code = %s FOR UPDATE", (card.account,))
    late = asyncio.create_task(_follow_up(fast, kind, auth, request_id))
    await asyncio.sleep(0.5)
    await _settle_a_retry_now(fast, request_id, ARRIVED_BEFORE_SECONDS)
    await blocker.rollback()
    await blocker.close()
    late_answer = await late
    assert (late_answer.status_code, late_answer.body) == (200, told.body)
    assert _timed_out_record(raw, request_id) == ("timeout", 200, told.body, False)
    before = _frozen(raw, card, auth)
    assert before[1:] == (("pending", 1_000, 0, 0), ["approved"], 1_000, 0)
    for _ in range(2):
        retry = await _follow_up(fast, kind, auth, request_id)
        assert (retry.status_code, retry.body, retry.replayed) == (200, told.body, True)
    assert _frozen(raw, card, auth) == before
    assert _timed_out_record(raw, request_id) == ("timeout", 200, told.body, False)
    assert capture_journals(raw, auth) == 0
    assert hold_drift(raw) == []


@pytest.mark.parametrize("kind", ["capture", "void"])
async def test_a_capture_or_void_that_committed_late_keeps_its_own_answer(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any], kind: str
) -> None:
    """The other side: a capture or void that committed after its deadline stays done (the
    settle undoes no follow-up), and a retry of its id gets its own answer, replayed."""
    card = await new_card(fast, limit_minor=5_000)
    auth = body(await authorize(fast, authorize_request(card, 1_000)))["authorization"]
    request_id = f"{kind}_{uuid.uuid4().hex}"
    first = await _follow_up(fast, kind, auth, request_id)
    assert (first.status_code, body(first)["status"]) == (200, "closed")
    before = _frozen(raw, card, auth)
    await _settle_a_retry_now(fast, request_id, ARRIVED_BEFORE_SECONDS)
    retry = await _follow_up(fast, kind, auth, request_id)
    assert (retry.status_code, retry.body, retry.replayed) == (200, first.body, True)
    assert _frozen(raw, card, auth) == before
    assert capture_journals(raw, auth) == (1 if kind == "capture" else 0)


async def _settle_a_retry_now(
    fast: AsyncConnectionPool[Any], request_id: str, age_seconds: float = 0.0
) -> None:
    """A retry of ``request_id`` that arrived ``age_seconds`` ago missed its deadline."""
    async with fast.connection() as conn:
        await STORE.settle_timed_out(conn, request_id, age_seconds)


def _frozen(raw: psycopg.Connection[Any], card: Card, auth: str) -> tuple[Any, ...]:
    """Everything a settle could change: the request records, the hold, the events, the money."""
    requests = raw.execute(
        "SELECT request_id, status_code, answer, timed_out FROM authorization_requests"
        " WHERE authorization_id = %s OR request_id = %s ORDER BY request_id",
        (auth, auth),
    ).fetchall()
    row = raw.execute(
        "SELECT status, held_minor, captured_minor, released_minor FROM authorizations"
        " WHERE id = %s",
        (auth,),
    ).fetchone()
    return (requests, row, outbox_types(raw, card), held(raw, card), posted(raw, card))


@pytest.mark.parametrize("settled_by", ["pending", "captured", "voided", "expired"])
async def test_a_late_retry_of_an_answered_request_gets_its_first_answer_and_changes_nothing(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any], settled_by: str
) -> None:
    """Found by the long fault campaign (seed 1616: "doubled 24 / wrong 24"): an approval was
    answered, its hold then captured, voided or expired (or still pending), and a retry of the
    authorization or its increment that arrived later missed the gateway's deadline. The settle
    of that retry withdrew the first answer: the stored answer became IssuerUnavailable and a
    pending hold was released. The first committed answer stands now, byte for byte, whatever
    happened to the hold since and however late the retry comes, and nothing changes."""
    card = await new_card(fast, limit_minor=10_000, product_terms={"authorizationTtlSeconds": 2})
    req = authorize_request(card, 1_000)
    first = await authorize(fast, req)
    auth = body(first)["authorization"]
    inc = contract.IncrementRequest(id=f"inc_{uuid.uuid4().hex}", amount=300)
    async with fast.connection() as conn:
        inc_first = await STORE.increment(conn, auth, inc)
    assert body(inc_first)["approved"] is True
    if settled_by == "captured":
        assert body(await capture(fast, auth, 1_300, final=True))["status"] == "closed"
    elif settled_by == "voided":
        assert body(await void(fast, auth))["approved"] is True
    elif settled_by == "expired":
        await asyncio.sleep(2.2)
        await expire_all(fast)
    await asyncio.sleep(0.05)  # the retries arrive after the answers committed
    before = _frozen(raw, card, auth)
    for request_id in (req.id, inc.id):
        await _settle_a_retry_now(fast, request_id)
    assert _frozen(raw, card, auth) == before
    again = await authorize(fast, req)
    async with fast.connection() as conn:
        inc_again = await STORE.increment(conn, auth, inc)
    assert (again.body, again.replayed) == (first.body, True)
    assert (inc_again.body, inc_again.replayed) == (inc_first.body, True)
    assert "voided" not in outbox_types(raw, card) or settled_by == "voided"
    assert hold_drift(raw) == []


async def test_a_retry_arriving_while_the_first_attempt_was_still_running_may_withdraw_it(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """The other side of the cutoff: an approval committed after the timed-out attempt arrived
    is that attempt's own late commit (the processor was told IssuerUnavailable), so it is
    withdrawn as before; an age just short of the commit leaves it."""
    card = await new_card(fast, limit_minor=5_000)
    req = authorize_request(card, 700)
    approved = await authorize(fast, req)
    await asyncio.sleep(0.3)
    await _settle_a_retry_now(fast, req.id, 0.1)  # arrived after the commit: an earlier answer
    assert held(raw, card) == 700
    await _settle_a_retry_now(fast, req.id, 5.0)  # arrived before it: its own late commit
    assert held(raw, card) == 0
    retry = body(await authorize(fast, req))
    assert (retry["approved"], retry["reason"]) == (False, "IssuerUnavailable")
    assert body(approved)["approved"] is True


@pytest.mark.parametrize("age_seconds", [-0.5, 86_400.5, float("nan")])
async def test_a_settle_refuses_an_impossible_age(
    fast: AsyncConnectionPool[Any], age_seconds: float
) -> None:
    async with fast.connection() as conn:
        with pytest.raises(ValueError, match="age_seconds"):
            await STORE.settle_timed_out(conn, f"x_{uuid.uuid4().hex}", age_seconds)


async def test_the_database_refuses_an_impossible_age_by_itself(
    raw: psycopg.Connection[Any],
) -> None:
    with pytest.raises(errors.InvalidParameterValue):
        raw.execute("SELECT authorization_settle_timed_out('x-1', -1)")


# --- The database refuses broken money by itself ---------------------------------------------


async def test_the_database_refuses_a_second_resolution_and_an_overspent_hold(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    card = await new_card(fast, limit_minor=1_000)
    auth = body(await authorize(fast, authorize_request(card, 500)))["authorization"]
    await void(fast, auth)
    with pytest.raises(errors.RestrictViolation):
        raw.execute("UPDATE authorizations SET status = 'pending' WHERE id = %s", (auth,))
    with pytest.raises(errors.CheckViolation):
        raw.execute("UPDATE authorization_cards SET held_minor = 1001 WHERE card = %s", (card.ref,))
    other = body(await authorize(fast, authorize_request(card, 100)))["authorization"]
    with pytest.raises(errors.CheckViolation):
        raw.execute("UPDATE authorizations SET released_minor = 101 WHERE id = %s", (other,))
    with pytest.raises(errors.RestrictViolation):
        raw.execute("DELETE FROM authorization_requests WHERE authorization_id = %s", (auth,))


# --- Events ----------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events"


def _validator(type_: str) -> jsonschema.Draft202012Validator:
    resources = [
        (doc["$id"], referencing.Resource.from_contents(doc))
        for doc in (json.loads(path.read_text()) for path in DOCS.glob("*.schema.json"))
    ]
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    contents = json.loads((DOCS / f"{type_}.schema.json").read_text())
    return jsonschema.Draft202012Validator(contents, registry=registry)


async def test_every_step_writes_an_event_its_schema_and_the_decoder_accept(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """approved, declined, incremented, captured (and a force post), voided and expired: each
    event the database writes validates against docs/events/ and decodes to its typed data."""
    card = await new_card(
        fast,
        limit_minor=10_000,
        product_terms={"forcePost": True, "authorizationTtlSeconds": 1},
    )
    auth = body(await authorize(fast, authorize_request(card, 1_000)))["authorization"]
    await increment(fast, auth, 100)
    await capture(fast, auth, 300)
    await void(fast, auth)
    await authorize(fast, authorize_request(card, 20_000))
    await capture(fast, f"auth_{uuid.uuid4().hex}", 50, card=card.token, currency="USD")
    await authorize(fast, authorize_request(card, 10))
    await asyncio.sleep(1.2)
    await expire_all(fast)
    rows = raw.execute(
        "SELECT topic, key, payload FROM outbox WHERE key = %s ORDER BY id", (card.ref,)
    ).fetchall()
    seen = set()
    for topic, key, payload in rows:
        assert (topic, key) == ("authorizations", card.ref)
        _validator(payload["type"]).validate(payload)
        event = schema.decode(json.dumps(payload).encode())
        assert event.envelope.subject == f"namespaces/shop/cards/{card.name}"
        seen.add(event.type.split(".")[3])
        if isinstance(event.data, schema.AuthorizationCapturedData):
            assert event.data.rewards_rate_bps == 100
    assert seen == {"approved", "declined", "incremented", "captured", "voided", "expired"}


async def test_the_card_status_reads_held_and_available_from_the_mirror(
    fast: AsyncConnectionPool[Any],
) -> None:
    """What `kubectl get cards` shows (status.held, status.available): 700 held of a Daily
    1,000 after a capture of 200 leaves 100; a card without a limit shows no available."""
    card = await new_card(fast, limit_minor=1_000)
    auth = body(await authorize(fast, authorize_request(card, 900)))["authorization"]
    await capture(fast, auth, 200)
    unlimited = await new_card(fast)
    await authorize(fast, authorize_request(unlimited, 50))
    async with fast.connection() as conn:
        assert await mirror.holds(conn, card.account) == (700, 100)
        assert await mirror.holds(conn, unlimited.account) == (50, None)
        assert await mirror.holds(conn, "card:shop/never-issued:USD") is None


async def test_a_deleted_policy_drops_only_its_own_rules(fast: AsyncConnectionPool[Any]) -> None:
    card = await new_card(fast)
    policy = api.RiskPolicySpec.model_validate({"blockedMccs": {"codes": ["7995"]}})
    async with fast.connection() as conn:
        await mirror.put_risk_rules(conn, "shop", "shop/strict", policy)
        await mirror.drop_risk_rules(conn, "shop", policy="shop/other")
    bet = authorize_request(card, 100, mcc="7995")
    assert body(await authorize(fast, bet))["reason"] == "RiskDeclined:BlockedMcc"
    async with fast.connection() as conn:
        await mirror.drop_risk_rules(conn, "shop", policy="shop/strict")
    assert body(await authorize(fast, authorize_request(card, 100, mcc="7995")))["approved"]


async def _capture_sql(
    pool: AsyncConnectionPool[Any],
    function: str,
    auth: str,
    request_id: str,
    amount: int,
    *,
    final: bool,
) -> tuple[int, dict[str, Any], int]:
    """(status, answer, calls of authorization_capture_other) of one capture, by function."""
    calls = (
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
        " WHERE funcname = 'authorization_capture_other'"
    )
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL track_functions = 'pl'")
        # The view also counts this backend's calls not yet flushed: a difference, then.
        (before,) = await (await conn.execute(calls)).fetchone() or (0,)
        cur = await conn.execute(
            sql.SQL("SELECT status_code, answer FROM {}(%s, %s, %s, %s)").format(
                sql.Identifier(function)
            ),
            (auth, request_id, amount, final),
        )
        status, answer = await cur.fetchone() or (0, b"")
        (after,) = await (await conn.execute(calls)).fetchone() or (0,)
    others = int(after) - int(before)
    return status, json.loads(bytes(answer)), int(others)


def _captured_event(raw: psycopg.Connection[Any], card: Card) -> list[dict[str, Any]]:
    rows = raw.execute(
        "SELECT payload->'data' FROM outbox WHERE key = %s"
        " AND payload->>'type' = 'dev.fintech.authorization.captured.v1' ORDER BY id",
        (card.ref,),
    ).fetchall()
    return [row[0] for row in rows]


async def test_the_flat_capture_writes_what_the_general_one_writes(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """0059: a pending authorization's capture takes the flat path (no call to
    authorization_capture_other) and answers, posts and announces exactly what the general
    function does for the same steps on a twin card; every other case goes to the general one."""
    cards = [await new_card(fast, limit_minor=50_000, interval="Monthly") for _ in range(2)]
    auths = [
        body(await authorize(fast, authorize_request(card, 1_000)))["authorization"]
        for card in cards
    ]
    # The currency's first capture ever creates its settlement account (the general path).
    third = await new_card(fast)
    first = body(await authorize(fast, authorize_request(third, 10)))["authorization"]
    assert (await capture(fast, first, 10, final=True)).status_code == 200
    steps = [(300, False), (200, False), (100, True)]
    answers: list[list[dict[str, Any]]] = [[], []]
    for step, (amount, final) in enumerate(steps):
        for twin, function in enumerate(("authorization_capture", "authorization_capture_other")):
            status, answer, others = await _capture_sql(
                fast, function, auths[twin], f"cap{step}_{auths[twin]}", amount, final=final
            )
            assert status == 200, answer
            assert others == (0 if twin == 0 else 1)  # the flat path called nothing
            answers[twin].append(answer)
    flat, general = answers
    for one, other, twin_auth in zip(flat, general, auths[1:] * 3, strict=True):
        assert one["authorization"] == auths[0]
        # Twins differ only in their ids and their own expiry time.
        same = {"authorization": twin_auth, "request": other["request"]}
        assert {**one, **same, "expiresAt": other["expiresAt"]} == other
    assert (flat[-1]["held"], flat[-1]["captured"], flat[-1]["released"]) == (0, 600, 400)
    assert flat[-1]["available"] == 50_000 - 600
    events = [_captured_event(raw, card) for card in cards]
    ignore = {"authorization", "card", "request", "journalId", "expiresAt"}
    assert [{k: v for k, v in e.items() if k not in ignore} for e in events[0]] == [
        {k: v for k, v in e.items() if k not in ignore} for e in events[1]
    ]
    assert [(held(raw, c), posted(raw, c)) for c in cards] == [(0, 600), (0, 600)]
    # Closed by the final capture: the flat path answers the 409 itself (0064), as the general
    # function does. Over-capture, unknown: the general function.
    closed_flat = await _capture_sql(
        fast, "authorization_capture", auths[0], f"cap_{uuid.uuid4().hex}", 10, final=False
    )
    closed_general = await _capture_sql(
        fast, "authorization_capture_other", auths[0], f"cap_{uuid.uuid4().hex}", 10, final=False
    )
    assert (closed_flat[0], closed_flat[1]["error"], closed_flat[2]) == (
        409,
        "AuthorizationCaptured",
        0,
    )
    assert closed_flat[:2] == closed_general[:2]
    for auth, expected in [
        (f"auth_{uuid.uuid4().hex}", (404, "AuthorizationNotFound", 1)),
    ]:
        status, answer, others = await _capture_sql(
            fast, "authorization_capture", auth, f"cap_{uuid.uuid4().hex}", 10, final=False
        )
        assert (status, answer["error"], others) == expected
    over = body(await authorize(fast, authorize_request(cards[0], 1_000)))["authorization"]
    status, answer, others = await _capture_sql(
        fast, "authorization_capture", over, f"cap_{uuid.uuid4().hex}", 1_001, final=True
    )
    assert (status, answer["error"], others) == (409, "OverCapture", 1)
    assert trial_balance_zero(raw)
    assert hold_drift(raw) == []


# --- 0064: fewer statements per request, the same answers ----------------------------------------


def _jsonb_text(raw: psycopg.Connection[Any], value: dict[str, Any]) -> bytes:
    """The bytes PostgreSQL's jsonb text form gives ``value``: what an answer must be."""
    row = raw.execute("SELECT (%s::jsonb)::text", (json.dumps(value),)).fetchone()
    assert row is not None
    return str(row[0]).encode()


def _stored(raw: psycopg.Connection[Any], request_id: str) -> tuple[int, bytes]:
    row = raw.execute(
        "SELECT status_code, answer FROM authorization_requests WHERE request_id = %s",
        (request_id,),
    ).fetchone()
    assert row is not None
    return int(row[0]), bytes(row[1])


async def test_declines_keep_their_precedence_and_exact_bytes(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """0064 reads the risk rules and the spend window with the card's terms: a purchase that
    breaks every rule is declined for the first reason in the documented order (CardNotActive,
    CurrencyMismatch, RiskDeclined:<rule> by rule name, SpendLimitExceeded), and each answer is
    byte for byte the jsonb text of the documented fields, available included, and stored."""
    card = await new_card(fast, limit_minor=1_000)
    first = await authorize(fast, authorize_request(card, 300))
    assert body(first)["available"] == 700
    policy = api.RiskPolicySpec.model_validate(
        {
            "blockedMccs": {"codes": ["7995"], "action": "Decline"},
            "maxAmountPerTransaction": {"amount": 50, "currency": "USD", "action": "Decline"},
        }
    )
    async with fast.connection() as conn:
        await mirror.put_risk_rules(conn, "shop", "shop/precedence", policy)
        await engine.set_frozen(conn, card.account, True)

    def request(amount: int, currency: str, mcc: str) -> contract.AuthorizeRequest:
        return authorize_request(card, amount, mcc=mcc).model_copy(update={"currency": currency})

    async def expect(req: contract.AuthorizeRequest, reason: str, available: int) -> None:
        answer = await authorize(fast, req)
        approved = reason == "Approved"
        expires = body(answer)["expiresAt"]
        assert (expires is not None) == approved
        expected = {
            "authorization": req.id,
            "approved": approved,
            "reason": reason,
            "status": "pending" if approved else "declined",
            "currency": req.currency,
            "amount": req.amount,
            "held": req.amount if approved else 0,
            "captured": 0,
            "released": 0,
            "available": available,
            "expiresAt": expires,
        }
        assert (answer.status_code, answer.body) == (200, _jsonb_text(raw, expected))
        assert _stored(raw, req.id) == (200, answer.body)

    try:
        await expect(request(900, "EUR", "7995"), "CardNotActive", 700)
        async with fast.connection() as conn:
            await engine.set_frozen(conn, card.account, False)
        await expect(request(900, "EUR", "7995"), "CurrencyMismatch", 700)
        await expect(request(900, "USD", "7995"), "RiskDeclined:BlockedMcc", 700)
        await expect(request(900, "USD", "5812"), "RiskDeclined:MaxAmountPerTransaction", 700)
    finally:
        async with fast.connection() as conn:
            await mirror.drop_risk_rules(conn, "shop", policy="shop/precedence")
    await expect(request(900, "USD", "7995"), "SpendLimitExceeded", 700)
    await expect(request(700, "USD", "7995"), "Approved", 0)
    await expect(request(1, "USD", "7995"), "SpendLimitExceeded", 0)
    assert outbox_types(raw, card) == ["approved"] + ["declined"] * 5 + ["approved", "declined"]
    assert held(raw, card) == 1_000
    assert hold_drift(raw) == []


async def test_an_unknown_token_and_a_replay_take_no_card_lock(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """0064 probes the request id in the card lock's statement: a retry of an answered id
    replays its bytes even while another transaction holds the card's lock, and an unknown
    token is CardNotFound with no event."""
    card = await new_card(fast, limit_minor=1_000)
    req = authorize_request(card, 100)
    first = await authorize(fast, req)
    unknown = authorize_request(card, 100).model_copy(update={"card": "tok_nobody_0064"})
    async with fast.connection() as holder, holder.transaction():
        await holder.execute(
            "SELECT 1 FROM accounts WHERE code = %s FOR NO KEY UPDATE", (card.account,)
        )
        again = await asyncio.wait_for(authorize(fast, req), timeout=10)
        nobody = await asyncio.wait_for(authorize(fast, unknown), timeout=10)
    assert (again.status_code, again.body) == (first.status_code, first.body)
    assert body(nobody)["reason"] == "CardNotFound"
    assert body(nobody)["available"] is None
    assert outbox_types(raw, card) == ["approved"]


async def _follow_up_sql(
    pool: AsyncConnectionPool[Any], function: str, args: tuple[Any, ...]
) -> tuple[int, dict[str, Any], int]:
    """(status, answer, calls of the *_other functions) of one call of ``function``."""
    calls = (
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
        " WHERE funcname IN ('authorization_void_other', 'authorization_increment_other')"
    )
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL track_functions = 'pl'")
        (before,) = await (await conn.execute(calls)).fetchone() or (0,)
        placeholders = sql.SQL(", ").join(sql.Placeholder() * len(args))
        cur = await conn.execute(
            sql.SQL("SELECT status_code, answer FROM {}({})").format(
                sql.Identifier(function), placeholders
            ),
            args,
        )
        status, answer = await cur.fetchone() or (0, b"")
        (after,) = await (await conn.execute(calls)).fetchone() or (0,)
    return status, json.loads(bytes(answer)), int(after) - int(before)


def _events(raw: psycopg.Connection[Any], card: Card) -> list[dict[str, Any]]:
    rows = raw.execute(
        "SELECT payload->>'type', payload->'data', journal_id, headers FROM outbox"
        " WHERE key = %s ORDER BY id",
        (card.ref,),
    ).fetchall()
    ignore = {"authorization", "card", "request", "expiresAt"}
    return [
        {"type": t, "journal": j, "headers": h, **{k: v for k, v in d.items() if k not in ignore}}
        for t, d, j, h in rows
    ]


def _normalized(answer: dict[str, Any], auth: str) -> dict[str, Any]:
    """An answer without what differs between twins: ids, the request's id, the expiry time."""
    kept = {k: v for k, v in answer.items() if k not in ("request", "expiresAt")}
    parsed = json.loads(json.dumps(kept).replace(auth, "AUTH"))
    assert isinstance(parsed, dict)
    return parsed


@pytest.mark.parametrize("interval", ["Daily", "PerTransaction", None])
async def test_the_flat_void_and_increment_answer_what_the_general_ones_answer(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any], interval: str | None
) -> None:
    """0064: an increment (approved, over the limit, on a frozen card) and a void of a pending
    authorization take the flat path, a void or increment of a resolved one answers its 409
    there too, and each answers, stores and announces exactly what 0050/0054's functions
    (renamed *_other) do for the same steps on a twin card; an unknown id and a replay go to
    the general functions."""
    terms: dict[str, Any] = {} if interval is None else {"interval": interval}
    limit = None if interval is None else 1_000
    cards = [await new_card(fast, limit_minor=limit, **terms) for _ in range(2)]
    auths = [
        body(await authorize(fast, authorize_request(card, 400)))["authorization"] for card in cards
    ]
    steps: list[tuple[str, Any, int]] = [
        ("increment", 200, 200),
        ("increment", 900, 200),  # over any limit of 1,000: SpendLimitExceeded when limited
        ("freeze", None, 0),
        ("increment", 10, 200),  # CardNotActive
        ("unfreeze", None, 0),
        ("void", None, 200),
        ("void", None, 409),
        ("increment", 10, 409),
    ]
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c00f319-b7ad6b7169203331-01"}
    for kind, amount, expected_status in steps:
        if kind in ("freeze", "unfreeze"):
            async with fast.connection() as conn:
                for card in cards:
                    await engine.set_frozen(conn, card.account, kind == "freeze")
            continue
        answers = []
        for twin, suffix in enumerate(("", "_other")):
            request_id = f"{kind}_{uuid.uuid4().hex}"
            args: tuple[Any, ...] = (
                (auths[twin], request_id, amount, Jsonb(headers))
                if kind == "increment"
                else (auths[twin], request_id, Jsonb(headers))
            )
            status, answer, others = await _follow_up_sql(
                fast, f"authorization_{kind}{suffix}", args
            )
            assert status == expected_status, answer
            assert others == twin  # the flat path called no general function
            assert _stored(raw, request_id) == (
                status,
                _jsonb_text(raw, answer),
            )
            answers.append(answer)
        flat, general = (_normalized(a, auth) for a, auth in zip(answers, auths, strict=True))
        assert flat == general
    assert _events(raw, cards[0]) == _events(raw, cards[1])
    assert [held(raw, c) for c in cards] == [0, 0]
    assert hold_drift(raw) == []
    # An unknown id and a replay: the general functions.
    unknown = await _follow_up_sql(
        fast, "authorization_void", (f"auth_{uuid.uuid4().hex}", f"v_{uuid.uuid4().hex}", None)
    )
    assert (unknown[0], unknown[1]["error"], unknown[2]) == (404, "AuthorizationNotFound", 1)
    replay_id = f"void_{uuid.uuid4().hex}"
    first = await _follow_up_sql(fast, "authorization_void", (auths[0], replay_id, None))
    again = await _follow_up_sql(fast, "authorization_void", (auths[0], replay_id, None))
    assert (again[0], again[1], again[2]) == (first[0], first[1], 1)


async def test_the_store_writes_the_requests_trace_context_with_each_event(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """PostgresStore sends the trace headers as JSON text (issue 13, client CPU): each event row
    carries the calling span's traceparent as a JSON object, and without a span an empty one."""
    card = await new_card(fast)
    traceparent = "00-0af7651916cd43dd8448eb211c00f319-b7ad6b7169203331-01"
    span = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C00F319,
            span_id=0xB7AD6B7169203331,
            is_remote=True,
            trace_flags=trace.TraceFlags(1),
        )
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        auth = body(await authorize(fast, authorize_request(card, 300)))["authorization"]
        await capture(fast, auth, 100, final=True)
    finally:
        otel_context.detach(token)
    await void(fast, body(await authorize(fast, authorize_request(card, 50)))["authorization"])
    rows = raw.execute(
        "SELECT payload->>'type', headers, jsonb_typeof(headers) FROM outbox WHERE key = %s"
        " ORDER BY id",
        (card.ref,),
    ).fetchall()
    assert [(str(t).split(".")[3], h, kind) for t, h, kind in rows] == [
        ("approved", {"traceparent": traceparent}, "object"),
        ("captured", {"traceparent": traceparent}, "object"),
        ("approved", {}, "object"),
        ("voided", {}, "object"),
    ]


@pytest.mark.parametrize(
    ("interval", "limit", "expected"),
    [("PerTransaction", 5_000, 5_000), ("Daily", 5_000, 4_000), (None, None, None)],
)
async def test_an_approvals_available_is_what_its_get_and_increment_answer(
    fast: AsyncConnectionPool[Any], interval: str | None, limit: int | None, expected: int | None
) -> None:
    """0068: an approval answers the card's available after its hold, the same figure the
    authorization's GET answers at once: the limit itself for PerTransaction (a hold does not
    use it up; docs/authorizations.md), limit - held for Daily, null without a limit. Before
    0068 a PerTransaction approval answered limit - amount (4,000) and its GET 5,000."""
    terms = {} if interval is None else {"interval": interval}
    card = await new_card(fast, limit_minor=limit, **terms)
    approved = body(await authorize(fast, authorize_request(card, 1_000)))
    assert approved["approved"] is True
    assert approved["available"] == expected
    async with fast.connection() as conn:
        read_back = body(await STORE.get(conn, approved["authorization"]))
    assert read_back["available"] == expected
    incremented = body(await increment(fast, approved["authorization"], 500))
    assert incremented["held"] == 1_500
    assert incremented["available"] == (expected if interval != "Daily" else 3_500)


OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "api" / "openapi.json"


async def test_every_kind_of_answer_is_what_the_published_schema_says(
    fast: AsyncConnectionPool[Any],
) -> None:
    """The answers the store returns (an approval, a decline, an increment, a capture, a void and
    a force post) validate against AuthorizationAnswer in docs/api/openapi.json, and every field
    they carry is one the schema names (a force post's answer has no approved or reason)."""
    schema = json.loads(OPENAPI.read_text())["components"]["schemas"]["AuthorizationAnswer"]
    validator = jsonschema.Draft202012Validator(schema)
    card = await new_card(fast, limit_minor=5_000, product_terms={"forcePost": True})
    approved = await authorize(fast, authorize_request(card, 1_000))
    auth = body(approved)["authorization"]
    answers = {
        "approved": approved,
        "declined": await authorize(fast, authorize_request(card, 9_000)),
        "incremented": await increment(fast, auth, 100),
        "captured": await capture(fast, auth, 400),
        "voided": await void(fast, auth),
        "force post": await capture(
            fast, f"auth_{uuid.uuid4().hex}", 250, card=card.token, currency="USD"
        ),
    }
    assert body(answers["force post"])["forcePost"] is True
    assert "approved" not in body(answers["force post"])
    for kind, answer in answers.items():
        assert answer.status_code == 200, kind
        errors_found = [e.message for e in validator.iter_errors(body(answer))]
        assert errors_found == [], kind
        assert set(body(answer)) <= set(schema["properties"]), kind
