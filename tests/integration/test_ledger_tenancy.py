"""Idempotency keys and journals belong to a namespace (migration 0045), on a real PostgreSQL.

The module's database is first migrated to the schema before 0045 and given a journal the way
the operator wrote one then (a global key ``order-1``, no namespace), then migrated to the
current schema: that journal still replays for its own namespace, is invisible to any other,
and the same key posts anew elsewhere. The database itself refuses a journal that names one
namespace and moves another's card.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from fintech_operator.ledger import engine, migrate, model, rules
from fintech_operator.risk import store as risk_store

pytestmark = pytest.mark.integration

K = model.PostingKind
T0 = datetime.datetime(2025, 3, 1, 12, tzinfo=datetime.UTC)
A_CARD = model.card_account_code("team-a", "alice", "USD")
B_CARD = model.card_account_code("team-b", "alice", "USD")
SETTLEMENT = model.system_account_code(model.SystemAccount.NETWORK_SETTLEMENT, "USD")


def request(
    card: str, amount_minor: int, key: str = "order-1", **extra: Any
) -> model.PostingRequest:
    return model.PostingRequest(
        idempotency_key=key,
        kind=K.PURCHASE,
        lines=rules.lines_for(K.PURCHASE, card, amount_minor, "USD"),
        occurred_at=T0,
        reference="R-1",
        **extra,
    )


def write_before_0045(dsn: str) -> int:
    """Migrate to the schema before 0045 and write team A's journal of key ``order-1`` as the
    operator did then: no namespace anywhere but in the card account's code."""
    migrate.apply(dsn, [m for m in migrate.discover() if m.version < 45])
    first = request(A_CARD, 1000)
    with psycopg.connect(dsn) as conn:
        ids = {}
        for code, kind, normal in ((A_CARD, "card", "debit"), (SETTLEMENT, "system", "credit")):
            row = conn.execute(
                "INSERT INTO accounts (code, kind, normal_balance, currency)"
                " VALUES (%s, %s, %s, 'USD') RETURNING id",
                (code, kind, normal),
            ).fetchone()
            assert row is not None
            ids[code] = row[0]
        row = conn.execute(
            "INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at)"
            " VALUES ('order-1', %s, 'Purchase', 'R-1', %s) RETURNING id",
            (rules.request_hash(first), T0),
        ).fetchone()
        assert row is not None
        for code, direction in ((A_CARD, "debit"), (SETTLEMENT, "credit")):
            conn.execute(
                "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
                " VALUES (%s, %s, %s, 1000, 'USD')",
                (row[0], ids[code], direction),
            )
        conn.execute(
            "INSERT INTO risk_assessments (idempotency_key, subject_kind, subject, policy,"
            " decision, score) VALUES ('posting/order-1/risk', 'Posting', 'team-a/pay',"
            " 'builtin/default', 'Review', 500)"
        )
    return int(row[0])


@pytest.fixture(scope="module")
def legacy_journal(database_url: str) -> int:
    journal_id = write_before_0045(database_url)
    migrate.apply(database_url)
    return journal_id


@pytest.fixture(scope="module")
async def pool(database_url: str, legacy_journal: int) -> AsyncIterator[AsyncConnectionPool[Any]]:
    ledger_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        database_url, min_size=1, max_size=4, open=False, timeout=30
    )
    await ledger_pool.open(wait=True, timeout=30)
    async with ledger_pool.connection() as conn:
        await engine.open_card_account(conn, "team-b", "alice", "USD")
    yield ledger_pool
    await ledger_pool.close()


async def test_an_old_journal_replays_for_its_namespace_only(
    pool: AsyncConnectionPool[Any], legacy_journal: int, database_url: str
) -> None:
    """Team A's pre-0045 journal is found and replayed for team A, conflicts for a changed
    request of A, and does not exist for team B, where the same key posts B's own journal."""
    with psycopg.connect(database_url) as conn:
        namespaces: dict[str, str | None] = dict(
            conn.execute("SELECT code, namespace FROM accounts").fetchall()
        )
    assert namespaces[A_CARD] == "team-a"
    assert namespaces[SETTLEMENT] is None
    async with pool.connection() as conn:
        found = await engine.journal_by_key(conn, "order-1", namespace="team-a")
        assert found is not None
        assert (found.id, found.namespace) == (legacy_journal, None)
        assert await engine.journal_by_key(conn, "order-1", namespace="team-b") is None
    replay = await engine.post(pool, request(A_CARD, 1000))
    assert (replay.replayed, replay.journal.id) == (True, legacy_journal)
    with pytest.raises(model.IdempotencyConflict):
        await engine.post(pool, request(A_CARD, 999))
    theirs = await engine.post(pool, request(B_CARD, 1000))
    assert theirs.replayed is False
    assert theirs.journal.id != legacy_journal
    assert theirs.journal.namespace == "team-b"
    again = await engine.post(pool, request(B_CARD, 1000))
    assert (again.replayed, again.journal.id) == (True, theirs.journal.id)
    async with pool.connection() as conn:
        by_b = await engine.journal_by_key(conn, "order-1", namespace="team-b")
    assert by_b is not None
    assert by_b.id == theirs.journal.id


async def test_a_reversal_is_refused_across_namespaces(
    pool: AsyncConnectionPool[Any], legacy_journal: int
) -> None:
    """Team B cannot reverse team A's journal (it does not exist for B); team A can, and the
    reversal records team A as its namespace."""
    with pytest.raises(model.JournalNotFound, match="team-b"):
        await engine.reverse(
            pool, model.ReversalRequest("undo-1", legacy_journal, "not mine", namespace="team-b")
        )
    undone = await engine.reverse(
        pool, model.ReversalRequest("undo-1", legacy_journal, "mine", namespace="team-a")
    )
    assert undone.journal.namespace == "team-a"
    assert undone.journal.reverses_journal_id == legacy_journal


async def test_a_journal_moves_one_namespaces_money(
    pool: AsyncConnectionPool[Any], database_url: str
) -> None:
    """The engine refuses lines of two namespaces and a declared namespace that is not its
    card's; the database refuses a card entry of another namespace than its journal's."""
    two = [
        model.Line(A_CARD, model.Direction.DEBIT, 100, "USD"),
        model.Line(B_CARD, model.Direction.CREDIT, 100, "USD"),
    ]
    with pytest.raises(model.InvalidRequest, match="one namespace"):
        model.PostingRequest("x", K.ADJUSTMENT, two, T0)
    with pytest.raises(model.InvalidRequest, match="one namespace"):
        request(A_CARD, 100, key="x", namespace="team-b")
    with psycopg.connect(database_url) as conn:
        ids: dict[str, int] = dict(conn.execute("SELECT code, id FROM accounts").fetchall())
        row = conn.execute(
            "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at, namespace)"
            " VALUES ('raw-1', repeat('0', 64), 'Purchase', now(), 'team-b') RETURNING id"
        ).fetchone()
        assert row is not None
        with pytest.raises(errors.CheckViolation, match="moves the money of namespace team-b"):
            conn.execute(
                "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
                " VALUES (%s, %s, 'debit', 100, 'USD')",
                (row[0], ids[A_CARD]),
            )


def test_keys_are_unique_per_namespace_in_the_database(
    legacy_journal: int, database_url: str
) -> None:
    """The same key may exist once per namespace (and once without one), never twice in one."""
    insert = (
        "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at, namespace)"
        " VALUES ('same', repeat('0', 64), 'Purchase', now(), %s)"
    )
    for namespace in (None, "team-a", "team-b"):
        with psycopg.connect(database_url) as conn:
            for each in (None, "team-a", "team-b"):
                conn.execute(insert, (each,))
            with pytest.raises(errors.UniqueViolation):
                conn.execute(insert, (namespace,))
            conn.rollback()  # Journals without entries never reach the balance check.


async def test_an_old_risk_decision_stands_for_its_namespace_only(
    pool: AsyncConnectionPool[Any],
) -> None:
    """A decision stored under the first key form counts for the namespace of its subject."""
    async with pool.connection() as conn:
        mine = await risk_store.find(conn, "posting/order-1/risk", subject_namespace="team-a")
        theirs = await risk_store.find(conn, "posting/order-1/risk", subject_namespace="team-b")
    assert mine is not None
    assert mine.decision.action.value == "Review"
    assert theirs is None


def test_the_database_reads_a_codes_namespace_as_the_engine_does(
    legacy_journal: int, database_url: str
) -> None:
    """accounts.namespace (generated in SQL) equals model.card_namespace for every shape."""
    codes = ["card:ns-1/alice:USD", "card:a/b/c:USD", "card:a/b:c:USD", "card:solo:USD",
             "card:/lead:USD", "system:fee_revenue:USD"]  # fmt: skip
    with psycopg.connect(database_url) as conn:
        for code in codes:
            kind = code.split(":")[0]
            conn.execute(
                "INSERT INTO accounts (code, kind, normal_balance, currency)"
                " VALUES (%s, %s, 'debit', 'USD') ON CONFLICT (code) DO NOTHING",
                (code, kind),
            )
        found: dict[str, str | None] = dict(
            conn.execute(
                "SELECT code, namespace FROM accounts WHERE code = ANY(%s)", (codes,)
            ).fetchall()
        )
    assert found == {code: model.card_namespace(code) for code in codes}
