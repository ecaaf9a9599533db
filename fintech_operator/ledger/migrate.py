"""A tiny, safe runner for the ledger's versioned SQL migrations.

Migrations are the files ``migrations/NNNN_name.sql`` shipped in this package. :func:`apply` runs
every pending one in ONE transaction that first takes a fixed advisory lock, so several operator
replicas starting at once are safe: the first applies, the others wait and then find nothing to
do. Each applied file is recorded in ``schema_migrations`` with its SHA-256; a recorded checksum
that differs from the shipped file means a released migration was edited, and the runner refuses
to touch the database (so does a recorded version this code does not ship: the database is newer
than the code).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Final, Protocol

import psycopg
import pydantic
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from fintech_operator.ledger import grants

# "ledgermg" in ASCII, as a signed 64-bit key; fixed forever so every version of the operator
# contends on the same lock.
ADVISORY_LOCK_KEY: Final = 0x6C65646765726D67

_FILE_RE: Final = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_CREATE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationSettings(Protocol):
    """What :func:`apply_configured` reads of a process's database settings.

    ``config.DatabaseSettings`` (``settings.database``) satisfies it; the ledger names only
    what it needs, so it depends on no settings module (the layers in docs/architecture.md).
    """

    @property
    def url(self) -> str: ...
    @property
    def migration_url(self) -> str | None: ...
    @property
    def migration_password(self) -> pydantic.SecretStr | None: ...
    @property
    def runtime_role(self) -> str | None: ...
    @property
    def gateway_role(self) -> str | None: ...


class MigrationError(Exception):
    """The shipped migrations and the database disagree; nothing was changed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover() -> list[Migration]:
    """The migrations shipped in this package, in version order."""
    folder = resources.files("fintech_operator.ledger").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_RE.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return _checked_order(found)


@dataclass(frozen=True)
class Timeouts:
    """Bounds of one :func:`apply`: connecting, waiting for another process's migration lock,
    and each statement (a large migration may rewrite a table)."""

    connect_seconds: int = 10
    lock_seconds: int = 120
    statement_seconds: int = 600


def apply(
    dsn: str,
    migrations: Sequence[Migration] | None = None,
    *,
    runtime_role: str | None = None,
    gateway_role: str | None = None,
    password: str | None = None,
    timeouts: Timeouts = Timeouts(),
) -> list[int]:
    """Apply pending migrations; return the versions applied now (empty when up to date).

    ``migrations`` defaults to :func:`discover`; tests pass their own. The lock timeout bounds
    the wait for another process that is migrating the same database. With ``runtime_role``,
    that role's privileges are then set to :data:`grants.PRIVILEGES` in the same transaction,
    on every run, so a new table is never left without a decision. With ``gateway_role``, the
    authorization gateway's role gets :data:`grants.GATEWAY_PRIVILEGES` and nothing else.
    """
    wanted = _checked_order(list(discover() if migrations is None else migrations))
    if password is not None:
        dsn = make_conninfo(dsn, password=password)
    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=timeouts.connect_seconds)
    with conn, conn.transaction():
        _set_timeouts(conn, timeouts.lock_seconds, timeouts.statement_seconds)
        # Held until COMMIT: a second process blocks here and then sees everything applied.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        conn.execute(_CREATE_TABLE)
        pending = _pending(wanted, _recorded(conn))
        for migration in pending:
            _apply_one(conn, migration)
        if runtime_role is not None:
            grants.apply(conn, runtime_role)
        if gateway_role is not None:
            grants.apply_gateway(conn, gateway_role)
    return [migration.version for migration in pending]


async def apply_async(
    dsn: str, migrations: Sequence[Migration] | None = None, *, runtime_role: str | None = None
) -> list[int]:
    """:func:`apply` from async code, in a worker thread so the event loop keeps running."""
    return await asyncio.to_thread(
        functools.partial(apply, dsn, migrations, runtime_role=runtime_role)
    )


def apply_configured(settings: MigrationSettings) -> list[int]:
    """:func:`apply` as the processes configure it: as the owner's DSN and password when
    given (``FINTECH_MIGRATION_DATABASE_*``), else as the runtime's own connection."""
    owner = settings.migration_password
    return apply(
        settings.migration_url or settings.url,
        runtime_role=settings.runtime_role,
        gateway_role=settings.gateway_role,
        password=None if owner is None else owner.get_secret_value(),
    )


def _checked_order(migrations: list[Migration]) -> list[Migration]:
    migrations.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migrations share a version: {versions}")
    return migrations


def _set_timeouts(conn: psycopg.Connection[TupleRow], lock_s: int, stmt_s: int) -> None:
    conn.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
        (f"{lock_s}s", f"{stmt_s}s"),
    )


def _recorded(conn: psycopg.Connection[TupleRow]) -> dict[int, str]:
    rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
    return {int(version): str(checksum) for version, checksum in rows}


def _pending(wanted: list[Migration], recorded: dict[int, str]) -> list[Migration]:
    """Refuse any disagreement with what was applied, then return what is left to apply."""
    shipped = {migration.version: migration for migration in wanted}
    unknown = sorted(set(recorded) - set(shipped))
    if unknown:
        raise MigrationError(f"database has migrations {unknown} that this code does not ship")
    for version, checksum in sorted(recorded.items()):
        if shipped[version].checksum != checksum:
            raise MigrationError(
                f"migration {version} ({shipped[version].name}) was edited after it was applied: "
                f"recorded sha256 {checksum}, file sha256 {shipped[version].checksum}"
            )
    return [migration for migration in wanted if migration.version not in recorded]


def _apply_one(conn: psycopg.Connection[TupleRow], migration: Migration) -> None:
    # Without parameters psycopg sends the file as one simple query, so it may hold several
    # statements (and '%' needs no escaping).
    conn.execute(migration.sql.encode())
    conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
        (migration.version, migration.name, migration.checksum),
    )
