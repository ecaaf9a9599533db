"""A ReconciliationRun sees only its own namespace's money (issue 11, item 2), on a real ledger.

Two namespaces hold cards of the SAME name and postings with the SAME reference, and each
breaks something of its own (a tampered card balance, a tampered rewards row, an event stuck in
the outbox). A run in one namespace must report exactly its own namespace's findings, never a
reference, journal, card, event or account total of the other; only a run the administrator made
cluster-wide sees both.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from fintech_operator.events import schema
from fintech_operator.ledger import engine, model, rules
from fintech_operator.recon import model as recon
from fintech_operator.recon import parse, store
from fintech_operator.rewards import points
from fintech_operator.rewards import store as rewards_store

pytestmark = pytest.mark.integration

K = model.PostingKind
DAY = datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC)
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
ALL_CHECKS = frozenset(recon.Check)


def at(hour: int) -> datetime.datetime:
    return DAY + datetime.timedelta(hours=hour)


async def post(
    pool: AsyncConnectionPool[Any],
    namespace: str,
    kind: model.PostingKind,
    amount_minor: int,
    reference: str,
    occurred_at: datetime.datetime,
    *,
    rate_bps: int = 100,
    apply_points: bool = True,
) -> uuid.UUID:
    """A posting on ``namespace/alice`` with its real event, published and applied by rewards."""
    posting = f"p-{uuid.uuid4().hex[:8]}"
    event = schema.PostingPosted(
        namespace=namespace,
        name=posting,
        card="alice",
        posting_type=kind.value,
        amount_minor=amount_minor,
        currency="USD",
        rewards_rate_bps=rate_bps,
        earn_on=["Purchase"],
        occurred_at=occurred_at,
        now=NOW,
        reference=reference,
    ).outbox()
    card = model.card_account_code(namespace, "alice", "USD")
    result = await engine.post(
        pool,
        model.PostingRequest(
            idempotency_key=f"{namespace}/{posting}",
            kind=kind,
            lines=rules.lines_for(kind, card, amount_minor, "USD"),
            occurred_at=occurred_at,
            reference=reference,
            events=(event,),
        ),
    )
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE outbox SET published_at = now() WHERE event_id = %s", (event.event_id,)
        )
        if apply_points:
            entry = rewards_store.Entry(
                event_id=event.event_id,
                event_type=schema.POSTING_POSTED,
                card=f"{namespace}/alice",
                posting=f"{namespace}/{posting}",
                journal_id=result.journal.id,
                posting_type=kind.value,
                points=points.for_posting(kind.value, amount_minor, rate_bps, ["Purchase"]),
                amount_minor=amount_minor,
                currency="USD",
                rate_bps=rate_bps,
                reverses_journal_id=None,
                occurred_at=occurred_at,
            )
            await rewards_store.apply(conn, "rewards", [entry])
    return event.event_id


def csv_records(text: str) -> store.RecordSource:
    return lambda: parse.parse("csv", [text], 1_000_000)


def run(
    dsn: str, namespace: str, records: str | None, *, cluster_wide: bool = False
) -> tuple[store.RunState, list[tuple[Any, ...]]]:
    checks = ALL_CHECKS if records is not None else ALL_CHECKS - {recon.Check.SETTLEMENT}
    # Only the cluster-wide plan says so: namespaced is what a plan is by default.
    wide: dict[str, bool] = {"cluster_wide": True} if cluster_wide else {}
    outcome = store.execute(
        dsn,
        store.RunKey(str(uuid.uuid4()), namespace, f"run-{uuid.uuid4().hex[:8]}"),
        recon.Plan(
            checks=checks,
            tolerances=recon.Tolerances(amount_minor=0, time_seconds=3600),
            window=None,
            event_lag_seconds_max=300,
            dry_run=False,
            **wide,
        ),
        None if records is None else csv_records(records),
    )
    assert outcome.state == "succeeded", outcome
    with psycopg.connect(dsn) as conn:
        return outcome, list(store.exceptions(conn, outcome.run_id))


def tamper_card_balance(dsn: str, namespace: str) -> None:
    """The incident a trial balance exists for: a balance row edited around its guard."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE account_balance_rows DISABLE TRIGGER account_balances_guard")
        try:
            conn.execute(
                "UPDATE account_balance_rows SET debits_minor = debits_minor + 1"
                " WHERE stripe = 0 AND account_id = (SELECT id FROM accounts WHERE code = %s)",
                (model.card_account_code(namespace, "alice", "USD"),),
            )
        finally:
            conn.execute("ALTER TABLE account_balance_rows ENABLE TRIGGER account_balances_guard")


def tamper_points(dsn: str, event_id: uuid.UUID) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE rewards_ledger DISABLE TRIGGER rewards_ledger_append_only")
        try:
            conn.execute(
                "UPDATE rewards_ledger SET points = points + 7 WHERE event_id = %s", (event_id,)
            )
        finally:
            conn.execute("ALTER TABLE rewards_ledger ENABLE TRIGGER rewards_ledger_append_only")


def stuck_event(dsn: str, namespace: str) -> uuid.UUID:
    """A card event of ``namespace`` that never left the outbox (an hour old)."""
    event_id = uuid.uuid4()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox (event_id, topic, key, payload, created_at)"
            " VALUES (%s, 'cards', %s, '{\"type\": \"dev.fintech.card.issued.v1\"}',"
            " now() - interval '1 hour')",
            (event_id, f"{namespace}/alice"),
        )
    return event_id


HEADER = "reference,amount,currency,occurredAt\n"


async def test_a_run_sees_only_its_own_namespace(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """Team A's file matches team A's postings exactly, although team B has a card of the same
    name, a posting with the same reference and its own broken balance, points and event: A's
    run reports nothing, B's run reports exactly B's findings, and a cluster-wide run both."""
    dsn = migrated_database_url
    ns_a, ns_b = f"team-a-{uuid.uuid4().hex[:6]}", f"team-b-{uuid.uuid4().hex[:6]}"
    async with pool.connection() as conn:
        for ns in (ns_a, ns_b):
            await engine.open_card_account(conn, ns, "alice", "USD")
    await post(pool, ns_a, K.PURCHASE, 1000, "R-A1", at(9))
    await post(pool, ns_a, K.PURCHASE, 500, "R-SHARED", at(10))
    await post(pool, ns_b, K.PURCHASE, 2000, "R-B1", at(11))
    await post(pool, ns_b, K.PURCHASE, 700, "R-SHARED", at(10))
    b_points = await post(pool, ns_b, K.PURCHASE, 3000, "R-B2", at(12))
    tamper_card_balance(dsn, ns_b)
    tamper_points(dsn, b_points)
    b_stuck = stuck_event(dsn, ns_b)

    a_file = HEADER + "R-A1,1000,USD,2024-05-01T09:00:00Z\nR-SHARED,500,USD,2024-05-01T10:00:00Z\n"
    outcome, found = run(dsn, ns_a, a_file)
    assert found == [], f"team A's run reported team B's money: {found}"
    assert outcome.summary is not None
    assert (outcome.summary["ledgerReferences"], outcome.summary["matched"]) == (2, 2)

    b_file = (
        HEADER + "R-B1,2000,USD,2024-05-01T11:00:00Z\nR-SHARED,700,USD,2024-05-01T10:00:00Z\n"
        "R-B2,3000,USD,2024-05-01T12:00:00Z\n"
    )
    _, found = run(dsn, ns_b, b_file)
    b_card = model.card_account_code(ns_b, "alice", "USD")
    assert sorted((row[1], row[3]) for row in found) == sorted(
        [
            ("BalanceDrift", b_card),
            ("CurrencyImbalance", "USD"),
            ("PointsMismatch", f"{ns_b}/alice"),
            ("UnpublishedEvent", str(b_stuck)),
        ]
    ), found
    # The namespace's share of the shared system accounts, never their platform-wide totals.
    imbalance = next(row for row in found if row[1] == "CurrencyImbalance")
    assert imbalance[6] == "debits 5701, credits 5700", imbalance

    _, found = run(dsn, ns_a, None, cluster_wide=True)
    kinds = {(row[1], row[3]) for row in found}
    assert {("BalanceDrift", b_card), ("UnpublishedEvent", str(b_stuck))} <= kinds, found
    assert ("PointsMismatch", f"{ns_b}/alice") in kinds, found


async def test_a_namespaced_settlement_ignores_other_namespaces_references(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """A reference only another namespace posted is MissingInLedger for this one (it is not
    this namespace's money), and another namespace's posting never shows as MissingInSource."""
    dsn = migrated_database_url
    ns_a, ns_b = f"shop-a-{uuid.uuid4().hex[:6]}", f"shop-b-{uuid.uuid4().hex[:6]}"
    async with pool.connection() as conn:
        for ns in (ns_a, ns_b):
            await engine.open_card_account(conn, ns, "alice", "USD")
    await post(pool, ns_a, K.PURCHASE, 1200, "S-A", at(9))
    await post(pool, ns_b, K.PURCHASE, 3400, "S-B", at(9))
    _, found = run(dsn, ns_a, HEADER + "S-B,3400,USD,2024-05-01T09:00:00Z\n")
    assert sorted((row[1], row[3], row[5], row[6]) for row in found if row[0] == "Settlement") == [
        ("MissingInLedger", "S-B", "no posting", "3400 USD at 2024-05-01T09:00:00Z"),
        ("MissingInSource", "S-A", "1200 USD at 2024-05-01T09:00:00Z", "no record"),
    ]


def legacy_purchase(dsn: str, namespace: str, reference: str, amount_minor: int) -> None:
    """A purchase as the ledger wrote it before migration 0045: no namespace on the journal."""
    codes = (
        model.card_account_code(namespace, "alice", "USD"),
        model.system_account_code(model.SystemAccount.NETWORK_SETTLEMENT, "USD"),
    )
    with psycopg.connect(dsn) as conn:
        ids: dict[str, int] = dict(
            conn.execute(
                "SELECT code, id FROM accounts WHERE code = ANY(%s)", (list(codes),)
            ).fetchall()
        )
        row = conn.execute(
            "INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at)"
            " VALUES (%s, repeat('0', 64), 'Purchase', %s, %s) RETURNING id",
            (f"old-{uuid.uuid4()}", reference, at(15)),
        ).fetchone()
        assert row is not None
        for code, direction in zip(codes, ("debit", "credit"), strict=True):
            conn.execute(
                "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
                " VALUES (%s, %s, %s, %s, 'USD')",
                (row[0], ids[code], direction, amount_minor),
            )


async def test_journals_written_before_namespaces_count_for_their_cards_namespace(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """Journals without a namespace (written before migration 0045) are reconciled by the run
    of the namespace whose card they moved, and by no other namespace's run."""
    dsn = migrated_database_url
    ns_a, ns_b = f"old-a-{uuid.uuid4().hex[:6]}", f"old-b-{uuid.uuid4().hex[:6]}"
    async with pool.connection() as conn:
        for ns in (ns_a, ns_b):
            await engine.open_card_account(conn, ns, "alice", "USD")
    # Posted first: it opens the system settlement account the legacy rows need (the test must
    # not depend on an earlier test having opened it).
    await post(pool, ns_a, K.PURCHASE, 4300, "N-A", at(15))
    legacy_purchase(dsn, ns_a, "L-A", 4100)
    legacy_purchase(dsn, ns_b, "L-B", 4200)
    a_file = HEADER + "L-A,4100,USD,2024-05-01T15:00:00Z\nN-A,4300,USD,2024-05-01T15:00:00Z\n"
    outcome, found = run(dsn, ns_a, a_file)
    assert found == [], found
    assert outcome.summary is not None
    assert (outcome.summary["ledgerReferences"], outcome.summary["matched"]) == (2, 2)
    _, found = run(dsn, ns_b, HEADER)
    assert [(row[1], row[3]) for row in found] == [("MissingInSource", "L-B")], found
