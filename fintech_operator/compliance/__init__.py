"""Compliance: the seed's AML/KYC service as pure rules plus their PostgreSQL and API edges.

Public surface (import the modules: ``from fintech_operator.compliance import rules``):

- :mod:`.model`: policies, check results, AML facts and alerts; pure.
- :mod:`.rules`: the KYC gate and sanctions outcomes at issuance; pure.
- :mod:`.sanctions`: SDN CSV parsing, name normalization and the fuzzy ``Screener``; pure.
- :mod:`.aml`: the daily-threshold and structuring rules and business days; pure.
- :mod:`.policy`: which policy applies in a namespace (from the kopf index); pure.
- :mod:`.lists`: sanctions lists read from ConfigMaps and cached compiled.
- :mod:`.store`: ``compliance_checks``, ``compliance_alerts`` (+ outbox), ``card_reviews``.
- :mod:`.monitor`: ``after_posting``, AML inside the posting transaction.
"""

from fintech_operator.compliance import (
    aml,
    lists,
    model,
    monitor,
    policy,
    rules,
    sanctions,
    store,
)

__all__ = ["aml", "lists", "model", "monitor", "policy", "rules", "sanctions", "store"]
