"""Migration 0069: the authorization tables' multi-column CHECKs, now one CHECK per table calling
a function, accept and refuse exactly what the nine CHECKs did, and say which rule broke.

Each row below is written twice, on a schema migrated up to 0068 (``before``: the nine CHECKs)
and on one with every migration (``after``); everything is rolled back. Taken by both, or
refused by both with check_violation: before by the old constraint, after by the table's one
constraint, whose message names the old constraint as the rule. Where a row breaks two rules,
both schemas name the same one (PostgreSQL checked CHECKs in name order; the function looks in
that order).
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

VERSION = 69
_ACCOUNT = (
    "INSERT INTO accounts (code, kind, normal_balance, currency, metadata)"
    " VALUES ('card:ns/c:USD', 'card', 'debit', 'USD', '{\"card\": \"ns/c\"}')"
)
_ACCOUNT_ID = "(SELECT id FROM accounts WHERE code = 'card:ns/c:USD')"
_PENDING = {
    "id": "'a-1'", "account_id": _ACCOUNT_ID, "card": "'ns/c'", "card_token": "'tok'",
    "currency": "'USD'", "amount_minor": "100", "held_minor": "100", "captured_minor": "0",
    "consumed_minor": "0", "released_minor": "0", "over_capture_bps": "0",
    "status": "'pending'", "reason": "'Approved'", "closed_by": "NULL", "merchant": "'{}'",
    "expires_at": "now() + interval '1 day'",
}  # fmt: skip
_CARD = {
    "account_id": _ACCOUNT_ID, "token": "'tok'", "card": "'ns/c'", "namespace": "'ns'",
    "product": "'ns/std'", "spend_limit_minor": "NULL", "spend_interval": "NULL",
}  # fmt: skip


def insert(table: str, row: dict[str, str], **changes: str) -> str:
    row = {**row, **changes}
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(row.values())})"


# (name, statements after the account, the constraint that refused it before 0069 or None)
AUTHORIZATIONS = [
    ("pending", [insert("authorizations", _PENDING)], None),
    ("declined-unknown-card", [insert(
        "authorizations", _PENDING, account_id="NULL", card="NULL", held_minor="0",
        status="'declined'", reason="'CardNotFound'", expires_at="NULL")], None),
    ("pending-without-account", [insert("authorizations", _PENDING, account_id="NULL")],
     "authorizations_approved_have_card"),
    ("pending-without-expiry", [insert("authorizations", _PENDING, expires_at="NULL")],
     "authorizations_approved_have_card"),
    ("closed-without-closed-by", [insert(
        "authorizations", _PENDING, status="'closed'", captured_minor="100",
        consumed_minor="100")], "authorizations_closed_by"),
    ("pending-with-closed-by", [insert("authorizations", _PENDING, closed_by="'void'")],
     "authorizations_closed_by"),
    ("consumed-beyond-captured", [insert(
        "authorizations", _PENDING, captured_minor="40", consumed_minor="50")],
     "authorizations_consumed_by_captures"),
    ("declined-holding", [insert(
        "authorizations", _PENDING, status="'declined'", reason="'SpendLimitExceeded'")],
     "authorizations_declined_hold_nothing"),
    ("over-captured", [insert(
        "authorizations", _PENDING, captured_minor="101", consumed_minor="100")],
     "authorizations_over_capture"),
    ("over-captured-within-allowance", [insert(
        "authorizations", _PENDING, captured_minor="110", consumed_minor="100",
        over_capture_bps="1000")], None),
    ("over-captured-beyond-allowance", [insert(
        "authorizations", _PENDING, captured_minor="111", consumed_minor="100",
        over_capture_bps="1000")], "authorizations_over_capture"),
    ("resolved-beyond-held", [insert(
        "authorizations", _PENDING, captured_minor="60", consumed_minor="60",
        released_minor="50")], "authorizations_resolve_at_most_held"),
    ("expired-half-released", [insert(
        "authorizations", _PENDING, status="'expired'", released_minor="50")],
     "authorizations_resolved_fully"),
    ("expired-released", [insert(
        "authorizations", _PENDING, status="'expired'", released_minor="100")], None),
    ("closed-by-capture", [insert(
        "authorizations", _PENDING, status="'closed'", closed_by="'capture'",
        captured_minor="90", consumed_minor="90", released_minor="10")], None),
    # Two rules at once: the first by constraint name answers, before and after.
    ("two-rules-broken", [insert(
        "authorizations", _PENDING, account_id="NULL", captured_minor="40",
        consumed_minor="50")], "authorizations_approved_have_card"),
    ("update-releasing-beyond-held", [
        insert("authorizations", _PENDING),
        "UPDATE authorizations SET released_minor = 101 WHERE id = 'a-1'"],
     "authorizations_resolve_at_most_held"),
]  # fmt: skip
CARDS = [
    ("no-own-limit", [insert("authorization_cards", _CARD)], None),
    ("own-limit", [insert(
        "authorization_cards", _CARD, spend_limit_minor="5000", spend_interval="'Daily'")], None),
    ("card-of-another-namespace", [insert("authorization_cards", _CARD, card="'other/c'")],
     "authorization_cards_check"),
    ("limit-without-interval", [insert("authorization_cards", _CARD, spend_limit_minor="5000")],
     "authorization_cards_limit_shape"),
    ("interval-without-limit", [insert(
        "authorization_cards", _CARD, spend_interval="'Monthly'")],
     "authorization_cards_limit_shape"),
    ("update-to-another-namespace", [
        insert("authorization_cards", _CARD),
        "SET LOCAL session_replication_role = replica",  # past the trigger's immutability rule
        "UPDATE authorization_cards SET card = 'other/c'"],
     "authorization_cards_check"),
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


def assert_same_rule(
    before: psycopg.Connection[Any],
    after: psycopg.Connection[Any],
    table: str,
    statements: list[str],
    old_constraint: str | None,
) -> None:
    old, new = refusal(before, [_ACCOUNT, *statements]), refusal(after, [_ACCOUNT, *statements])
    if old_constraint is None:
        assert (old, new) == (None, None)
        return
    assert isinstance(old, errors.CheckViolation), old
    assert old.diag.constraint_name == old_constraint
    assert isinstance(new, errors.CheckViolation), new
    assert new.diag.constraint_name == f"{table}_rules"
    assert new.diag.table_name == table
    assert f'violates check constraint "{table}_rules" ({old_constraint})' in str(new)
    assert (new.diag.message_detail or "").startswith(f"{old_constraint}: ")


@pytest.mark.parametrize(("statements", "old_constraint"),
                         [case[1:] for case in AUTHORIZATIONS],
                         ids=[case[0] for case in AUTHORIZATIONS])  # fmt: skip
def test_authorizations_take_and_refuse_what_the_seven_checks_did(
    before: psycopg.Connection[Any],
    after: psycopg.Connection[Any],
    statements: list[str],
    old_constraint: str | None,
) -> None:
    assert_same_rule(before, after, "authorizations", statements, old_constraint)


@pytest.mark.parametrize(("statements", "old_constraint"), [case[1:] for case in CARDS],
                         ids=[case[0] for case in CARDS])  # fmt: skip
def test_cards_take_and_refuse_what_the_two_checks_did(
    before: psycopg.Connection[Any],
    after: psycopg.Connection[Any],
    statements: list[str],
    old_constraint: str | None,
) -> None:
    assert_same_rule(before, after, "authorization_cards", statements, old_constraint)


def test_every_rule_is_covered_by_a_refused_case() -> None:
    """Each of the nine old constraints refuses at least one case above (so no rule of the
    function is left untested)."""
    refused = {case[2] for case in AUTHORIZATIONS + CARDS} - {None}
    assert refused == {
        "authorizations_approved_have_card", "authorizations_closed_by",
        "authorizations_consumed_by_captures", "authorizations_declined_hold_nothing",
        "authorizations_over_capture", "authorizations_resolve_at_most_held",
        "authorizations_resolved_fully", "authorization_cards_check",
        "authorization_cards_limit_shape",
    }  # fmt: skip


def test_the_rules_are_table_checks_that_hold_with_triggers_off(
    after: psycopg.Connection[Any],
) -> None:
    """Still CHECK constraints: listed in the catalog, and enforced when the ordinary triggers
    are off (session_replication_role = replica), where a trigger's rule would not be."""
    names = {row[0] for row in after.execute(
        "SELECT conname FROM pg_constraint WHERE contype = 'c'"
        " AND conrelid IN ('authorizations'::regclass, 'authorization_cards'::regclass)"
        " AND conname LIKE '%rules'")}  # fmt: skip
    assert names == {"authorizations_rules", "authorization_cards_rules"}
    over = insert("authorizations", _PENDING, captured_minor="101", consumed_minor="100")
    refused = refusal(after, [_ACCOUNT, "SET LOCAL session_replication_role = replica", over])
    assert isinstance(refused, errors.CheckViolation)
    assert refused.diag.constraint_name == "authorizations_rules"
