"""The internal checks (rewards, events, trial balance) against a real ledger in PostgreSQL.

Postings are written by the ledger engine with the real ``posting.posted`` event builder, and
their points by the rewards store's own batch write, exactly as the consumer does it. Each test
then breaks one thing the way an incident would (a row edited behind the application's back, an
event stuck in the outbox) and proves the matching check reports it exactly once.
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
from fintech_operator.recon import store
from fintech_operator.rewards import points
from fintech_operator.rewards import store as rewards_store

pytestmark = pytest.mark.integration

K = model.PostingKind
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def run(dsn: str, *checks: recon.Check) -> tuple[store.RunState, list[tuple[Any, ...]]]:
    outcome = store.execute(
        dsn,
        store.RunKey(str(uuid.uuid4()), "finance", f"run-{uuid.uuid4().hex[:8]}"),
        recon.Plan(
            checks=frozenset(checks),
            tolerances=recon.Tolerances(),
            window=None,
            event_lag_seconds_max=300,
            dry_run=False,
        ),
        None,
    )
    assert outcome.state == "succeeded", outcome
    with psycopg.connect(dsn) as conn:
        return outcome, list(store.exceptions(conn, outcome.run_id))


async def post_and_apply(
    pool: AsyncConnectionPool[Any],
    card: str,
    kind: model.PostingKind,
    amount: int,
    *,
    rate_bps: int = 150,
    apply: bool = True,
) -> uuid.UUID:
    """Post with its real event, mark it published, and apply it as the rewards consumer."""
    namespace, name = card.split("/")
    posting = f"p-{uuid.uuid4().hex[:8]}"
    event = schema.PostingPosted(
        namespace=namespace,
        name=posting,
        card=name,
        posting_type=kind.value,
        amount_minor=amount,
        currency="USD",
        rewards_rate_bps=rate_bps,
        earn_on=["Purchase"],
        occurred_at=NOW,
        now=NOW,
    ).outbox()
    result = await engine.post(
        pool,
        model.PostingRequest(
            idempotency_key=f"{namespace}/{posting}",
            kind=kind,
            lines=rules.lines_for(
                kind, model.card_account_code(namespace, name, "USD"), amount, "USD"
            ),
            occurred_at=NOW,
            events=(event,),
        ),
    )
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE outbox SET published_at = now() WHERE event_id = %s", (event.event_id,)
        )
        if apply:
            entry = rewards_store.Entry(
                event_id=event.event_id,
                event_type=schema.POSTING_POSTED,
                card=card,
                posting=f"{namespace}/{posting}",
                journal_id=result.journal.id,
                posting_type=kind.value,
                points=points.for_posting(kind.value, amount, rate_bps, ["Purchase"]),
                amount_minor=amount,
                currency="USD",
                rate_bps=rate_bps,
                reverses_journal_id=None,
                occurred_at=NOW,
            )
            await rewards_store.apply(conn, "rewards", [entry])
    return event.event_id


async def new_card(pool: AsyncConnectionPool[Any]) -> str:
    name = f"c-{uuid.uuid4().hex[:8]}"
    async with pool.connection() as conn:
        await engine.open_card_account(conn, "finance", name, "USD")
    return f"finance/{name}"


async def test_rewards_check_finds_a_tampered_row(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """Points recomputed from the posting events equal the rewards ledger card by card; after
    one row's points are edited behind the consumer's back, exactly that card is reported."""
    alice, bob = await new_card(pool), await new_card(pool)
    await post_and_apply(pool, alice, K.PURCHASE, 12_345)
    tampered = await post_and_apply(pool, alice, K.PURCHASE, 9_999)
    await post_and_apply(pool, alice, K.REFUND, 2_000)
    await post_and_apply(pool, bob, K.PURCHASE, 50_000)
    await post_and_apply(pool, bob, K.PAYMENT, 10_000)
    clean, found = run(migrated_database_url, recon.Check.REWARDS)
    assert found == []
    assert clean.summary is not None
    assert clean.summary["checks"]["rewards"] == {"result": "Passed", "exceptions": 0}

    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        # A DBA's "quick fix": the append-only trigger is switched off for one UPDATE.
        conn.execute("ALTER TABLE rewards_ledger DISABLE TRIGGER rewards_ledger_append_only")
        try:
            conn.execute(
                "UPDATE rewards_ledger SET points = points + 500 WHERE event_id = %s", (tampered,)
            )
        finally:
            conn.execute("ALTER TABLE rewards_ledger ENABLE TRIGGER rewards_ledger_append_only")
    broken, found = run(migrated_database_url, recon.Check.REWARDS)
    # 12345 * 1.5% = 185, 9999 -> 149, the refund of 2000 takes back 30: 304 expected.
    assert [(row[1], row[3], row[5], row[6]) for row in found] == [
        (
            "PointsMismatch",
            alice,
            "304 points from 3 posting events",
            "804 points in 3 rewards rows",
        )
    ]
    assert broken.summary is not None
    assert broken.summary["checks"]["rewards"] == {"result": "Failed", "exceptions": 1}


async def test_events_check_finds_an_old_unpublished_and_an_unapplied_event(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """An event unpublished for an hour and a published posting event the rewards consumer
    never applied are each reported once; events younger than the threshold are not."""
    card = await new_card(pool)
    unapplied = await post_and_apply(pool, card, K.PURCHASE, 700, apply=False)
    young_unapplied = await post_and_apply(pool, card, K.PURCHASE, 800, apply=False)
    stuck, young = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE outbox SET published_at = now() - interval '1 hour' WHERE event_id = %s",
            (unapplied,),
        )
        for event_id, age in ((stuck, "1 hour"), (young, "1 second")):
            conn.execute(
                "INSERT INTO outbox (event_id, topic, key, payload, created_at)"
                " VALUES (%s, 'cards', 'finance/x', '{\"type\": \"dev.fintech.card.issued.v1\"}',"
                " now() - %s::interval)",
                (event_id, age),
            )
    outcome, found = run(migrated_database_url, recon.Check.EVENTS)
    assert sorted((row[1], row[3]) for row in found) == sorted(
        [("UnpublishedEvent", str(stuck)), ("UnappliedEvent", str(unapplied))]
    )
    assert str(young_unapplied) not in {row[3] for row in found}
    unpublished = next(row for row in found if row[1] == "UnpublishedEvent")
    assert "unpublished for 36" in unpublished[6], unpublished  # about 3600 seconds
    assert outcome.summary is not None
    assert outcome.summary["checks"]["events"] == {"result": "Failed", "exceptions": 2}


async def test_trial_balance_passes_then_finds_a_tampered_balance(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """A ledger written by the engine balances; a running balance edited around its guard is
    found twice over: as drift from its entries, and as a currency that no longer sums to 0."""
    card = await new_card(pool)
    await post_and_apply(pool, card, K.PURCHASE, 4_200)
    _, found = run(migrated_database_url, recon.Check.TRIAL_BALANCE)
    assert found == []
    code = model.card_account_code(*card.split("/"), "USD")
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE account_balance_rows DISABLE TRIGGER account_balances_guard")
        try:
            conn.execute(
                "UPDATE account_balance_rows SET debits_minor = debits_minor + 1"
                " WHERE stripe = 0 AND account_id = (SELECT id FROM accounts WHERE code = %s)",
                (code,),
            )
        finally:
            conn.execute("ALTER TABLE account_balance_rows ENABLE TRIGGER account_balances_guard")
    _, found = run(migrated_database_url, recon.Check.TRIAL_BALANCE)
    assert sorted((row[1], row[3]) for row in found) == [
        ("BalanceDrift", code),
        ("CurrencyImbalance", "USD"),
    ]
