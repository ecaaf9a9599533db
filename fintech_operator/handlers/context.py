"""The operator's typed context: what every kopf handler receives as ``memo``.

kopf passes one memo to every handler, shallow-copied per resource object. It is a
:class:`kopf.Memo` (a ``dict`` with attribute access); :class:`OperatorMemo` names and types
what the operator keeps in it, so a misspelt attribute is a mypy error rather than an
``AttributeError`` in a handler.

``settings`` and ``stop_flag`` are set by ``runtime.run_operator`` before kopf starts (the
settings loaded once by ``cli``); the others by the start-up hooks (``runtime._startup``,
``handlers.recon._recon_startup``) before any resource handler runs. Mutable values (the
refresh times, the review waits) are shared by every copy, which is what the handlers need.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import kopf

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from fintech_operator import config
    from fintech_operator.events import collector
    from fintech_operator.recon import sources, store


class OperatorMemo(kopf.Memo):
    """kopf's memo with the operator's attributes, typed.

    Declared, not assigned: reading one that was never set raises ``AttributeError`` (as
    :class:`kopf.Memo` does), and ``"pool" in memo`` tells whether it was.
    """

    # Set before kopf starts (runtime.run_operator).
    settings: config.Settings
    stop_flag: asyncio.Event
    # Set by runtime._startup.
    pool: AsyncConnectionPool[Any]
    relay_stop: asyncio.Event
    relay_task: asyncio.Task[None]
    expiry_task: asyncio.Task[None]
    trim_task: asyncio.Task[None]
    metrics_collector: collector.Collector | None
    card_refresh_last: dict[str, float]
    """Namespace -> monotonic time of its last batched card refresh."""
    card_orphan_sweep_last: dict[str, float]
    """Namespace -> monotonic time its last orphan sweep (handlers.card_refresh) ended."""
    card_review_waits: dict[str, tuple[int, float]]
    """Card uid -> (attempts, monotonic time of the next) of its review."""
    # Set by handlers.recon._recon_startup.
    recon_slots: asyncio.Semaphore
    recon_limits: store.Limits
    recon_source_limits: sources.Limits
    recon_dsn: str
    recon_cluster_namespace: str

    @classmethod
    def for_operator(cls, settings: config.Settings, stop_flag: asyncio.Event) -> OperatorMemo:
        """The memo kopf starts with: the process's settings and its stop flag."""
        memo = cls()
        memo.settings = settings
        memo.stop_flag = stop_flag
        return memo


__all__ = ["OperatorMemo"]
