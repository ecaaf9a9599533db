"""kopf handlers, one module per kind: decode, call the domain, patch status.

Importing this package registers every handler with kopf, except the timers whose interval
is a setting: :func:`register_timers` adds those at start-up, so importing reads no environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fintech_operator.handlers import (
    card_queue,
    card_refresh,
    cardproduct,
    cards,
    indexes,
    outages,
    policies,
    postings,
    readiness,
    recon,
    report,
    reviews,
    slots,
    webhooks,
)

if TYPE_CHECKING:
    from fintech_operator import config

__all__ = [
    "card_queue",
    "card_refresh",
    "cardproduct",
    "cards",
    "indexes",
    "outages",
    "policies",
    "postings",
    "readiness",
    "recon",
    "register_timers",
    "report",
    "reviews",
    "slots",
    "webhooks",
]


def register_timers(settings: config.Settings) -> None:
    """Register the timers whose interval comes from ``settings`` (before kopf starts)."""
    webhooks.register_timers(settings)
