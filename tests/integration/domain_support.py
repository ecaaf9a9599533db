"""The harness of the domain migrations' tests (0062: the authorization tables, 0066: the
ledger's core tables): a column's value written on a schema before the migration and on one
after it must get the same verdict, and a refusal of the old single-column CHECK must now be
the domain's, named for the field. ``refusal`` (a few statements run and rolled back, the
database's error kept) serves 0069's row-rule tests too."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import pytest
from psycopg import errors


@dataclasses.dataclass(frozen=True)
class Case:
    """A value written into ``table.column`` by ``statement`` (``%(v)s`` is the value), after
    ``setup`` (the rows it needs; everything is rolled back); ``replica``: with the ordinary
    triggers off, for tables only the ledger's triggers may write (their guards would refuse
    any value first)."""

    table: str
    column: str
    domain: str
    values: tuple[object, ...]
    statement: str
    setup: tuple[str, ...] = ()
    replica: bool = False
    # The table's CHECK before the migration, when it is not <table>_<column>_check.
    old_name: str | None = None

    @property
    def name(self) -> str:
        verb = self.statement.split()[0].lower()
        return f"{verb}-{self.table}.{self.column}"

    @property
    def old_constraint(self) -> str:
        return self.old_name or f"{self.table}_{self.column}_check"


@dataclasses.dataclass(frozen=True)
class Verdict:
    sqlstate: str | None  # None: taken.
    constraint: str | None = None
    datatype: str | None = None


Statement = str | tuple[str, Mapping[str, object]]


def refusal(conn: psycopg.Connection[Any], statements: Sequence[Statement]) -> psycopg.Error | None:
    """The error of the first of ``statements`` (SQL, or SQL and its parameters) the database
    refuses, run in order in one transaction that is rolled back; None when it took them all."""
    try:
        with conn.transaction(force_rollback=True):
            for statement in statements:
                sql, params = (statement, None) if isinstance(statement, str) else statement
                conn.execute(sql, params)
    except psycopg.Error as exc:
        return exc
    return None


def verdict(conn: psycopg.Connection[Any], case: Case, value: object) -> Verdict:
    """What the database says to ``value`` (everything is rolled back)."""
    replica = ["SET LOCAL session_replication_role = replica"] if case.replica else []
    refused = refusal(conn, [*replica, *case.setup, (case.statement, {"v": value})])
    if refused is None:
        return Verdict(None)
    return Verdict(refused.sqlstate, refused.diag.constraint_name, refused.diag.datatype_name)


def assert_same_verdicts(
    before: psycopg.Connection[Any], after: psycopg.Connection[Any], case: Case
) -> None:
    """Taken before exactly when taken after, refused with the same SQLSTATE; a refusal of the
    old single-column CHECK is now the domain's; both kinds of value occur."""
    verdicts = {value: (verdict(before, case, value), verdict(after, case, value))
                for value in case.values}  # fmt: skip
    for value, (old, new) in verdicts.items():
        assert old.sqlstate == new.sqlstate, f"{case.name} {value!r}: {old} before, {new} now"
        if old.constraint == case.old_constraint:
            assert (new.datatype, new.constraint) == (case.domain, f"{case.domain}_check")
    assert {new.sqlstate is None for _, new in verdicts.values()} == {True, False}


def assert_refused_by_name(
    conn: psycopg.Connection[Any], domain: str, good: object, bad: object
) -> None:
    """A good value casts to the domain; a bad one is a check violation naming the domain."""
    cast = f"SELECT %s::{domain}"
    assert conn.execute(cast, (good,)).fetchone() is not None
    with pytest.raises(errors.CheckViolation, match=f"value for domain {domain} ") as refused:
        conn.execute(cast, (bad,))
    assert refused.value.diag.constraint_name == f"{domain}_check"
