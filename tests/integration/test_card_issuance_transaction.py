"""Issuing a card is ONE ledger transaction, in real PostgreSQL (issue 12).

``engine.issue_card`` opens the account (owned by the card's uid), posts the issuance fee,
freezes the account or not, writes ``card.issued`` and runs the caller's step (the
authorization mirror) in one transaction: a failure anywhere leaves none of it, and a retry
writes nothing twice.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from fintech_operator.events import schema
from fintech_operator.ledger import engine, model, rules

pytestmark = pytest.mark.integration

NOW = datetime.datetime(2026, 12, 5, 10, 0, tzinfo=datetime.UTC)
FEE_MINOR = 500


def issuance(name: str, uid: str, *, frozen: bool) -> engine.CardIssuance:
    code = model.card_account_code("shop", name, "USD")
    fee = model.PostingRequest(
        idempotency_key=f"card-issuance-fee/{uid}",
        kind=model.PostingKind.FEE,
        lines=rules.lines_for(model.PostingKind.FEE, code, FEE_MINOR, "USD"),
        occurred_at=NOW,
        reference=f"issuance-fee/shop/{name}",
        namespace="shop",
    )
    event = schema.CardIssued(
        namespace="shop", name=name, uid=uid, user_id="u1", product="standard",
        currency="USD", token="tok_" + "cd" * 16, last4="4242",
        state="Frozen" if frozen else "Active", issued_at=NOW,
    ).outbox()  # fmt: skip
    return engine.CardIssuance("shop", name, uid, "USD", frozen, fee, (event,))


def facts(url: str, code: str, event_id: uuid.UUID) -> tuple[int, int, bool, int]:
    """(accounts, fee journals, frozen, events) of the card as committed."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM accounts WHERE code = %(code)s),"
            " (SELECT count(*) FROM entries e JOIN accounts a ON a.id = e.account_id"
            "   WHERE a.code = %(code)s),"
            " coalesce((SELECT frozen_at IS NOT NULL FROM accounts WHERE code = %(code)s), false),"
            " (SELECT count(*) FROM outbox WHERE event_id = %(event)s)",
            {"code": code, "event": event_id},
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), bool(row[2]), int(row[3])


async def nothing(conn: AsyncConnection[Any]) -> None:
    return None


async def test_issuance_commits_account_fee_freeze_and_event_together_once(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    name, uid = f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    request = issuance(name, uid, frozen=True)
    event_id = request.events[0].event_id
    await engine.issue_card(pool, request, nothing)
    assert facts(migrated_database_url, request.account_code, event_id) == (1, 1, True, 1)
    async with pool.connection() as conn:
        balance = await engine.balance(conn, request.account_code)
    assert balance.balance_minor == FEE_MINOR  # the fee posted before the freeze
    # A retry (the handler ran again after the commit) writes nothing twice.
    await engine.issue_card(pool, request, nothing)
    assert facts(migrated_database_url, request.account_code, event_id) == (1, 1, True, 1)


async def test_a_failure_in_the_callers_step_leaves_nothing(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """The mirror step fails after the account, fee, freeze and event were written: all of
    them roll back with it, so no card is ever half issued."""
    name, uid = f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    request = issuance(name, uid, frozen=False)

    async def seen_then_fail(conn: AsyncConnection[Any]) -> None:
        cur = await conn.execute("SELECT 1 FROM accounts WHERE code = %s", (request.account_code,))
        assert await cur.fetchone() is not None  # the same transaction sees the account
        raise RuntimeError("mirror unavailable")

    with pytest.raises(RuntimeError, match="mirror unavailable"):
        await engine.issue_card(pool, request, seen_then_fail)
    event_id = request.events[0].event_id
    assert facts(migrated_database_url, request.account_code, event_id) == (0, 0, False, 0)


async def test_a_name_owned_by_another_card_writes_nothing(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    name = f"c-{uuid.uuid4().hex[:8]}"
    first = issuance(name, str(uuid.uuid4()), frozen=False)
    await engine.issue_card(pool, first, nothing)
    second = issuance(name, str(uuid.uuid4()), frozen=True)
    with pytest.raises(engine.AccountOwnedByAnotherCard):
        await engine.issue_card(pool, second, nothing)
    # The first card's account is unchanged: one fee, not frozen; the second event never written.
    assert facts(migrated_database_url, first.account_code, second.events[0].event_id) == (
        1, 1, False, 0,
    )  # fmt: skip


async def test_a_fee_charged_to_another_account_is_refused(
    pool: AsyncConnectionPool[Any],
) -> None:
    request = issuance(f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), frozen=False)
    other = issuance(f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), frozen=False)
    wrong = engine.CardIssuance(
        request.namespace, request.card, request.card_uid, "USD", False, other.fee, ()
    )
    with pytest.raises(model.InvalidRequest, match="card's account"):
        await engine.issue_card(pool, wrong, nothing)
