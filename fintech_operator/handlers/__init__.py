"""kopf handlers, one module per kind: decode, call the domain, patch status.

Importing this package registers every handler with kopf.
"""

from fintech_operator.handlers import (
    cardproduct,
    cards,
    indexes,
    policies,
    postings,
    recon,
    reviews,
    webhooks,
)

__all__ = [
    "cardproduct",
    "cards",
    "indexes",
    "policies",
    "postings",
    "recon",
    "reviews",
    "webhooks",
]
