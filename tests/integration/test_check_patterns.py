"""Migration 0060's CHECKs accept exactly what the bounded patterns they replaced accepted.

0060 rewrote `x ~ '^[...]{1,128}$'` and its like as `length(x) ... AND x ~ '^[...]+$'` (the
bounded form costs PostgreSQL's regex engine 10 to 35 times more per row). Each case below is
inserted into the real table, and whether the database took it is compared with the OLD
pattern evaluated by PostgreSQL itself on the same value: the two must agree on every value,
valid or not (too long, empty, a character outside the class, non-ASCII, a newline).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import errors

pytestmark = pytest.mark.integration

ID_PATTERN = "^[A-Za-z0-9._:-]{1,128}$"
REASON_PATTERN = "^[A-Za-z][A-Za-z0-9:]{0,127}$"
HASH_PATTERN = "^[0-9a-f]{64}$"

IDS = ["a", "a-b.c:d_e", "A" * 128, "A" * 129, "", "a b", "a/b", "é", "a\n", "x" * 127 + "é"]
REASONS = ["Approved", "RiskDeclined:BlockedMcc", "A" + "b" * 127, "A" + "b" * 128, "",
           "1abc", "A b", "Aé", ":A"]  # fmt: skip
HASHES = ["0" * 64, "0123456789abcdef" * 4, "A" * 64, "0" * 63, "0" * 65, "g" * 64, ""]

Insert = Callable[[psycopg.Connection[Any], str], None]


def insert_request(column: str) -> Insert:
    def insert(raw: psycopg.Connection[Any], value: str) -> None:
        row = {"request_id": "r-1", "authorization_id": "a-1", "request_hash": "0" * 64}
        row[column] = value
        raw.execute(
            "INSERT INTO authorization_requests (request_id, kind, authorization_id, request,"
            " request_hash, status_code, answer) VALUES (%(request_id)s, 'authorize',"
            " %(authorization_id)s, '{}', %(request_hash)s, 200, '\\x7b7d')",
            row,
        )

    return insert


def insert_authorization(column: str) -> Insert:
    def insert(raw: psycopg.Connection[Any], value: str) -> None:
        row = {"id": "a-1", "reason": "CardNotFound"}
        row[column] = value
        raw.execute(
            "INSERT INTO authorizations (id, card_token, currency, amount_minor, status, reason,"
            " merchant) VALUES (%(id)s, 'tok', 'USD', 1, 'declined', %(reason)s, '{}')",
            row,
        )

    return insert


def insert_journal(raw: psycopg.Connection[Any], value: str) -> None:
    # Rolled back before COMMIT, so the deferred balance check never asks for entries.
    raw.execute(
        "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at)"
        " VALUES ('k-1', %s, 'Payment', now())",
        (value,),
    )


CASES = [
    ("authorization_requests.request_id", insert_request("request_id"), ID_PATTERN, IDS),
    ("authorization_requests.authorization_id", insert_request("authorization_id"),
     ID_PATTERN, IDS),
    ("authorization_requests.request_hash", insert_request("request_hash"), HASH_PATTERN, HASHES),
    ("authorizations.id", insert_authorization("id"), ID_PATTERN, IDS),
    ("authorizations.reason", insert_authorization("reason"), REASON_PATTERN, REASONS),
    ("journals.request_hash", insert_journal, HASH_PATTERN, HASHES),
]  # fmt: skip


def accepted(raw: psycopg.Connection[Any], insert: Insert, value: str) -> bool:
    """Whether the table's constraints take ``value`` (the insert is always rolled back)."""
    try:
        with raw.transaction(force_rollback=True):
            insert(raw, value)
    except errors.CheckViolation:
        return False
    return True


@pytest.mark.parametrize(
    ("column", "insert", "pattern", "values"), CASES, ids=[case[0] for case in CASES]
)
def test_the_rewritten_check_agrees_with_the_bounded_pattern(
    raw: psycopg.Connection[Any], column: str, insert: Insert, pattern: str, values: list[str]
) -> None:
    """Every value is taken exactly when the old pattern matches it, and both kinds occur."""
    verdicts = {}
    for value in values:
        row = raw.execute("SELECT %s ~ %s", (value, pattern)).fetchone()
        assert row is not None
        verdicts[value] = (accepted(raw, insert, value), bool(row[0]))
    disagreements = {v: got for v, got in verdicts.items() if got[0] != got[1]}
    assert disagreements == {}, f"{column}: (taken, old pattern) differ for {disagreements}"
    assert {old for _, old in verdicts.values()} == {True, False}


def test_a_second_reversal_is_still_refused_by_the_same_index(
    raw: psycopg.Connection[Any],
) -> None:
    """0061 made journals_reverses_journal_id_key a partial unique index: a journal is still
    reversed at most once, and the violation still names it (the engine maps that name)."""
    insert = (
        "INSERT INTO journals (idempotency_key, request_hash, kind, occurred_at,"
        " reverses_journal_id) VALUES (%s, %s, %s, now(), %s) RETURNING id"
    )
    with raw.transaction(force_rollback=True):
        original = raw.execute(insert, ("orig", "0" * 64, "Payment", None)).fetchone()
        assert original is not None
        first = raw.execute(insert, ("rev-1", "0" * 64, "Reversal", original[0])).fetchone()
        assert first is not None
        with pytest.raises(errors.UniqueViolation) as refused:
            raw.execute(insert, ("rev-2", "0" * 64, "Reversal", original[0]))
    assert refused.value.diag.constraint_name == "journals_reverses_journal_id_key"
