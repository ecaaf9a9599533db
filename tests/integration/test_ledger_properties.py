"""Property-based: any sequence of postings keeps the ledger sound (real PostgreSQL).

Hypothesis generates random sequences of purchases, refunds, payments, fees and
reversals over several cards and currencies. After each sequence the trial balance is
zero per currency, every stored balance equals the sum of its entries, and every card's
balance equals what a plain Python model of the same sequence predicts.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from fintech_operator.ledger import engine, model, rules

pytestmark = pytest.mark.integration

K = model.PostingKind
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CARDS = 3
CURRENCIES = ("USD", "EUR")
# The card receivable is debit-normal: these kinds raise (+1) or lower (-1) what is owed.
SIGN = {K.PURCHASE: 1, K.FEE: 1, K.ADJUSTMENT: 1, K.REFUND: -1, K.PAYMENT: -1}


@dataclass(frozen=True)
class Op:
    kind: str  # a posting kind, or "Reverse"
    card: int
    currency: str
    amount_minor: int
    target: int  # for "Reverse": index into the journals posted so far


operations = st.builds(
    Op,
    kind=st.sampled_from([*(k.value for k in SIGN), "Reverse"]),
    card=st.integers(0, CARDS - 1),
    currency=st.sampled_from(CURRENCIES),
    amount_minor=st.integers(1, 10**9),
    target=st.integers(0, 50),
)


async def _apply(database_url: str, ops: list[Op]) -> dict[str, int]:
    """Run ``ops`` through the engine; return the balance the model expects per account."""
    prefix = uuid.uuid4().hex[:8]
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, max_size=2,
                                                         open=False)  # fmt: skip
    await pool.open(wait=True, timeout=30)
    expected: dict[str, int] = {}
    posted: list[tuple[int, str, int]] = []  # (journal id, account, signed amount)
    reversed_ids: set[int] = set()
    try:
        async with pool.connection() as conn:
            for card in range(CARDS):
                for currency in CURRENCIES:
                    code = model.card_account_code(f"p{prefix}", f"c{card}", currency)
                    await engine.open_account(conn, code, currency, model.AccountKind.CARD,
                                              model.Direction.DEBIT)  # fmt: skip
                    expected[code] = 0
        for index, op in enumerate(ops):
            if op.kind == "Reverse":
                await _reverse(pool, prefix, index, op, posted, reversed_ids, expected)
                continue
            code = model.card_account_code(f"p{prefix}", f"c{op.card}", op.currency)
            request = model.PostingRequest(
                idempotency_key=f"{prefix}/{index}", kind=K(op.kind),
                lines=rules.lines_for(K(op.kind), code, op.amount_minor, op.currency),
                occurred_at=T0,
            )  # fmt: skip
            result = await engine.post(pool, request)
            signed = SIGN[K(op.kind)] * op.amount_minor
            expected[code] += signed
            posted.append((result.journal.id, code, signed))
    finally:
        await pool.close()
    return expected


async def _reverse(
    pool: AsyncConnectionPool[Any], prefix: str, index: int, op: Op,
    posted: list[tuple[int, str, int]], reversed_ids: set[int], expected: dict[str, int],
) -> None:  # fmt: skip
    if not posted:
        return
    journal_id, code, signed = posted[op.target % len(posted)]
    try:
        await engine.reverse(
            pool, model.ReversalRequest(f"{prefix}/{index}", journal_id, "property test")
        )
    except model.AlreadyReversed:
        assert journal_id in reversed_ids
        return
    assert journal_id not in reversed_ids
    reversed_ids.add(journal_id)
    expected[code] -= signed


async def _check(database_url: str, expected: dict[str, int]) -> None:
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(database_url, min_size=1, max_size=1,
                                                         open=False)  # fmt: skip
    await pool.open(wait=True, timeout=30)
    try:
        async with pool.connection() as conn:
            for currency, (debits, credits) in (await engine.trial_balance(conn)).items():
                assert debits == credits, f"trial balance off in {currency}"
            assert await engine.balance_drift(conn) == []
            for code, amount in expected.items():
                assert (await engine.balance(conn, code)).balance_minor == amount, code
    finally:
        await pool.close()


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(ops=st.lists(operations, min_size=1, max_size=30))
def test_random_sequences_keep_the_ledger_sound(migrated_database_url: str, ops: list[Op]) -> None:
    """Trial balance is zero, balances equal their entries, and cards match the model."""
    expected = asyncio.run(_apply(migrated_database_url, ops))
    asyncio.run(_check(migrated_database_url, expected))
