"""The runtime role's privileges: exactly what the processes use, and nothing the ledger's
owner alone should do.

The ledger's invariants live in triggers and constraints (see migration 0001). A role that
owns the tables can switch those off (``ALTER TABLE entries DISABLE TRIGGER ALL``), drop
them, or ``TRUNCATE``; so in production the operator and its consumers connect as a role
that owns nothing, and the owner is used only by :func:`migrate.apply`, which re-grants this
table after every run so a new table never ships without a decision about who may write it.

Append-only tables get ``SELECT, INSERT`` only: the triggers refuse UPDATE and DELETE too,
so the refusal is enforced twice, by privilege first. Deletes that cascade from a parent
(delivery attempts, recon exceptions) run with the owner's rights, as PostgreSQL's
referential actions do, and need no grant here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import psycopg
from psycopg import sql

READ: Final = ("SELECT",)
APPEND: Final = ("SELECT", "INSERT")
# UPDATE also covers the row locks (SELECT ... FOR UPDATE / FOR NO KEY UPDATE) taken on them.
MUTABLE: Final = ("SELECT", "INSERT", "UPDATE")
PRUNABLE: Final = ("SELECT", "INSERT", "UPDATE", "DELETE")

# Every table and view of the schema, and what the runtime role may do to it. A relation
# missing here stops the grant (and so the migration) with its name: decide, then add it.
PRIVILEGES: Final[Mapping[str, tuple[str, ...]]] = {
    "schema_migrations": READ,
    # Only what closing and freezing change (and the row locks they and postings take):
    # never metadata, whose card uid is what keeps a reused name from an old account.
    "accounts": ("SELECT", "INSERT", "UPDATE (status, closed_at, frozen_at, state_generation)"),
    # Rows written by the entries trigger, a card's locked while posting; the view sums them.
    "account_balance_rows": MUTABLE,
    "account_balances": READ,
    "journals": APPEND,
    "entries": APPEND,
    "outbox": MUTABLE,  # published_at, claimed FOR UPDATE SKIP LOCKED by the relay
    "rewards_ledger": APPEND,
    "rewards_balances": MUTABLE,  # written by the rewards_ledger trigger
    "processed_events": APPEND,
    "risk_assessments": APPEND,
    "compliance_checks": APPEND,
    "compliance_alerts": APPEND,
    "card_reviews": APPEND,
    "webhook_endpoints": MUTABLE,
    "webhook_deliveries": PRUNABLE,  # delivered rows are pruned after the retention
    "webhook_delivery_attempts": APPEND,
    "recon_runs": PRUNABLE,  # the schedule's history limit deletes old runs
    "recon_exceptions": APPEND,
    "ledger_balance_drift": READ,
    "ledger_balance_stripe_drift": READ,
    "rewards_balance_drift": READ,
    # Real-time authorizations (0050): the mirrors are written by the operator, holds and
    # answers by the gateway's store; a resolved authorization and an answer never change
    # (triggers), captures are history.
    "authorization_products": MUTABLE,
    "authorization_cards": MUTABLE,
    "authorization_risk_rules": PRUNABLE,  # a policy's rules are replaced whole
    "authorizations": MUTABLE,
    "authorization_requests": MUTABLE,  # a deadline withdraws an approval once
    "authorization_captures": APPEND,
    "authorization_hold_drift": READ,
    # Running spend per window (0054): written by the entries and journals triggers only.
    "account_spend_windows": MUTABLE,
    "account_spend_drift": READ,
    # Settlement postings per reference (0057): written by the entries and journals triggers
    # (a reversal deletes the row of a reference it empties); read by reconciliation runs.
    "settlement_references": PRUNABLE,
    "settlement_postings": READ,
    "settlement_reference_totals": READ,
    "settlement_reference_drift": READ,
}

_RELATIONS: Final = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm')
 ORDER BY c.relname
"""


class GrantError(RuntimeError):
    """The schema has a relation this code has no privilege decision for."""


def apply(conn: psycopg.Connection[Any], role: str) -> None:
    """Make ``role``'s privileges exactly :data:`PRIVILEGES` (run inside the migration's
    transaction, by the owner); idempotent."""
    relations = [str(row[0]) for row in conn.execute(_RELATIONS).fetchall()]
    unknown = sorted(set(relations) - set(PRIVILEGES))
    if unknown:
        raise GrantError(f"no runtime privileges decided for {unknown}: add them to grants.py")
    who = sql.Identifier(role)
    schema = sql.Identifier(_one(conn, "SELECT current_schema()"))
    database = sql.Identifier(_one(conn, "SELECT current_database()"))
    conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(database, who))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, who))
    conn.execute(
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, who)
    )
    for relation in relations:
        table = sql.Identifier(relation)
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(table, who))
        decided = _existing(conn, relation, PRIVILEGES[relation])
        verbs = sql.SQL(", ").join(sql.SQL(verb) for verb in decided)
        conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(verbs, table, who))


def _existing(
    conn: psycopg.Connection[Any], relation: str, verbs: tuple[str, ...]
) -> tuple[str, ...]:
    """``verbs`` with their column lists cut to the columns ``relation`` has now: a schema
    migrated only part of the way (``migrate.apply`` with a list of migrations) lacks the
    columns of later ones, which are granted when those migrations run."""
    if not any("(" in verb for verb in verbs):
        return verbs
    columns = {
        str(row[0])
        for row in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attnum > 0 AND NOT attisdropped",
            (relation,),
        ).fetchall()
    }
    kept: list[str] = []
    for verb in verbs:
        if "(" not in verb:
            kept.append(verb)
            continue
        name, listed = verb.split("(", 1)
        present = [c.strip() for c in listed.rstrip(")").split(",") if c.strip() in columns]
        if present:
            kept.append(f"{name.strip()} ({', '.join(present)})")
    return tuple(kept)


async def owned_table_count(conn: psycopg.AsyncConnection[Any]) -> int:
    """How many of the schema's tables the connected role owns, directly or by membership.

    Not zero means the process could switch off the ledger's own guards; the operator
    says so at start-up (allowed for development, where one role does everything).
    """
    cur = await conn.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        " AND pg_has_role(current_user, tableowner, 'USAGE')"
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def _one(conn: psycopg.Connection[Any], query: str) -> str:
    row = conn.execute(query).fetchone()
    if row is None:
        raise GrantError(f"{query!r} returned no row")
    return str(row[0])


# The authorization gateway's own role: only the tables its store touches, and only how.
# Every other relation of the schema is revoked from it, so a compromised gateway can read
# no webhook secret, no recon file and no rewards, and can never UPDATE an entry or a journal.
GATEWAY_PRIVILEGES: Final[Mapping[str, tuple[str, ...]]] = {
    # Card terms are the operator's mirror: read only, except the running hold total.
    "authorization_products": READ,
    "authorization_cards": ("SELECT", "UPDATE (held_minor)"),
    "authorization_risk_rules": READ,
    "authorizations": MUTABLE,
    "authorization_requests": MUTABLE,
    "authorization_captures": APPEND,
    # A capture posts a Purchase journal (and opens the network settlement account once). The
    # card's account row is locked per decision, which needs an UPDATE grant on some column:
    # closed_at, which the accounts_closed_at CHECK ties to status, which it cannot change.
    "accounts": ("SELECT", "INSERT", "UPDATE (closed_at)"),
    "account_balance_rows": MUTABLE,  # written by the entries trigger
    "account_balances": READ,
    "account_spend_windows": MUTABLE,  # written by the entries trigger, read by decisions
    "settlement_references": MUTABLE,  # written by the entries trigger of a capture
    "journals": APPEND,
    "entries": APPEND,
    "outbox": ("INSERT",),  # the gateway only adds events; the relay reads and publishes them
}


def apply_gateway(conn: psycopg.Connection[Any], role: str) -> None:
    """Make ``role``'s privileges exactly :data:`GATEWAY_PRIVILEGES` and nothing on any other
    relation (run inside the migration's transaction, by the owner); idempotent."""
    relations = [str(row[0]) for row in conn.execute(_RELATIONS).fetchall()]
    missing = sorted(set(GATEWAY_PRIVILEGES) - set(relations))
    if missing:
        raise GrantError(f"GATEWAY_PRIVILEGES names relations the schema lacks: {missing}")
    who = sql.Identifier(role)
    schema = sql.Identifier(_one(conn, "SELECT current_schema()"))
    database = sql.Identifier(_one(conn, "SELECT current_database()"))
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, who))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, who))
    conn.execute(
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, who)
    )
    for relation in relations:
        table = sql.Identifier(relation)
        conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(table, who))
        verbs = _existing(conn, relation, GATEWAY_PRIVILEGES.get(relation, ()))
        if verbs:
            joined = sql.SQL(", ").join(sql.SQL(verb) for verb in verbs)
            conn.execute(sql.SQL("GRANT {} ON {} TO {}").format(joined, table, who))
