"""Migration 0062's domains accept exactly what the table CHECKs they replaced accepted.

0062 moved the single-column CHECKs of authorizations, authorization_requests,
authorization_cards and authorization_captures into DOMAIN types (a domain's constraints are
read once per backend and checked only on the columns a statement assigns). Each case below
writes a value into the real table twice, on a schema migrated up to 0061 (``before``) and on
one with every migration (``after``), and the two must agree on every value, valid or not:
taken by both, or refused by both with the same SQLSTATE. A value the old single-column CHECK
refused is now refused by the column's domain, whose name names the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from fintech_operator.ledger import migrate
from tests.conftest import schema_migrated_below
from tests.integration.domain_support import Case, assert_refused_by_name, assert_same_verdicts

pytestmark = pytest.mark.integration

DOMAINS_VERSION = 62


def schema_before_domains(database_url: str) -> str:
    """A DSN of a new schema of ``database_url`` migrated up to the version before 0062."""
    return schema_migrated_below(database_url, DOMAINS_VERSION)


@pytest.fixture(scope="module")
def before_url(database_url: str) -> str:
    return schema_before_domains(database_url)


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
    "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at)"
    " VALUES ('k-1', repeat('0', 64), 'Payment', now())"
)
_CARD = (
    "INSERT INTO authorization_cards (account_id, token, card, namespace, product,"
    f" spend_limit_minor, spend_interval) VALUES ({_ACCOUNT_ID}, 'tok', 'ns/c', 'ns', 'ns/p',"
    " 100, 'Daily')"
)
_PENDING = (
    "INSERT INTO authorizations (id, account_id, card, card_token, currency, amount_minor,"
    " held_minor, status, reason, merchant, expires_at) VALUES ('a-1', "
    f"{_ACCOUNT_ID}, 'ns/c', 'tok', 'USD', 10, %(held)s, 'pending', 'Approved', '{{}}',"
    " now() + interval '1 day')"
)
_REQUEST = (
    "INSERT INTO authorization_requests (request_id, kind, authorization_id, request,"
    " request_hash, status_code, answer) VALUES ('r-1', 'authorize', 'a-1', '{}',"
    " repeat('0', 64), 200, '\\x7b7d')"
)


def insert_authorization(column: str, **base: str) -> str:
    """An authorization of the card account with ``column`` set to the value: declined by
    default (no hold), or as ``base`` says."""
    row = {
        "id": "'a-1'", "account_id": _ACCOUNT_ID, "card": "'ns/c'", "card_token": "'tok'",
        "currency": "'USD'", "amount_minor": "10", "status": "'declined'",
        "reason": "'CardNotFound'", "merchant": "'{}'", "expires_at": "now()",
        **base,
    }  # fmt: skip
    row[column] = "%(v)s"
    return f"INSERT INTO authorizations ({', '.join(row)}) VALUES ({', '.join(row.values())})"


def insert_request(column: str) -> str:
    row = {
        "request_id": "'r-1'", "kind": "'authorize'", "authorization_id": "'a-1'",
        "request": "'{}'", "request_hash": "repeat('0', 64)", "status_code": "200",
        "answer": "'\\x7b7d'::bytea",
    }  # fmt: skip
    row[column] = "%(v)s"
    cols, vals = ", ".join(row), ", ".join(row.values())
    return f"INSERT INTO authorization_requests ({cols}) VALUES ({vals})"


def insert_card(column: str) -> str:
    row = {
        "account_id": _ACCOUNT_ID, "token": "'tok'", "card": "'ns/c'", "namespace": "'ns'",
        "product": "'ns/p'", "spend_limit_minor": "100", "spend_interval": "'Daily'",
    }  # fmt: skip
    row[column] = "%(v)s"
    cols, vals = ", ".join(row), ", ".join(row.values())
    return f"INSERT INTO authorization_cards ({cols}) VALUES ({vals})"


def insert_capture(column: str) -> str:
    row = {
        "id": "'c-1'", "authorization_id": "'a-1'", "account_id": _ACCOUNT_ID,
        "amount_minor": "10", "final": "true", "force_post": "false",
        "journal_id": "(SELECT id FROM journals WHERE idempotency_key = 'k-1')",
    }  # fmt: skip
    row[column] = "%(v)s"
    cols, vals = ", ".join(row), ", ".join(row.values())
    return f"INSERT INTO authorization_captures ({cols}) VALUES ({vals})"


IDS = ("a", "a-b.c:d_e", "A" * 128, "A" * 129, "", "a b", "a/b", "é", "a\n", "x" * 127 + "é")
REASONS = ("Approved", "RiskDeclined:BlockedMcc", "A" + "b" * 127, "A" + "b" * 128, "",
           "1abc", "A b", "Aé", ":A")  # fmt: skip
HASHES = ("0" * 64, "0123456789abcdef" * 4, "A" * 64, "0" * 63, "0" * 65, "g" * 64, "")
TOKENS = ("tok", "t" * 128, "é" * 128, " ", "t" * 129, "")
REFS = ("ns/p", "a-1/b.c", "é/ü", "ab", "a/b/c", "/b", "a/", "a b/c", "a/b\t", "")
CARD_REFS = ("ns/c", "ns/c-1.x", "ns/é", "ns/", "ns//c", "ns/c d", "ns/c\n", "ns/c/d", "nsc")
CURRENCIES = ("USD", "EUR", "usd", "US", "US1", "ÉUR", "", "U D")
POSITIVE = (1, 10, 10**15, 0, -1, 10**15 + 1)
NONNEGATIVE = (0, 10, -1)
BPS = (0, 10_000, -1, 10_001)
OBJECTS = ("{}", '{"a": 1}', "[]", "1", '"x"', "null")
SETUP = (_ACCOUNT,)

CASES = [
    Case("authorizations", "id", "authorization_id_text", IDS, insert_authorization("id"),
         SETUP),
    Case("authorizations", "card", "card_ref_text", (*REFS, None),
         insert_authorization("card"), SETUP),
    Case("authorizations", "card_token", "card_token_text", TOKENS,
         insert_authorization("card_token"), SETUP),
    Case("authorizations", "currency", "currency_code", CURRENCIES,
         insert_authorization("currency"), SETUP),
    Case("authorizations", "amount_minor", "positive_amount_minor", POSITIVE,
         insert_authorization("amount_minor"), SETUP),
    *(
        Case("authorizations", column, "nonnegative_amount_minor", NONNEGATIVE,
             insert_authorization(column, status="'pending'", held_minor="10"), SETUP)
        for column in ("held_minor", "captured_minor", "consumed_minor", "released_minor")
    ),
    Case("authorizations", "over_capture_bps", "rate_bps", BPS,
         insert_authorization("over_capture_bps"), SETUP),
    Case("authorizations", "rewards_rate_bps", "rate_bps", BPS,
         insert_authorization("rewards_rate_bps"), SETUP),
    Case("authorizations", "status", "authorization_status_text",
         ("pending", "expired", "declined", "closed", "Pending", "", "void"),
         insert_authorization("status"), SETUP),
    Case("authorizations", "reason", "authorization_reason_text", REASONS,
         insert_authorization("reason"), SETUP),
    Case("authorizations", "closed_by", "authorization_closed_by_text",
         ("void", "capture", "Void", "", "expiry", None),
         insert_authorization("closed_by", status="'closed'"), SETUP),
    Case("authorizations", "merchant", "jsonb_object", OBJECTS,
         insert_authorization("merchant"), SETUP),
    Case("authorization_requests", "request_id", "authorization_request_id_text", IDS,
         insert_request("request_id")),
    Case("authorization_requests", "kind", "authorization_request_kind_text",
         ("authorize", "increment", "capture", "void", "timeout", "Authorize", "", "refund"),
         insert_request("kind")),
    Case("authorization_requests", "authorization_id", "authorization_id_text", IDS,
         insert_request("authorization_id")),
    Case("authorization_requests", "request", "jsonb_object", OBJECTS,
         insert_request("request")),
    Case("authorization_requests", "request_hash", "sha256_hex_text", HASHES,
         insert_request("request_hash")),
    Case("authorization_requests", "status_code", "http_status_code",
         (200, 409, 599, 199, 600, 0), insert_request("status_code")),
    Case("authorization_requests", "answer", "authorization_answer_bytea",
         (b"{}", b"x" * 4096, b"", b"x", b"x" * 4097), insert_request("answer")),
    Case("authorization_cards", "token", "card_token_text", TOKENS, insert_card("token"),
         SETUP),
    Case("authorization_cards", "card", "card_ref_text", CARD_REFS, insert_card("card"),
         SETUP),
    Case("authorization_cards", "product", "product_ref_text", REFS, insert_card("product"),
         SETUP),
    Case("authorization_cards", "spend_limit_minor", "spend_limit_amount_minor",
         (0, 100, 10**15, -1, 10**15 + 1, None), insert_card("spend_limit_minor"), SETUP),
    Case("authorization_cards", "spend_interval", "spend_interval_text",
         ("PerTransaction", "Daily", "Monthly", "Lifetime", "daily", "", "Weekly", None),
         insert_card("spend_interval"), SETUP),
    Case("authorization_cards", "held_minor", "nonnegative_amount_minor", NONNEGATIVE,
         insert_card("held_minor"), SETUP),
    Case("authorization_captures", "id", "authorization_request_id_text", IDS,
         insert_capture("id"), (_ACCOUNT, _JOURNAL)),
    Case("authorization_captures", "authorization_id", "authorization_id_text", IDS,
         insert_capture("authorization_id"), (_ACCOUNT, _JOURNAL)),
    Case("authorization_captures", "amount_minor", "positive_amount_minor", POSITIVE,
         insert_capture("amount_minor"), (_ACCOUNT, _JOURNAL)),
    # UPDATEs check only the columns they assign: the ones the hot path writes.
    Case("authorization_cards", "held_minor", "nonnegative_amount_minor", (0, 50, 101, -1),
         "UPDATE authorization_cards SET held_minor = %(v)s", (_ACCOUNT, _CARD)),
    Case("authorization_cards", "spend_interval", "spend_interval_text",
         ("Monthly", "PerTransaction", "monthly", ""),
         "UPDATE authorization_cards SET spend_interval = %(v)s", (_ACCOUNT, _CARD)),
    Case("authorization_cards", "token", "card_token_text", TOKENS,
         "UPDATE authorization_cards SET token = %(v)s", (_ACCOUNT, _CARD)),
    Case("authorizations", "released_minor", "nonnegative_amount_minor", (0, 10, 11, -1),
         "UPDATE authorizations SET released_minor = %(v)s",
         (_ACCOUNT, _PENDING.replace("%(held)s", "10"))),
    Case("authorizations", "status", "authorization_status_text",
         ("expired", "closed", "Expired", ""),
         "UPDATE authorizations SET status = %(v)s",
         (_ACCOUNT, _PENDING.replace("%(held)s", "0"))),
    Case("authorizations", "reason", "authorization_reason_text", REASONS,
         "UPDATE authorizations SET reason = %(v)s",
         (_ACCOUNT, _PENDING.replace("%(held)s", "0"))),
    Case("authorization_requests", "status_code", "http_status_code", (503, 199, 600),
         "UPDATE authorization_requests SET timed_out = true, status_code = %(v)s",
         (_REQUEST,)),
    Case("authorization_requests", "answer", "authorization_answer_bytea",
         (b"{}", b"x", b"x" * 4097),
         "UPDATE authorization_requests SET timed_out = true, answer = %(v)s", (_REQUEST,)),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_domain_takes_what_the_table_check_took(
    before: psycopg.Connection[Any], raw: psycopg.Connection[Any], case: Case
) -> None:
    """Taken before exactly when taken after, refused with the same SQLSTATE; a refusal of
    the old single-column CHECK is now the domain's; both kinds of value occur."""
    assert_same_verdicts(before, raw, case)


DOMAIN_VALUES = {
    "authorization_id_text": ("auth-0001", "auth 0001"),
    "authorization_request_id_text": ("cap-0001", "x" * 129),
    "card_token_text": ("tok_1", ""),
    "card_ref_text": ("team-a/card-1", "card-1"),
    "product_ref_text": ("team-a/standard", "team-a/std/x"),
    "currency_code": ("USD", "usd"),
    "positive_amount_minor": (1, 0),
    "nonnegative_amount_minor": (0, -1),
    "spend_limit_amount_minor": (0, 10**15 + 1),
    "spend_interval_text": ("Daily", "Weekly"),
    "rate_bps": (10_000, 10_001),
    "authorization_status_text": ("pending", "open"),
    "authorization_reason_text": ("RiskDeclined:BlockedMcc", "Risk Declined"),
    "authorization_closed_by_text": ("capture", "expiry"),
    "jsonb_object": ('{"mcc": "5814"}', "[]"),
    "authorization_request_kind_text": ("void", "refund"),
    "sha256_hex_text": ("ab" * 32, "AB" * 32),
    "http_status_code": (200, 600),
    "authorization_answer_bytea": (b"{}", b"{"),
}


@pytest.mark.parametrize("domain", sorted(DOMAIN_VALUES))
def test_each_domain_refuses_bad_input_by_its_name(
    raw: psycopg.Connection[Any], domain: str
) -> None:
    """A good value casts to the domain; a bad one is a check violation naming the domain."""
    good, bad = DOMAIN_VALUES[domain]
    assert_refused_by_name(raw, domain, good, bad)


def test_the_hot_tables_keep_only_multi_column_checks(raw: psycopg.Connection[Any]) -> None:
    """Every CHECK left on the four tables reads two columns or more; every domain is used."""
    single = raw.execute(
        "SELECT conname FROM pg_constraint WHERE contype = 'c' AND cardinality(conkey) = 1"
        " AND conrelid = ANY(ARRAY['authorizations', 'authorization_requests',"
        " 'authorization_cards', 'authorization_captures']::regclass[])"
    ).fetchall()
    assert single == []
    used = raw.execute(
        "SELECT DISTINCT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE t.typtype = 'd' AND a.attrelid = ANY(ARRAY['authorizations',"
        " 'authorization_requests', 'authorization_cards', 'authorization_captures']::regclass[])"
    ).fetchall()
    assert {name for (name,) in used} == set(DOMAIN_VALUES)


def test_adding_the_domains_checks_rows_already_stored(database_url: str) -> None:
    """0062 keeps valid stored rows, and refuses to apply over a row that breaks a rule
    (each domain's constraint is validated against every stored value), changing nothing."""
    valid = schema_before_domains(database_url)
    with psycopg.connect(valid, autocommit=True) as conn:
        conn.execute(_ACCOUNT)
        conn.execute(_CARD)
        conn.execute(_PENDING, {"held": 10})
        conn.execute(_REQUEST)
        through_domains = [m for m in migrate.discover() if m.version <= DOMAINS_VERSION]
        assert migrate.apply(valid, through_domains) == [DOMAINS_VERSION]
        row = conn.execute("SELECT id, held_minor, status FROM authorizations").fetchone()
        assert row == ("a-1", 10, "pending")
    broken = schema_before_domains(database_url)
    with psycopg.connect(broken, autocommit=True) as conn:
        # A row past its table CHECK, as a bug before 0060 could have left one: the
        # constraint is dropped for the insert and added back NOT VALID, so the row stays.
        with conn.transaction():
            conn.execute(_ACCOUNT)
            conn.execute("ALTER TABLE authorizations DROP CONSTRAINT authorizations_reason_check")
            conn.execute(insert_authorization("reason"), {"v": "not a reason"})
            conn.execute(
                "ALTER TABLE authorizations ADD CONSTRAINT authorizations_reason_check"
                " CHECK (length(reason) <= 128 AND reason ~ '^[A-Za-z][A-Za-z0-9:]*$') NOT VALID"
            )
        stored = 'column "reason" of table "authorizations" contains values that violate'
        with pytest.raises(errors.CheckViolation, match=stored):
            migrate.apply(broken)
        found = conn.execute("SELECT to_regtype('authorization_reason_text')").fetchone()
        assert found == (None,)
        assert max(v for v, _, _ in recorded(conn)) == DOMAINS_VERSION - 1


def recorded(conn: psycopg.Connection[Any]) -> list[tuple[int, str, str]]:
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return [(int(v), str(n), str(c)) for v, n, c in rows]
