"""A frozen card account on a real PostgreSQL: credits only, enforced by the engine and by
the database itself."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from fintech_operator.events import schema
from fintech_operator.ledger import engine, model, rules

pytestmark = pytest.mark.integration

K = model.PostingKind


def request(card: str, amount: int, kind: model.PostingKind) -> model.PostingRequest:
    return model.PostingRequest(
        idempotency_key=f"k-{uuid.uuid4()}",
        kind=kind,
        lines=rules.lines_for(kind, card, amount, "USD"),
        occurred_at=datetime.datetime.now(datetime.UTC),
        reference=None,
    )


async def frozen_card(pool: AsyncConnectionPool[Any]) -> str:
    async with pool.connection() as conn:
        card = await engine.open_card_account(conn, "ns", f"f-{uuid.uuid4().hex[:8]}", "USD")
    await engine.post(pool, request(card.code, 5_000, K.PURCHASE))
    async with pool.connection() as conn:
        await engine.set_frozen(conn, card.code, True)
    return card.code


async def test_a_frozen_account_takes_credits_and_refuses_debits(
    pool: AsyncConnectionPool[Any],
) -> None:
    """Refunds and payments post; a purchase, a fee and the reversal of a payment are
    refused (AccountFrozen; a Posting shows CardNotActive) and write nothing; unfreezing
    lets purchases in again."""
    card = await frozen_card(pool)
    await engine.post(pool, request(card, 1_000, K.REFUND))
    paid = await engine.post(pool, request(card, 1_000, K.PAYMENT))
    for kind in (K.PURCHASE, K.FEE):
        with pytest.raises(model.AccountFrozen) as refused:
            await engine.post(pool, request(card, 100, kind))
        assert refused.value.reason == "AccountFrozen"
    with pytest.raises(model.AccountFrozen):
        await engine.reverse(
            pool, model.ReversalRequest(f"rev-{uuid.uuid4()}", paid.journal.id, "undo payment")
        )
    async with pool.connection() as conn:
        assert (await engine.balance(conn, card)).balance_minor == 3_000
        await engine.set_frozen(conn, card, False)
    await engine.post(pool, request(card, 100, K.PURCHASE))


async def test_the_database_refuses_a_debit_to_a_frozen_account_by_itself(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A raw INSERT of a debit entry past the engine fails in the entries trigger."""
    card = await frozen_card(pool)
    (account_id,) = raw.execute("SELECT id FROM accounts WHERE code = %s", (card,)).fetchone() or (
        None,
    )
    (settlement,) = raw.execute(
        "SELECT id FROM accounts WHERE code = 'system:network_settlement:USD'"
    ).fetchone() or (None,)
    raw.execute("BEGIN")
    journal = raw.execute(
        "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at)"
        " VALUES (%s, repeat('0', 64), 'Purchase', now()) RETURNING id",
        (f"raw-{uuid.uuid4()}",),
    ).fetchone()
    assert journal is not None
    lines = "VALUES (%s, %s, 'debit', 100, 'USD'), (%s, %s, 'credit', 100, 'USD')"
    with pytest.raises(errors.CheckViolation, match="frozen"):
        raw.execute(
            "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency) "
            + lines,
            (journal[0], account_id, journal[0], settlement),
        )
    raw.execute("ROLLBACK")


async def test_freezing_is_idempotent_and_only_for_existing_card_accounts(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A second freeze keeps the first time; a missing or system account is refused."""
    card = await frozen_card(pool)
    first = raw.execute("SELECT frozen_at FROM accounts WHERE code = %s", (card,)).fetchone()
    async with pool.connection() as conn:
        await engine.set_frozen(conn, card, True)
        for code in ("card:ns/nobody:USD", "system:network_settlement:USD"):
            with pytest.raises(model.AccountNotFound):
                await engine.set_frozen(conn, code, True)
    again = raw.execute("SELECT frozen_at FROM accounts WHERE code = %s", (card,)).fetchone()
    assert first == again
    assert first is not None
    assert first[0] is not None
    with pytest.raises(errors.CheckViolation):
        raw.execute(
            "UPDATE accounts SET frozen_at = now() WHERE code = 'system:network_settlement:USD'"
        )


def _state_event(card: str, generation: int, from_phase: str, to: str) -> model.OutboxEvent:
    name = card.split("/")[1].split(":", maxsplit=1)[0]
    return schema.CardStateChanged(
        namespace="ns", name=name, uid="uid-1", generation=generation, from_phase=from_phase,
        to_state=to, reason=None, now=datetime.datetime.now(datetime.UTC), headers={},
    ).outbox()  # fmt: skip


async def test_a_freeze_says_whether_it_changed_and_announces_only_a_change(
    pool: AsyncConnectionPool[Any],
) -> None:
    """set_frozen is True when the account changed, and only then writes its events: asking
    for the state the account is in (a card handler that read an old status) announces
    nothing, and the account keeps its first freeze time."""
    card = await frozen_card(pool)
    again = _state_event(card, 2, "Active", "Frozen")
    thaw = _state_event(card, 3, "Frozen", "Active")
    frozen_at = "SELECT frozen_at FROM accounts WHERE code = %s"
    async with pool.connection() as conn:
        first = await (await conn.execute(frozen_at, (card,))).fetchone()
        assert await engine.set_frozen(conn, card, True, [again]) is False
        assert await (await conn.execute(frozen_at, (card,))).fetchone() == first
        assert await engine.set_frozen(conn, card, False, [thaw]) is True
        assert await engine.set_frozen(conn, card, False, []) is False
        written = await (await conn.execute(
            "SELECT event_id FROM outbox WHERE event_id = ANY(%s) ORDER BY id",
            ([again.event_id, thaw.event_id],))).fetchall()  # fmt: skip
        assert [row[0] for row in written] == [thaw.event_id]
        with pytest.raises(model.AccountNotFound):
            await engine.set_frozen(conn, "card:ns/missing:USD", True)


async def test_a_freeze_records_its_generation_and_an_older_one_changes_nothing(
    pool: AsyncConnectionPool[Any],
) -> None:
    """Migration 0072: the flag remembers the Card generation it follows. An older generation
    (a refresh that read the card before a newer freeze) changes nothing and writes no event;
    the same or a newer one applies; None (issuance) is not checked and not recorded.
    (Generations 13 to 15: the events' ids are the card's uid, state and generation, and the
    other tests' cards share the uid.)"""
    card = await frozen_card(pool)  # frozen without a generation: not recorded
    state = "SELECT frozen_at IS NOT NULL, state_generation FROM accounts WHERE code = %s"
    older, newer = (
        _state_event(card, 13, "Frozen", "Active"),
        _state_event(card, 15, "Frozen", "Active"),
    )
    async with pool.connection() as conn:
        assert await (await conn.execute(state, (card,))).fetchone() == (True, None)
        assert await engine.set_frozen(conn, card, True, [], generation=14) is False
        assert await (await conn.execute(state, (card,))).fetchone() == (True, 14)
        assert await engine.set_frozen(conn, card, False, [older], generation=13) is False
        assert await (await conn.execute(state, (card,))).fetchone() == (True, 14)
        assert await engine.set_frozen(conn, card, False, [newer], generation=15) is True
        assert await (await conn.execute(state, (card,))).fetchone() == (False, 15)
        assert await engine.set_frozen(conn, card, True, [], generation=None) is True
        assert await (await conn.execute(state, (card,))).fetchone() == (True, 15)
        written = await (await conn.execute(
            "SELECT event_id FROM outbox WHERE event_id = ANY(%s) ORDER BY id",
            ([older.event_id, newer.event_id],))).fetchall()  # fmt: skip
        assert [row[0] for row in written] == [newer.event_id]
        freezes = await engine.card_freezes(conn, [card, "card:ns/missing:USD"])
        assert freezes == {card: engine.CardFreeze(frozen=True, generation=15)}
        for bad in (0, -1, True):
            with pytest.raises(ValueError, match="generation must be a positive int"):
                await engine.set_frozen(conn, card, True, [], generation=bad)


async def test_the_database_refuses_a_generation_below_one(pool: AsyncConnectionPool[Any]) -> None:
    card = await frozen_card(pool)
    async with pool.connection() as conn:
        with pytest.raises(errors.CheckViolation, match="accounts_state_generation_positive"):
            await conn.execute("UPDATE accounts SET state_generation = 0 WHERE code = %s", (card,))
