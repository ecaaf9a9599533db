"""Postings decided together in one transaction, against a real PostgreSQL (issue 14).

The posting queue's batch (``stores.PostingBatch``) runs several postings' decisions in ONE
transaction, each under its own savepoint: a rejected or failed posting rolls back alone and the
others commit, each with its own decision, and a batch run again is a replay. Migration 0058's
striped system balances: concurrent backends write different rows of the settlement account,
whose balance (the view) is still the sum of its entries, and the drift views stay empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.app import posting, posting_queue, stores
from fintech_operator.compliance import model as compliance_model
from fintech_operator.ledger import engine, model, rules
from fintech_operator.risk import model as risk_model

pytestmark = pytest.mark.integration

NS = "batch"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SETTLEMENT_USD = "system:network_settlement:USD"
LIMIT = {"amount": 1_000, "interval": "PerTransaction"}


@pytest.fixture(scope="module")
async def pool(migrated_database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    ledger_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        migrated_database_url, min_size=1, max_size=8, open=False, timeout=30
    )
    await ledger_pool.open(wait=True, timeout=30)
    yield ledger_pool
    await ledger_pool.close()


async def new_card(pool: AsyncConnectionPool[Any]) -> tuple[str, str]:
    name = f"c-{uuid.uuid4().hex[:10]}"
    async with pool.connection() as conn:
        account = await engine.open_card_account(conn, NS, name, "USD")
    return name, account.code


def purchase(card: tuple[str, str], amount_minor: int) -> posting.Post:
    name, code = card
    ref = posting.PostingRef(NS, f"p-{uuid.uuid4().hex[:10]}", str(uuid.uuid4()), T0)
    spec = api.PostingSpec.model_validate(
        {"card": name, "type": "Purchase", "amount": amount_minor, "currency": "USD"}
    )
    return posting.Post(
        posting=ref, spec=spec, card=posting.CardView("Active", code, "USD", spend_limit=LIMIT),
        product=posting.ProductView(), risk_policy=risk_model.DEFAULT_POLICY,
        compliance_policy=compliance_model.DEFAULT_POLICY, attempt=0, attempts_max=30,
    )  # fmt: skip


def steps(commands: list[posting.Post]) -> list[posting_queue.Step]:
    return [functools.partial(posting.decide, command) for command in commands]


async def journal_of(pool: AsyncConnectionPool[Any], command: posting.Post) -> model.Journal | None:
    async with pool.connection() as conn:
        return await engine.journal_by_key(conn, f"{NS}/{command.posting.name}", namespace=NS)


async def balance(pool: AsyncConnectionPool[Any], code: str) -> model.Balance:
    async with pool.connection() as conn:
        return await engine.balance(conn, code)


async def test_a_rejected_posting_rolls_back_alone_and_the_others_commit(
    pool: AsyncConnectionPool[Any],
) -> None:
    card = await new_card(pool)
    commands = [purchase(card, 300), purchase(card, 5_000), purchase(card, 200)]
    results = await stores.PostingBatch(pool).run(steps(commands))
    first, over, last = results
    assert isinstance(first, posting.Posted)
    assert isinstance(last, posting.Posted)
    assert isinstance(over, posting.Rejected)
    assert over.reason == api.PostingReason.SPEND_LIMIT_EXCEEDED
    assert await journal_of(pool, commands[1]) is None
    assert (await balance(pool, card[1])).balance_minor == 500
    # Run again (a restart re-deciding the same postings): the same journals, the same refusal.
    again = await stores.PostingBatch(pool).run(steps(commands))
    assert isinstance(again[0], posting.Replayed)
    assert again[0].journal.id == first.journal.id
    assert isinstance(again[1], posting.Rejected)
    assert isinstance(again[2], posting.Replayed)
    assert again[2].journal.id == last.journal.id
    assert (await balance(pool, card[1])).balance_minor == 500


async def test_a_posting_that_fails_after_writing_leaves_nothing_and_spares_the_others(
    pool: AsyncConnectionPool[Any],
) -> None:
    """Its savepoint is rolled back: the journal it wrote is gone, the batch still commits."""
    card = await new_card(pool)
    ok, broken = purchase(card, 100), purchase(card, 200)

    async def fails_after_posting(ledger: posting.PostingLedger) -> posting.Outcome:
        outcome = await posting.decide(broken, ledger)
        assert isinstance(outcome, posting.Posted)
        raise RuntimeError("lost after writing")

    results = await stores.PostingBatch(pool).run([fails_after_posting, *steps([ok])])
    assert isinstance(results[0], RuntimeError)
    assert isinstance(results[1], posting.Posted)
    assert await journal_of(pool, broken) is None
    assert (await balance(pool, card[1])).balance_minor == 100


async def test_a_reversal_in_the_same_batch_sees_the_posting_before_it(
    pool: AsyncConnectionPool[Any],
) -> None:
    card = await new_card(pool)
    original = purchase(card, 700)
    [posted] = await stores.PostingBatch(pool).run(steps([original]))
    assert isinstance(posted, posting.Posted)
    spec = api.PostingSpec.model_validate(
        {"card": card[0], "type": "Refund", "amount": 700, "currency": "USD",
         "reverses": original.posting.name}
    )  # fmt: skip
    reverse = posting.Reverse(
        posting.PostingRef(NS, f"r-{uuid.uuid4().hex[:8]}", None, T0), spec,
        posting.CardView("Active", card[1], "USD"),
        posting.Target(exists=True, journal_id=posted.journal.id), attempt=0, attempts_max=30,
    )  # fmt: skip
    [reversed_, replayed] = await stores.PostingBatch(pool).run(
        [functools.partial(posting.decide, reverse), functools.partial(posting.decide, reverse)]
    )
    assert isinstance(reversed_, posting.Posted)
    assert reversed_.journal.reverses_journal_id == posted.journal.id
    assert isinstance(replayed, posting.Replayed)
    assert replayed.journal.id == reversed_.journal.id
    assert (await balance(pool, card[1])).balance_minor == 0


async def test_the_queue_on_the_real_ledger_keeps_each_cards_order(
    pool: AsyncConnectionPool[Any],
) -> None:
    cards = [await new_card(pool) for _ in range(3)]
    commands = [purchase(cards[i % 3], 10 + i) for i in range(30)]
    queue = posting_queue.PostingQueue(stores.PostingBatch(pool), posting_queue.Limits(3, 4))
    queue.start()
    try:
        outcomes = await asyncio.gather(
            *(queue.submit(command.spec.card, command) for command in commands)
        )
    finally:
        await queue.stop()
    ids = [outcome.journal.id for outcome in outcomes if isinstance(outcome, posting.Posted)]
    assert len(ids) == 30
    for i in range(3):
        mine = ids[i::3]
        assert mine == sorted(mine)  # journal ids grow in the order each card's were submitted
        assert (await balance(pool, cards[i][1])).balance_minor == sum(range(10 + i, 40, 3))


async def test_concurrent_backends_write_different_stripes_that_sum_to_the_entries(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """Two backends whose pids differ modulo 16 post to the settlement account at once: each
    moves its own stripe, and the account's balance is the sum of both, as its entries say."""
    conns: list[psycopg.AsyncConnection[Any]] = []
    lanes: set[int] = set()
    while len(lanes) < 2 and len(conns) < 20:
        conn = await psycopg.AsyncConnection.connect(migrated_database_url)
        conns.append(conn)
        lanes.add(conn.info.backend_pid % 16)
    assert len(lanes) == 2
    chosen = {conn.info.backend_pid % 16: conn for conn in conns}
    card = await new_card(pool)
    before = await balance(pool, SETTLEMENT_USD)
    try:
        async with asyncio.TaskGroup() as group:
            for lane, conn in chosen.items():
                group.create_task(_post_on(conn, card[1], 1_000 + lane))
    finally:
        for conn in conns:
            await conn.close()
    after = await balance(pool, SETTLEMENT_USD)
    assert after.credits_minor - before.credits_minor == sum(1_000 + lane for lane in chosen)
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT r.stripe, r.credits_minor FROM account_balance_rows r"
                " JOIN accounts a ON a.id = r.account_id WHERE a.code = %s",
                (SETTLEMENT_USD,),
            )
        ).fetchall()
        assert len(rows) == 16
        assert sum(credits for _, credits in rows) == after.credits_minor
        assert all(dict(rows)[lane] >= 1_000 + lane for lane in chosen)
        assert await engine.balance_drift(conn) == []
        card_rows = await (
            await conn.execute(
                "SELECT count(*) FROM account_balance_rows r JOIN accounts a"
                " ON a.id = r.account_id WHERE a.code = %s",
                (card[1],),
            )
        ).fetchone()
        assert card_rows == (1,)


async def _post_on(conn: psycopg.AsyncConnection[Any], code: str, amount_minor: int) -> None:
    request = model.PostingRequest(
        idempotency_key=f"k-{uuid.uuid4()}",
        kind=model.PostingKind.PURCHASE,
        lines=rules.lines_for(model.PostingKind.PURCHASE, code, amount_minor, "USD"),
        occurred_at=T0,
        namespace=NS,
    )
    async with conn.transaction():
        await engine.post_nested(conn, request)


async def test_post_nested_outside_a_transaction_is_refused(
    pool: AsyncConnectionPool[Any],
) -> None:
    card = await new_card(pool)
    request = model.PostingRequest(
        idempotency_key=f"k-{uuid.uuid4()}",
        kind=model.PostingKind.PURCHASE,
        lines=rules.lines_for(model.PostingKind.PURCHASE, card[1], 10, "USD"),
        occurred_at=T0,
        namespace=NS,
    )
    async with pool.connection() as conn:
        with pytest.raises(RuntimeError, match="inside the caller's transaction"):
            await engine.post_nested(conn, request)
        with pytest.raises(RuntimeError, match="inside the caller's transaction"):
            await engine.reverse_nested(conn, model.ReversalRequest("k", 1, "why"))


async def test_the_view_of_balances_and_the_drift_views_agree_after_the_batches(
    pool: AsyncConnectionPool[Any],
) -> None:
    async with pool.connection() as conn:
        assert await engine.balance_drift(conn) == []
        stripes = await (await conn.execute("SELECT * FROM ledger_balance_stripe_drift")).fetchall()
        assert stripes == []
        totals = await engine.trial_balance(conn)
    assert all(debits == credits for debits, credits in totals.values())


async def test_a_batch_whose_connection_dies_reports_nothing_decided(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """The first posting is Posted inside the transaction, then the backend is terminated (as a
    PostgreSQL crash would): the batch raises instead of handing back the first outcome, so no
    handler writes Posted for a journal that never committed."""
    card = await new_card(pool)
    first, second = purchase(card, 100), purchase(card, 200)

    async def dies(ledger: posting.PostingLedger) -> posting.Outcome:
        pid = cast(Any, ledger)._conn.info.backend_pid
        async with await psycopg.AsyncConnection.connect(migrated_database_url) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return await posting.decide(second, ledger)

    with pytest.raises(psycopg.OperationalError):
        await stores.PostingBatch(pool).run([*steps([first]), dies])
    assert await journal_of(pool, first) is None
    assert await journal_of(pool, second) is None


async def test_a_top_level_ledger_transaction_with_a_swallowed_error_is_not_committed(
    pool: AsyncConnectionPool[Any],
) -> None:
    """Any outermost ledger transaction, not only a batch: a posting made in it, then an error
    caught without a savepoint (the transaction is aborted), must raise at the block's end rather
    than let COMMIT quietly roll back while the caller believes the posting landed."""
    card = await new_card(pool)
    request = purchase(card, 300)

    async def swallow_an_error_after_posting() -> None:
        async with engine.in_transaction(pool) as conn:
            await posting.decide(request, stores._InTransaction(conn))
            # Swallowed on purpose, outside any savepoint: the transaction is now aborted.
            with contextlib.suppress(psycopg.errors.DivisionByZero):
                await conn.execute("SELECT 1 / 0")

    with pytest.raises(engine.TransactionAborted, match="INERROR, not open"):
        await swallow_an_error_after_posting()
    assert await journal_of(pool, request) is None
