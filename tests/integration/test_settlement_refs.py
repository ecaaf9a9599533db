"""The running settlement summary (migration 0057) against the real PostgreSQL.

``settlement_references`` keeps, per namespace and reference, what the ledger settled with the
card network, so a reconciliation run reads one row per reference instead of aggregating the
entries. These tests post through the ledger engine and hold the table to the sum over the
entries (``settlement_reference_totals``, the definition the check always had): it follows
purchases, partial captures, refunds and reversals, ignores fees and journals without a
reference, keeps namespaces apart, cannot be written directly, and the migration's backfill
counts what was posted before it.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from fintech_operator.ledger import engine, migrate, model, rules
from fintech_operator.recon import model as recon
from fintech_operator.recon import store
from tests.conftest import schema_migrated_below

pytestmark = pytest.mark.integration

K = model.PostingKind
T0 = datetime.datetime(2024, 5, 1, 9, tzinfo=datetime.UTC)


async def card_in(pool: AsyncConnectionPool[Any], namespace: str) -> str:
    async with pool.connection() as conn:
        return (await engine.open_card_account(conn, namespace, "card", "USD")).code


async def post(
    pool: AsyncConnectionPool[Any],
    card: str,
    kind: model.PostingKind,
    amount_minor: int,
    reference: str | None,
    minutes: int = 0,
) -> int:
    result = await engine.post(
        pool,
        model.PostingRequest(
            idempotency_key=f"k-{uuid.uuid4()}",
            kind=kind,
            lines=rules.lines_for(kind, card, amount_minor, "USD"),
            occurred_at=T0 + datetime.timedelta(minutes=minutes),
            reference=reference,
        ),
    )
    return result.journal.id


def rows(dsn: str, namespace: str) -> dict[str, tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT reference, amount_minor, currency, postings, first_at, last_at"
            " FROM settlement_references WHERE namespace = %s",
            (namespace,),
        ).fetchall()
    return {str(row[0]): tuple(row[1:]) for row in found}


def drift(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT * FROM settlement_reference_drift").fetchall()


def at(minutes: int) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


async def test_the_summary_follows_postings_and_reversals(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """Purchases add, refunds subtract, partial captures count as postings, a reversal takes
    its original out (and a reference left empty disappears); fees and journals without a
    reference never appear; the table always equals the sum over the entries."""
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    card = await card_in(pool, namespace)
    await post(pool, card, K.PURCHASE, 1000, "R-1", 0)
    second = await post(pool, card, K.PURCHASE, 500, "R-1", 30)
    await post(pool, card, K.REFUND, 300, "R-2", 10)
    await post(pool, card, K.FEE, 200, "R-3", 10)
    await post(pool, card, K.PURCHASE, 50, None, 10)
    gone = await post(pool, card, K.PURCHASE, 700, "R-4", 20)
    assert rows(migrated_database_url, namespace) == {
        "R-1": (1500, "USD", 2, at(0), at(30)),
        "R-2": (-300, "USD", 1, at(10), at(10)),
        "R-4": (700, "USD", 1, at(20), at(20)),
    }
    await engine.reverse(pool, model.ReversalRequest(f"rev-{uuid.uuid4()}", gone, "duplicate"))
    await engine.reverse(
        pool, model.ReversalRequest(f"rev-{uuid.uuid4()}", second, "captured twice")
    )
    assert rows(migrated_database_url, namespace) == {
        "R-1": (1000, "USD", 1, at(0), at(0)),
        "R-2": (-300, "USD", 1, at(10), at(10)),
    }
    assert drift(migrated_database_url) == []


async def test_namespaces_keep_their_own_rows_and_runs_see_only_theirs(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """The same reference in two namespaces is two rows; a namespaced settlement run matches
    its own namespace's row and never reports the other namespace's references."""
    mine, theirs = (f"ns-{uuid.uuid4().hex[:8]}" for _ in range(2))
    await post(pool, await card_in(pool, mine), K.PURCHASE, 1000, "SHARED", 0)
    other_card = await card_in(pool, theirs)
    await post(pool, other_card, K.PURCHASE, 9999, "SHARED", 0)
    await post(pool, other_card, K.PURCHASE, 400, "THEIRS-ONLY", 0)
    assert rows(migrated_database_url, mine) == {"SHARED": (1000, "USD", 1, at(0), at(0))}
    assert set(rows(migrated_database_url, theirs)) == {"SHARED", "THEIRS-ONLY"}
    text = "reference,amount,currency,occurredAt\nSHARED,1000,USD,2024-05-01T09:00:00Z\n"
    plan = recon.Plan(
        checks=frozenset({recon.Check.SETTLEMENT}),
        tolerances=recon.Tolerances(amount_minor=0, time_seconds=60),
        window=recon.Window(T0 - datetime.timedelta(hours=1), T0 + datetime.timedelta(hours=1)),
        event_lag_seconds_max=300,
        dry_run=False,
    )
    outcome = store.execute(
        migrated_database_url,
        store.RunKey(str(uuid.uuid4()), mine, "run"),
        plan,
        model_source(text),
    )
    assert outcome.state == "succeeded", outcome
    assert outcome.summary is not None
    assert (outcome.summary["matched"], outcome.summary["exceptions"]) == (1, 0)


def model_source(text: str) -> recon.TextSource:
    return recon.TextSource("csv", lambda: iter([text]), 1000)


def test_the_table_moves_only_with_entries(raw: psycopg.Connection[Any]) -> None:
    """A direct INSERT, UPDATE, DELETE or TRUNCATE is refused: only the ledger's triggers
    write the summary, so it cannot be made to agree with a wrong file."""
    statements = [
        "INSERT INTO settlement_references (namespace, reference, amount_minor, currency,"
        " postings, first_at, last_at) VALUES ('x', 'R', 1, 'USD', 1, now(), now())",
        "UPDATE settlement_references SET amount_minor = amount_minor + 1",
        "DELETE FROM settlement_references",
        "TRUNCATE settlement_references",
    ]
    for statement in statements:
        with pytest.raises(errors.RestrictViolation):
            raw.execute(statement)


def test_a_reference_in_two_currencies_lists_both(raw: psycopg.Connection[Any]) -> None:
    """A reference settled in USD and EUR is one row whose currency, 'EUR+USD', never equals
    a record's; the drift view agrees with it."""
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    for currency in ("USD", "EUR"):
        card = raw_account(raw, model.card_account_code(namespace, "c", currency), "card")
        settle = raw_account(raw, f"system:network_settlement:{currency}", "system")
        raw_journal(raw, namespace, "MULTI", card, settle, currency, 100)
    row = raw.execute(
        "SELECT amount_minor, currency, postings FROM settlement_references"
        " WHERE namespace = %s AND reference = 'MULTI'",
        (namespace,),
    ).fetchone()
    assert row == (200, "EUR+USD", 2)
    assert raw.execute("SELECT count(*) FROM settlement_reference_drift").fetchone() == (0,)


def raw_account(conn: psycopg.Connection[Any], code: str, kind: str) -> int:
    normal = "debit" if kind == "card" else "credit"
    conn.execute(
        "INSERT INTO accounts (code, kind, normal_balance, currency)"
        " VALUES (%s, %s, %s, right(%s, 3)) ON CONFLICT (code) DO NOTHING",
        (code, kind, normal, code),
    )
    row = conn.execute("SELECT id FROM accounts WHERE code = %s", (code,)).fetchone()
    assert row is not None
    return int(row[0])


def raw_journal(
    conn: psycopg.Connection[Any],
    namespace: str | None,
    reference: str,
    card: int,
    settlement: int,
    currency: str,
    amount: int,
) -> int:
    """A Purchase written in SQL: debit the card, credit the network settlement account."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at,"
            " namespace) VALUES (%s, repeat('0', 64), 'Purchase', %s, %s, %s) RETURNING id",
            (f"k-{uuid.uuid4()}", reference, T0, namespace),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
            " VALUES (%s, %s, 'debit', %s, %s), (%s, %s, 'credit', %s, %s)",
            (row[0], card, amount, currency, row[0], settlement, amount, currency),
        )
    return int(row[0])


def test_the_migration_backfills_what_was_posted_before_it(database_url: str) -> None:
    """On a ledger migrated to 0056 with purchases (two on one reference), a journal of the
    era before namespaces and a reversed purchase, 0057 fills the table with exactly the sums
    over the entries, and the runtime checks (drift view) agree."""
    dsn = schema_migrated_below(database_url, 57)
    with psycopg.connect(dsn, autocommit=True) as conn:
        card = raw_account(conn, "card:shop/old:USD", "card")
        settle = raw_account(conn, "system:network_settlement:USD", "system")
        raw_journal(conn, "shop", "B-1", card, settle, "USD", 100)
        raw_journal(conn, "shop", "B-1", card, settle, "USD", 250)
        raw_journal(conn, None, "B-LEGACY", card, settle, "USD", 40)
        reversed_id = raw_journal(conn, "shop", "B-GONE", card, settle, "USD", 1000)
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at,"
                " reverses_journal_id, namespace)"
                " VALUES (%s, repeat('0', 64), 'Reversal', %s, %s, 'shop') RETURNING id",
                (f"k-{uuid.uuid4()}", T0, reversed_id),
            ).fetchone()
            assert row is not None
            conn.execute(
                "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
                " VALUES (%s, %s, 'credit', 1000, 'USD'), (%s, %s, 'debit', 1000, 'USD')",
                (row[0], card, row[0], settle),
            )
    assert migrate.apply(dsn) == [m.version for m in migrate.discover() if m.version >= 57]
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT namespace, reference, amount_minor, postings FROM settlement_references"
            " ORDER BY reference"
        ).fetchall()
        assert found == [("shop", "B-1", 350, 2), (None, "B-LEGACY", 40, 1)]
        assert conn.execute("SELECT count(*) FROM settlement_reference_drift").fetchone() == (0,)
