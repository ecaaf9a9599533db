"""Risk and compliance against a real PostgreSQL: the posting check inside the ledger transaction.

Proves what the pure tests cannot: velocity is read from the ledger under the posting's account
lock (so concurrent postings cannot slip past a limit), declines leave no journal but are
recorded, decisions are sticky per idempotency key, AML alerts and their outbox events commit
with the posting and are raised once a day, and the audit tables are append-only.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.compliance import model as cm
from fintech_operator.compliance import rules as compliance_rules
from fintech_operator.compliance import store as compliance_store
from fintech_operator.ledger import engine, model, rules
from fintech_operator.risk import model as rm
from fintech_operator.risk import store as risk_store

pytestmark = pytest.mark.integration

T0 = datetime.datetime(2025, 1, 15, 9, 30, tzinfo=datetime.UTC)
CONCURRENCY = 8


@pytest.fixture(scope="module")
async def pool(migrated_database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    # More connections than concurrent postings (plus one each for recording a decline).
    ledger_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        migrated_database_url, min_size=2, max_size=2 * CONCURRENCY + 2, open=False, timeout=30
    )
    await ledger_pool.open(wait=True, timeout=30)
    yield ledger_pool
    await ledger_pool.close()


async def new_card(pool: AsyncConnectionPool[Any]) -> tuple[str, str]:
    """A fresh card account; returns (``ns/name``, account code)."""
    name = f"c-{uuid.uuid4().hex[:10]}"
    async with pool.connection() as conn:
        account = await engine.open_card_account(conn, "ns", name, "USD")
    return f"ns/{name}", account.code


def risk_policy(**spec: Any) -> rm.Policy:
    return rm.Policy(spec=api.RiskPolicySpec.model_validate(spec), namespace="ns", name="risk")


def compliance_policy(**spec: Any) -> cm.Policy:
    return cm.Policy(spec=api.CompliancePolicySpec.model_validate(spec), namespace="ns", name="c")


def purchase(
    card: tuple[str, str],
    amount_minor: int,
    rpolicy: rm.Policy,
    *,
    cpolicy: cm.Policy | None = None,
    kind: model.PostingKind = model.PostingKind.PURCHASE,
    mcc: str | None = None,
    key: str | None = None,
) -> tuple[model.PostingRequest, risk_store.PostingCheck]:
    subject, code = card
    key = key or f"ns/p-{uuid.uuid4().hex[:10]}"
    request = model.PostingRequest(
        idempotency_key=key,
        kind=kind,
        lines=rules.lines_for(kind, code, amount_minor, "USD"),
        occurred_at=T0,
    )
    facts = rm.PostingFacts(
        card=subject,
        account_code=code,
        kind=kind.value,
        amount_minor=amount_minor,
        currency="USD",
        merchant_mcc=mcc,
        merchant_country="US",
    )
    check = risk_store.PostingCheck(
        rpolicy, facts, subject=key if "/" in key else f"ns/{key}", compliance_policy=cpolicy
    )
    return request, check


def assessments(raw: psycopg.Connection[Any], key: str) -> list[tuple[Any, ...]]:
    return raw.execute(
        "SELECT decision, score, matched->0->>'rule' FROM risk_assessments"
        " WHERE idempotency_key = %s",
        (f"posting@ns/{key}/risk",),
    ).fetchall()


async def test_approve_is_recorded_with_the_journal(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """An approved posting writes its journal and its Approve row in one transaction."""
    card = await new_card(pool)
    request, check = purchase(card, 1_000, risk_policy(blockedMccs={"codes": ["7995"]}), mcc="5814")
    result = await risk_store.post(pool, request, check)
    assert result.replayed is False
    assert check.decision is not None
    assert check.decision.action is rm.Action.APPROVE
    assert assessments(raw, request.idempotency_key) == [("Approve", 0, None)]


async def test_decline_writes_no_journal_but_is_recorded_and_sticky(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A declined posting leaves no journal, its decline is stored, and the key stays declined."""
    card = await new_card(pool)
    policy = risk_policy(blockedMccs={"codes": ["7995"]})
    request, check = purchase(card, 1_000, policy, mcc="7995")
    with pytest.raises(rm.RiskDeclined) as caught:
        await risk_store.post(pool, request, check)
    error = caught.value
    assert isinstance(error, model.LedgerError)
    assert error.reason == "RiskDeclined"
    assert "BlockedMcc" in error.message
    assert error.record_id is not None
    async with pool.connection() as conn:
        assert await engine.journal_by_key(conn, request.idempotency_key, namespace="ns") is None
    assert assessments(raw, request.idempotency_key) == [("Decline", 1000, "BlockedMcc")]
    # The same key again, now at an allowed merchant: the first decision stands (Invariant 3).
    again, check_again = purchase(card, 1_000, policy, mcc="5814", key=request.idempotency_key)
    with pytest.raises(rm.RiskDeclined):
        await risk_store.post(pool, again, check_again)
    assert len(assessments(raw, request.idempotency_key)) == 1


async def test_replayed_posting_is_not_assessed_again(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A replay of a posted key returns the first journal without a second assessment."""
    card = await new_card(pool)
    request, check = purchase(card, 500, risk_policy())
    first = await risk_store.post(pool, request, check)
    _, check2 = purchase(card, 500, risk_policy(), key=request.idempotency_key)
    second = await risk_store.post(pool, request, check2)
    assert second.replayed is True
    assert second.journal.id == first.journal.id
    assert check2.decision is None
    assert len(assessments(raw, request.idempotency_key)) == 1


async def test_velocity_is_read_from_the_ledger(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """The third purchase in the window reviews (count); amounts add up across postings."""
    card = await new_card(pool)
    policy = risk_policy(
        velocity=[
            {"windowSeconds": 3600, "maxCount": 2, "action": "Review"},
            {
                "windowSeconds": 86400,
                "maxAmount": {"amount": 2_500, "currency": "USD"},
                "action": "Decline",
            },
        ]
    )
    decisions = []
    for amount in (1_000, 1_000):
        request, check = purchase(card, amount, policy)
        await risk_store.post(pool, request, check)
        assert check.decision is not None
        decisions.append(check.decision.action)
    # A refund is not a purchase: it neither counts nor is assessed.
    request, check = purchase(card, 100, policy, kind=model.PostingKind.REFUND)
    await risk_store.post(pool, request, check)
    request, check = purchase(card, 400, policy)
    await risk_store.post(pool, request, check)
    assert check.decision is not None
    assert decisions == [rm.Action.APPROVE, rm.Action.APPROVE]
    assert check.decision.action is rm.Action.REVIEW
    assert check.decision.reasons == ("VelocityCount",)
    # 1,000 + 1,000 + 400 + 200 = 2,600 > 2,500 in the day: declined.
    request, check = purchase(card, 200, policy)
    with pytest.raises(rm.RiskDeclined, match="VelocityAmount"):
        await risk_store.post(pool, request, check)
    inputs = raw.execute(
        "SELECT inputs->'velocity' FROM risk_assessments WHERE idempotency_key = %s",
        (f"posting@ns/{request.idempotency_key}/risk",),
    ).fetchone()
    assert inputs is not None
    assert inputs[0]["86400"] == {"count": 3, "amountMinor": 2_400}


async def test_reversed_purchases_do_not_count(pool: AsyncConnectionPool[Any]) -> None:
    """A reversed purchase never happened, so it leaves the velocity window."""
    card = await new_card(pool)
    policy = risk_policy(velocity=[{"windowSeconds": 3600, "maxCount": 1, "action": "Decline"}])
    request, check = purchase(card, 1_000, policy)
    first = await risk_store.post(pool, request, check)
    await engine.reverse(
        pool, model.ReversalRequest(f"rev-{uuid.uuid4().hex}", first.journal.id, "customer dispute")
    )
    request, check = purchase(card, 1_000, policy)
    await risk_store.post(pool, request, check)
    assert check.decision is not None
    assert check.decision.action is rm.Action.APPROVE


async def test_concurrent_postings_cannot_pass_a_velocity_limit(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Invariant 8: racing postings on one card, exactly maxCount get through, never more."""
    card = await new_card(pool)
    limit = 3
    policy = risk_policy(velocity=[{"windowSeconds": 3600, "maxCount": limit, "action": "Decline"}])

    async def one() -> bool:
        request, check = purchase(card, 100, policy)
        try:
            await risk_store.post(pool, request, check)
        except rm.RiskDeclined:
            return False
        return True

    outcomes = await asyncio.gather(*(one() for _ in range(CONCURRENCY)))
    assert sum(outcomes) == limit
    count = raw.execute(
        "SELECT count(*) FROM entries e JOIN accounts a ON a.id = e.account_id WHERE a.code = %s",
        (card[1],),
    ).fetchone()
    assert count == (limit,)


async def test_aml_alerts_once_a_day_with_an_outbox_event(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Crossing the daily threshold raises one alert, one CloudEvent, and never blocks."""
    card = await new_card(pool)
    cpolicy = compliance_policy(
        aml={
            "dailyThreshold": {"amount": 10_000, "currency": "USD"},
            "structuring": {"enabled": False},
        }
    )
    keys = []
    for amount in (6_000, 4_000, 7_000):
        request, check = purchase(card, amount, risk_policy(), cpolicy=cpolicy)
        await risk_store.post(pool, request, check)
        keys.append(request.idempotency_key)
        assert check.monitor is not None
        if amount == 4_000:
            assert [alert.kind for alert in check.monitor.alerts] == [cm.AlertKind.DAILY_THRESHOLD]
        else:
            assert check.monitor.alerts == ()
    alerts = raw.execute(
        "SELECT alert_kind, total_minor, posting_count, threshold_minor, posting_key, event_id"
        " FROM compliance_alerts WHERE card = %s",
        (card[0],),
    ).fetchall()
    assert [row[:5] for row in alerts] == [("DailyThreshold", 10_000, 2, 10_000, keys[1])]
    event = raw.execute(
        "SELECT topic, key, payload FROM outbox WHERE event_id = %s", (alerts[0][5],)
    ).fetchone()
    assert event is not None
    topic, key, payload = event
    assert (topic, key) == ("compliance", card[0])
    assert payload["type"] == "dev.fintech.compliance.alert.raised.v1"
    assert payload["subject"] == f"namespaces/ns/cards/{card[0].split('/')[1]}"
    assert payload["data"]["totalMinor"] == 10_000
    outcomes = raw.execute(
        "SELECT outcome, reason FROM compliance_checks WHERE subject = %s AND check_kind = 'Aml'"
        " ORDER BY id",
        (card[0],),
    ).fetchall()
    assert outcomes == [
        ("Clear", "BelowThresholds"),
        ("Alert", "DailyThreshold"),
        ("Alert", "DailyThreshold"),
    ]


async def test_structuring_alert(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Three payments each just under the threshold in a day raise Structuring."""
    card = await new_card(pool)
    cpolicy = compliance_policy(aml={"dailyThreshold": {"amount": 100_000, "currency": "USD"}})
    for _ in range(3):
        request, check = purchase(
            card, 95_000, risk_policy(), cpolicy=cpolicy, kind=model.PostingKind.PAYMENT
        )
        await risk_store.post(pool, request, check)
    kinds = raw.execute(
        "SELECT alert_kind FROM compliance_alerts WHERE card = %s ORDER BY id", (card[0],)
    ).fetchall()
    assert kinds == [("DailyThreshold",), ("Structuring",)]
    async with pool.connection() as conn:
        announced = await compliance_store.alerts_after(conn, card[0], 0)
    assert [alert.kind for alert in announced] == [
        cm.AlertKind.DAILY_THRESHOLD,
        cm.AlertKind.STRUCTURING,
    ]
    assert announced[1].posting_count == 3


async def test_a_declined_posting_raises_no_alert(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """AML runs after risk in the same transaction: a declined posting is not monitored."""
    card = await new_card(pool)
    cpolicy = compliance_policy(aml={"dailyThreshold": {"amount": 100, "currency": "USD"}})
    rpolicy = risk_policy(maxAmountPerTransaction={"amount": 1_000, "currency": "USD"})
    request, check = purchase(card, 5_000, rpolicy, cpolicy=cpolicy)
    with pytest.raises(rm.RiskDeclined):
        await risk_store.post(pool, request, check)
    rows = raw.execute(
        "SELECT count(*) FROM compliance_alerts WHERE card = %s", (card[0],)
    ).fetchone()
    assert rows == (0,)


async def test_check_facts_must_name_a_locked_account(pool: AsyncConnectionPool[Any]) -> None:
    """Velocity read on an account the posting does not lock would be racy: refused."""
    card = await new_card(pool)
    other = await new_card(pool)
    request, _ = purchase(card, 100, risk_policy())
    _, wrong = purchase(other, 100, risk_policy())
    with pytest.raises(model.InvalidRequest, match="not one of the posting's"):
        await risk_store.post(pool, request, wrong)


async def test_checks_and_reviews_are_idempotent(pool: AsyncConnectionPool[Any]) -> None:
    """A replayed check returns the first stored one; the first review of a card wins."""
    kyc = compliance_rules.check_kyc(cm.DEFAULT_POLICY, "Accepted")
    later = compliance_rules.check_kyc(cm.DEFAULT_POLICY, "Rejected")
    key = f"card-issuance/ns/c/{uuid.uuid4()}/g1/Kyc"
    subject = compliance_store.CheckSubject(key, "CardIssuance", "ns/c", "u1", "builtin/default")
    async with pool.connection() as conn:
        first = await compliance_store.record(conn, subject, kyc)
        again = await compliance_store.record(conn, subject, later)
        await conn.commit()
        card_uid = str(uuid.uuid4())
        review: dict[str, Any] = {
            "card": "ns/c",
            "card_uid": card_uid,
            "reviewer": "ana@example.com",
            "comment": "documents checked",
        }
        one = await compliance_store.record_review(
            conn,
            compliance_store.NewReview(
                review="ns/r1", review_uid="r1", decision="Approve", **review
            ),
        )
        two = await compliance_store.record_review(
            conn,
            compliance_store.NewReview(
                review="ns/r2", review_uid="r2", decision="Reject", **review
            ),
        )
        found = await compliance_store.find_review(conn, card_uid)
    assert (again.id, again.replayed, again.check.outcome) == (first.id, True, cm.Outcome.CLEAR)
    assert again.check.reason == "KycAccepted"
    assert two == one
    assert found == one
    assert one.review_uid == "r1"


MINIMAL_ROWS = {
    "risk_assessments": "INSERT INTO risk_assessments (idempotency_key, subject_kind, subject,"
    " policy, decision, score) VALUES (%s, 'Posting', 'ns/p', 'builtin/default', 'Approve', 0)",
    "compliance_checks": "INSERT INTO compliance_checks (idempotency_key, subject_kind, subject,"
    " policy, check_kind, outcome, reason) VALUES (%s, 'Posting', 'ns/p', 'builtin/default',"
    " 'Aml', 'Clear', 'BelowThresholds')",
    "compliance_alerts": "INSERT INTO compliance_alerts (alert_kind, card, business_day,"
    " currency, total_minor, posting_count, threshold_minor, policy, posting_key, event_id)"
    " VALUES ('DailyThreshold', 'ns/' || %s, '2025-01-15', 'USD', 1, 1, 1, 'builtin/default',"
    " 'k', gen_random_uuid())",
    "card_reviews": "INSERT INTO card_reviews (card, card_uid, review, review_uid, decision,"
    " reviewer, comment) VALUES ('ns/c', %s, 'ns/r', 'r', 'Approve', 'a', 'c')",
}


@pytest.mark.parametrize("table", sorted(MINIMAL_ROWS))
def test_audit_tables_are_append_only(raw: psycopg.Connection[Any], table: str) -> None:
    """The database refuses UPDATE, DELETE and TRUNCATE of decisions, whoever asks."""
    raw.execute(MINIMAL_ROWS[table], (uuid.uuid4().hex,))
    for statement in (
        f"UPDATE {table} SET created_at = now()",
        f"DELETE FROM {table}",
        f"TRUNCATE {table}",
    ):
        with pytest.raises(errors.RestrictViolation, match="append-only"):
            raw.execute(statement)
