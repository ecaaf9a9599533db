"""The migration runner against a real PostgreSQL: idempotent, concurrent-safe, tamper-evident."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from fintech_operator.ledger import migrate
from tests.conftest import schema_migrated_below

pytestmark = pytest.mark.integration

SHIPPED = [migration.version for migration in migrate.discover()]
NEXT = max(SHIPPED) + 1  # A version no shipped file uses.


def recorded(dsn: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")
        return [(int(v), str(n), str(c)) for v, n, c in rows.fetchall()]


def test_shipped_migrations_start_with_the_ledger_and_are_unique() -> None:
    """Files are NNNN_name.sql with distinct versions; the ledger's schema is version 1.

    Other domains reserve their own ranges (recon is 0030...), so gaps are expected.
    """
    first = migrate.discover()[0]
    assert sorted(set(SHIPPED)) == SHIPPED
    assert (first.version, first.name) == (1, "ledger")


def test_apply_creates_the_schema_then_has_nothing_to_do(database_url: str) -> None:
    """On an empty database every migration applies once; a second run applies nothing."""
    assert migrate.apply(database_url) == SHIPPED
    assert migrate.apply(database_url) == []
    shipped = {(m.version, m.name, m.checksum) for m in migrate.discover()}
    assert set(recorded(database_url)) == shipped
    with psycopg.connect(database_url) as conn:
        tables = {
            str(name)
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        }
    assert tables >= {
        "accounts",
        "account_balance_rows",  # account_balances is the view of their sums (0058)
        "journals",
        "entries",
        "outbox",
        "rewards_ledger",
        "processed_events",
        "schema_migrations",
    }


def test_concurrent_apply_is_safe(database_url: str) -> None:
    """Several processes starting at once: exactly one applies, the others wait and find none."""
    dsn = schema_migrated_below(database_url)
    starters = 4
    barrier = threading.Barrier(starters)

    def start() -> list[int]:
        barrier.wait(timeout=30)
        return migrate.apply(dsn)

    with ThreadPoolExecutor(max_workers=starters) as executor:
        results = list(executor.map(lambda _: start(), range(starters)))
    assert sorted(results) == [[]] * (starters - 1) + [SHIPPED]
    assert [version for version, _, _ in recorded(dsn)] == SHIPPED


def test_an_edited_migration_is_refused(database_url: str) -> None:
    """A released migration whose text changed is refused, and nothing is applied."""
    dsn = schema_migrated_below(database_url)
    migrate.apply(dsn)
    first, *rest = migrate.discover()
    edited = migrate.Migration(first.version, first.name, first.sql + "\n-- a quiet edit\n")
    extra = migrate.Migration(NEXT, "later", "CREATE TABLE later (id int)")
    with pytest.raises(migrate.MigrationError, match="edited after it was applied"):
        migrate.apply(dsn, [edited, *rest, extra])
    assert [version for version, _, _ in recorded(dsn)] == SHIPPED  # `later` was not applied.


def test_a_database_newer_than_the_code_is_refused(database_url: str) -> None:
    """A recorded version this code does not ship means an older operator: refuse to run."""
    dsn = schema_migrated_below(database_url)
    extra = migrate.Migration(NEXT, "newer", "CREATE TABLE newer (id int)")
    assert migrate.apply(dsn, [*migrate.discover(), extra]) == [*SHIPPED, extra.version]
    with pytest.raises(migrate.MigrationError, match="does not ship"):
        migrate.apply(dsn)


def test_a_failing_migration_leaves_nothing_behind(database_url: str) -> None:
    """All pending migrations run in one transaction: a failure rolls every one of them back."""
    dsn = schema_migrated_below(database_url)
    broken = migrate.Migration(NEXT, "broken", "CREATE TABLE half (id int); SELECT 1/0")
    with pytest.raises(psycopg.errors.DivisionByZero):
        migrate.apply(dsn, [*migrate.discover(), broken])
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT to_regclass('accounts'), to_regclass('half')").fetchone()
    assert row == (None, None)


def test_duplicate_versions_are_refused() -> None:
    """Two files with one version number would apply in an undefined order."""
    one = migrate.Migration(1, "a", "SELECT 1")
    with pytest.raises(migrate.MigrationError, match="share a version"):
        migrate.apply("host=127.0.0.1 dbname=unused", [one, migrate.Migration(1, "b", "SELECT 2")])


async def test_apply_async(database_url: str) -> None:
    """The async variant runs the same runner without blocking the event loop."""
    dsn = schema_migrated_below(database_url)
    assert await migrate.apply_async(dsn) == SHIPPED
    assert await migrate.apply_async(dsn) == []
