"""The processor-facing HTTP API for real-time card authorizations (docs/gateway.md).

Thin by design: it checks trust (signatures, body size, card numbers), decodes requests into
:mod:`fintech_operator.authorizations.contract` models, runs the store under an in-flight
limit and a deadline, and sends the store's answer as it is. Public: :mod:`.server` (``main``,
``build``), :mod:`.sign` and :mod:`.openapi`; the rest is internal.
"""
