"""A card account belongs to the card uid it was opened for, in real PostgreSQL.

The account code is derived from the card's name, which Kubernetes lets a new object reuse once
the old one is deleted. The engine records the uid and refuses another uid in the transaction
that would write the ``card.issued`` event; a retry of the same card gets its account back.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from fintech_operator.events import schema
from fintech_operator.ledger import engine, model

pytestmark = pytest.mark.integration

NOW = datetime.datetime(2026, 11, 29, 10, 0, tzinfo=datetime.UTC)


def issued_event(name: str, uid: str) -> model.OutboxEvent:
    return schema.CardIssued(
        namespace="shop",
        name=name,
        uid=uid,
        user_id="u1",
        product="standard",
        currency="USD",
        token="tok_" + "ab" * 16,
        last4="4242",
        state="Active",
        issued_at=NOW,
    ).outbox()


def outbox_count(url: str, event_id: uuid.UUID) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE event_id = %s", (event_id,))
        return int(row.fetchone()[0])  # type: ignore[index]


async def test_same_uid_gets_its_account_back_another_uid_is_refused(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """Opening twice for one uid returns the same account; another uid raises NameReused,
    naming the owner, and neither writes its event nor changes the account."""
    name, old, new = f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4()), str(uuid.uuid4())
    async with pool.connection() as conn:
        first = await engine.open_card_account(conn, "shop", name, "USD", card_uid=old)
        again = await engine.open_card_account(conn, "shop", name, "USD", card_uid=old)
        assert (again.id, again.metadata) == (first.id, {"card": f"shop/{name}", "uid": old})
        await engine.close_account(conn, first.code)
        refused = issued_event(name, new)
        with pytest.raises(engine.AccountOwnedByAnotherCard) as caught:
            await engine.open_card_account(
                conn, "shop", name, "USD", events=[refused], card_uid=new
            )
        assert (caught.value.code, caught.value.owner_uid, caught.value.reason) == (
            first.code,
            old,
            "AccountOwnedByAnotherCard",
        )
        after = await engine.account(conn, first.code)
        owners = await engine.card_account_owners(conn, "shop", name)
    assert after.metadata["uid"] == old
    assert after.status is model.AccountStatus.CLOSED
    assert outbox_count(migrated_database_url, refused.event_id) == 0
    assert [(o.code, o.owner_uid) for o in owners] == [(first.code, old)]


async def test_owners_are_found_in_every_currency_and_only_for_the_name(
    pool: AsyncConnectionPool[Any],
) -> None:
    """card_account_owners lists the name's accounts in any currency, not a longer name's."""
    name, uid = f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    async with pool.connection() as conn:
        for card, currency in ((name, "USD"), (name, "EUR"), (f"{name}-2", "USD")):
            await engine.open_card_account(conn, "shop", card, currency, card_uid=uid)
        owners = await engine.card_account_owners(conn, "shop", name)
    assert sorted(o.code for o in owners) == [
        f"card:shop/{name}:EUR",
        f"card:shop/{name}:USD",
    ]
    assert {o.owner_uid for o in owners} == {uid}
