"""Risk: the seed's risk service as a pure rule engine plus its PostgreSQL edge.

Public surface (import the modules: ``from fintech_operator.risk import engine``):

- :mod:`.model`: policies, facts, matches, decisions, ``RiskDeclined``; pure.
- :mod:`.engine`: ``assess_issuance``, ``assess_posting``, ``decide``; pure, no I/O.
- :mod:`.policy`: which policy applies in a namespace (from the kopf index); pure.
- :mod:`.store`: velocity reads, the ``risk_assessments`` trail, ``PostingCheck`` and ``post``.
"""

from fintech_operator.risk import engine, model, policy, store

__all__ = ["engine", "model", "policy", "store"]
