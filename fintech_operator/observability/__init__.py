"""Observability: Prometheus metrics and OpenTelemetry traces.

Public modules: ``metrics`` (the registry and the functions that change it), ``tracing``
(set-up and the helpers that trace handlers, PostgreSQL and Kafka), ``reconcile`` (the kopf
handler wrapper) and ``lifecycle`` (what a process calls at start). The collector of outbox
backlog and consumer lag reads Kafka, so it lives above this package in
``fintech_operator.events.collector``: observability imports nothing of events. Structured
logs live in ``fintech_operator.logs``. See docs/operations.md for the metric list, alerts and
the dashboard.
"""
