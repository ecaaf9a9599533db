"""Rewards on real-time authorizations, through the real relay, Kafka and rewards consumer:
points accrue on CAPTURED amounts only (never on a hold, a void or an expiry), a refund takes
back, and a redelivered batch changes nothing (issue 13, item 5)."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from fintech_operator.authorizations import contract
from fintech_operator.authorizations.store import PostgresStore
from fintech_operator.observability import metrics
from fintech_operator.rewards import consumer, store
from tests.conftest import RunningPlatform
from tests.integration.authz_support import (
    authorize_request,
    autocommit_pool,
    body,
    new_card,
)
from tests.integration.test_relay import (
    eventually,
    new_prefix,
    open_pool,
    post,
    running_relay,
    settings_for,
)
from tests.integration.test_rewards_consumer import processed, running_consumer

pytestmark = pytest.mark.integration

STORE = PostgresStore()


async def _capture(pool: AsyncConnectionPool[Any], auth: str, amount: int, final: bool) -> Any:
    async with pool.connection() as conn:
        return await STORE.capture(
            conn,
            auth,
            contract.CaptureRequest(id=f"c_{uuid.uuid4().hex}", amount=amount, final=final),
        )


async def test_points_accrue_on_captured_amounts_once_through_the_real_consumer(
    platform_running: RunningPlatform, migrated_database_url: str
) -> None:
    """Holds of 10,000 and 5,000 at 1%: 6,050 then 2,000 captured (final) earn 60 + 20; the
    voided hold earns nothing; a Refund of 3,000 takes 30 back. Running the consumer again from
    the start (a new group, every record redelivered) adds nothing."""
    settings = settings_for(platform_running, migrated_database_url, new_prefix())
    async with (
        autocommit_pool(migrated_database_url, 4) as fast,
        open_pool(migrated_database_url) as pool,
    ):
        card = await new_card(fast, limit_minor=100_000)
        held = body(await _authorize(fast, authorize_request(card, 10_000)))["authorization"]
        voided = body(await _authorize(fast, authorize_request(card, 5_000)))["authorization"]
        await _capture(fast, held, 6_050, False)
        await _capture(fast, held, 2_000, True)
        async with fast.connection() as conn:
            await STORE.void(conn, voided, contract.VoidRequest(id=f"v_{uuid.uuid4().hex}"))
        await post(pool, "shop", card.name, posting_type="Refund", amount_minor=3_000)
        async with running_relay(settings, pool), running_consumer(settings, "g-authz"):
            # The two captures and the refund are recorded; holds and the void are skipped.
            await eventually(
                "captures and refund applied", lambda: _at_least(migrated_database_url, 3)
            )
        async with pool.connection() as conn:
            assert await store.points_balance(conn, card.ref) == 60 + 20 - 30
            rows = await (
                await conn.execute(
                    "SELECT kind, points, amount_minor, posting IS NULL FROM rewards_ledger"
                    " WHERE card = %s ORDER BY points",
                    (card.ref,),
                )
            ).fetchall()
        assert rows == [
            ("reversal", -30, 3_000, False),
            ("accrual", 20, 2_000, True),
            ("accrual", 60, 6_050, True),
        ]
        # A new group reads both topics from the beginning: every record is redelivered. A
        # last capture and refund of the same card (same partitions, after the others) prove
        # it read past them; they alone are applied.
        last = body(await _authorize(fast, authorize_request(card, 1_000)))["authorization"]
        await _capture(fast, last, 1_000, True)
        await post(pool, "shop", card.name, posting_type="Refund", amount_minor=1_000)
        async with running_relay(settings, pool), running_consumer(settings, "g-authz-replay"):
            await eventually("replay caught up", lambda: _at_least(migrated_database_url, 5))
        async with pool.connection() as conn:
            assert await store.points_balance(conn, card.ref) == 50 + 10 - 10
            count = await (
                await conn.execute(
                    "SELECT count(*) FROM rewards_ledger WHERE card = %s", (card.ref,)
                )
            ).fetchone()
        assert count == (5,)


async def test_steps_that_earn_nothing_are_counted_and_logged_as_ignored(
    platform_running: RunningPlatform,
    migrated_database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two holds approved, one declined and one voided earn nothing: the real consumer reads
    those four records from Kafka, records none of them, and counts each as ``ignored`` in
    its batch summaries and in fintech_consumer_events_total; the capture behind them is the
    only one applied. Every record read is accounted for under one outcome."""
    settings = settings_for(platform_running, migrated_database_url, new_prefix())
    ignored_before = _consumed("ignored")
    async with (
        autocommit_pool(migrated_database_url, 4) as fast,
        open_pool(migrated_database_url) as pool,
    ):
        card = await new_card(fast, limit_minor=10_000)
        held = body(await _authorize(fast, authorize_request(card, 1_000)))["authorization"]
        voided = body(await _authorize(fast, authorize_request(card, 2_000)))["authorization"]
        declined = body(await _authorize(fast, authorize_request(card, 50_000)))
        assert not declined["approved"], declined
        async with fast.connection() as conn:
            await STORE.void(conn, voided, contract.VoidRequest(id=f"v_{uuid.uuid4().hex}"))
        # Last, on the same card (so the same partition): once it is applied, the consumer has
        # read the four steps before it.
        await _capture(fast, held, 1_000, True)
        before = await processed(migrated_database_url)
        with caplog.at_level(logging.INFO, logger=consumer.__name__):
            async with running_relay(settings, pool), running_consumer(settings, "g-ignored"):
                await eventually(
                    "the capture applied", lambda: _at_least(migrated_database_url, before + 1)
                )
        async with pool.connection() as conn:
            assert await store.points_balance(conn, card.ref) == 10
    batches = re.findall(
        r"batch of (\d+): (\d+) applied, (\d+) duplicates, (\d+) dead-lettered, (\d+) ignored",
        caplog.text,
    )
    assert batches, caplog.text
    read, applied, duplicates, dead, ignored = (sum(int(b[i]) for b in batches) for i in range(5))
    assert (read, applied, duplicates, dead, ignored) == (5, 1, 0, 0, 4)
    assert _consumed("ignored") == ignored_before + 4


def _consumed(outcome: str) -> float:
    labels = {"consumer": consumer.CONSUMER_NAME, "outcome": outcome}
    return metrics.sample("fintech_consumer_events_total", labels) or 0.0


async def _authorize(pool: AsyncConnectionPool[Any], req: contract.AuthorizeRequest) -> Any:
    async with pool.connection() as conn:
        return await STORE.authorize(conn, req)


async def _at_least(database_url: str, count: int) -> bool:
    return await processed(database_url) >= count
