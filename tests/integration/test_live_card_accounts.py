"""Which card accounts the orphan sweep looks at (``mirror.live_card_accounts``), on a real
PostgreSQL: the open accounts of a namespace that a card could still spend from, or that a
deletion retired and left open with a zero balance; never a deleted card's debt, never a
closed account, never another namespace's."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.authorizations import mirror
from fintech_operator.ledger import engine, model, rules

pytestmark = pytest.mark.integration

SPEC = api.CardSpec.model_validate(
    {"userId": "u1", "product": "std", "holder": {"name": "A", "country": "US"}}
)


async def _card(
    pool: AsyncConnectionPool[Any], namespace: str, name: str, *, mirrored: bool = True
) -> str:
    uid = f"uid-{name}"
    async with pool.connection() as conn:
        account = await engine.open_card_account(conn, namespace, name, "USD", card_uid=uid)
        if mirrored:
            assert await mirror.put_card(
                conn, namespace=namespace, name=name, account=account.code,
                token=f"tok_{namespace}_{name}", spec=SPEC,
            )  # fmt: skip
    return account.code


async def _purchase(pool: AsyncConnectionPool[Any], code: str) -> None:
    await engine.post(
        pool,
        model.PostingRequest(
            idempotency_key=f"k-{uuid.uuid4()}",
            kind=model.PostingKind.PURCHASE,
            lines=rules.lines_for(model.PostingKind.PURCHASE, code, 5_000, "USD"),
            occurred_at=datetime.datetime.now(datetime.UTC),
            reference=None,
        ),
    )


async def test_the_sweep_sees_the_accounts_a_card_could_still_spend_from(
    pool: AsyncConnectionPool[Any],
) -> None:
    ns, other = f"sw-{uuid.uuid4().hex[:8]}", f"sw-{uuid.uuid4().hex[:8]}"
    live = await _card(pool, ns, "live")
    unmirrored = await _card(pool, ns, "unmirrored", mirrored=False)
    debt = await _card(pool, ns, "debt")
    await _purchase(pool, debt)
    retired_empty = await _card(pool, ns, "retired-empty")
    closed = await _card(pool, ns, "closed")
    frozen = await _card(pool, ns, "frozen")
    await _card(pool, other, "live")
    async with pool.connection() as conn:
        for name in ("debt", "retired-empty"):
            await mirror.retire_card(conn, ns, name)
        await engine.close_account(conn, closed)
        await engine.set_frozen(conn, frozen, True)

        found = await mirror.live_card_accounts(conn, ns, 100)
        first_two = await mirror.live_card_accounts(conn, ns, 2)

    assert found == [
        mirror.LiveAccount(live, "live", "uid-live", False),
        mirror.LiveAccount(unmirrored, "unmirrored", "uid-unmirrored", False),
        mirror.LiveAccount(retired_empty, "retired-empty", "uid-retired-empty", False),
        mirror.LiveAccount(frozen, "frozen", "uid-frozen", True),
    ]
    assert first_two == found[:2]  # oldest first, at most the limit


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
async def test_the_sweep_refuses_a_limit_that_is_not_a_positive_int(
    pool: AsyncConnectionPool[Any], limit: Any
) -> None:
    async with pool.connection() as conn:
        with pytest.raises(ValueError, match="limit must be a positive int"):
            await mirror.live_card_accounts(conn, "ns", limit)
