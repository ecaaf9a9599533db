"""kopf handlers, one module per kind: decode, call the domain, patch status.

Importing this package registers every handler with kopf.
"""

from fintech_operator.handlers import (
    card_refresh,
    cardproduct,
    cards,
    indexes,
    policies,
    postings,
    recon,
    report,
    reviews,
    slots,
    webhooks,
)

__all__ = [
    "card_refresh",
    "cardproduct",
    "cards",
    "indexes",
    "policies",
    "postings",
    "recon",
    "report",
    "reviews",
    "slots",
    "webhooks",
]
