"""Migration 0071: an entry's account and journal are checked by ``entries_before`` instead of two
foreign keys, and the database answers every write exactly as the keys did.

Each case below is run twice, on a schema migrated up to 0070 (``before``: the keys) and on one
with every migration (``after``); everything is rolled back. Taken by both, or refused by both
with the same SQLSTATE, constraint name, message and detail; where an entry breaks a rule of
the trigger and a reference at once, both name the same error. Then what made the keys'
locks unnecessary: an account or a journal an entry names can never go away.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.conftest import schema_migrated_below
from tests.integration.domain_support import refusal

pytestmark = pytest.mark.integration

VERSION = 71
_SETUP = [
    "INSERT INTO accounts (code, kind, normal_balance, currency)"
    " VALUES ('system:network_settlement:USD', 'system', 'credit', 'USD'),"
    " ('card:ns/c:USD', 'card', 'debit', 'USD'), ('card:ns/e:EUR', 'card', 'debit', 'EUR')",
    "INSERT INTO journals (id, idempotency_key, request_hash, kind, occurred_at, namespace)"
    " OVERRIDING SYSTEM VALUE VALUES (7001, 'k-1', repeat('0', 64), 'Purchase', now(), 'ns')",
]
_CARD = "(SELECT id FROM accounts WHERE code = 'card:ns/c:USD')"
_EUR_CARD = "(SELECT id FROM accounts WHERE code = 'card:ns/e:EUR')"
_SETTLEMENT = "(SELECT id FROM accounts WHERE code = 'system:network_settlement:USD')"
_MISSING_ACCOUNT = "(SELECT max(id) + 1000 FROM accounts)"


def entry(journal: str, account: str, direction: str = "debit", currency: str = "USD") -> str:
    return (
        "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
        f" VALUES ({journal}, {account}, '{direction}', 5, '{currency}')"
    )


# (name, statements after the setup, SQLSTATE before and after 0071 or None, constraint name)
CASES = [
    ("both-exist", [entry("7001", _CARD), entry("7001", _SETTLEMENT, "credit")], None, None),
    ("missing-account", [entry("7001", _MISSING_ACCOUNT)], "23503", "entries_account_id_fkey"),
    ("missing-journal", [entry("7999", _CARD)], "23503", "entries_journal_id_fkey"),
    # The journal's key fired first; both are reported after the trigger's own rules.
    ("both-missing", [entry("7999", _MISSING_ACCOUNT)], "23503", "entries_journal_id_fkey"),
    ("missing-journal-and-wrong-currency", [entry("7999", _EUR_CARD)], "23514", None),
    ("null-account", [entry("7001", "NULL")], "23502", None),
    ("null-journal", [entry("NULL", _CARD)], "23502", None),
    ("missing-account-of-a-later-row", [
        "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
        f" VALUES (7001, {_CARD}, 'debit', 5, 'USD'),"
        f" (7001, {_MISSING_ACCOUNT}, 'credit', 5, 'USD')"],
     "23503", "entries_account_id_fkey"),
]  # fmt: skip


@pytest.fixture(scope="module")
def before_url(database_url: str) -> str:
    return schema_migrated_below(database_url, VERSION)


@pytest.fixture(scope="module")
def after_url(database_url: str) -> str:
    return schema_migrated_below(database_url, 10_000)


@pytest.fixture
def before(before_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(before_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def after(after_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(after_url, autocommit=True) as conn:
        yield conn


def _said(error: psycopg.Error | None) -> tuple[str | None, ...] | None:
    if error is None:
        return None
    diag = error.diag
    # A key's detail names the missing key; the others show ids and times of that schema.
    detail = diag.message_detail if error.sqlstate == "23503" else None
    return error.sqlstate, diag.constraint_name, diag.message_primary, detail, diag.table_name


@pytest.mark.parametrize(("statements", "sqlstate", "constraint"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])  # fmt: skip
def test_an_entry_is_taken_or_refused_as_the_foreign_keys_did(
    before: psycopg.Connection[Any],
    after: psycopg.Connection[Any],
    statements: list[str],
    sqlstate: str | None,
    constraint: str | None,
) -> None:
    old = refusal(before, [*_SETUP, *statements, "SET CONSTRAINTS ALL IMMEDIATE"])
    new = refusal(after, [*_SETUP, *statements, "SET CONSTRAINTS ALL IMMEDIATE"])
    assert _said(old) == _said(new)
    if sqlstate is None:
        assert new is None, new
        return
    assert new is not None
    assert new.sqlstate == sqlstate, new
    if constraint is not None:
        assert isinstance(new, errors.ForeignKeyViolation)
        assert new.diag.constraint_name == constraint
        column = constraint.removeprefix("entries_").removesuffix("_fkey")
        assert f"Key ({column})=(" in (new.diag.message_detail or "")


def test_entries_have_no_foreign_keys_left(
    after: psycopg.Connection[Any],
) -> None:
    """The keys are gone (no KEY SHARE lock on the shared settlement account per capture)."""
    rows = after.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'entries'::regclass AND contype = 'f'"
    ).fetchall()
    assert rows == []


@pytest.mark.parametrize(
    "statement",
    [
        f"DELETE FROM accounts WHERE id = {_CARD}",
        f"UPDATE accounts SET id = id + 1000 WHERE id = {_CARD}",
        "TRUNCATE accounts CASCADE",
        "DELETE FROM journals WHERE id = 7001",
        "UPDATE journals SET id = 7002 WHERE id = 7001",
        "TRUNCATE journals CASCADE",
    ],
)
def test_what_an_entry_names_never_goes_away(
    after: psycopg.Connection[Any], statement: str
) -> None:
    """Accounts are never deleted, truncated or renumbered and journals are append-only, so
    an entry's account and journal exist as long as it does: what the keys' locks protected."""
    written = [entry("7001", _CARD), entry("7001", _SETTLEMENT, "credit")]
    refused = refusal(after, [*_SETUP, *written, "SET CONSTRAINTS ALL IMMEDIATE", statement])
    assert isinstance(refused, errors.RestrictViolation), refused


def test_an_entry_that_a_concurrent_transaction_cannot_see_is_refused(
    after: psycopg.Connection[Any], after_url: str
) -> None:
    """An account another transaction has not committed yet is missing for this one, as for a
    foreign key: the entry is refused, nothing waits."""
    with psycopg.connect(after_url) as other:
        row = other.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency)"
            " VALUES ('card:ns/late:USD', 'card', 'debit', 'USD') RETURNING id"
        ).fetchone()
        assert row is not None
        refused = refusal(after, [*_SETUP, entry("7001", str(row[0]))])
        other.rollback()
    assert isinstance(refused, errors.ForeignKeyViolation), refused
