"""The runtime role on a real PostgreSQL: runs the ledger, cannot undo its guards."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from fintech_operator.ledger import engine, grants, migrate, model, rules
from tests.conftest import RunningPlatform, schema_migrated_below

pytestmark = pytest.mark.integration

K = model.PostingKind


@pytest.fixture(scope="module")
def role(platform_running: RunningPlatform, database_url: str) -> Iterator[str]:
    """A fresh login role of this module only (roles are global to the server)."""
    name = f"rt_{uuid.uuid4().hex[:10]}"
    admin = platform_running.database_url_for("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
    migrate.apply(database_url, runtime_role=name)
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {name}")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"REVOKE ALL ON DATABASE {conninfo_db(database_url)} FROM {name}")
        conn.execute(f"DROP ROLE {name}")


def conninfo_db(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])


@pytest.fixture
def runtime_dsn(database_url: str, role: str) -> str:
    return make_conninfo(database_url, user=role)


def granted(database_url: str, role: str) -> dict[str, set[str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = %s AND table_schema = 'public'",
            (role,),
        ).fetchall()
    out: dict[str, set[str]] = {}
    for table, verb in rows:
        out.setdefault(str(table), set()).add(str(verb))
    return out


def test_grants_are_exactly_the_decided_ones(database_url: str, role: str) -> None:
    """Every table and view gets its decided verbs and nothing else: no TRUNCATE, REFERENCES,
    TRIGGER anywhere, and append-only tables have no UPDATE or DELETE."""
    table_level = {
        table: {verb for verb in verbs if "(" not in verb}
        for table, verbs in grants.PRIVILEGES.items()
    }
    assert granted(database_url, role) == table_level
    for table in ("journals", "entries", "rewards_ledger", "risk_assessments"):
        assert table_level[table] == {"SELECT", "INSERT"}
    with psycopg.connect(database_url) as conn:
        updatable = conn.execute(
            "SELECT column_name FROM information_schema.role_column_grants WHERE grantee = %s"
            " AND table_name = 'accounts' AND privilege_type = 'UPDATE'",
            (role,),
        ).fetchall()
    assert {str(c) for (c,) in updatable} == {
        "status",
        "closed_at",
        "frozen_at",
        "state_generation",
    }


async def test_the_runtime_role_posts_reverses_and_closes(runtime_dsn: str) -> None:
    """What the processes do (open, post, reverse, read, close) works as the runtime role."""
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        runtime_dsn, min_size=1, max_size=2, open=False
    )
    await pool.open(wait=True, timeout=30)
    try:
        async with pool.connection() as conn:
            card = await engine.open_card_account(conn, "ns", f"c-{uuid.uuid4().hex[:8]}", "USD")
            cur = await conn.execute("SELECT current_user")
            assert await cur.fetchone() != ("postgres",)
        purchase = model.PostingRequest(
            idempotency_key=f"k-{uuid.uuid4()}",
            kind=K.PURCHASE,
            lines=rules.lines_for(K.PURCHASE, card.code, 1250, "USD"),
            occurred_at=datetime.datetime.now(datetime.UTC),
            reference="ref",
        )
        posted = await engine.post(pool, purchase)
        await engine.reverse(
            pool, model.ReversalRequest(f"rev-{card.code}", posted.journal.id, "test")
        )
        async with pool.connection() as conn:
            assert (await engine.balance(conn, card.code)).balance_minor == 0
            assert (await engine.close_account(conn, card.code)).closed_at is not None
            assert await grants.owned_table_count(conn) == 0
    finally:
        await pool.close()


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE entries DISABLE TRIGGER ALL",
        "DROP TRIGGER entries_no_truncate ON entries",
        "TRUNCATE entries",
        "UPDATE entries SET amount_minor = amount_minor + 1",
        "DELETE FROM journals",
        "UPDATE rewards_ledger SET points = 0",
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'x', 'x')",
        "CREATE TABLE sneaky (id int)",
        "DROP TABLE outbox",
        # The card uid in an account's metadata keeps a reused name from an old account.
        "UPDATE accounts SET metadata = '{}'::jsonb",
    ],
)
def test_the_runtime_role_cannot_undo_the_guards(runtime_dsn: str, statement: str) -> None:
    """DDL, TRUNCATE and writes to append-only tables are refused by privilege, before any
    trigger: a compromised process cannot switch the ledger's own checks off."""
    with psycopg.connect(runtime_dsn) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(statement)


def test_the_owner_keeps_its_rights(database_url: str) -> None:
    """The control for the test above: the same DDL is allowed to the owner (rolled back)."""
    with psycopg.connect(database_url) as conn:
        conn.execute("ALTER TABLE entries DISABLE TRIGGER entries_no_truncate")
        conn.rollback()


def test_a_table_without_a_decision_stops_the_migration(database_url: str, role: str) -> None:
    """A new table nobody decided privileges for fails the run, and the run changes nothing."""
    extra = migrate.Migration(
        max(m.version for m in migrate.discover()) + 1, "surprise", "CREATE TABLE surprise (id int)"
    )
    with pytest.raises(grants.GrantError, match="surprise"):
        migrate.apply(database_url, [*migrate.discover(), extra], runtime_role=role)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('surprise')").fetchone() == (None,)


def test_grants_are_idempotent(database_url: str, role: str) -> None:
    before = granted(database_url, role)
    assert migrate.apply(database_url, runtime_role=role) == []
    assert granted(database_url, role) == before


def test_a_schema_migrated_part_of_the_way_is_granted_the_columns_it_has(
    platform_running: RunningPlatform, database_url: str
) -> None:
    """``migrate.apply`` with a list of migrations stops below the newest: the grants it makes
    name only the columns the schema has (0072's ``state_generation`` is not there yet), and
    the rest of the migrations grant it."""
    name = f"rt_{uuid.uuid4().hex[:10]}"
    admin = platform_running.database_url_for("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN")
    url = schema_migrated_below(database_url)
    schema = str(psycopg.conninfo.conninfo_to_dict(url)["options"]).split("=", 1)[1]

    def updatable() -> set[str]:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT column_name FROM information_schema.role_column_grants"
                " WHERE grantee = %s AND table_schema = %s AND table_name = 'accounts'"
                " AND privilege_type = 'UPDATE'",
                (name, schema),
            ).fetchall()
        return {str(row[0]) for row in rows}

    try:
        below = [m for m in migrate.discover() if m.version < STATE_GENERATION_VERSION]
        migrate.apply(url, below, runtime_role=name)
        assert updatable() == {"status", "closed_at", "frozen_at"}
        assert STATE_GENERATION_VERSION in migrate.apply(url, runtime_role=name)
        assert updatable() == {"status", "closed_at", "frozen_at", "state_generation"}
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {name}")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"REVOKE ALL ON DATABASE {conninfo_db(database_url)} FROM {name}")
            conn.execute(f"DROP ROLE {name}")


STATE_GENERATION_VERSION = 72
