"""Migration 0067: the guards of the trigger-maintained tables decide in their WHEN clause.

account_balance_rows, account_spend_windows, settlement_references and rewards_balances are
written only by the ledger's triggers; a BEFORE ROW guard refuses every other write. 0067 moved
the guard's test (the trigger depth) into the trigger's WHEN clause, so its PL/pgSQL function
runs only to refuse. These tests hold the two schemas (every migration below 0067, and all) to
the same answers: each direct write is refused by both with the same SQLSTATE and message, the
ledger's own writes move the same rows, and under 0067 the guard functions are not called for
them (PostgreSQL's per-transaction function statistics, which count every PL/pgSQL call).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import schema_migrated_below

pytestmark = pytest.mark.integration

WHEN_VERSION = 67
GUARDS = (
    "ledger_balance_guard", "ledger_spend_guard", "ledger_settlement_reference_guard",
    "rewards_balance_guard",
)  # fmt: skip

# Direct writes on each guarded table: each must be refused (restrict_violation, 23001).
DIRECT_WRITES = (
    "INSERT INTO account_balance_rows (account_id, stripe) SELECT min(id), 7 FROM accounts",
    "UPDATE account_balance_rows SET debits_minor = debits_minor + 1",
    "DELETE FROM account_balance_rows",
    "INSERT INTO account_spend_windows VALUES"
    " ((SELECT min(id) FROM accounts), 'Lifetime', '-infinity', 5)",
    "UPDATE account_spend_windows SET spent_minor = spent_minor + 1",
    "DELETE FROM account_spend_windows",
    "INSERT INTO settlement_references (namespace, reference, amount_minor, currency,"
    " postings, first_at, last_at) VALUES ('x', 'R', 1, 'USD', 1, now(), now())",
    "UPDATE settlement_references SET amount_minor = amount_minor + 1",
    "DELETE FROM settlement_references",
    "INSERT INTO rewards_balances (card, points, entries) VALUES ('ns/c', 1, 1)",
    "UPDATE rewards_balances SET points = points + 1",
    "DELETE FROM rewards_balances",
)


@pytest.fixture(scope="module")
def schemas(database_url: str) -> dict[str, str]:
    """Two ledgers side by side in one database: below 0067 and with every migration."""
    return {
        "before": schema_migrated_below(database_url, WHEN_VERSION),
        "after": schema_migrated_below(database_url, 10_000),
    }


@pytest.fixture
def conns(schemas: dict[str, str]) -> Iterator[dict[str, psycopg.Connection[Any]]]:
    with (
        psycopg.connect(schemas["before"]) as before,
        psycopg.connect(schemas["after"]) as after,
    ):
        yield {"before": before, "after": after}
        before.rollback()
        after.rollback()


def post_purchase(conn: psycopg.Connection[Any], namespace: str, amount: int) -> int:
    """A Purchase with a reference, written in SQL as the capture writes it (a card debit, a
    settlement credit), and a rewards accrual on it: every guarded table moves. The caller's
    transaction is left open."""
    card = account(conn, f"card:{namespace}/c:USD", "card", "debit")
    settlement = account(conn, "system:network_settlement:USD", "system", "credit")
    row = conn.execute(
        "INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at,"
        " namespace) VALUES (%s, repeat('0', 64), 'Purchase', 'REF-1', now(), %s) RETURNING id",
        (f"k-{uuid.uuid4()}", namespace),
    ).fetchone()
    assert row is not None
    conn.execute(
        "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
        " VALUES (%s, %s, 'debit', %s, 'USD'), (%s, %s, 'credit', %s, 'USD')",
        (row[0], card, amount, row[0], settlement, amount),
    )
    conn.execute(
        "INSERT INTO rewards_ledger (event_id, card, journal_id, kind, points, amount_minor,"
        " currency, rate_bps) VALUES (%s, %s, %s, 'accrual', %s, %s, 'USD', 100)",
        (uuid.uuid4(), f"{namespace}/c", row[0], amount // 100, amount),
    )
    return int(row[0])


def account(conn: psycopg.Connection[Any], code: str, kind: str, normal: str) -> int:
    conn.execute(
        "INSERT INTO accounts (code, kind, normal_balance, currency) VALUES (%s, %s, %s, 'USD')"
        " ON CONFLICT (code) DO NOTHING",
        (code, kind, normal),
    )
    row = conn.execute("SELECT id FROM accounts WHERE code = %s", (code,)).fetchone()
    assert row is not None
    return int(row[0])


def moved(conn: psycopg.Connection[Any], namespace: str) -> tuple[Any, ...]:
    """What the ledger's triggers wrote for ``namespace``'s card: its balance, its Lifetime spend,
    the reference's settled amount and postings, the card's points."""
    row = conn.execute(
        """
        SELECT (SELECT sum(r.debits_minor) FROM account_balance_rows r
                  JOIN accounts a ON a.id = r.account_id WHERE a.code = %(card)s),
               (SELECT w.spent_minor FROM account_spend_windows w
                  JOIN accounts a ON a.id = w.account_id
                 WHERE a.code = %(card)s AND w.spend_interval = 'Lifetime'),
               (SELECT s.amount_minor || '/' || s.postings FROM settlement_references s
                 WHERE s.namespace = %(ns)s AND s.reference = 'REF-1'),
               (SELECT b.points FROM rewards_balances b WHERE b.card = %(ns)s || '/c')
        """,
        {"card": f"card:{namespace}/c:USD", "ns": namespace},
    ).fetchone()
    assert row is not None
    return tuple(row)


def guard_calls(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """PL/pgSQL calls of each guard function in this transaction so far."""
    return {
        name: int(row[0])
        for name in GUARDS
        if (
            row := conn.execute(
                "SELECT pg_stat_get_xact_function_calls(%s::regproc)", (name,)
            ).fetchone()
        )
        is not None
        and row[0] is not None
    }


@pytest.mark.parametrize("statement", DIRECT_WRITES)
def test_a_direct_write_is_refused_as_before(
    conns: dict[str, psycopg.Connection[Any]], statement: str
) -> None:
    """Both schemas refuse the write with restrict_violation and the guard's own message
    (after a Purchase, so that every UPDATE and DELETE has rows to touch)."""
    refusals = {}
    for side, conn in conns.items():
        post_purchase(conn, f"ns-{uuid.uuid4().hex[:8]}", 10_000)
        conn.execute("SAVEPOINT direct")
        with pytest.raises(psycopg.errors.RestrictViolation) as refused:
            conn.execute(statement)
        conn.execute("ROLLBACK TO SAVEPOINT direct")
        refusals[side] = refused.value.diag.message_primary
    assert refusals["after"] == refusals["before"]
    assert refusals["after"] is not None
    assert "is refused" in refusals["after"]


def test_the_ledgers_writes_move_the_same_rows_without_calling_the_guards(
    conns: dict[str, psycopg.Connection[Any]],
) -> None:
    """A Purchase and its accrual write the four tables identically on both schemas; below 0067
    each written row called its guard function, with 0067 none did."""
    results = {}
    calls = {}
    for side, conn in conns.items():
        conn.execute("SET LOCAL track_functions = 'pl'")
        namespace = f"ns-{uuid.uuid4().hex[:8]}"
        post_purchase(conn, namespace, 12_300)
        results[side] = moved(conn, namespace)
        calls[side] = guard_calls(conn)
    assert results["after"] == results["before"] == (12_300, 12_300, "12300/1", 123)
    # Below 0067: two balance stripes, three spend windows, one reference, one rewards balance.
    assert calls["before"]["ledger_balance_guard"] >= 2
    assert calls["before"]["ledger_spend_guard"] >= 3
    assert calls["before"]["ledger_settlement_reference_guard"] >= 1
    assert calls["before"]["rewards_balance_guard"] >= 1
    assert calls["after"] == {}


def test_the_guards_refuse_from_a_function_called_by_a_client(
    conns: dict[str, psycopg.Connection[Any]],
) -> None:
    """A write from a PL/pgSQL function the client calls (not a trigger: depth 0) is refused by
    both schemas: the WHEN clause sees the depth of the statement, not of a function."""
    for conn in conns.values():
        post_purchase(conn, f"ns-{uuid.uuid4().hex[:8]}", 500)
        conn.execute(
            "CREATE FUNCTION pg_temp.bump() RETURNS void LANGUAGE plpgsql AS"
            " $$ BEGIN UPDATE account_balance_rows SET debits_minor = debits_minor + 1; END $$"
        )
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("SELECT pg_temp.bump()")
