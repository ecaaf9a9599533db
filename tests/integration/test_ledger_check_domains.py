"""Migration 0066's domains accept exactly what the ledger's table CHECKs they replaced accepted.

0066 moved the single-column CHECKs of journals, entries, account_balance_rows,
account_spend_windows, settlement_references and outbox into DOMAIN types (a domain's
constraints are read once per backend and checked only on the columns a statement assigns).
Each case below writes a value into the real table twice, on a schema migrated up to 0065
(``before``) and on one with every migration (``after``), and the two must agree on every
value, valid or not: taken by both, or refused by both with the same SQLSTATE. A value the old
single-column CHECK refused is now refused by the column's domain, whose name names the field.

The balance rows, spend windows and settlement references are written only by the ledger's
triggers (their guards refuse any other write), so their cases run with
``session_replication_role = replica``, which switches the guards (and every other ordinary
trigger) off for the statement: what is compared is the column rule alone.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool

from fintech_operator.ledger import engine, grants, migrate, model, rules
from tests.conftest import RunningPlatform, schema_migrated_below
from tests.integration.domain_support import Case, assert_refused_by_name, assert_same_verdicts

pytestmark = pytest.mark.integration

DOMAINS_VERSION = 66
TABLES = (
    "journals", "entries", "account_balance_rows", "account_spend_windows",
    "settlement_references", "outbox",
)  # fmt: skip


def through(version: int) -> list[migrate.Migration]:
    """The shipped migrations up to and including ``version`` (later ones are not 0066's)."""
    return [m for m in migrate.discover() if m.version <= version]


@pytest.fixture(scope="module")
def before_url(database_url: str) -> str:
    return schema_migrated_below(database_url, DOMAINS_VERSION)


@pytest.fixture
def before(before_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(before_url, autocommit=True) as conn:
        yield conn


_ACCOUNT = (
    "INSERT INTO accounts (code, kind, normal_balance, currency, metadata)"
    " VALUES ('card:ns/c:USD', 'card', 'debit', 'USD', '{\"card\": \"ns/c\"}')"
)
_ACCOUNT_ID = "(SELECT id FROM accounts WHERE code = 'card:ns/c:USD')"
_JOURNAL = (
    "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at, namespace)"
    " VALUES ('k-1', repeat('0', 64), 'Purchase', now(), 'ns')"
)
_BALANCE_ROW = f"INSERT INTO account_balance_rows (account_id) VALUES ({_ACCOUNT_ID})"
_WINDOW = (
    "INSERT INTO account_spend_windows (account_id, spend_interval, window_start, spent_minor)"
    f" VALUES ({_ACCOUNT_ID}, 'Lifetime', '-infinity', 10)"
)
_MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
_REFERENCE = (
    "INSERT INTO settlement_references (namespace, reference, amount_minor, currency, postings,"
    " first_at, last_at) VALUES ('ns', 'r-1', 10, 'USD', 1, now(), now())"
)
_OUTBOX = (
    "INSERT INTO outbox (event_id, topic, key, payload)"
    " VALUES (gen_random_uuid(), 'postings', 'k', '{}')"
)


def insert(table: str, column: str, row: dict[str, str]) -> str:
    """An INSERT of ``row`` into ``table`` with ``column`` set to the value."""
    row = {**row, column: "%(v)s"}
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(row.values())})"


def insert_journal(column: str) -> str:
    return insert("journals", column, {
        "idempotency_key": "'k-1'", "request_hash": "repeat('0', 64)", "kind": "'Payment'",
        "occurred_at": "now()", "namespace": "'ns'", "reference": "'ref'", "metadata": "'{}'",
    })  # fmt: skip


def insert_entry(column: str) -> str:
    return insert("entries", column, {
        "journal_id": "(SELECT id FROM journals WHERE idempotency_key = 'k-1')",
        "account_id": _ACCOUNT_ID, "direction": "'debit'", "amount_minor": "10",
        "currency": "'USD'",
    })  # fmt: skip


def insert_window(column: str) -> str:
    return insert("account_spend_windows", column, {
        "account_id": _ACCOUNT_ID, "spend_interval": "'Monthly'", "window_start": _MONTH,
        "spent_minor": "10",
    })  # fmt: skip


def insert_reference(column: str) -> str:
    return insert("settlement_references", column, {
        "namespace": "'ns'", "reference": "'r-2'", "amount_minor": "10", "currency": "'USD'",
        "postings": "1", "first_at": "now()", "last_at": "now()",
    })  # fmt: skip


def insert_outbox(column: str) -> str:
    return insert("outbox", column, {
        "event_id": "gen_random_uuid()", "topic": "'postings'", "key": "'k'",
        "payload": "'{}'", "headers": "'{}'",
    })  # fmt: skip


TEXT_512 = ("k", "k" * 512, "é" * 512, " ", "k" * 513, "")
HASHES = ("0" * 64, "0123456789abcdef" * 4, "A" * 64, "0" * 63, "0" * 65, "g" * 64, "")
KINDS = ("Purchase", "Refund", "Payment", "Fee", "Adjustment", "Reversal", "purchase", "",
         "Transfer")  # fmt: skip
NAMESPACES = ("ns", "team-a.b_c", "a" * 253, "é", "a" * 254, "", "a b", "a/b", "a:b", "a\tb",
              "a\n", None)  # fmt: skip
OBJECTS = ("{}", '{"a": 1}', "[]", "1", '"x"', "null")
NONNEGATIVE = (0, 5, 2**63 - 1, -1)
STRIPES = (1, 15, 16, -1, 2**15 - 1)
CURRENCIES = ("USD", "EUR+USD", "EUR+GBP+USD", "usd", "USD+", "+USD", "USD+EU", "USD EUR",
              "US", "", "ÉUR")  # fmt: skip
ENTRY_CURRENCIES = ("USD", "usd", "EUR", "US", "USDX", "", "U D")
REPLICA_BALANCE = (_ACCOUNT, _BALANCE_ROW)

CASES = [
    Case("journals", "idempotency_key", "idempotency_key_text", (*TEXT_512, None),
         insert_journal("idempotency_key")),
    Case("journals", "request_hash", "sha256_hex_text", HASHES, insert_journal("request_hash")),
    Case("journals", "kind", "journal_kind_text", KINDS, insert_journal("kind")),
    Case("journals", "reference", "journal_reference_text", (*TEXT_512, None),
         insert_journal("reference")),
    Case("journals", "metadata", "jsonb_object", OBJECTS, insert_journal("metadata")),
    Case("journals", "namespace", "journal_namespace_text", NAMESPACES,
         insert_journal("namespace")),
    Case("entries", "direction", "entry_direction_text", ("debit", "credit", "Debit", "", "both"),
         insert_entry("direction"), (_ACCOUNT, _JOURNAL)),
    Case("entries", "amount_minor", "entry_amount_minor", (1, 10**15 + 1, 2**63 - 1, 0, -1),
         insert_entry("amount_minor"), (_ACCOUNT, _JOURNAL)),
    # A valid currency other than the account's is the entries trigger's refusal, before and
    # after; a malformed one could never reach the old CHECK (the trigger compared it first).
    Case("entries", "currency", "currency_code", ENTRY_CURRENCIES, insert_entry("currency"),
         (_ACCOUNT, _JOURNAL)),
    Case("outbox", "topic", "outbox_topic_text", TEXT_512, insert_outbox("topic")),
    Case("outbox", "headers", "jsonb_object", OBJECTS, insert_outbox("headers")),
    # Written by the ledger's triggers only: the rules alone (see the docstring).
    *(
        Case("account_balance_rows", column, domain, NONNEGATIVE,
             f"UPDATE account_balance_rows SET {column} = %(v)s", REPLICA_BALANCE, True,
             f"account_balances_{column}_check")
        for column, domain in (("debits_minor", "nonnegative_amount_minor"),
                               ("credits_minor", "nonnegative_amount_minor"),
                               ("entry_count", "balance_entry_count"))
    ),
    Case("account_balance_rows", "stripe", "balance_stripe", STRIPES,
         f"INSERT INTO account_balance_rows (account_id, stripe) VALUES ({_ACCOUNT_ID}, %(v)s)",
         REPLICA_BALANCE, True),
    Case("account_balance_rows", "stripe", "balance_stripe", (0, 15, 16, -1),
         "UPDATE account_balance_rows SET stripe = %(v)s", REPLICA_BALANCE, True),
    Case("account_spend_windows", "spend_interval", "spend_window_interval_text",
         ("Daily", "Monthly", "Lifetime", "PerTransaction", "daily", "", "Weekly"),
         insert_window("spend_interval"), (_ACCOUNT,), True),
    Case("account_spend_windows", "spent_minor", "nonnegative_amount_minor", NONNEGATIVE,
         insert_window("spent_minor"), (_ACCOUNT,), True),
    Case("account_spend_windows", "spent_minor", "nonnegative_amount_minor", NONNEGATIVE,
         "UPDATE account_spend_windows SET spent_minor = %(v)s", (_ACCOUNT, _WINDOW), True),
    Case("settlement_references", "currency", "settlement_currency_text", CURRENCIES,
         insert_reference("currency"), (), True),
    Case("settlement_references", "currency", "settlement_currency_text", CURRENCIES,
         "UPDATE settlement_references SET currency = %(v)s", (_REFERENCE,), True),
    Case("settlement_references", "postings", "settlement_posting_count", (1, 2, 0, -1),
         insert_reference("postings"), (), True),
    Case("settlement_references", "postings", "settlement_posting_count", (1, 7, 0, -1),
         "UPDATE settlement_references SET postings = %(v)s", (_REFERENCE,), True),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_domain_takes_what_the_table_check_took(
    before: psycopg.Connection[Any], raw: psycopg.Connection[Any], case: Case
) -> None:
    """Taken before exactly when taken after, refused with the same SQLSTATE; a refusal of
    the old single-column CHECK is now the domain's; both kinds of value occur."""
    assert_same_verdicts(before, raw, case)


# A good value and a bad one of each domain 0066 created.
DOMAIN_VALUES = {
    "idempotency_key_text": ("team-a/pay-1", ""),
    "journal_reference_text": ("settle-2026-12-01", "r" * 513),
    "journal_namespace_text": ("team-a", "team a"),
    "journal_kind_text": ("Reversal", "Chargeback"),
    "entry_amount_minor": (1, 0),
    "entry_direction_text": ("credit", "Credit"),
    "balance_entry_count": (0, -1),
    "balance_stripe": (15, 16),
    "spend_window_interval_text": ("Lifetime", "PerTransaction"),
    "settlement_currency_text": ("EUR+USD", "EUR+usd"),
    "settlement_posting_count": (1, 0),
    "outbox_topic_text": ("t" * 512, "t" * 513),
}
# 0062's domains that 0066 reuses: their rule is unchanged.
REUSED = {
    "currency_code": ("EUR", "eur"),
    "sha256_hex_text": ("f" * 64, "F" * 64),
    "jsonb_object": ("{}", "[]"),
    "nonnegative_amount_minor": (0, -1),
}


@pytest.mark.parametrize("domain", sorted({**DOMAIN_VALUES, **REUSED}))
def test_each_domain_refuses_bad_input_by_its_name(
    raw: psycopg.Connection[Any], domain: str
) -> None:
    """A good value casts to the domain; a bad one is a check violation naming the domain."""
    good, bad = {**DOMAIN_VALUES, **REUSED}[domain]
    assert_refused_by_name(raw, domain, good, bad)


def test_the_ledger_tables_keep_only_multi_column_checks(raw: psycopg.Connection[Any]) -> None:
    """Every CHECK left on the six tables reads two columns or more, every domain is used, and
    the reused domains' rules are 0062's, under the same names."""
    checks = raw.execute(
        "SELECT conname FROM pg_constraint WHERE contype = 'c'"
        " AND conrelid = ANY(%s::regclass[]) ORDER BY 1",
        (list(TABLES),),
    ).fetchall()
    assert [name for (name,) in checks] == [
        "account_spend_windows_start_shape", "journals_not_self_reversal",
        "journals_reversal_shape", "settlement_references_times",
    ]  # fmt: skip
    used = raw.execute(
        "SELECT DISTINCT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE t.typtype = 'd' AND a.attrelid = ANY(%s::regclass[])",
        (list(TABLES),),
    ).fetchall()
    assert {name for (name,) in used} == set(DOMAIN_VALUES) | set(REUSED)
    rules_now = raw.execute(
        "SELECT t.typname, c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " JOIN pg_type t ON t.oid = c.contypid WHERE t.typname = ANY(%s)"
        " AND t.typnamespace = current_schema()::regnamespace ORDER BY 1",
        (list(REUSED),),
    ).fetchall()
    assert rules_now == [
        ("currency_code", "currency_code_check", "CHECK ((VALUE ~ '^[A-Z]{3}$'::text))"),
        ("jsonb_object", "jsonb_object_check", "CHECK ((jsonb_typeof(VALUE) = 'object'::text))"),
        ("nonnegative_amount_minor", "nonnegative_amount_minor_check", "CHECK ((VALUE >= 0))"),
        ("sha256_hex_text", "sha256_hex_text_check",
         "CHECK (((length(VALUE) = 64) AND (VALUE ~ '^[0-9a-f]+$'::text)))"),
    ]  # fmt: skip


def test_a_guarded_write_of_a_bad_value_is_now_the_domains_refusal(
    raw: psycopg.Connection[Any],
) -> None:
    """The one change of precedence (0066's header): a domain checks a value as the row is
    built, before the BEFORE triggers. An UPDATE of an append-only journal is still the
    guard's restrict_violation; one that also writes a bad kind is the domain's refusal."""
    with raw.transaction(force_rollback=True):
        raw.execute(_JOURNAL)
        with pytest.raises(errors.RestrictViolation, match="append-only"), raw.transaction():
            raw.execute("UPDATE journals SET kind = 'Fee'")
        with pytest.raises(errors.CheckViolation, match="value for domain journal_kind_text"):
            raw.execute("UPDATE journals SET kind = 'Chargeback'")


def relfilenodes(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Each of the six tables' and their indexes' storage file."""
    rows = conn.execute(
        "SELECT c.relname, c.relfilenode FROM pg_class c"
        " LEFT JOIN pg_index i ON i.indexrelid = c.oid"
        " WHERE c.oid = ANY(%(t)s::regclass[]) OR i.indrelid = ANY(%(t)s::regclass[])",
        {"t": list(TABLES)},
    ).fetchall()
    return {str(name): int(node) for name, node in rows}


def test_0066_rewrites_no_table_and_keeps_rows_and_statistics(database_url: str) -> None:
    """Applied over a ledger in use, 0066 keeps every row, rewrites none of the six tables and
    keeps every index but the partial journals_reference_idx (PostgreSQL rebuilds a partial
    index over a column whose type changes); the switched columns have statistics again."""
    url = schema_migrated_below(database_url, DOMAINS_VERSION)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_ACCOUNT)
        conn.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency)"
            " VALUES ('system:network_settlement:USD', 'system', 'credit', 'USD')"
        )
        conn.execute(
            "INSERT INTO authorization_products (product, currency, spend_limit_minor,"
            " spend_interval, rewards_rate_bps) VALUES ('ns/p', 'USD', 100000, 'Daily', 100)"
        )
        conn.execute(
            "INSERT INTO authorization_cards (account_id, token, card, namespace, product)"
            f" VALUES ({_ACCOUNT_ID}, 'tok', 'ns/c', 'ns', 'ns/p')"
        )
        conn.execute(
            "SELECT * FROM authorization_authorize('a-1', 'tok', 1000, 'USD', 'Cafe', '5812', 'US')"
        )
        conn.execute("SELECT * FROM authorization_capture('a-1', 'c-1', 900, true)")
        conn.execute(_OUTBOX)
        conn.execute("ANALYZE")
        count = f"SELECT ({') + ('.join(f'SELECT count(*) FROM {t}' for t in TABLES)})"
        rows_before = conn.execute(count).fetchone()
        stored_before = relfilenodes(conn)
        assert migrate.apply(url, through(DOMAINS_VERSION)) == [DOMAINS_VERSION]
        assert conn.execute(count).fetchone() == rows_before
        stored_after = relfilenodes(conn)
        changed = {name for name in stored_before if stored_before[name] != stored_after[name]}
        assert changed == {"journals_reference_idx"}
        unanalyzed = conn.execute(
            "SELECT a.attrelid::regclass::text, a.attname FROM pg_attribute a"
            " JOIN pg_type t ON t.oid = a.atttypid WHERE t.typtype = 'd'"
            " AND a.attrelid = ANY(%s::regclass[]) AND NOT EXISTS (SELECT 1 FROM pg_statistic s"
            " WHERE s.starelid = a.attrelid AND s.staattnum = a.attnum)",
            (list(TABLES),),
        ).fetchall()
        assert unanalyzed == []


def test_0066_refuses_to_apply_over_a_row_that_breaks_a_rule(database_url: str) -> None:
    """Adding a domain's constraint checks every stored value: a row past its table CHECK (as
    a CHECK added NOT VALID would have left it) stops 0066, which then changes nothing."""
    url = schema_migrated_below(database_url, DOMAINS_VERSION)
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("ALTER TABLE outbox DROP CONSTRAINT outbox_topic_check")
            conn.execute(_OUTBOX.replace("'postings'", "''"))
            conn.execute(
                "ALTER TABLE outbox ADD CONSTRAINT outbox_topic_check"
                " CHECK (length(topic) BETWEEN 1 AND 512) NOT VALID"
            )
        stored = 'column "topic" of table "outbox" contains values that violate'
        with pytest.raises(errors.CheckViolation, match=stored):
            migrate.apply(url)
        found = conn.execute("SELECT to_regtype('outbox_topic_text')").fetchone()
        assert found == (None,)
        # 0062's domain kept its rule: the migration rolled back as a whole.
        rule = conn.execute(
            "SELECT conname FROM pg_constraint WHERE contypid = 'currency_code'::regtype"
        ).fetchall()
        assert rule == [("currency_code_check",)]
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        assert version == (DOMAINS_VERSION - 1,)


VIEWS = (
    "account_balances", "ledger_balance_drift", "ledger_balance_stripe_drift",
    "account_spend_drift", "settlement_postings", "settlement_reference_totals",
    "settlement_reference_drift",
)  # fmt: skip


@pytest.fixture
def roles(platform_running: RunningPlatform, database_url: str) -> Iterator[tuple[str, str]]:
    """A runtime and a gateway login role of this test only (roles are global to the server)."""
    names = (f"rt_{uuid.uuid4().hex[:10]}", f"gw_{uuid.uuid4().hex[:10]}")
    admin = platform_running.database_url_for("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(f"CREATE ROLE {name} LOGIN")
    yield names
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f"DROP OWNED BY {name}")
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            db = conninfo_to_dict(database_url)["dbname"]
            conn.execute(f'REVOKE ALL ON DATABASE "{db}" FROM {name}')
            conn.execute(f"DROP ROLE {name}")


def test_the_recreated_views_are_granted_again(database_url: str, roles: tuple[str, str]) -> None:
    """Upgrading a ledger whose roles were granted before 0066: the views 0066 drops and
    creates again get the runtime role's and the gateway role's decided privileges again, and
    the runtime role reads them (and the domain-typed columns under them)."""
    runtime, gateway = roles
    url = schema_migrated_below(database_url)
    below = [m for m in migrate.discover() if m.version < DOMAINS_VERSION]
    migrate.apply(url, below, runtime_role=runtime, gateway_role=gateway)
    upgrade = through(DOMAINS_VERSION)
    assert migrate.apply(url, upgrade, runtime_role=runtime, gateway_role=gateway) == [
        DOMAINS_VERSION
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        for view in VIEWS:
            for role, decided in (
                (runtime, grants.PRIVILEGES),
                (gateway, grants.GATEWAY_PRIVILEGES),
            ):
                held = conn.execute(
                    "SELECT has_table_privilege(%s, %s, 'SELECT')", (role, view)
                ).fetchone()
                assert held == (view in decided,), (role, view)
    with psycopg.connect(make_conninfo(url, user=runtime), autocommit=True) as conn:
        for view in VIEWS:
            assert conn.execute(f"SELECT * FROM {view}").fetchall() is not None, view


# --- A Posting and a capture still post, and every running table agrees with the entries ----


@pytest.fixture(scope="module")
async def pool(migrated_database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    ledger_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        migrated_database_url, min_size=1, max_size=2, open=False, timeout=30
    )
    await ledger_pool.open(wait=True, timeout=30)
    yield ledger_pool
    await ledger_pool.close()


DRIFT_VIEWS = (
    "ledger_balance_drift", "ledger_balance_stripe_drift", "account_spend_drift",
    "settlement_reference_drift",
)  # fmt: skip


async def test_a_posting_its_reversal_and_a_capture_post_through_the_domains(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """The engine's Purchase (with a reference and an event), its reversal and a real-time
    capture all post on the switched columns; the recreated views see them and stay empty."""
    name = f"c-{uuid.uuid4().hex[:10]}"
    async with pool.connection() as conn:
        card = (await engine.open_card_account(conn, "ns", name, "USD")).code
    purchase = model.PostingRequest(
        idempotency_key=f"k-{uuid.uuid4()}",
        kind=model.PostingKind.PURCHASE,
        lines=rules.lines_for(model.PostingKind.PURCHASE, card, 1250, "USD"),
        occurred_at=datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
        reference=f"ref-{name}",
        events=(model.OutboxEvent(uuid.uuid4(), "postings", card, {"type": "posting.posted"}),),
    )
    posted = await engine.post(pool, purchase)
    assert not posted.replayed
    assert (await engine.post(pool, purchase)).replayed
    totals = (
        "SELECT amount_minor, currency, postings FROM settlement_references WHERE reference = %s"
    )
    assert raw.execute(totals, (f"ref-{name}",)).fetchall() == [(1250, "USD", 1)]
    reversal = model.ReversalRequest(f"rev-{name}", posted.journal.id, "duplicate")
    assert (await engine.reverse(pool, reversal)).journal.kind is model.PostingKind.REVERSAL
    assert raw.execute(totals, (f"ref-{name}",)).fetchall() == []
    raw.execute(
        "INSERT INTO authorization_products (product, currency, spend_limit_minor,"
        " spend_interval, rewards_rate_bps) VALUES ('ns/p', 'USD', 100000, 'Daily', 100)"
        " ON CONFLICT DO NOTHING"
    )
    raw.execute(
        "INSERT INTO authorization_cards (account_id, token, card, namespace, product)"
        " SELECT id, %s, %s, 'ns', 'ns/p' FROM accounts WHERE code = %s",
        (f"tok_{name}", f"ns/{name}", card),
    )
    auth = f"a-{name}"
    raw.execute(
        "SELECT * FROM authorization_authorize(%s, %s, 1000, 'USD', 'Cafe', '5812', 'US')",
        (auth, f"tok_{name}"),
    )
    captured = raw.execute(
        "SELECT status_code FROM authorization_capture(%s, %s, 900, true)", (auth, f"c-{name}")
    ).fetchone()
    assert captured == (200,)
    async with pool.connection() as conn:
        balance = await engine.balance(conn, card)
    assert (balance.debits_minor, balance.credits_minor) == (1250 + 900, 1250)
    for view in DRIFT_VIEWS:
        assert raw.execute(f"SELECT * FROM {view}").fetchall() == [], view
    spent = raw.execute(
        "SELECT spend_interval, spent_minor FROM account_spend_windows s"
        " JOIN accounts a ON a.id = s.account_id WHERE a.code = %s ORDER BY 1",
        (card,),
    ).fetchall()
    assert spent == [("Daily", 900), ("Lifetime", 900), ("Monthly", 900)]
