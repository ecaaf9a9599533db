"""The ledger engine and the schema's own guards against a real PostgreSQL.

Each test opens its own cards (unique names), so tests share one migrated database and still
prove their point independently. Raw-SQL tests bypass Python on purpose: they prove that the
DATABASE refuses what would break an invariant, whatever client writes to it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from fintech_operator.ledger import engine, model, rules

pytestmark = pytest.mark.integration

K = model.PostingKind
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SETTLEMENT_USD = "system:network_settlement:USD"
CONCURRENCY = 20


@pytest.fixture(scope="module")
async def pool(migrated_database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    # More connections than concurrent postings, so the races below are real races.
    ledger_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        migrated_database_url, min_size=2, max_size=CONCURRENCY + 4, open=False, timeout=30
    )
    await ledger_pool.open(wait=True, timeout=30)
    yield ledger_pool
    await ledger_pool.close()


async def new_card(pool: AsyncConnectionPool[Any], currency: str = "USD") -> str:
    async with pool.connection() as conn:
        account = await engine.open_card_account(conn, "ns", f"c-{uuid.uuid4().hex[:10]}", currency)
    return account.code


def request(
    card: str,
    amount_minor: int,
    kind: model.PostingKind = K.PURCHASE,
    *,
    key: str | None = None,
    guard: model.SpendGuard | None = None,
    events: tuple[model.OutboxEvent, ...] = (),
    currency: str = "USD",
) -> model.PostingRequest:
    return model.PostingRequest(
        idempotency_key=key or f"k-{uuid.uuid4()}",
        kind=kind,
        lines=rules.lines_for(kind, card, amount_minor, currency),
        occurred_at=T0,
        reference="ref",
        events=events,
        guard=guard,
    )


def event(card: str) -> model.OutboxEvent:
    return model.OutboxEvent(uuid.uuid4(), "postings", card, {"type": "posting.posted"})


async def card_balance(pool: AsyncConnectionPool[Any], code: str) -> model.Balance:
    async with pool.connection() as conn:
        return await engine.balance(conn, code)


async def gather(*calls: Awaitable[model.PostResult]) -> list[model.PostResult | BaseException]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


def outbox_ids(raw: psycopg.Connection[Any], events: tuple[model.OutboxEvent, ...]) -> set[Any]:
    ids = [e.event_id for e in events]
    rows = raw.execute("SELECT event_id FROM outbox WHERE event_id = ANY(%s)", (ids,)).fetchall()
    return {row[0] for row in rows}


# --- Posting ------------------------------------------------------------------------------------


async def test_balanced_post_moves_both_balances(pool: AsyncConnectionPool[Any]) -> None:
    """A purchase debits the card and credits settlement in one journal; a payment pays it."""
    card = await new_card(pool)
    posted = await engine.post(pool, request(card, 1250))
    assert not posted.replayed
    assert posted.journal.kind is K.PURCHASE
    assert sorted(posted.journal.lines, key=lambda x: x.direction) == [
        model.Line(SETTLEMENT_USD, model.Direction.CREDIT, 1250, "USD"),
        model.Line(card, model.Direction.DEBIT, 1250, "USD"),
    ]
    assert (await card_balance(pool, card)).balance_minor == 1250
    await engine.post(pool, request(card, 1000, K.PAYMENT))
    after = await card_balance(pool, card)
    assert (after.debits_minor, after.credits_minor, after.entry_count) == (1250, 1000, 2)
    assert after.balance_minor == 250
    async with pool.connection() as conn:
        statement = await engine.entries(conn, card, limit=10)
        older = await engine.entries(conn, card, limit=10, before_id=statement[0].id)
        settlement = await engine.account(conn, SETTLEMENT_USD)
    assert [(e.journal_kind, e.direction, e.amount_minor) for e in statement] == [
        (K.PAYMENT, model.Direction.CREDIT, 1000),
        (K.PURCHASE, model.Direction.DEBIT, 1250),
    ]
    assert older == statement[1:]
    # The settlement account was opened on demand, credit-normal.
    assert settlement.normal_balance is model.Direction.CREDIT


async def test_every_kind_posts_and_balances(pool: AsyncConnectionPool[Any]) -> None:
    """Each posting rule is accepted by the database, and the card ends where the rules say."""
    card = await new_card(pool, "EUR")
    for kind, amount in [(K.PURCHASE, 900), (K.REFUND, 100), (K.FEE, 50), (K.ADJUSTMENT, 5)]:
        await engine.post(pool, request(card, amount, kind, currency="EUR"))
    await engine.post(pool, request(card, 800, K.PAYMENT, currency="EUR"))
    assert (await card_balance(pool, card)).balance_minor == 900 - 100 + 50 + 5 - 800


async def test_explicit_lines_post_a_credit_adjustment(pool: AsyncConnectionPool[Any]) -> None:
    """An adjustment in the cardholder's favour is expressed with explicit balanced lines."""
    card = await new_card(pool)
    lines = rules.validate_explicit(
        [
            model.Line("system:adjustments:USD", model.Direction.DEBIT, 300, "USD"),
            model.Line(card, model.Direction.CREDIT, 300, "USD"),
        ]
    )
    plain = request(card, 1)
    explicit = model.PostingRequest(plain.idempotency_key, K.ADJUSTMENT, lines, T0)
    await engine.post(pool, explicit)
    assert (await card_balance(pool, card)).balance_minor == -300


async def test_account_checks_refuse_before_writing(pool: AsyncConnectionPool[Any]) -> None:
    """Unknown, closed and wrong-currency accounts are typed refusals, and nothing is written."""
    with pytest.raises(model.AccountNotFound):
        await engine.post(pool, request("card:ns/nobody:USD", 100))
    card = await new_card(pool)
    wrong = model.PostingRequest(
        f"k-{uuid.uuid4()}",
        K.PURCHASE,
        [
            model.Line(card, model.Direction.DEBIT, 100, "EUR"),
            model.Line("system:network_settlement:EUR", model.Direction.CREDIT, 100, "EUR"),
        ],
        T0,
    )
    with pytest.raises(model.CurrencyMismatch):
        await engine.post(pool, wrong)
    async with pool.connection() as conn:
        closed = await engine.close_account(conn, card)
        assert closed.status is model.AccountStatus.CLOSED
        assert (await engine.close_account(conn, card)).closed_at == closed.closed_at
    with pytest.raises(model.AccountClosed):
        await engine.post(pool, request(card, 100))
    assert (await card_balance(pool, card)).entry_count == 0
    # A late refund still reaches a closed card: closed accounts take credits only.
    refund = model.PostingRequest(
        f"k-{uuid.uuid4()}",
        K.REFUND,
        rules.lines_for(K.REFUND, card, 100, "USD"),
        T0,
    )
    await engine.post(pool, refund)
    assert (await card_balance(pool, card)).balance_minor == -100


async def test_accounts_open_idempotently_and_close_only_at_zero(
    pool: AsyncConnectionPool[Any],
) -> None:
    """Re-opening returns the same account; another shape is a conflict; closing needs zero."""
    card = await new_card(pool)
    async with pool.connection() as conn:
        first = await engine.account(conn, card)
        again = await engine.open_account(
            conn, card, "USD", model.AccountKind.CARD, model.Direction.DEBIT
        )
        assert again == first
        with pytest.raises(model.AccountConflict):
            await engine.open_account(
                conn, card, "USD", model.AccountKind.CARD, model.Direction.CREDIT
            )
        with pytest.raises(model.InvalidRequest):
            await engine.open_account(
                conn,
                card.replace(":USD", ":EUR"),
                "USD",
                model.AccountKind.CARD,
                model.Direction.DEBIT,
            )
        opened = await engine.ensure_system_accounts(conn, "JPY")
        assert {a.code for a in opened} == {
            model.system_account_code(s, "JPY") for s in model.SystemAccount
        }
        with pytest.raises(model.InvalidRequest):
            await engine.close_account(conn, "system:cash:JPY")
    await engine.post(pool, request(card, 100))
    async with pool.connection() as conn:
        with pytest.raises(model.AccountNotEmpty):
            await engine.close_account(conn, card)


# --- Idempotency --------------------------------------------------------------------------------


async def test_same_key_same_request_replays(pool: AsyncConnectionPool[Any]) -> None:
    """Invariant 3: the second post returns the first journal, flagged, and moves nothing."""
    card = await new_card(pool)
    first = await engine.post(pool, request(card, 700, key=f"replay-{card}"))
    second = await engine.post(pool, request(card, 700, key=f"replay-{card}"))
    assert second.replayed
    assert second.journal == first.journal
    assert (await card_balance(pool, card)).entry_count == 1


async def test_same_key_different_request_conflicts(pool: AsyncConnectionPool[Any]) -> None:
    """Invariant 3: a reused key with another amount is refused, not silently replayed."""
    card = await new_card(pool)
    await engine.post(pool, request(card, 700, key=f"conflict-{card}"))
    with pytest.raises(model.IdempotencyConflict):
        await engine.post(pool, request(card, 701, key=f"conflict-{card}"))
    assert (await card_balance(pool, card)).debits_minor == 700


async def test_concurrent_same_key_posts_exactly_once(pool: AsyncConnectionPool[Any]) -> None:
    """Racers with one key: one posts, the others replay it or, if they differ, conflict."""
    card = await new_card(pool)
    key = f"race-{card}"
    results = await gather(*(engine.post(pool, request(card, 500, key=key)) for _ in range(10)))
    assert all(isinstance(r, model.PostResult) for r in results), results
    posted = [r for r in results if isinstance(r, model.PostResult)]
    assert sum(not r.replayed for r in posted) == 1
    assert len({r.journal.id for r in posted}) == 1
    other = await new_card(pool)  # Different accounts: no shared lock, the key decides.
    mixed = await gather(
        *(
            engine.post(pool, request(card if i % 2 else other, 1, key=f"mix-{card}"))
            for i in range(8)
        )
    )
    winners = [r for r in mixed if isinstance(r, model.PostResult)]
    losers = [r for r in mixed if isinstance(r, model.IdempotencyConflict)]
    assert len(winners) + len(losers) == len(mixed)
    assert len({r.journal.id for r in winners}) == 1
    assert losers
    assert (await card_balance(pool, card)).debits_minor in {500, 501}


# --- Spend limits (Invariant 8) -----------------------------------------------------------------


async def test_concurrent_postings_never_overspend(pool: AsyncConnectionPool[Any]) -> None:
    """20 concurrent purchases against one limit: exactly floor(limit / amount) succeed."""
    card = await new_card(pool)
    limit_minor, amount_minor = 1000, 300
    guard = model.SpendGuard(card, limit_minor, model.SpendInterval.DAILY, datetime.now(UTC))
    results = await gather(
        *(engine.post(pool, request(card, amount_minor, guard=guard)) for _ in range(CONCURRENCY))
    )
    posted = [r for r in results if isinstance(r, model.PostResult)]
    refused = [r for r in results if isinstance(r, model.SpendLimitExceeded)]
    assert len(posted) == limit_minor // amount_minor
    assert len(refused) == CONCURRENCY - len(posted), results
    assert (await card_balance(pool, card)).debits_minor == len(posted) * amount_minor


async def test_spend_windows_and_replays(pool: AsyncConnectionPool[Any]) -> None:
    """Per-transaction caps one posting; a replay is never refused by a limit it used up."""
    card = await new_card(pool)
    now = datetime.now(UTC)
    per_tx = model.SpendGuard(card, 500, model.SpendInterval.PER_TRANSACTION, now)
    with pytest.raises(model.SpendLimitExceeded):
        await engine.post(pool, request(card, 501, guard=per_tx))
    await engine.post(pool, request(card, 500, guard=per_tx))
    await engine.post(pool, request(card, 500, guard=per_tx))
    lifetime = model.SpendGuard(card, 1500, model.SpendInterval.LIFETIME, now)
    first = await engine.post(pool, request(card, 500, key=f"full-{card}", guard=lifetime))
    again = await engine.post(pool, request(card, 500, key=f"full-{card}", guard=lifetime))
    assert again.replayed
    assert again.journal.id == first.journal.id
    with pytest.raises(model.SpendLimitExceeded) as refused:
        await engine.post(pool, request(card, 1, guard=lifetime))
    assert refused.value.spent_minor == 1500
    # A window that starts tomorrow sees none of today's spend; refunds do not restore a limit.
    tomorrow = model.SpendGuard(card, 500, model.SpendInterval.DAILY, now + timedelta(days=1))
    await engine.post(pool, request(card, 500, guard=tomorrow))
    await engine.post(pool, request(card, 500, K.REFUND))
    with pytest.raises(model.SpendLimitExceeded):
        await engine.post(pool, request(card, 1, guard=lifetime))


# --- Reversals ----------------------------------------------------------------------------------


async def test_reversal_once_then_already_reversed(pool: AsyncConnectionPool[Any]) -> None:
    """A journal is reversed once; the reversal replays by key; a second key is refused."""
    card = await new_card(pool)
    original = (await engine.post(pool, request(card, 800))).journal
    reversal = await engine.reverse(
        pool, model.ReversalRequest(f"rev-{card}", original.id, "duplicate charge")
    )
    assert reversal.journal.kind is K.REVERSAL
    assert reversal.journal.reverses_journal_id == original.id
    assert sorted(reversal.journal.lines, key=str) == sorted(
        rules.reversal_lines(original.lines), key=str
    )
    assert (await card_balance(pool, card)).balance_minor == 0
    replay = await engine.reverse(
        pool, model.ReversalRequest(f"rev-{card}", original.id, "duplicate charge")
    )
    assert replay.replayed
    assert replay.journal.id == reversal.journal.id
    with pytest.raises(model.IdempotencyConflict):
        await engine.reverse(
            pool, model.ReversalRequest(f"rev-{card}", original.id, "another reason")
        )
    with pytest.raises(model.AlreadyReversed):
        await engine.reverse(
            pool, model.ReversalRequest(f"rev2-{card}", original.id, "duplicate charge")
        )
    with pytest.raises(model.NotReversible):
        await engine.reverse(
            pool, model.ReversalRequest(f"rev3-{card}", reversal.journal.id, "undo")
        )
    with pytest.raises(model.JournalNotFound):
        await engine.reverse(pool, model.ReversalRequest(f"rev4-{card}", 2**62, "nothing"))


async def test_concurrent_reversals_reverse_once(pool: AsyncConnectionPool[Any]) -> None:
    """Racing reversals with different keys: one wins, the others are AlreadyReversed."""
    card = await new_card(pool)
    original = (await engine.post(pool, request(card, 800))).journal
    results = await gather(
        *(
            engine.reverse(pool, model.ReversalRequest(f"r{i}-{card}", original.id, "race"))
            for i in range(8)
        )
    )
    assert sum(isinstance(r, model.PostResult) for r in results) == 1
    assert sum(isinstance(r, model.AlreadyReversed) for r in results) == 7, results


async def test_a_reversed_purchase_frees_its_limit(pool: AsyncConnectionPool[Any]) -> None:
    """A reversed purchase never happened, so it no longer counts against the limit."""
    card = await new_card(pool)
    guard = model.SpendGuard(card, 1000, model.SpendInterval.DAILY, datetime.now(UTC))
    original = (await engine.post(pool, request(card, 1000, guard=guard))).journal
    with pytest.raises(model.SpendLimitExceeded):
        await engine.post(pool, request(card, 1, guard=guard))
    await engine.reverse(pool, model.ReversalRequest(f"free-{card}", original.id, "void"))
    await engine.post(pool, request(card, 1000, guard=guard))


# --- Outbox and the risk hook -------------------------------------------------------------------


async def test_outbox_rows_commit_with_the_journal_only(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Events are written in the posting's transaction, and not at all when it is refused."""
    card = await new_card(pool)
    events = (event(card), event(card))
    posted = await engine.post(pool, request(card, 100, events=events))
    rows = raw.execute(
        "SELECT event_id, journal_id, topic, key, payload, published_at FROM outbox"
        " WHERE event_id = ANY(%s) ORDER BY id",
        ([e.event_id for e in events],),
    ).fetchall()
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in rows] == [
        (e.event_id, posted.journal.id, "postings", card, None) for e in events
    ]
    assert rows[0][4] == {"type": "posting.posted"}
    replay_events = (event(card),)
    replay = request(card, 100, key=posted.journal.idempotency_key, events=replay_events)
    assert (await engine.post(pool, replay)).replayed
    assert outbox_ids(raw, replay_events) == set()  # A replay writes no second event.
    guard = model.SpendGuard(card, 100, model.SpendInterval.DAILY, datetime.now(UTC))
    refused_events = (event(card),)
    with pytest.raises(model.SpendLimitExceeded):
        await engine.post(pool, request(card, 1, guard=guard, events=refused_events))
    assert outbox_ids(raw, refused_events) == set()
    reused = (events[0],)
    with pytest.raises(model.InvalidRequest, match="event id"):
        await engine.post(pool, request(card, 5, events=reused))
    assert (await card_balance(pool, card)).debits_minor == 100


async def test_check_hook_runs_inside_the_transaction(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """The risk hook sees the locked card and can refuse; a refusal writes nothing."""
    card = await new_card(pool)
    seen: list[int] = []

    async def velocity(conn: psycopg.AsyncConnection[Any], req: model.PostingRequest) -> None:
        # Reads in the posting's transaction: the card row is locked by it (no wait here).
        cur = await conn.execute(
            # A card account's one balance row (migration 0058: account_balances is their view).
            "SELECT entry_count FROM account_balance_rows b JOIN accounts a ON a.id = b.account_id"
            " WHERE a.code = %s AND b.stripe = 0 FOR NO KEY UPDATE NOWAIT",
            (card,),
        )
        row = await cur.fetchone()
        assert row is not None
        seen.append(int(row[0]))
        if row[0] >= 2:
            raise model.SpendLimitExceeded(
                "velocity", limit_minor=2, spent_minor=int(row[0]), requested_minor=1
            )

    for _ in range(2):
        await engine.post(pool, request(card, 10), check=velocity)
    refused = (event(card),)
    with pytest.raises(model.SpendLimitExceeded, match="velocity"):
        await engine.post(pool, request(card, 10, events=refused), check=velocity)
    assert seen == [0, 1, 2]
    assert outbox_ids(raw, refused) == set()
    assert (await card_balance(pool, card)).entry_count == 2


async def test_mixed_concurrent_traffic_does_not_deadlock(pool: AsyncConnectionPool[Any]) -> None:
    """Purchases, refunds and payments on a few cards at once all commit, in any interleaving."""
    cards = [await new_card(pool) for _ in range(3)]
    kinds = [K.PURCHASE, K.REFUND, K.PAYMENT, K.FEE]
    results = await gather(
        *(engine.post(pool, request(cards[i % 3], 10 + i, kinds[i % 4])) for i in range(40))
    )
    assert all(isinstance(r, model.PostResult) for r in results), results


async def test_deadlocks_are_retried(pool: AsyncConnectionPool[Any]) -> None:
    """Two hooks that lock each other's card deadlock once; the victim is retried and posts."""
    a, b = await new_card(pool), await new_card(pool)
    both_locked = asyncio.Barrier(2)
    attempts = {a: 0, b: 0}

    def crossing(mine: str, other: str) -> engine.Check:
        async def check(conn: psycopg.AsyncConnection[Any], _: model.PostingRequest) -> None:
            attempts[mine] += 1
            if attempts[mine] == 1:  # Only the first attempts meet, each holding its own card.
                await asyncio.wait_for(both_locked.wait(), timeout=10)
            await conn.execute("SELECT 1 FROM accounts WHERE code = %s FOR NO KEY UPDATE", (other,))

        return check

    results = await gather(
        engine.post(pool, request(a, 1), check=crossing(a, b)),
        engine.post(pool, request(b, 1), check=crossing(b, a)),
    )
    assert all(isinstance(r, model.PostResult) for r in results), results
    assert sorted(attempts.values()) == [1, 2]


async def test_a_held_lock_times_out_as_a_transient_error(
    pool: AsyncConnectionPool[Any], migrated_database_url: str
) -> None:
    """Every wait is bounded: a card locked elsewhere fails fast with a psycopg error."""
    card = await new_card(pool)
    async with await psycopg.AsyncConnection.connect(migrated_database_url) as holder:
        await holder.execute("SELECT 1 FROM accounts WHERE code = %s FOR UPDATE", (card,))
        with pytest.raises(errors.LockNotAvailable):
            await engine.post(pool, request(card, 1), limits=engine.Limits(lock_timeout_ms=100))
    assert (await engine.post(pool, request(card, 1))).journal.id > 0


# --- Whole-ledger checks ------------------------------------------------------------------------


async def test_trial_balance_is_zero_and_nothing_drifts(pool: AsyncConnectionPool[Any]) -> None:
    """Invariant 1 over the whole ledger; running balances equal the sums of their entries."""
    await engine.post(pool, request(await new_card(pool), 1))
    async with pool.connection() as conn:
        trial = await engine.trial_balance(conn)
        drift = await engine.balance_drift(conn)
    assert trial
    assert all(debits == credits for debits, credits in trial.values()), trial
    assert drift == []


# --- The database's own guards (raw SQL, no engine) ---------------------------------------------


def raw_account(raw: psycopg.Connection[Any], currency: str = "USD") -> int:
    code = f"card:raw/{uuid.uuid4().hex[:10]}:{currency}"
    row = raw.execute(
        "INSERT INTO accounts (code, kind, normal_balance, currency)"
        " VALUES (%s, 'card', 'debit', %s) RETURNING id",
        (code, currency),
    ).fetchone()
    assert row is not None
    return int(row[0])


def raw_journal(conn: psycopg.Connection[Any], lines: list[tuple[int, str, int, str]]) -> int:
    """Insert a journal and its entries in the caller's transaction, bypassing Python checks."""
    row = conn.execute(
        "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at)"
        " VALUES (%s, %s, 'Adjustment', now()) RETURNING id",
        (f"raw-{uuid.uuid4()}", "0" * 64),
    ).fetchone()
    assert row is not None
    for account_id, direction, amount_minor, currency in lines:
        conn.execute(
            "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
            " VALUES (%s, %s, %s, %s, %s)",
            (row[0], account_id, direction, amount_minor, currency),
        )
    return int(row[0])


def commit_raw(url: str, lines: list[tuple[int, str, int, str]]) -> int:
    conn = psycopg.connect(url)
    try:
        journal_id = raw_journal(conn, lines)
        conn.commit()  # The deferred balance check runs here.
        return journal_id
    finally:
        conn.close()


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param([("a", "debit", 100), ("b", "credit", 99)], id="unbalanced"),
        pytest.param([("a", "debit", 100)], id="single-entry"),
        pytest.param([], id="no-entries"),
        pytest.param([("a", "debit", 100), ("b", "debit", 100)], id="two-debits"),
    ],
)
def test_database_refuses_unbalanced_journals(
    migrated_database_url: str, raw: psycopg.Connection[Any], shape: list[tuple[str, str, int]]
) -> None:
    """Invariant 1 in the database: the commit fails, so the journal never exists."""
    ids = {"a": raw_account(raw), "b": raw_account(raw)}
    with pytest.raises(errors.CheckViolation, match=r"balance|at least two"):
        commit_raw(migrated_database_url, [(ids[k], d, n, "USD") for k, d, n in shape])
    assert raw.execute(
        "SELECT count(*) FROM entries WHERE account_id = ANY(%s)", (list(ids.values()),)
    ).fetchone() == (0,)


def test_database_accepts_a_balanced_raw_journal_and_moves_balances(
    migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """The same path with balanced lines commits, and the trigger moves both balances."""
    a, b = raw_account(raw), raw_account(raw)
    commit_raw(migrated_database_url, [(a, "debit", 40, "USD"), (b, "credit", 40, "USD")])
    rows = raw.execute(
        "SELECT account_id, debits_minor, credits_minor, entry_count FROM account_balances"
        " WHERE account_id = ANY(%s) ORDER BY account_id",
        ([a, b],),
    ).fetchall()
    assert rows == [(a, 40, 0, 1), (b, 0, 40, 1)]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE entries SET amount_minor = amount_minor + 1 WHERE journal_id = %(j)s",
        "DELETE FROM entries WHERE journal_id = %(j)s",
        "TRUNCATE entries CASCADE",
        "UPDATE journals SET reference = 'rewritten' WHERE id = %(j)s",
        "DELETE FROM journals WHERE id = %(j)s",
        "TRUNCATE journals CASCADE",
        "DELETE FROM accounts WHERE id = %(a)s",
        "UPDATE accounts SET currency = 'EUR' WHERE id = %(a)s",
        "UPDATE account_balances SET debits_minor = 0 WHERE account_id = %(a)s",
        "DELETE FROM account_balances WHERE account_id = %(a)s",
    ],
)
def test_database_refuses_rewriting_history(
    migrated_database_url: str, raw: psycopg.Connection[Any], statement: str
) -> None:
    """Invariant 2 in the database: committed entries, journals and balances never change."""
    a, b = raw_account(raw), raw_account(raw)
    journal_id = commit_raw(
        migrated_database_url, [(a, "debit", 5, "USD"), (b, "credit", 5, "USD")]
    )
    with pytest.raises(errors.RestrictViolation):
        raw.execute(statement, {"j": journal_id, "a": a})
    assert raw.execute(
        "SELECT count(*) FROM entries WHERE journal_id = %s", (journal_id,)
    ).fetchone() == (2,)


def test_database_refuses_entries_added_to_a_committed_journal(
    migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """A committed journal is final: even a balanced pair cannot be appended to it later."""
    a, b = raw_account(raw), raw_account(raw)
    journal_id = commit_raw(
        migrated_database_url, [(a, "debit", 5, "USD"), (b, "credit", 5, "USD")]
    )
    with pytest.raises(errors.RestrictViolation, match="committed earlier"):
        raw.execute(
            "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
            " VALUES (%s, %s, 'debit', 1, 'USD')",
            (journal_id, a),
        )


@pytest.mark.parametrize("amount_minor", [0, -5])
def test_database_refuses_non_positive_amounts(
    migrated_database_url: str, raw: psycopg.Connection[Any], amount_minor: int
) -> None:
    """Amounts are positive; direction carries the sign."""
    a, b = raw_account(raw), raw_account(raw)
    with pytest.raises(errors.CheckViolation, match="amount_minor"):
        commit_raw(
            migrated_database_url,
            [(a, "debit", amount_minor, "USD"), (b, "credit", amount_minor, "USD")],
        )


def test_database_refuses_an_entry_in_another_currency(
    migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """An entry's currency must be its account's, even when the journal balances."""
    usd, eur = raw_account(raw, "USD"), raw_account(raw, "EUR")
    with pytest.raises(errors.CheckViolation, match="differs from currency"):
        commit_raw(migrated_database_url, [(usd, "debit", 5, "EUR"), (eur, "credit", 5, "EUR")])


def test_database_refuses_entries_on_closed_accounts(
    migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """Closing is final, needs a zero balance, and a closed account takes no debits."""
    a, b, c = raw_account(raw), raw_account(raw), raw_account(raw)
    commit_raw(migrated_database_url, [(a, "debit", 5, "USD"), (b, "credit", 5, "USD")])
    with pytest.raises(errors.CheckViolation, match="non-zero balance"):
        raw.execute("UPDATE accounts SET status = 'closed', closed_at = now() WHERE id = %s", (a,))
    raw.execute("UPDATE accounts SET status = 'closed', closed_at = now() WHERE id = %s", (c,))
    with pytest.raises(errors.RestrictViolation, match="final"):
        raw.execute("UPDATE accounts SET status = 'open', closed_at = NULL WHERE id = %s", (c,))
    with pytest.raises(errors.CheckViolation, match="closed"):
        commit_raw(migrated_database_url, [(c, "debit", 5, "USD"), (b, "credit", 5, "USD")])
    # Credits (late refunds) are the one thing a closed account still takes.
    commit_raw(migrated_database_url, [(b, "debit", 5, "USD"), (c, "credit", 5, "USD")])


def test_database_refuses_a_reversal_that_does_not_mirror(
    migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """A balanced reversal of the wrong amount is still refused: reversals undo exactly."""
    a, b = raw_account(raw), raw_account(raw)
    journal_id = commit_raw(
        migrated_database_url, [(a, "debit", 5, "USD"), (b, "credit", 5, "USD")]
    )
    conn = psycopg.connect(migrated_database_url)
    try:
        row = conn.execute(
            "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at,"
            " reverses_journal_id) VALUES (%s, %s, 'Reversal', now(), %s) RETURNING id",
            (f"raw-{uuid.uuid4()}", "0" * 64, journal_id),
        ).fetchone()
        assert row is not None
        for account_id, direction in ((a, "credit"), (b, "debit")):
            conn.execute(
                "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
                " VALUES (%s, %s, %s, 4, 'USD')",
                (row[0], account_id, direction),
            )
        with pytest.raises(errors.CheckViolation, match="does not mirror"):
            conn.commit()
    finally:
        conn.close()


def test_database_refuses_a_second_reversal_and_outbox_rewrites(
    migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """UNIQUE(reverses_journal_id) holds without the engine; outbox rows only get published."""
    a, b = raw_account(raw), raw_account(raw)
    journal_id = commit_raw(
        migrated_database_url, [(a, "debit", 5, "USD"), (b, "credit", 5, "USD")]
    )
    insert = (
        "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at,"
        " reverses_journal_id) VALUES (%s, %s, 'Reversal', now(), %s) RETURNING id"
    )
    entry = (
        "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
        " VALUES (%s, %s, %s, 5, 'USD')"
    )
    with psycopg.connect(migrated_database_url) as conn:  # The first reversal commits.
        row = conn.execute(insert, (f"raw-{uuid.uuid4()}", "0" * 64, journal_id)).fetchone()
        assert row is not None
        conn.execute(entry, (row[0], a, "credit"))
        conn.execute(entry, (row[0], b, "debit"))
    with pytest.raises(errors.UniqueViolation), psycopg.connect(migrated_database_url) as conn:
        conn.execute(insert, (f"raw-{uuid.uuid4()}", "0" * 64, journal_id))
    event_id = uuid.uuid4()
    raw.execute(
        "INSERT INTO outbox (event_id, topic, key, payload) VALUES (%s, 't', 'k', '{}')",
        (event_id,),
    )
    raw.execute("UPDATE outbox SET published_at = now() WHERE event_id = %s", (event_id,))
    with pytest.raises(errors.RestrictViolation):
        raw.execute("UPDATE outbox SET payload = '{\"x\": 1}' WHERE event_id = %s", (event_id,))
