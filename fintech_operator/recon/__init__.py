"""Reconciliation: settlement files against the ledger, and the ledger against itself.

Public surface (import the modules: ``from fintech_operator.recon import parse``):

- :mod:`.model`: records, tolerances, plans, finding kinds and the summary builder; pure.
- :mod:`.parse`: streaming CSV / JSON Lines parsers with line-numbered errors; pure.
- :mod:`.matching`: the settlement matching rule, stated once; pure.
- :mod:`.schedule`: due times of a cron expression (parsed by ``api.cron``), run names and
  history pruning; pure.
- :mod:`.plans` (imported explicitly): the API spec as the core's plan; pure.
- :mod:`.store` (adapter, imported explicitly): runs a reconciliation in PostgreSQL.
- :mod:`.sources` (adapter, imported explicitly): reads inline, ConfigMap, Secret and HTTP sources.
"""

from fintech_operator.recon import matching, model, parse, schedule

__all__ = ["matching", "model", "parse", "schedule"]
