"""Observability: Prometheus metrics, OpenTelemetry traces and the collector behind them.

Public modules: ``metrics`` (the registry and the functions that change it), ``tracing``
(set-up and the helpers that trace handlers, PostgreSQL and Kafka), ``reconcile`` (the kopf
handler wrapper), ``collector`` (outbox backlog and consumer lag) and ``lifecycle`` (what a
process calls at start). Structured logs live in ``fintech_operator.logs``. See
docs/operations.md for the metric list, alerts and the dashboard.
"""
