"""Notifications: Webhook endpoints served by the ``fintech-operator notifier`` process.

Public surface: :mod:`signing` (Standard Webhooks signatures, also for receivers),
:mod:`policy` (retry schedule, circuit breaker, rate limit), :mod:`service` (the
process). :mod:`endpoints`, :mod:`store`, :mod:`status` and :mod:`worker` are internal.
"""
