"""A short fault campaign on its own real platform must find nothing lost, doubled or stuck;
and the same checker, on the same books, must catch a journal and a hold planted behind its
back.

The planted journal is a second journal for a posting the client saw Posted, inserted
directly in PostgreSQL (balanced, so the database accepts it) without an outbox event: the
checker must call it doubled, and the missing event lost. The planted hold is 100 more held
on a card than its authorizations hold: the checker must say so. A checker that passes the
campaign but not this would be proving nothing.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.faults import authz, campaign, checker

pytestmark = pytest.mark.e2e
SEED = 16
# Every kind once; one minute of workload at two operations a second. The whole test took
# 3 to 7 min on a 2-core machine at load average 10 to 25, most of it platform start and the
# Kafka restart.
CONFIG = campaign.Config(
    seed=SEED,
    duration_seconds=60.0,
    faults=len(campaign.ALL_KINDS),
    pause_seconds=12.0,
    outage_seconds=8.0,
    quiesce_seconds=180.0,
)


def _plant_double(database_url: str, postings: list[str]) -> tuple[str, int]:
    """A second balanced journal, with no outbox event, for the first of ``postings`` whose
    card account still takes debits (the campaign freezes and closes cards, and the database
    would rightly refuse a debit there); that posting and the journal's id."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        for posting in postings:
            accounts = conn.execute(
                "SELECT a.id, a.status = 'open' AND a.frozen_at IS NULL FROM accounts a"
                " JOIN entries e ON e.account_id = a.id JOIN journals j ON j.id = e.journal_id"
                " WHERE j.metadata->>'posting' = %s ORDER BY a.kind, a.id",
                (posting,),
            ).fetchall()
            (card_account, takes_debits), (settlement, _) = accounts
            if takes_debits:
                return posting, _insert_journal(conn, posting, card_account, settlement)
    raise AssertionError(f"every card of {len(postings)} purchases is frozen or closed")


def _insert_journal(conn: psycopg.Connection, posting: str, debit: int, credit: int) -> int:
    row = conn.execute(
        "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at, metadata)"
        " VALUES (%s, repeat('0', 64), 'Purchase', now(),"
        " jsonb_build_object('posting', %s::text))"
        " RETURNING id",
        (f"planted/{posting}", posting),
    ).fetchone()
    assert row is not None
    for account, direction in ((debit, "debit"), (credit, "credit")):
        conn.execute(
            "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
            " VALUES (%s, %s, %s, 100, 'USD')",
            (row[0], account, direction),
        )
    return int(row[0])


def test_short_campaign_loses_and_doubles_nothing() -> None:
    """Faults of every kind under a live workload; then the checker's verdict is clean."""
    with campaign.started(CONFIG) as run:
        run.run()
        ev, violations = run.quiesce_and_check()
        print(campaign.report(run, violations, ev))
        assert {f.kind for f in run.faults} == set(campaign.ALL_KINDS)
        assert [f for f in run.faults if f.error] == []
        assert violations == []
        told, _ = checker.told_posted(ev)
        purchases = sorted(n for n in told if run.load.specs[n]["type"] == "Purchase"
                           and not run.load.specs[n].get("reverses"))  # fmt: skip
        assert len(purchases) >= 20, "the workload must have posted something to check"

        answers = authz.outcomes(ev.auth.log)
        for outcome in ("authorize Approved", "capture Approved", "void Approved"):
            assert answers[outcome] >= 3, answers
        statuses = {row.status for row in ev.auth.rows.values()}
        assert {"closed", "expired", "pending"} <= statuses, statuses

        _, planted = _plant_double(
            run.plat.database_url, [f"{campaign.NAMESPACE}/{name}" for name in purchases]
        )
        _plant_hold(run.plat.database_url)
        caught = checker.check(run.evidence())
        kinds = {v.kind for v in caught}
        assert "doubled" in kinds, caught
        assert any(f"journal {planted} has 0 outbox events" in v.what for v in caught), caught
        assert any("card c-1: books hold" in v.what for v in caught), caught


def _plant_hold(database_url: str) -> None:
    """100 more held on card c-1 than its authorizations hold, behind the gateway's back."""
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute(
            "UPDATE authorization_cards SET held_minor = held_minor + 100 WHERE card = %s",
            (f"{campaign.NAMESPACE}/c-1",),
        )
