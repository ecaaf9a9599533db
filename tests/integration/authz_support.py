"""Shared set-up of the authorization tests: a card issued in the ledger and mirrored for the
real-time gateway exactly as the operator's handlers do it (engine + authorizations.mirror)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.authorizations import contract, mirror
from fintech_operator.ledger import engine

NAMESPACE = "shop"


@dataclass(frozen=True)
class Card:
    name: str
    token: str
    account: str
    product: str

    @property
    def ref(self) -> str:
        return f"{NAMESPACE}/{self.name}"


async def new_card(
    pool: AsyncConnectionPool[Any],
    *,
    limit_minor: int | None = None,
    interval: str = "Daily",
    product_terms: dict[str, Any] | None = None,
) -> Card:
    """A fresh card with its own product (terms in API spelling, e.g. overCaptureBps)."""
    suffix = uuid.uuid4().hex[:10]
    name, product = f"card-{suffix}", f"prod-{suffix}"
    product_spec = api.CardProductSpec.model_validate(
        {"currency": "USD", "rewardsRateBps": 100, **(product_terms or {})}
    )
    spend = None if limit_minor is None else {"amount": limit_minor, "interval": interval}
    card_spec = api.CardSpec.model_validate(
        {
            "userId": "u1",
            "product": product,
            "holder": {"name": "Alice", "country": "US", "kycStatus": "Accepted"},
            **({"spendLimit": spend} if spend else {}),
        }
    )
    token = f"tok_{suffix}"
    async with pool.connection() as conn:
        account = await engine.open_card_account(conn, NAMESPACE, name, "USD")
        await mirror.put_product(conn, NAMESPACE, product, product_spec)
        assert await mirror.put_card(
            conn, namespace=NAMESPACE, name=name, account=account.code, token=token, spec=card_spec
        )
    return Card(name=name, token=token, account=account.code, product=product)


def authorize_request(
    card: Card, amount: int, *, request_id: str | None = None, mcc: str = "5812"
) -> contract.AuthorizeRequest:
    return contract.AuthorizeRequest(
        id=request_id or f"auth_{uuid.uuid4().hex}",
        card=card.token,
        amount=amount,
        currency="USD",
        merchant=contract.Merchant(name="Cafe", mcc=mcc, country="US"),
    )


def body(answer: contract.Answer) -> dict[str, Any]:
    parsed = orjson.loads(answer.body)
    assert isinstance(parsed, dict)
    return parsed


@asynccontextmanager
async def autocommit_pool(url: str, size: int) -> AsyncIterator[AsyncConnectionPool[Any]]:
    """Autocommit connections, as the gateway uses them: one round trip per request."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        url, min_size=size, max_size=size, open=False, timeout=60, kwargs={"autocommit": True}
    )
    await pool.open(wait=True, timeout=60)
    try:
        yield pool
    finally:
        await pool.close()


def held(raw: psycopg.Connection[Any], card: Card) -> int:
    row = raw.execute(
        "SELECT c.held_minor FROM authorization_cards c JOIN accounts a ON a.id = c.account_id"
        " WHERE a.code = %s",
        (card.account,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def posted(raw: psycopg.Connection[Any], card: Card) -> int:
    row = raw.execute(
        "SELECT b.debits_minor - b.credits_minor FROM account_balances b"
        " JOIN accounts a ON a.id = b.account_id WHERE a.code = %s",
        (card.account,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def trial_balance_zero(raw: psycopg.Connection[Any]) -> bool:
    rows = raw.execute(
        "SELECT a.currency, sum(b.debits_minor) - sum(b.credits_minor)"
        " FROM accounts a JOIN account_balances b ON b.account_id = a.id GROUP BY a.currency"
    ).fetchall()
    return all(int(net) == 0 for _, net in rows)


def hold_drift(raw: psycopg.Connection[Any]) -> list[Any]:
    return raw.execute("SELECT * FROM authorization_hold_drift").fetchall()
