"""The entries' two row triggers of migrations 0063 and 0065 on a real PostgreSQL: every refusal
and every running total of the six triggers they replace, proved against the schemas before.

Three databases of one server run the same script: ``before`` has every migration below 0063
(the six triggers), ``before_0065`` every one below 0065 (0063's two triggers and 0001's journal
triggers as they were), ``after`` has them all. Each refusal must carry the same SQLSTATE and
the same message in all, and the exact message the Python code and the docs rely on; the
running tables (balance stripes, spend windows, settlement references) must hold the same
values in all and equal the sums over the entries.
"""

from __future__ import annotations

import datetime
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from fintech_operator.ledger import migrate
from tests.conftest import RunningPlatform, schema_migrated_below

pytestmark = pytest.mark.integration

AT = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC)
SETTLEMENT = "system:network_settlement:USD"


@pytest.fixture(scope="module")
def schemas(platform_running: RunningPlatform) -> Iterator[dict[str, str]]:
    """Three fresh databases: ``before`` (migrations below 0063), ``before_0065`` (below 0065)
    and ``after`` (all)."""
    admin = platform_running.database_url_for("postgres")
    names = {
        side: f"entry_triggers_{side}_{uuid.uuid4().hex[:6]}"
        for side in ("before", "before_0065", "after")
    }
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names.values():
            conn.execute(f'CREATE DATABASE "{name}"')
    urls = {side: platform_running.database_url_for(name) for side, name in names.items()}
    migrate.apply(urls["before"], [m for m in migrate.discover() if m.version < 63])
    migrate.apply(urls["before_0065"], [m for m in migrate.discover() if m.version < 65])
    migrate.apply(urls["after"])
    for url in urls.values():
        with psycopg.connect(url, autocommit=True) as conn:
            seed(conn)
    yield urls
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names.values():
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(conn: psycopg.Connection[Any]) -> None:
    """The same accounts in both databases, in the same order (so with the same ids), and two
    cards mirrored for real-time authorizations."""
    for code, kind, normal in (
        (SETTLEMENT, "system", "credit"),
        ("system:network_settlement:EUR", "system", "credit"),
        ("system:adjustments:USD", "system", "credit"),
        ("card:team-a/alice:USD", "card", "debit"),
        ("card:team-a/frozen:USD", "card", "debit"),
        ("card:team-a/closed:USD", "card", "debit"),
        ("card:team-b/bob:USD", "card", "debit"),
        ("card:team-a/eve:EUR", "card", "debit"),
    ):
        conn.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency)"
            " VALUES (%s, %s, %s, right(%s, 3))",
            (code, kind, normal, code),
        )
    conn.execute("UPDATE accounts SET frozen_at = now() WHERE code = 'card:team-a/frozen:USD'")
    conn.execute(
        "UPDATE accounts SET status = 'closed', closed_at = now()"
        " WHERE code = 'card:team-a/closed:USD'"
    )
    conn.execute(
        "INSERT INTO authorization_products (product, currency, spend_limit_minor,"
        " spend_interval, rewards_rate_bps) VALUES ('team-a/std', 'USD', 1000000, 'Daily', 100)"
    )
    conn.execute(
        "INSERT INTO authorization_cards (account_id, token, card, namespace, product)"
        " SELECT id, 'tok_' || split_part(split_part(code, '/', 2), ':', 1),"
        " split_part(code, ':', 2), 'team-a', 'team-a/std'"
        " FROM accounts WHERE code IN ('card:team-a/alice:USD', 'card:team-a/frozen:USD')"
    )


def account_id(conn: psycopg.Connection[Any], code: str) -> int:
    row = conn.execute("SELECT id FROM accounts WHERE code = %s", (code,)).fetchone()
    assert row is not None, code
    return int(row[0])


Line = tuple[str, str, int, str]  # account code, direction, amount_minor, currency


def journal(
    conn: psycopg.Connection[Any],
    lines: list[Line],
    *,
    kind: str = "Adjustment",
    namespace: str | None = "team-a",
    reference: str | None = None,
    reverses: int | None = None,
) -> int:
    """A journal and its entries in ONE multi-row INSERT, in the caller's transaction."""
    row = conn.execute(
        "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at, namespace,"
        " reference, reverses_journal_id) VALUES (%s, repeat('0', 64), %s, %s, %s, %s, %s)"
        " RETURNING id",
        (f"k-{uuid.uuid4()}", kind, AT, namespace, reference, reverses),
    ).fetchone()
    assert row is not None
    journal_id = int(row[0])
    if lines:
        conn.execute(
            "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
            " SELECT %s, a.id, l.direction, l.amount, l.currency"
            " FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[])"
            "   WITH ORDINALITY AS l (code, direction, amount, currency, n)"
            " JOIN accounts a ON a.code = l.code ORDER BY l.n",
            (
                journal_id,
                [line[0] for line in lines],
                [line[1] for line in lines],
                [line[2] for line in lines],
                [line[3] for line in lines],
            ),
        )
    return journal_id


def refusal(url: str, lines: list[Line], **kwargs: Any) -> tuple[str | None, str | None]:
    """The SQLSTATE and primary message of posting ``lines`` in a journal (rolled back)."""
    with psycopg.connect(url) as conn:
        try:
            journal(conn, lines, **kwargs)
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")  # The balance check, not at COMMIT.
        except psycopg.Error as exc:
            return exc.sqlstate, exc.diag.message_primary
        finally:
            conn.rollback()
    return None, None


def ids(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT code, id FROM accounts").fetchall()
    return {str(code): int(i) for code, i in rows}


CLOSED, FROZEN, ALICE = "card:team-a/closed:USD", "card:team-a/frozen:USD", "card:team-a/alice:USD"
EUR_SETTLEMENT = "system:network_settlement:EUR"

# name: lines, journal options, SQLSTATE, the account the message names, the message ({code}
# and {id} of that account, {journal} the journal's id).
REFUSALS: dict[str, tuple[list[Line], dict[str, Any], str, str, str]] = {
    "wrong currency": (
        [(ALICE, "debit", 5, "EUR"), (EUR_SETTLEMENT, "credit", 5, "EUR")],
        {},
        "23514",
        ALICE,
        "entry currency EUR differs from currency USD of account {code}",
    ),
    "closed account debit": (
        [(CLOSED, "debit", 5, "USD"), (SETTLEMENT, "credit", 5, "USD")],
        {},
        "23514",
        CLOSED,
        "account {code} is closed: it takes credits (refunds) only",
    ),
    "frozen account debit": (
        [(FROZEN, "debit", 5, "USD"), (SETTLEMENT, "credit", 5, "USD")],
        {},
        "23514",
        FROZEN,
        "account {id} is frozen: it takes credits (refunds, payments) only",
    ),
    "another namespace": (
        [(ALICE, "debit", 5, "USD"), (SETTLEMENT, "credit", 5, "USD")],
        {"namespace": "team-b"},
        "23514",
        ALICE,
        "journal {journal} moves the money of namespace team-b, not of account {id} in team-a",
    ),
    # The checks keep the old triggers' order: currency before closed, frozen before namespace.
    "currency before closed": (
        [(CLOSED, "debit", 5, "EUR"), (EUR_SETTLEMENT, "credit", 5, "EUR")],
        {},
        "23514",
        CLOSED,
        "entry currency EUR differs from currency USD of account {code}",
    ),
    "frozen before namespace": (
        [(FROZEN, "debit", 5, "USD"), (SETTLEMENT, "credit", 5, "USD")],
        {"namespace": "team-b"},
        "23514",
        FROZEN,
        "account {id} is frozen: it takes credits (refunds, payments) only",
    ),
    "a closed account's credit, of another namespace": (
        [(SETTLEMENT, "debit", 5, "USD"), (CLOSED, "credit", 5, "USD")],
        {"namespace": "team-b"},
        "23514",
        CLOSED,
        "journal {journal} moves the money of namespace team-b, not of account {id} in team-a",
    ),
    "unbalanced (the deferred check still runs)": (
        [(ALICE, "debit", 5, "USD"), (SETTLEMENT, "credit", 4, "USD")],
        {},
        "23514",
        ALICE,
        "journal {journal} does not balance in USD: debits must equal credits",
    ),
}


@pytest.mark.parametrize("name", list(REFUSALS))
def test_each_refusal_is_the_same_error_before_and_after(
    schemas: dict[str, str], name: str
) -> None:
    """The same SQLSTATE and message before and after 0063, and the exact text the code and
    docs rely on; nothing is written."""
    lines, options, sqlstate, subject, template = REFUSALS[name]
    seen = {}
    for side, url in schemas.items():
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END"
                " FROM journals_id_seq"
            ).fetchone()
        assert row is not None
        expected = template.format(code=subject, id=ids(url)[subject], journal=int(row[0]))
        seen[side] = refusal(url, lines, **options)
        assert seen[side] == (sqlstate, expected), side
    assert seen["before"] == seen["before_0065"] == seen["after"]


def test_credits_still_reach_closed_and_frozen_accounts(schemas: dict[str, str]) -> None:
    """A refund to a closed card and a payment to a frozen one post in both schemas."""
    for url in schemas.values():
        for card in ("card:team-a/closed:USD", "card:team-a/frozen:USD"):
            assert refusal(url, [(SETTLEMENT, "debit", 3, "USD"), (card, "credit", 3, "USD")]) == (
                None,
                None,
            )


def test_a_committed_journal_takes_no_more_entries(schemas: dict[str, str]) -> None:
    """The journal-of-this-transaction rule: same error in both schemas."""
    seen = {}
    for side, url in schemas.items():
        with psycopg.connect(url) as conn:
            first = journal(
                conn,
                [("card:team-a/alice:USD", "debit", 1, "USD"), (SETTLEMENT, "credit", 1, "USD")],
            )
            conn.commit()
            with pytest.raises(errors.RestrictViolation) as refused:
                conn.execute(
                    "INSERT INTO entries (journal_id, account_id, direction, amount_minor,"
                    " currency) SELECT %s, id, 'debit', 1, 'USD' FROM accounts WHERE code = %s",
                    (first, "card:team-a/alice:USD"),
                )
            conn.rollback()
        seen[side] = refused.value.diag.message_primary
        assert seen[side] == (
            f"journal {first} was committed earlier: entries join a journal only in the"
            " transaction that creates it"
        )
    assert seen["before"] == seen["before_0065"] == seen["after"]


def workload(url: str) -> None:
    """Every kind of entry the running tables react to, on several connections (so on several
    balance stripes of the system accounts), through raw journals and the capture path."""
    with psycopg.connect(url) as conn:
        alice, settle = "card:team-a/alice:USD", SETTLEMENT
        # Purchases with a reference, one of them with two settlement entries (one posting).
        journal(
            conn,
            [(alice, "debit", 700, "USD"), (settle, "credit", 700, "USD")],
            kind="Purchase",
            reference="ref-1",
        )
        journal(
            conn,
            [
                (alice, "debit", 300, "USD"),
                (settle, "credit", 100, "USD"),
                (settle, "credit", 200, "USD"),
            ],
            kind="Purchase",
            reference="ref-1",
        )
        conn.commit()
        # A reference settled in two currencies, and a refund (a settlement debit).
        journal(
            conn,
            [
                ("card:team-a/eve:EUR", "debit", 50, "EUR"),
                ("system:network_settlement:EUR", "credit", 50, "EUR"),
            ],
            kind="Purchase",
            reference="ref-2",
        )
        journal(
            conn,
            [(alice, "debit", 20, "USD"), (settle, "credit", 20, "USD")],
            kind="Purchase",
            reference="ref-2",
        )
        journal(
            conn,
            [(settle, "debit", 120, "USD"), (alice, "credit", 120, "USD")],
            kind="Refund",
            reference="ref-1",
        )
        # A purchase without reference (spend, no settlement row) and a fee (no spend).
        journal(conn, [(alice, "debit", 40, "USD"), (settle, "credit", 40, "USD")], kind="Purchase")
        journal(
            conn,
            [(alice, "debit", 9, "USD"), ("system:adjustments:USD", "credit", 9, "USD")],
            kind="Fee",
            reference="ref-1",
        )
        conn.commit()
        # A purchase reversed later, and one reversed in its own transaction before its
        # entries arrive (neither counts, for spend nor for settlement).
        late = journal(
            conn,
            [(alice, "debit", 55, "USD"), (settle, "credit", 55, "USD")],
            kind="Purchase",
            reference="ref-3",
        )
        conn.commit()
        journal(
            conn,
            [(alice, "credit", 55, "USD"), (settle, "debit", 55, "USD")],
            kind="Reversal",
            reverses=late,
        )
        conn.commit()
        early = journal(conn, [], kind="Purchase", reference="ref-4")
        undo = journal(conn, [], kind="Reversal", reverses=early)
        conn.execute(
            "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
            " SELECT j, id, d, 77, 'USD' FROM (VALUES"
            "   (%(e)s, %(card)s, 'debit'), (%(e)s, %(settle)s, 'credit'),"
            "   (%(r)s, %(card)s, 'credit'), (%(r)s, %(settle)s, 'debit')) v (j, code, d)"
            " JOIN accounts a ON a.code = v.code",
            {"e": early, "r": undo, "card": alice, "settle": settle},
        )
        conn.commit()
        # A payment to the frozen card, a refund to the closed one.
        journal(
            conn,
            [(settle, "debit", 5, "USD"), ("card:team-a/frozen:USD", "credit", 5, "USD")],
            kind="Payment",
        )
        journal(
            conn,
            [(settle, "debit", 6, "USD"), ("card:team-a/closed:USD", "credit", 6, "USD")],
            kind="Refund",
        )
        conn.commit()
        # Settlement entries before the card's, and a journal whose entries arrive in two
        # statements: each journal is still one posting of its reference (0065's probe).
        journal(
            conn,
            [
                (settle, "credit", 30, "USD"),
                (settle, "credit", 20, "USD"),
                (alice, "debit", 50, "USD"),
            ],
            kind="Purchase",
            reference="ref-5",
        )
        split = journal(conn, [(settle, "credit", 8, "USD")], kind="Purchase", reference="ref-5")
        for code, direction, amount in ((settle, "credit", 2), (alice, "debit", 10)):
            conn.execute(
                "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
                " SELECT %s, id, %s, %s, 'USD' FROM accounts WHERE code = %s",
                (split, direction, amount, code),
            )
        conn.commit()
    # Real-time authorizations captured, on three connections (three backends, three stripes).
    for n in range(3):
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(4):
                auth = f"auth-{n}-{i}"
                conn.execute(
                    "SELECT * FROM authorization_authorize(%s, 'tok_alice', 1000, 'USD',"
                    " 'Cafe', '5812', 'US')",
                    (auth,),
                )
                conn.execute(
                    "SELECT * FROM authorization_capture(%s, %s, %s, %s)",
                    (auth, f"cap-{n}-{i}", 400 + i, i % 2 == 0),
                )


RUNNING = {
    "balances": "SELECT a.code, b.debits_minor, b.credits_minor, b.entry_count"
    " FROM account_balances b JOIN accounts a ON a.id = b.account_id ORDER BY 1",
    "balances from entries": "SELECT a.code,"
    " coalesce(sum(e.amount_minor) FILTER (WHERE e.direction = 'debit'), 0),"
    " coalesce(sum(e.amount_minor) FILTER (WHERE e.direction = 'credit'), 0), count(e.id)"
    " FROM accounts a LEFT JOIN entries e ON e.account_id = a.id GROUP BY a.code ORDER BY 1",
    "spend windows": "SELECT a.code, s.spend_interval, s.window_start::text, s.spent_minor"
    " FROM account_spend_windows s JOIN accounts a ON a.id = s.account_id ORDER BY 1, 2, 3",
    "settlement references": "SELECT namespace, reference, amount_minor, currency, postings,"
    " first_at, last_at FROM settlement_references ORDER BY 1, 2",
}

DRIFT = (
    "ledger_balance_drift",
    "ledger_balance_stripe_drift",
    "account_spend_drift",
    "settlement_reference_drift",
)


def test_running_totals_are_the_sums_over_entries_as_before(schemas: dict[str, str]) -> None:
    """After the same workload, both schemas hold the same balances, spend windows and
    settlement references; every drift view (the running table against the entries) is empty;
    and the balances equal the sums over entries."""
    seen: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    for side, url in schemas.items():
        workload(url)
        with psycopg.connect(url) as conn:
            for view in DRIFT:
                assert conn.execute(f"SELECT * FROM {view}").fetchall() == [], (side, view)
            seen[side] = {
                name: [tuple(row) for row in conn.execute(query).fetchall()]
                for name, query in RUNNING.items()
            }
        assert seen[side]["balances"] == seen[side]["balances from entries"]
    # Captured times differ between the databases (now()); everything else is equal.
    for side in ("before", "before_0065"):
        assert seen[side]["balances"] == seen["after"]["balances"], side
        assert seen[side]["spend windows"] == seen["after"]["spend windows"], side
    refs = {side: [row[:5] for row in seen[side]["settlement references"]] for side in seen}
    assert refs["before"] == refs["before_0065"] == refs["after"]
    by_reference = {row[1]: row[2:5] for row in refs["after"]}
    assert by_reference["ref-1"] == (700 + 300 - 120, "USD", 3)
    assert by_reference["ref-2"] == (70, "EUR+USD", 2)
    assert "ref-3" not in by_reference
    assert "ref-4" not in by_reference
    assert by_reference["ref-5"] == (30 + 20 + 8 + 2, "USD", 2)
    spend = {(row[0], row[1]): row[3] for row in seen["after"]["spend windows"]}
    captured = sum(400 + i for i in range(4)) * 3
    assert spend["card:team-a/alice:USD", "Lifetime"] == 700 + 300 + 20 + 40 + 50 + 10 + captured


def test_a_system_account_moves_the_stripe_of_its_backend(schemas: dict[str, str]) -> None:
    """An entry on a system account lands in stripe pg_backend_pid() % 16, one on a card
    account in stripe 0, as 0058 defined."""
    url = schemas["after"]
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_backend_pid() % 16").fetchone()
        lane = int(row[0]) if row else -1
        query = (
            "SELECT r.stripe, r.debits_minor, r.credits_minor FROM account_balance_rows r"
            " JOIN accounts a ON a.id = r.account_id WHERE a.code = %s ORDER BY 1"
        )
        before = {
            code: conn.execute(query, (code,)).fetchall()
            for code in (SETTLEMENT, "card:team-a/alice:USD")
        }
        journal(
            conn, [("card:team-a/alice:USD", "debit", 11, "USD"), (SETTLEMENT, "credit", 11, "USD")]
        )
        conn.commit()
        after = {code: conn.execute(query, (code,)).fetchall() for code in before}
    moved = [
        (new[0], new[1] - old[1], new[2] - old[2])
        for old, new in zip(before[SETTLEMENT], after[SETTLEMENT], strict=True)
        if old != new
    ]
    assert moved == [(lane, 0, 11)]
    assert len(after["card:team-a/alice:USD"]) == 1
    stripe, debits, _ = after["card:team-a/alice:USD"][0]
    assert (stripe, debits - before["card:team-a/alice:USD"][0][1]) == (0, 11)


def test_entries_have_one_before_and_one_after_trigger(schemas: dict[str, str]) -> None:
    """What 0063 leaves on entries: the two row triggers and the append-only guards."""
    with psycopg.connect(schemas["after"]) as conn:
        rows = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'entries'::regclass"
            " AND NOT tgisinternal ORDER BY 1"
        ).fetchall()
    assert [row[0] for row in rows] == [
        "entries_after",
        "entries_append_only",
        "entries_before",
        "entries_no_truncate",
    ]


JOURNAL_REFUSALS = {
    "reversal of a reversal": "journal {original} is a reversal and cannot be reversed",
    "not a mirror": "reversal {journal} does not mirror journal {original}",
    "one entry": "journal {journal} has 1 entries; a journal needs at least two",
}


def journal_refusal(url: str, case: str) -> tuple[str | None, str, str]:
    """The SQLSTATE and message of a journal-level refusal (rolled back), and the message
    JOURNAL_REFUSALS expects with this database's journal ids."""
    alice = "card:team-a/alice:USD"
    lines: list[Line] = [(alice, "debit", 13, "USD"), (SETTLEMENT, "credit", 13, "USD")]
    swapped: list[Line] = [(alice, "credit", 13, "USD"), (SETTLEMENT, "debit", 13, "USD")]
    ids: dict[str, int] = {}
    with psycopg.connect(url) as conn:
        original = journal(conn, lines, kind="Purchase")
        reversal = journal(conn, swapped, kind="Reversal", reverses=original)
        conn.commit()
        try:
            if case == "reversal of a reversal":
                ids["original"] = reversal
                journal(conn, swapped, kind="Reversal", reverses=reversal)
            elif case == "not a mirror":  # the original's own lines, not swapped
                ids["original"] = journal(conn, lines, kind="Purchase")
                conn.commit()
                ids["journal"] = journal(conn, lines, kind="Reversal", reverses=ids["original"])
            else:
                ids["journal"] = journal(conn, [(alice, "debit", 6, "USD")])
            conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        except psycopg.Error as exc:
            conn.rollback()
            return exc.sqlstate, str(exc.diag.message_primary), JOURNAL_REFUSALS[case].format(**ids)
        conn.rollback()
    return None, "", JOURNAL_REFUSALS[case].format(**ids)


@pytest.mark.parametrize("case", list(JOURNAL_REFUSALS))
def test_journal_level_refusals_are_the_same_error_in_every_schema(
    schemas: dict[str, str], case: str
) -> None:
    """0065 put the journals' reversal-only queries behind an IF of their own: a reversal of a
    reversal, a reversal that does not mirror its original and a one-entry journal are refused
    with the same SQLSTATE and message in the schemas below 0063, below 0065 and with it."""
    for side, url in schemas.items():
        sqlstate, message, expected = journal_refusal(url, case)
        assert (sqlstate, message) == ("23514", expected), side


def index_reads(conn: psycopg.Connection[Any], schema: str, index: str) -> int:
    """Index tuples read through ``index`` of ``schema`` so far, this backend's included."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE schemaname = %s AND indexrelname = %s",
        (schema, index),
    ).fetchone()
    assert row is not None
    return int(row[0])


def settlement_index_reads_per_capture(dsn: str, history: int) -> list[int]:
    """A ledger of a thousand cards whose entries were ANALYZEd empty (and left so), then
    ``history`` settled Purchases, then on a new connection eight authorizations each captured:
    the tuples entries_account_id_idx gave to each capture."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        seed(conn)
        # A ledger of a thousand cards (as the bench's), analyzed before its first entry.
        conn.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency)"
            " SELECT 'card:team-a/c' || i || ':USD', 'card', 'debit', 'USD'"
            " FROM generate_series(1, 1000) i"
        )
        conn.execute("ALTER TABLE entries SET (autovacuum_enabled = false)")
        conn.execute("ANALYZE")
        for n in range(history):
            with conn.transaction():
                journal(
                    conn,
                    [
                        ("card:team-a/alice:USD", "debit", 1, "USD"),
                        (SETTLEMENT, "credit", 1, "USD"),
                    ],
                    kind="Purchase",
                    reference=f"history-{n}",
                )
    # A new backend (as the gateway's connections), planning with those statistics.
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_schema()").fetchone()
        assert row is not None
        schema = str(row[0])
        seen = []
        for i in range(8):  # past PL/pgSQL's five custom plans, onto its generic one
            conn.execute(
                "SELECT * FROM authorization_authorize(%s, 'tok_alice', 100, 'USD', 'Cafe',"
                " '5812', 'US')",
                (f"auth-{i}",),
            )
            before = index_reads(conn, schema, "entries_account_id_idx")
            conn.execute(
                "SELECT * FROM authorization_capture(%s, %s, 100, true)", (f"auth-{i}", f"cap-{i}")
            )
            seen.append(index_reads(conn, schema, "entries_account_id_idx") - before)
    return seen


def test_a_capture_reads_its_journal_not_the_settlement_accounts_history(
    platform_running: RunningPlatform,
) -> None:
    """0065: whether a settlement entry is its journal's first is read through the journal's
    entries. Before, with the statistics of entries taken while it was empty (a new ledger,
    until autovacuum's ANALYZE), the plan read every earlier entry of the settlement account
    through entries_account_id_idx: one more index tuple per capture, without bound."""
    history = 300
    reads = {}
    for side in ("before_0065", "after"):
        dsn = schema_migrated_below(platform_running.database_url)
        migrate.apply(dsn, [m for m in migrate.discover() if side == "after" or m.version < 65])
        reads[side] = settlement_index_reads_per_capture(dsn, history)
    assert min(reads["before_0065"]) >= history, reads  # what 0065 removes
    assert reads["after"] == [0] * 8, reads


# Requests on one card of their own, in order: (function, arguments).
ANSWER_SCRIPT: list[tuple[str, tuple[Any, ...]]] = [
    ("authorize", ("d-a1", 1000)),
    ("capture", ("d-a1", "d-c1", 400, False)),
    ("capture", ("d-a1", "d-c2", 300, True)),
    ("capture", ("d-a1", "d-c3", 100, True)),  # closed: 409
    ("capture", ("d-a1", "d-c2", 300, True)),  # a replay
    ("authorize", ("d-a2", 2000)),
    ("void", ("d-a2", "d-v1")),
    ("void", ("d-a2", "d-v2")),  # voided: 409
    ("authorize", ("d-a3", 500)),
    ("increment", ("d-a3", "d-i1", 250)),
    ("capture", ("d-a3", "d-c4", 900, True)),  # over the hold: 409
    ("capture", ("d-a3", "d-c5", 750, True)),
    ("authorize", ("d-a4", 2_000_000)),  # over the Daily limit: declined
]
CALLS = {
    "authorize": "SELECT * FROM authorization_authorize(%s, 'tok_dora', %s, 'USD', 'Cafe',"
    " '5812', 'US')",
    "capture": "SELECT * FROM authorization_capture(%s, %s, %s, %s)",
    "void": "SELECT * FROM authorization_void(%s, %s)",
    "increment": "SELECT * FROM authorization_increment(%s, %s, %s)",
}


def answers(url: str) -> list[tuple[int, bytes, bool]]:
    """The answers of ANSWER_SCRIPT on a new card of ``url``, expiry times blanked (they are
    now() + the product's time to live), and the card's spend windows after it."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency)"
            " VALUES ('card:team-a/dora:USD', 'card', 'debit', 'USD')"
        )
        conn.execute(
            "INSERT INTO authorization_cards (account_id, token, card, namespace, product)"
            " SELECT id, 'tok_dora', 'team-a/dora', 'team-a', 'team-a/std' FROM accounts"
            " WHERE code = 'card:team-a/dora:USD'"
        )
        seen = []
        for name, args in ANSWER_SCRIPT:
            row = conn.execute(CALLS[name], args).fetchone()
            assert row is not None
            body = re.sub(rb'"expiresAt": "[^"]*"', b'"expiresAt": ""', bytes(row[1]))
            seen.append((int(row[0]), body, bool(row[2])))
        spent = conn.execute(
            "SELECT s.spend_interval, s.spent_minor FROM account_spend_windows s"
            " JOIN accounts a ON a.id = s.account_id WHERE a.code = 'card:team-a/dora:USD'"
            " ORDER BY 1"
        ).fetchall()
    seen.append((0, repr(spent).encode(), False))
    return seen


def test_every_answer_is_the_same_bytes_before_and_after_0065(schemas: dict[str, str]) -> None:
    """The requests' answers (and the spend windows they read back) read the running tables
    0065's triggers write: byte for byte what they were below 0065, including the refusals."""
    before, after = answers(schemas["before_0065"]), answers(schemas["after"])
    assert before == after
    statuses = [status for status, _, _ in after[:-1]]
    assert statuses == [200, 200, 200, 409, 200, 200, 200, 409, 200, 200, 409, 200, 200]
    assert after[4][2] is True  # the replay
    assert b'"SpendLimitExceeded"' in after[-2][1]
    assert after[-1][1] == repr([("Daily", 1450), ("Lifetime", 1450), ("Monthly", 1450)]).encode()
