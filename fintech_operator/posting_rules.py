"""Pure decisions about Posting resources that are not ledger rules (no I/O, no clock)."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from fintech_operator import api

# What each card phase accepts. A frozen card still takes money back (refunds) and
# money in (payments); a closed card takes only refunds, which can arrive long after
# the purchase. Everything else is refused with CardNotActive.
ACCEPTED_BY_PHASE: Final[dict[str, frozenset[str]]] = {
    "Active": frozenset(t.value for t in api.PostingType),
    "Frozen": frozenset({"Refund", "Payment"}),
    "Closed": frozenset({"Refund"}),
}


def card_accepts(phase: str | None, posting_type: str) -> bool:
    """Whether a card in ``phase`` accepts a posting of ``posting_type``."""
    return posting_type in ACCEPTED_BY_PHASE.get(phase or "", frozenset())


def ttl_remaining_seconds(
    finished_at: datetime.datetime | None, ttl_seconds: int | None, now: datetime.datetime
) -> float:
    """Seconds until a finished posting expires; 0 when due, infinity without a TTL."""
    if finished_at is None or ttl_seconds is None:
        return float("inf")
    if ttl_seconds < 0:
        raise ValueError("ttl_seconds must not be negative")
    expires = finished_at + datetime.timedelta(seconds=ttl_seconds)
    return max(0.0, (expires - now).total_seconds())


# Fields that do not change what the ledger records: editing them is not a new request.
_NOT_HASHED: Final = frozenset({"ttlSecondsAfterFinished"})


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A stable hash of what a Posting asks the ledger to record (its spec, canonically)."""
    recorded = {k: v for k, v in spec.items() if k not in _NOT_HASHED}
    canonical = json.dumps(recorded, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
