"""The running spend windows of migration 0054 against the sum over the entries (issue 13).

A Daily, Monthly or Lifetime limit reads what the card spent in its window from
``account_spend_windows`` (one probe) instead of summing its Purchase entries. These tests hold
the running figure to the sum over the entries (``authorization_spent``, kept as the reference)
after a random mix of authorizations, increments, captures, voids, force posts, Purchase and
Refund postings and reversals, for every window and for moments around the present; and prove
that the table cannot be written directly, that the drift view sees a disagreement, and that
the migration's backfill counts what was posted before it.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from fintech_operator.authorizations import contract
from fintech_operator.authorizations.store import PostgresStore
from fintech_operator.ledger import engine, migrate, model, rules
from tests.conftest import schema_migrated_below
from tests.integration.authz_support import (
    Card,
    authorize_request,
    autocommit_pool,
    body,
    hold_drift,
    new_card,
    trial_balance_zero,
)

pytestmark = pytest.mark.integration

STORE = PostgresStore()
WINDOWS = ("Daily", "Monthly", "Lifetime")
# Moments the windows are read at: now, and either side of today's and this month's edges.
OFFSETS = (
    timedelta(0),
    timedelta(days=-1),
    timedelta(days=1),
    timedelta(days=-40),
    timedelta(days=40),
    timedelta(days=-4000),
)


@pytest.fixture(scope="module")
async def fast(migrated_database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with autocommit_pool(migrated_database_url, 4) as pool:
        yield pool


def purchase(
    card: Card, amount: int, kind: model.PostingKind, guard: model.SpendGuard | None = None
) -> model.PostingRequest:
    return model.PostingRequest(
        idempotency_key=f"k-{uuid.uuid4()}",
        kind=kind,
        lines=rules.lines_for(kind, card.account, amount, "USD"),
        occurred_at=datetime.now(UTC),
        reference="spend-windows",
        namespace="shop",
        guard=guard,
    )


def mismatches(raw: psycopg.Connection[Any], cards: Sequence[Card]) -> list[Any]:
    """(card, window, moment, running, summed) wherever the running window and the sum over
    the entries disagree, for every card, window and moment of OFFSETS."""
    rows = raw.execute(
        """
        SELECT a.code, w.name, o.at,
               authorization_spent_in_window(a.id, w.name, o.at),
               authorization_spent(a.id, authorization_spend_window_start(w.name, o.at))
          FROM accounts a
         CROSS JOIN unnest(%s::text[]) AS w (name)
         CROSS JOIN (SELECT now() + x AS at FROM unnest(%s::interval[]) AS x) AS o
         WHERE a.code = ANY(%s)
        """,
        (list(WINDOWS), list(OFFSETS), [card.account for card in cards]),
    ).fetchall()
    return [row for row in rows if row[3] != row[4]]


def spend_drift(raw: psycopg.Connection[Any]) -> list[Any]:
    return raw.execute("SELECT * FROM account_spend_drift").fetchall()


STEPS = (
    ("authorize", 30),
    ("capture", 25),
    ("void", 7),
    ("increment", 5),
    ("force post", 5),
    ("posting", 13),
    ("reversal", 15),
)


async def random_step(
    rng: random.Random,
    fast: AsyncConnectionPool[Any],
    ledger: AsyncConnectionPool[Any],
    cards: Sequence[Card],
    state: dict[str, list[Any]],
) -> str:
    """One random step; returns its name. ``state`` keeps open authorizations and accounts."""
    step: str = rng.choices([name for name, _ in STEPS], [weight for _, weight in STEPS])[0]
    if step not in ("authorize", "force post", "posting", "reversal") and not state["open"]:
        step = "authorize"
    card = rng.choice(cards)
    if step == "posting":
        kind = model.PostingKind.PURCHASE if rng.random() < 0.7 else model.PostingKind.REFUND
        await engine.post(ledger, purchase(card, rng.randint(1, 500), kind))
    elif step == "reversal":
        return await reverse_one(rng, ledger, state)
    else:
        async with fast.connection() as conn:
            await store_step(step, rng, conn, card, state["open"])
    return step


async def store_step(
    step: str, rng: random.Random, conn: Any, card: Card, open_auths: list[str]
) -> None:
    """An authorization, capture (partial or final), void, increment or force post."""
    if step == "authorize":
        answer = await STORE.authorize(conn, authorize_request(card, rng.randint(1, 900)))
        if body(answer)["approved"]:
            open_auths.append(body(answer)["authorization"])
    elif step == "capture":
        auth, final = rng.choice(open_auths), rng.random() < 0.5
        req = contract.CaptureRequest(
            id=f"cap_{uuid.uuid4().hex}", amount=rng.randint(1, 600), final=final
        )
        answer = await STORE.capture(conn, auth, req)
        if answer.status_code == 200 and final:
            open_auths.remove(auth)
    elif step == "void":
        auth = open_auths.pop(rng.randrange(len(open_auths)))
        await STORE.void(conn, auth, contract.VoidRequest(id=f"void_{uuid.uuid4().hex}"))
    elif step == "increment":
        req_inc = contract.IncrementRequest(id=f"inc_{uuid.uuid4().hex}", amount=50)
        await STORE.increment(conn, rng.choice(open_auths), req_inc)
    else:
        req = contract.CaptureRequest(
            id=f"fp_{uuid.uuid4().hex}", amount=rng.randint(1, 300), final=True,
            card=card.token, currency="USD",
        )  # fmt: skip
        await STORE.capture(conn, f"never_{uuid.uuid4().hex}", req)


async def reverse_one(
    rng: random.Random, ledger: AsyncConnectionPool[Any], state: dict[str, list[Any]]
) -> str:
    """Reverse a random Purchase journal of these cards not reversed yet (a capture's or a
    posting's)."""
    async with ledger.connection() as conn:
        cur = await conn.execute(
            "SELECT j.id FROM journals j JOIN entries e ON e.journal_id = j.id"
            " WHERE e.account_id = ANY(%s) AND j.kind = 'Purchase' AND e.direction = 'debit'"
            " AND NOT EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = j.id)"
            " ORDER BY j.id",
            (state["accounts"],),
        )
        candidates = [int(row[0]) for row in await cur.fetchall()]
    if not candidates:
        return "nothing to reverse"
    await engine.reverse(
        ledger, model.ReversalRequest(f"rev-{uuid.uuid4()}", rng.choice(candidates), "test")
    )
    return "reversal"


async def test_running_windows_equal_the_sum_over_entries_after_a_random_mix(
    fast: AsyncConnectionPool[Any], pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """300 random steps over cards with Daily, Monthly, Lifetime and no limits: afterwards every
    card's running spend equals the sum over its entries for every window and every moment
    read, the drift view is empty, and each card's available (GET) is limit - held - the sum."""
    rng = random.Random(5400)  # noqa: S311 - a reproducible mix, not a secret
    cards = [
        await new_card(fast, limit_minor=40_000, interval="Daily"),
        await new_card(fast, limit_minor=40_000, interval="Monthly"),
        await new_card(fast, limit_minor=40_000, interval="Lifetime"),
        await new_card(fast, product_terms={"forcePost": True, "overCaptureBps": 2000}),
    ]
    accounts = raw.execute(
        "SELECT id FROM accounts WHERE code = ANY(%s)", ([c.account for c in cards],)
    ).fetchall()
    state: dict[str, list[Any]] = {"open": [], "accounts": [int(row[0]) for row in accounts]}
    steps = [await random_step(rng, fast, pool, cards, state) for _ in range(300)]
    assert {"authorize", "capture", "void", "posting", "reversal", "force post"} <= set(steps)
    assert mismatches(raw, cards) == []
    assert spend_drift(raw) == []
    assert hold_drift(raw) == []
    assert trial_balance_zero(raw)
    reversed_purchases = raw.execute(
        "SELECT count(*) FROM journals r JOIN entries e ON e.journal_id = r.reverses_journal_id"
        " WHERE e.account_id = ANY(%s)",
        (state["accounts"],),
    ).fetchone()
    assert reversed_purchases is not None
    assert reversed_purchases[0] > 0
    for card, interval in zip(cards[:3], WINDOWS, strict=True):
        await check_available(fast, raw, card, interval)


async def check_available(
    fast: AsyncConnectionPool[Any], raw: psycopg.Connection[Any], card: Card, interval: str
) -> None:
    """An authorization's answer shows limit - held - the sum over the entries in the window."""
    async with fast.connection() as conn:
        answer = await STORE.authorize(conn, authorize_request(card, 1))
    row = raw.execute(
        "SELECT 40000 - c.held_minor"
        " - authorization_spent(c.account_id, authorization_spend_window_start(%s, now()))"
        " FROM authorization_cards c WHERE c.token = %s",
        (interval, card.token),
    ).fetchone()
    assert row is not None
    assert body(answer)["available"] == row[0]


async def test_a_reversal_gives_the_window_back_and_the_limit_sees_it(
    fast: AsyncConnectionPool[Any], pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A Daily limit of 1,000 fully spent by a capture declines the next authorization; once
    the capture's journal is reversed the same amount is approved again."""
    card = await new_card(fast, limit_minor=1_000, interval="Daily")
    async with fast.connection() as conn:
        first = body(await STORE.authorize(conn, authorize_request(card, 1_000)))
        capture = contract.CaptureRequest(id=f"cap_{uuid.uuid4().hex}", amount=1_000, final=True)
        await STORE.capture(conn, first["authorization"], capture)
        again = body(await STORE.authorize(conn, authorize_request(card, 1)))
    assert (again["approved"], again["reason"], again["available"]) == (
        False, "SpendLimitExceeded", 0,
    )  # fmt: skip
    journal = raw.execute(
        "SELECT journal_id FROM authorization_captures WHERE id = %s", (capture.id,)
    ).fetchone()
    assert journal is not None
    await engine.reverse(
        pool, model.ReversalRequest(f"rev-{uuid.uuid4()}", int(journal[0]), "test")
    )
    async with fast.connection() as conn:
        after = body(await STORE.authorize(conn, authorize_request(card, 1_000)))
    assert (after["approved"], after["available"]) == (True, 0)
    assert spend_drift(raw) == []


async def test_a_posting_guard_reads_the_running_window_with_holds(
    fast: AsyncConnectionPool[Any], pool: AsyncConnectionPool[Any]
) -> None:
    """The Posting path's limit guard (engine) reads the same window: spent + held + amount."""
    card = await new_card(fast, limit_minor=1_000, interval="Monthly")
    async with fast.connection() as conn:
        await STORE.authorize(conn, authorize_request(card, 300))
    await engine.post(pool, purchase(card, 400, model.PostingKind.PURCHASE))
    now = datetime.now(UTC)
    guard = model.SpendGuard(card.account, 1_000, model.SpendInterval.MONTHLY, now)
    with pytest.raises(model.SpendLimitExceeded):
        await engine.post(pool, purchase(card, 301, model.PostingKind.PURCHASE, guard))
    posted = await engine.post(pool, purchase(card, 300, model.PostingKind.PURCHASE, guard))
    assert not posted.replayed


def test_the_windows_are_written_only_by_the_ledger_triggers(
    raw: psycopg.Connection[Any], migrated_database_url: str
) -> None:
    """A direct INSERT, UPDATE or DELETE on account_spend_windows is refused (whoever runs it)."""
    for statement in (
        "INSERT INTO account_spend_windows VALUES"
        " ((SELECT min(id) FROM accounts), 'Lifetime', '-infinity', 5)",
        "UPDATE account_spend_windows SET spent_minor = spent_minor + 1",
        "DELETE FROM account_spend_windows",
    ):
        with (
            psycopg.connect(migrated_database_url) as conn,
            pytest.raises(errors.RestrictViolation),
        ):
            conn.execute(statement)
    with psycopg.connect(migrated_database_url) as conn, pytest.raises(errors.RestrictViolation):
        conn.execute("TRUNCATE account_spend_windows")


async def test_the_drift_view_sees_a_window_that_disagrees(
    fast: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """With the guard switched off (replica mode, a superuser, rolled back), a changed window
    shows in account_spend_drift: the view is not empty by construction."""
    card = await new_card(fast, limit_minor=10_000, interval="Daily")
    async with fast.connection() as conn:
        auth = body(await STORE.authorize(conn, authorize_request(card, 500)))["authorization"]
        req = contract.CaptureRequest(id=f"cap_{uuid.uuid4().hex}", amount=500, final=True)
        await STORE.capture(conn, auth, req)
    with psycopg.connect(migrated_database_url) as conn:
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(
            "UPDATE account_spend_windows SET spent_minor = spent_minor + 7"
            " WHERE account_id = (SELECT id FROM accounts WHERE code = %s)"
            " AND spend_interval = 'Daily'",
            (card.account,),
        )
        drift = conn.execute("SELECT running_minor - entries_minor FROM account_spend_drift")
        assert [row[0] for row in drift.fetchall()] == [7]
        conn.rollback()


def test_the_migration_backfills_what_was_posted_before_it(database_url: str) -> None:
    """On a ledger migrated to 0053 with Purchases, a Refund and a reversed Purchase, 0054
    counts exactly the Purchases not reversed, in each window."""
    dsn = schema_migrated_below(database_url, 54)
    with psycopg.connect(dsn) as conn:
        card = conn.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency)"
            " VALUES ('card:shop/old:USD', 'card', 'debit', 'USD') RETURNING id"
        ).fetchone()
        other = conn.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency)"
            " VALUES ('system:network_settlement:USD', 'system', 'credit', 'USD') RETURNING id"
        ).fetchone()
        assert card is not None
        assert other is not None
    journals = [("Purchase", 100), ("Purchase", 250), ("Refund", 40), ("Purchase", 1000)]
    ids = [raw_journal(dsn, kind, amount, card[0], other[0]) for kind, amount in journals]
    raw_journal(dsn, "Reversal", 1000, card[0], other[0], reverses=ids[-1])
    assert migrate.apply(dsn) == [m.version for m in migrate.discover() if m.version >= 54]
    with psycopg.connect(dsn) as conn:
        spent = conn.execute(
            "SELECT spend_interval, spent_minor FROM account_spend_windows"
            " WHERE account_id = %s ORDER BY 1",
            (card[0],),
        ).fetchall()
        assert spent == [("Daily", 350), ("Lifetime", 350), ("Monthly", 350)]
        assert conn.execute("SELECT * FROM account_spend_drift").fetchall() == []


def raw_journal(
    dsn: str, kind: str, amount: int, card_id: int, other_id: int, *, reverses: int | None = None
) -> int:
    """A balanced journal written in SQL (debit the card for a Purchase, credit it otherwise)."""
    card_side, other_side = ("debit", "credit") if kind == "Purchase" else ("credit", "debit")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at,"
            " reverses_journal_id) VALUES (%s, repeat('0', 64), %s, now(), %s) RETURNING id",
            (f"k-{uuid.uuid4()}", kind, reverses),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
            " VALUES (%s, %s, %s, %s, 'USD'), (%s, %s, %s, %s, 'USD')",
            (row[0], card_id, card_side, amount, row[0], other_id, other_side, amount),
        )
    return int(row[0])
