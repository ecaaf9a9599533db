"""The double-entry ledger: pure types and rules, a PostgreSQL engine, and its migrations.

Public surface (import the modules, not the names: ``from fintech_operator.ledger import engine``):

- :mod:`.model`: requests, results and the typed errors (every ``LedgerError`` has a stable
  ``reason``); pure, no I/O.
- :mod:`.rules`: posting rules per kind, reversal lines, spend windows, request hashes; pure.
- :mod:`.engine`: ``post``, ``reverse``, accounts, balances, statements and checks, on async
  psycopg 3.
- :mod:`.migrate`: ``apply(dsn)`` / ``apply_async(dsn)`` for the versioned SQL schema.
"""

from fintech_operator.ledger import engine, migrate, model, rules

__all__ = ["engine", "migrate", "model", "rules"]
